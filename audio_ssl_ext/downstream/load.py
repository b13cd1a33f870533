"""From a fairseq checkpoint to features: ``load_model(path)`` for s3prl, HEAR and the probe.

``load_model`` rebuilds the model the checkpoint was trained as (its saved config, its task),
loads the weights and wraps it in a ``DownstreamModel``: eval mode, no gradients, and one call,

    features = model.extract_features(wavs, lengths)          # (B, S) float, (B,) samples
    features.hidden_states   # list of (B, T, D), one per layer
    features.lengths         # (B,) real frames per item
    features.frame_rate      # Hz
    features.sample_rate     # Hz of the input the model expects (``wavs`` may come at another
                             # rate with ``sample_rate=``; they are resampled inside)

It knows no learner by name: every learner of this package implements the feature interface of
``modules/learner.py`` (the model knows itself, s3prl's principle). Foreign fairseq checkpoints
(wav2vec 2.0, HuBERT, data2vec) go through one generic adapter, ``FairseqWaveformModel``.
What the wrapper adds: batching with padding only where padding leaves the real frames
unchanged, inputs shorter than one frame, resampling, and long inputs cut where the model asks
(``feature_chunking``).
"""

import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl_ext.modules.conv_features import ConvFraming, ConvTransformerFeatures, receptive_field_and_stride
from audio_ssl_ext.modules.learner import Learner

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The file is not a checkpoint this package can turn into a feature extractor."""


@dataclass
class HiddenStates:
    hidden_states: List[torch.Tensor]  # each (B, T, D), zeros past an item's length
    lengths: torch.Tensor  # (B,) long: real frames of each item
    frame_rate: float  # frames per second
    sample_rate: int  # the rate the model computes at


class FairseqWaveformModel(ConvTransformerFeatures, nn.Module):
    """The feature interface over a foreign fairseq waveform model (wav2vec 2.0, HuBERT,
    data2vec): its conv extractor, layer norm, projection and encoder, run as the learners of this
    package run theirs. ``self_check`` compares the last hidden state with the model's own
    ``extract_features`` at load time, so a model whose pipeline differs fails loudly instead of
    giving wrong features."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        for name in ("feature_extractor", "layer_norm", "encoder"):
            if not hasattr(model, name):
                raise CheckpointError(
                    f"model {cfg.model._name!r} has no {name!r} and does not implement the feature interface "
                    f"of audio_ssl_ext.modules.learner.Learner: it cannot give hidden states"
                )
        self.model = model
        self.framing = ConvFraming.from_configs(cfg.model, cfg.task)
        self.name = cfg.model._name

    feature_extractor = property(lambda self: self.model.feature_extractor)
    layer_norm = property(lambda self: self.model.layer_norm)
    post_extract_proj = property(lambda self: getattr(self.model, "post_extract_proj", None))
    encoder = property(lambda self: self.model.encoder)

    @torch.no_grad()
    def self_check(self) -> None:
        field, stride = receptive_field_and_stride(self.framing.conv_layers)
        num_samples = field + 24 * stride
        source = torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0)) * 0.1
        source = source.to(next(self.model.parameters()).device)
        lengths = torch.tensor([num_samples], device=source.device)
        ours = self.hidden_states(source, lengths)[-1]
        if self.framing.normalize:
            source = self.normalize_waveform(source, lengths)
        theirs = self.model.extract_features(source, padding_mask=None, mask=False)
        theirs = theirs["x"] if isinstance(theirs, dict) else theirs[0]
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
            raise CheckpointError(
                f"model {self.name!r}: the fairseq waveform adapter does not reproduce the model's own "
                f"extract_features (shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}); implement the "
                f"feature interface of audio_ssl_ext.modules.learner.Learner in the model"
            )


class DownstreamModel(nn.Module):
    """A trained model as a frozen feature extractor (see the module docstring)."""

    def __init__(
        self,
        model: Learner,
        name: str,
        checkpoint: Optional[str],
        chunk_seconds: Optional[float] = None,
        features: Optional[str] = None,
    ):
        """``model`` implements the feature interface (``modules/learner.py``); ``features``
        picks its set of hidden states where it has several."""
        super().__init__()
        self.model = model.eval()
        model.select_features(features)
        self.features = features
        self.has_utterance_embedding = type(model).utterance_embedding is not Learner.utterance_embedding
        self.name = name
        self.checkpoint = checkpoint
        self.sample_rate = int(model.sample_rate)
        self.frame_rate = float(model.frame_rate)
        self.first_frame_seconds = float(model.first_frame_seconds)
        chunking = model.feature_chunking(chunk_seconds)
        # Inputs longer than hop + overlap are cut (none when the model takes any length).
        self.chunk_hop_samples, self.chunk_overlap_samples = chunking if chunking is not None else (1 << 62, 0)
        self.eval()
        self.min_samples = self._min_samples()
        self.num_layers, self.hidden_dim, self.batch_with_padding = self._inspect()

    def train(self, mode: bool = True):
        # A feature extractor: dropout and layer drop stay off whatever the caller does.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_frames(self, num_samples: int, sample_rate: Optional[int] = None) -> int:
        """Frames that ``extract_features`` returns for ``num_samples`` at ``sample_rate``."""
        if sample_rate is not None and sample_rate != self.sample_rate:
            num_samples = resampled_length(num_samples, sample_rate, self.sample_rate)
        if num_samples <= self.chunk_hop_samples + self.chunk_overlap_samples:
            return max(1, self.model.num_frames(num_samples))
        return sum(self.model.num_frames(length) for _, length in self._chunks(num_samples))

    def _chunks(self, num_samples: int) -> List[Tuple[int, int]]:
        """(start, length) of the pieces of a long input. A tail too short for a frame of its
        own is left out: one pass over the whole input would not give it a frame either."""
        hop, overlap = self.chunk_hop_samples, self.chunk_overlap_samples
        chunks = []
        for start in range(0, num_samples, hop):
            length = min(hop + overlap, num_samples - start)
            if self.model.num_frames(length) >= 1:
                chunks.append((start, length))
            if start + length >= num_samples:
                break
        return chunks

    @torch.no_grad()
    def extract_features(
        self,
        wavs: Union[torch.Tensor, Sequence[torch.Tensor]],
        lengths: Optional[torch.Tensor] = None,
        sample_rate: Optional[int] = None,
    ) -> HiddenStates:
        """Hidden states of every layer for a batch.

        ``wavs``: a (B, S) float tensor with ``lengths`` (B,) real samples per item (None: all
        real), or a list of 1-D tensors. ``sample_rate``: the rate of ``wavs`` when it is not the
        model's (resampled inside with soxr). Inputs shorter than one frame are zero-padded to one
        frame.
        """
        items = self._prepare(wavs, lengths, sample_rate)
        long_input = max(w.numel() for w in items) > self.chunk_hop_samples + self.chunk_overlap_samples
        if long_input:
            per_item = [self._one_long(w) for w in items]
        elif self.batch_with_padding:
            source, item_lengths = pad_batch(items)
            return HiddenStates(
                [s.float() for s in self.model.hidden_states(source, item_lengths)],
                torch.tensor([self.model.num_frames(n) for n in item_lengths.tolist()]),
                self.frame_rate,
                self.sample_rate,
            )
        else:
            per_item = self._by_equal_length(items)
        return stack_items(per_item, self.frame_rate, self.sample_rate)

    def _prepare(self, wavs, lengths, sample_rate: Optional[int]) -> List[torch.Tensor]:
        """Items as 1-D float tensors on the model's device, at its rate, at least one frame long."""
        items = split_batch(wavs, lengths)
        if sample_rate is not None and sample_rate != self.sample_rate:
            items = [resample(w, sample_rate, self.sample_rate) for w in items]
        min_samples = self.min_samples
        items = [F.pad(w, (0, min_samples - w.numel())) if w.numel() < min_samples else w for w in items]
        return [w.to(device=self.device, dtype=torch.float32) for w in items]

    def _by_equal_length(self, items: Sequence[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Batches of items of one length (no padding at all): list over items of [(T, D)]."""
        per_item: List[Optional[List[torch.Tensor]]] = [None] * len(items)
        groups: Dict[int, List[int]] = {}
        for i, w in enumerate(items):
            groups.setdefault(w.numel(), []).append(i)
        for length, indices in groups.items():
            source = torch.stack([items[i] for i in indices])
            lengths = torch.full((len(indices),), length, device=source.device)
            states = self.model.hidden_states(source, lengths)
            for row, i in enumerate(indices):
                per_item[i] = [s[row].float() for s in states]
        return per_item

    @torch.no_grad()
    def _inspect(self) -> Tuple[int, int, bool]:
        """Hidden states, their width, and: does a padded batch give each item's unpadded
        features? Not for every model: a group-norm extractor, or data2vec's stacked positional
        convs (each conv layer's output at padded frames is non-zero and feeds the next), let
        padding reach the real frames. Where it does, ``extract_features`` batches only items of
        equal length."""
        hop = max(1, round(self.sample_rate / self.frame_rate))
        long_n, short_n = self.min_samples + 40 * hop + 7, self.min_samples + 25 * hop + 3
        generator = torch.Generator().manual_seed(0)
        source = (torch.randn(2, long_n, generator=generator) * 0.1).to(self.device)
        lengths = torch.tensor([long_n, short_n], device=self.device)
        source[1, short_n:] = 0.0
        padded = self.model.hidden_states(source, lengths)
        alone = self.model.hidden_states(source[1:, :short_n], lengths[1:])
        frames = self.model.num_frames(short_n)
        worst = max((p[1, :frames] - a[0, :frames]).abs().max().item() for p, a in zip(padded, alone))
        if worst > 1e-4:
            logger.info(
                "%s: padding changes real frames (by up to %.3g); batching only equal lengths",
                self.name, worst,
            )
        return len(padded), padded[0].size(-1), worst <= 1e-4

    def _min_samples(self) -> int:
        """The shortest input that gives one frame (found by bisection on ``num_frames``)."""
        n = 1
        while self.model.num_frames(n) < 1:
            n = n * 2
        lo, hi = n // 2, n
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.model.num_frames(mid) >= 1 else (mid, hi)
        return hi

    def _one_long(self, wav: torch.Tensor) -> List[torch.Tensor]:
        """One item, in chunks: list over layers of (T, D)."""
        pieces: List[List[torch.Tensor]] = []
        min_samples = self.min_samples
        for start, length in self._chunks(wav.numel()):
            chunk = wav[start : start + length]
            if chunk.numel() < min_samples:
                chunk = F.pad(chunk, (0, min_samples - chunk.numel()))
            states = self.model.hidden_states(chunk[None], torch.tensor([chunk.numel()], device=wav.device))
            pieces.append([s[0].float() for s in states])
        return [torch.cat([p[layer] for p in pieces], dim=0) for layer in range(len(pieces[0]))]

    @torch.no_grad()
    def utterance_embedding(self, wavs, lengths=None, sample_rate: Optional[int] = None) -> torch.Tensor:
        """(B, E): the model's pooled embedding of each whole item (same inputs as ``extract_features``)."""
        if not self.has_utterance_embedding:
            raise ValueError(f"{self.name} pools no utterance embedding")
        items = self._prepare(wavs, lengths, sample_rate)
        if self.batch_with_padding:
            return self.model.utterance_embedding(*pad_batch(items)).float()
        return torch.cat([self.model.utterance_embedding(*pad_batch([w])).float() for w in items])

    def forward(self, wavs, lengths=None, sample_rate=None) -> HiddenStates:
        return self.extract_features(wavs, lengths, sample_rate)


def stack_items(per_item: Sequence[List[torch.Tensor]], frame_rate: float, sample_rate: int) -> HiddenStates:
    """Per-item lists of (T_i, D) states -> HiddenStates with zero padding past each T_i."""
    frames = torch.tensor([p[0].size(0) for p in per_item])
    states = []
    for layer in range(len(per_item[0])):
        first = per_item[0][layer]
        stacked = first.new_zeros(len(per_item), int(frames.max()), first.size(-1))
        for i, p in enumerate(per_item):
            stacked[i, : p[layer].size(0)] = p[layer]
        states.append(stacked)
    return HiddenStates(states, frames, frame_rate, sample_rate)


def split_batch(wavs, lengths) -> List[torch.Tensor]:
    if isinstance(wavs, torch.Tensor):
        if wavs.dim() == 1:
            wavs = wavs[None]
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be (B, S) or a list of 1-D tensors, got shape {tuple(wavs.shape)}")
        if lengths is None:
            return list(wavs)
        if len(lengths) != wavs.size(0):
            raise ValueError(f"{len(lengths)} lengths for a batch of {wavs.size(0)}")
        return [wavs[i, : int(n)] for i, n in enumerate(lengths)]
    items = [torch.as_tensor(w) for w in wavs]
    for i, w in enumerate(items):
        if w.dim() != 1:
            raise ValueError(f"wavs[{i}] must be 1-D (mono samples), got shape {tuple(w.shape)}")
    return items


def pad_batch(items: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in items], device=items[0].device)
    source = items[0].new_zeros(len(items), int(lengths.max()))
    for i, w in enumerate(items):
        source[i, : w.numel()] = w
    return source, lengths


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
    return int(math.ceil(num_samples * to_rate / from_rate))


def resample(wav: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """soxr's high-quality resampler on the CPU (no torchaudio); back on ``wav``'s device."""
    import soxr

    out = soxr.resample(wav.detach().float().cpu().numpy(), from_rate, to_rate, quality="HQ")
    out = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return out.to(wav.device)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_checkpoint(path: str) -> dict:
    """The checkpoint dict with ``cfg`` as an omegaconf DictConfig (as fairseq's loader gives it).

    fairseq checkpoints hold pickled configs, so torch's weights-only loading (the default since
    torch 2.6) cannot read them: load only checkpoints you trust.
    """
    from fairseq import checkpoint_utils
    from omegaconf import DictConfig, OmegaConf

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({err})") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    if state.get("cfg") is None:
        if state.get("args") is None:
            raise CheckpointError(f"{path}: fairseq checkpoint without 'cfg' or 'args'")
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        state["cfg"] = convert_namespace_to_omegaconf(state["args"])
    elif not isinstance(state["cfg"], DictConfig):
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    # fairseq's upgrade of older training checkpoints (optimizer history, old arg names); files
    # written by the tests (tests/utils.write_untrained_checkpoint) hold a model only.
    return checkpoint_utils._upgrade_state_dict(state) if "optimizer_history" in state else state


def build_task(cfg, path: str, task_overrides: Optional[dict]):
    """The checkpoint's task, set up from its saved config (label dictionaries and all)."""
    from fairseq import tasks
    from omegaconf import open_dict

    task_cfg = cfg.task
    if task_overrides:
        with open_dict(task_cfg):
            for key, value in task_overrides.items():
                task_cfg[key] = value
    try:
        return tasks.setup_task(task_cfg)
    except (OSError, ValueError) as err:  # missing files; our label code raises ValueErrors
        raise CheckpointError(
            f"{path}: setting up its task {task_cfg._name!r} needs files that are not here ({err}); "
            f"pass task_overrides, e.g. load_model(path, task_overrides={{'label_dir': DIR}}) with the "
            f"dict.*.txt files the model was trained with"
        ) from err


def load_model(
    path: str,
    device: Union[str, torch.device] = "cpu",
    random_init: bool = False,
    seed: int = 0,
    chunk_seconds: Optional[float] = None,
    task_overrides: Optional[dict] = None,
    features: Optional[str] = None,
) -> DownstreamModel:
    """A checkpoint this package trains (or a fairseq wav2vec 2.0 / HuBERT / data2vec one) -> a
    frozen ``DownstreamModel`` on ``device``.

    ``random_init=True`` builds the same architecture with fresh weights (``seed``): the
    random-init baseline of the probe. ``chunk_seconds`` bounds the input one forward pass sees
    (default: the model's). ``task_overrides`` changes fields of the saved task config, e.g.
    the label_dir of a HuBERT-style model whose dictionaries moved. ``features`` picks the set of
    hidden states of a learner that has several (its recipe lists them).
    """
    import audio_ssl_ext  # noqa: F401  (registers our models and tasks with fairseq)

    state = read_checkpoint(path)
    cfg = state["cfg"]
    task = build_task(cfg, path, task_overrides)
    if random_init:
        torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    if not random_init:
        try:
            model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match model {cfg.model._name!r}: {err}") from err
    model.eval()
    model.to(device)
    name = cfg.model._name
    if not isinstance(model, Learner):
        model = FairseqWaveformModel(model, cfg)
        model.self_check()
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = DownstreamModel(model, name, path, chunk_seconds, features).to(device)
    logger.info(
        "loaded %s (%s): %d hidden states of %d dims at %.2f Hz from %d Hz audio",
        path, name, wrapped.num_layers, wrapped.hidden_dim, wrapped.frame_rate, wrapped.sample_rate,
    )
    return wrapped
