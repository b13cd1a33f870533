"""From a fairseq checkpoint to features: ``load_model(path)`` for s3prl, HEAR and the probe.

``load_model`` rebuilds the model the checkpoint was trained as (its saved config, its task),
loads the weights and wraps it in a ``DownstreamModel``: eval mode, no gradients, and one call,

    features = model.extract_features(wavs, lengths)          # (B, S) float, (B,) samples
    features.hidden_states   # list of (B, T, D): the encoder's input and every layer's output
    features.lengths         # (B,) real frames per item
    features.frame_rate      # Hz
    features.sample_rate     # Hz of the input the model expects (``wavs`` may come at another
                             # rate with ``sample_rate=``; they are resampled inside)

What differs between learners sits in a small ``ModelAdapter`` per family (s3prl's principle: the
wrapper is thin, the model knows itself):

- the fairseq waveform family (wav2vec 2.0, HuBERT, data2vec, music2vec, musicHuBERT): a conv
  feature extractor, a layer norm, a projection and fairseq's TransformerEncoder. Hidden states
  are the encoder's input (after the positional convs) and each layer's output, s3prl's
  convention for these models. Frames are those the conv stack computes from real samples only;
  padded frames are masked out of attention, and a group-norm ("default") extractor, whose
  statistics span the whole input, padding included, runs per utterance. Padded and unpadded
  inputs so give the same features for the real frames.
- a model class may register its own adapter with ``register_adapter(model_name)``.

Long recordings are cut into chunks (``chunk_seconds``), each computed on its own and
concatenated; for the conv family the chunks overlap by the receptive field minus one hop, so the
frames are exactly those of one pass over the whole input, only the attention context is bounded.
"""

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The file is not a checkpoint this package can turn into a feature extractor."""


@dataclass
class HiddenStates:
    hidden_states: List[torch.Tensor]  # each (B, T, D), zeros past an item's length
    lengths: torch.Tensor  # (B,) long: real frames of each item
    frame_rate: float  # frames per second
    sample_rate: int  # the rate the model computes at


# ---------------------------------------------------------------------------------------------
# Adapters: what one family of models needs to give hidden states
# ---------------------------------------------------------------------------------------------


class ModelAdapter:
    """Family knowledge: how to run ``model`` for hidden states, and its frame arithmetic.

    Subclasses set ``sample_rate``, ``frame_rate``, ``num_layers`` (hidden states returned),
    ``hidden_dim``, and implement ``num_frames`` and ``hidden_states``. Chunking: the wrapper cuts
    inputs longer than ``chunk_hop_samples + chunk_overlap_samples`` into pieces that start every
    ``chunk_hop_samples`` and are ``chunk_overlap_samples`` longer, each giving
    ``num_frames(chunk_hop_samples + chunk_overlap_samples)`` frames.
    """

    sample_rate: int
    frame_rate: float
    num_layers: int
    hidden_dim: int
    chunk_hop_samples: int
    chunk_overlap_samples: int = 0
    first_frame_seconds: float = 0.0  # centre of frame 0; frame j is 1/frame_rate later

    def __init__(self, model: nn.Module, cfg):
        self.model = model
        self.cfg = cfg

    def num_frames(self, num_samples: int) -> int:
        raise NotImplementedError

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        """(B, S) waveforms at ``sample_rate`` with (B,) real lengths -> list of (B, T, D)."""
        raise NotImplementedError

    def self_check(self) -> None:
        """Compare with the model's own forward on a short input; raise if the adapter is wrong."""


_ADAPTERS: Dict[str, Callable[[nn.Module, object], ModelAdapter]] = {}


def register_adapter(model_name: str):
    """Decorator: ``@register_adapter("my_model") class MyAdapter(ModelAdapter): ...``."""

    def wrap(cls):
        _ADAPTERS[model_name] = cls
        return cls

    return wrap


def parse_conv_layers(spec: str) -> List[Tuple[int, int, int]]:
    layers = eval(spec)  # fairseq's own format, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4"
    return [tuple(int(v) for v in layer) for layer in layers]


def conv_receptive_field_and_stride(conv_layers: Sequence[Tuple[int, int, int]]) -> Tuple[int, int]:
    """Samples one frame sees, and samples between frames, of a stack of (dim, kernel, stride)."""
    field, stride = 1, 1
    for _, kernel, layer_stride in conv_layers:
        field += (kernel - 1) * stride
        stride *= layer_stride
    return field, stride


def conv_num_frames(num_samples: int, conv_layers: Sequence[Tuple[int, int, int]]) -> int:
    """Frames of an unpadded 'valid' conv stack (0 when the input is shorter than one frame)."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
        if length <= 0:
            return 0
    return length


class FairseqWaveformAdapter(ModelAdapter):
    """wav2vec 2.0 / HuBERT / data2vec / music2vec: conv extractor -> layer norm -> projection
    -> fairseq TransformerEncoder. Runs the model's own submodules; ``self_check`` compares the
    last hidden state with the model's ``extract_features`` at load time, so a model whose
    pipeline differs fails loudly instead of giving wrong features."""

    # Attention is quadratic in time; 30 s (1500 frames at 50 Hz) keeps a base model under a few
    # GB and is longer than the crops these models are trained on.
    default_chunk_seconds = 30.0

    def __init__(self, model: nn.Module, cfg, chunk_seconds: Optional[float] = None):
        super().__init__(model, cfg)
        for name in ("feature_extractor", "layer_norm", "encoder"):
            if not hasattr(model, name):
                raise CheckpointError(
                    f"model {cfg.model._name!r} has no {name!r}: it is not a fairseq waveform model; "
                    f"register a ModelAdapter for it with audio_ssl_ext.downstream.load.register_adapter"
                )
        self.conv_layers = parse_conv_layers(cfg.model.conv_feature_layers)
        self.receptive_field, self.stride = conv_receptive_field_and_stride(self.conv_layers)
        self.sample_rate = int(cfg.task.get("sample_rate", 16000))
        self.frame_rate = self.sample_rate / self.stride
        self.normalize = bool(cfg.task.get("normalize", False))
        self.per_utterance_extractor = cfg.model.get("extractor_mode", "default") == "default"
        self.layer_norm_first = bool(cfg.model.get("layer_norm_first", False))
        self.num_layers = len(model.encoder.layers) + 1
        self.hidden_dim = int(cfg.model.encoder_embed_dim)
        chunk_seconds = self.default_chunk_seconds if chunk_seconds is None else chunk_seconds
        self.chunk_hop_samples = max(1, round(chunk_seconds * self.frame_rate)) * self.stride
        self.chunk_overlap_samples = self.receptive_field - self.stride
        self.first_frame_seconds = self.receptive_field / 2 / self.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return conv_num_frames(num_samples, self.conv_layers)

    def _normalize(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # The task's `normalize`: zero mean, unit variance per utterance (fairseq's F.layer_norm
        # over the waveform), over the real samples only.
        out = torch.zeros_like(source)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = F.layer_norm(source[i, :n], (n,))
        return out

    def conv_features(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, T, C) conv features, T = frames of the longest item."""
        if not self.per_utterance_extractor or bool((lengths == source.size(1)).all()):
            return self.model.feature_extractor(source).transpose(1, 2)
        # GroupNorm over time would mix padding into every real frame: one utterance at a time.
        frames = [self.num_frames(n) for n in lengths.tolist()]
        out = None
        for i, n in enumerate(lengths.tolist()):
            f = self.model.feature_extractor(source[i : i + 1, :n]).transpose(1, 2)
            if out is None:
                out = f.new_zeros(source.size(0), max(frames), f.size(-1))
            out[i, : f.size(1)] = f[0]
        return out

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        if self.normalize:
            source = self._normalize(source, lengths)
        features = self.model.layer_norm(self.conv_features(source, lengths))
        if getattr(self.model, "post_extract_proj", None) is not None:
            features = self.model.post_extract_proj(features)
        frames = torch.tensor([self.num_frames(n) for n in lengths.tolist()], device=source.device)
        padding_mask = torch.arange(features.size(1), device=source.device)[None, :] >= frames[:, None]

        captured = []  # the first layer's input (T, B, C): the encoder's input after pos_conv

        def keep_input(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["x"])

        hook = self.model.encoder.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
        try:
            x, layer_results = self.model.encoder.extract_features(
                features, padding_mask=padding_mask if padding_mask.any() else None
            )
        finally:
            hook.remove()
        num_frames = features.size(1)
        states = [captured[0].transpose(0, 1)[:, :num_frames]]
        states += [result[0].transpose(0, 1)[:, :num_frames] for result in layer_results]
        if self.layer_norm_first:
            states[-1] = x  # pre-LN models: the encoder's final layer norm belongs to the last layer
        return [s.masked_fill(padding_mask[..., None], 0.0) for s in states]

    @torch.no_grad()
    def self_check(self) -> None:
        num_samples = self.receptive_field + 24 * self.stride
        source = torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0)) * 0.1
        device = next(self.model.parameters()).device
        source = source.to(device)
        lengths = torch.tensor([num_samples], device=device)
        ours = self.hidden_states(source, lengths)[-1]
        if self.normalize:
            source = self._normalize(source, lengths)
        theirs = self.model.extract_features(source, padding_mask=None, mask=False)
        theirs = theirs["x"] if isinstance(theirs, dict) else theirs[0]
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
            raise CheckpointError(
                f"model {self.cfg.model._name!r}: the fairseq waveform adapter does not reproduce the "
                f"model's own extract_features (shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}); "
                f"register a ModelAdapter for it"
            )


class PatchEncoderAdapter(ModelAdapter):
    """MW-MAE / MAE (and learners with the same feature API): the model's own
    ``extract_features(source, padding_mask)`` cuts the clip into training-crop chunks, encodes
    each without masking and returns one (B, T, D) per encoder block, D = frequency patches x
    width, at ``model.feature_rate``. The model chunks, so the wrapper does not."""

    def __init__(self, model: nn.Module, cfg, chunk_seconds: Optional[float] = None):
        super().__init__(model, cfg)
        if chunk_seconds is not None:
            raise ValueError(
                f"model {cfg.model._name!r} computes in chunks of its training crop "
                f"({model.cfg.input_frames} frames); chunk_seconds does not apply"
            )
        self.sample_rate = int(model.cfg.sample_rate)
        self.frame_rate = float(model.feature_rate)
        self.hop = int(model.frontend.logmel.hop_length)
        self.patch_time = int(model.cfg.patch_time)
        self.num_layers = int(model.cfg.encoder_layers)
        self.hidden_dim = int(model.cfg.encoder_embed_dim) * (int(model.cfg.n_mels) // int(model.cfg.patch_freq))
        self.chunk_hop_samples = 1 << 62  # never cut by the wrapper
        self.chunk_overlap_samples = 0
        # An output step groups patch_time centred frames; it is stamped with its first frame's
        # centre, so the last stamp never lies past the end of the audio.
        self.first_frame_seconds = 0.0

    def num_frames(self, num_samples: int) -> int:
        # Centred spectrogram frames (1 + samples // hop), grouped patch_time to an output step.
        return -(-(1 + num_samples // self.hop) // self.patch_time) if num_samples > 0 else 0

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        padding_mask = torch.arange(source.size(1), device=source.device)[None, :] >= lengths[:, None]
        out = self.model.extract_features(source, padding_mask if padding_mask.any() else None)
        frame_padding = out["padding_mask"]
        return [h.masked_fill(frame_padding[..., None], 0.0) for h in out["layer_results"]]


for _name in ("mw_mae", "audio_mae", "audio_jepa"):
    register_adapter(_name)(PatchEncoderAdapter)


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------


class DownstreamModel(nn.Module):
    """A trained model as a frozen feature extractor (see the module docstring)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, name: str, checkpoint: Optional[str]):
        super().__init__()
        self.model = model.eval()
        self.adapter = adapter
        self.name = name
        self.checkpoint = checkpoint
        self.sample_rate = adapter.sample_rate
        self.frame_rate = adapter.frame_rate
        self.num_layers = adapter.num_layers
        self.hidden_dim = adapter.hidden_dim
        self.eval()
        self.min_samples = self._min_samples()
        self.batch_with_padding = self._padding_is_exact()

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
        if num_samples <= self.adapter.chunk_hop_samples + self.adapter.chunk_overlap_samples:
            return max(1, self.adapter.num_frames(num_samples))
        return sum(self.adapter.num_frames(length) for _, length in self._chunks(num_samples))

    def _chunks(self, num_samples: int) -> List[Tuple[int, int]]:
        """(start, length) of the pieces of a long input. A tail too short for a frame of its
        own is left out: one pass over the whole input would not give it a frame either."""
        hop, overlap = self.adapter.chunk_hop_samples, self.adapter.chunk_overlap_samples
        chunks = []
        for start in range(0, num_samples, hop):
            length = min(hop + overlap, num_samples - start)
            if self.adapter.num_frames(length) >= 1:
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
        items = split_batch(wavs, lengths)
        if sample_rate is not None and sample_rate != self.sample_rate:
            items = [resample(w, sample_rate, self.sample_rate) for w in items]
        min_samples = self.min_samples
        items = [F.pad(w, (0, min_samples - w.numel())) if w.numel() < min_samples else w for w in items]
        device = self.device
        items = [w.to(device=device, dtype=torch.float32) for w in items]
        long_input = max(w.numel() for w in items) > self.adapter.chunk_hop_samples + self.adapter.chunk_overlap_samples
        if long_input:
            per_item = [self._one_long(w) for w in items]
        elif self.batch_with_padding:
            source, item_lengths = pad_batch(items)
            return HiddenStates(
                [s.float() for s in self.adapter.hidden_states(source, item_lengths)],
                torch.tensor([self.adapter.num_frames(n) for n in item_lengths.tolist()]),
                self.frame_rate,
                self.sample_rate,
            )
        else:
            per_item = self._by_equal_length(items)
        return stack_items(per_item, self.frame_rate, self.sample_rate)

    def _by_equal_length(self, items: Sequence[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Batches of items of one length (no padding at all): list over items of [(T, D)]."""
        per_item: List[Optional[List[torch.Tensor]]] = [None] * len(items)
        groups: Dict[int, List[int]] = {}
        for i, w in enumerate(items):
            groups.setdefault(w.numel(), []).append(i)
        for length, indices in groups.items():
            source = torch.stack([items[i] for i in indices])
            lengths = torch.full((len(indices),), length, device=source.device)
            states = self.adapter.hidden_states(source, lengths)
            for row, i in enumerate(indices):
                per_item[i] = [s[row].float() for s in states]
        return per_item

    @torch.no_grad()
    def _padding_is_exact(self) -> bool:
        """Does a padded batch give each item's unpadded features? Not for every model: a
        group-norm extractor, or data2vec's stacked positional convs (each conv layer's output at
        padded frames is non-zero and feeds the next), let padding reach the real frames. Where it
        does, ``extract_features`` batches only items of equal length."""
        hop = max(1, round(self.sample_rate / self.frame_rate))
        long_n, short_n = self.min_samples + 40 * hop + 7, self.min_samples + 25 * hop + 3
        generator = torch.Generator().manual_seed(0)
        source = (torch.randn(2, long_n, generator=generator) * 0.1).to(self.device)
        lengths = torch.tensor([long_n, short_n], device=self.device)
        source[1, short_n:] = 0.0
        padded = self.adapter.hidden_states(source, lengths)
        alone = self.adapter.hidden_states(source[1:, :short_n], lengths[1:])
        frames = self.adapter.num_frames(short_n)
        worst = max((p[1, :frames] - a[0, :frames]).abs().max().item() for p, a in zip(padded, alone))
        if worst > 1e-4:
            logger.info(
                "%s: padding changes real frames (by up to %.3g); batching only equal lengths",
                self.name, worst,
            )
        return worst <= 1e-4

    def _min_samples(self) -> int:
        """The shortest input that gives one frame (found by bisection on ``num_frames``)."""
        n = 1
        while self.adapter.num_frames(n) < 1:
            n = n * 2
        lo, hi = n // 2, n
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.adapter.num_frames(mid) >= 1 else (mid, hi)
        return hi

    def _one_long(self, wav: torch.Tensor) -> List[torch.Tensor]:
        """One item, in chunks: list over layers of (T, D)."""
        pieces: List[List[torch.Tensor]] = []
        min_samples = self.min_samples
        for start, length in self._chunks(wav.numel()):
            chunk = wav[start : start + length]
            if chunk.numel() < min_samples:
                chunk = F.pad(chunk, (0, min_samples - chunk.numel()))
            states = self.adapter.hidden_states(chunk[None], torch.tensor([chunk.numel()], device=wav.device))
            pieces.append([s[0].float() for s in states])
        return [torch.cat([p[layer] for p in pieces], dim=0) for layer in range(len(pieces[0]))]

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
    # written by `write_untrained_checkpoint` hold a model only.
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
) -> DownstreamModel:
    """A checkpoint this package trains -> a frozen ``DownstreamModel`` on ``device``.

    ``random_init=True`` builds the same architecture with fresh weights (``seed``): the
    random-init baseline of the probe. ``chunk_seconds`` bounds the input one forward pass sees
    (default: the adapter's). ``task_overrides`` changes fields of the saved task config, e.g.
    the label_dir of a HuBERT-style model whose dictionaries moved.
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
    adapter_cls = _ADAPTERS.get(name, FairseqWaveformAdapter)
    adapter = adapter_cls(model, cfg) if chunk_seconds is None else adapter_cls(model, cfg, chunk_seconds=chunk_seconds)
    adapter.self_check()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info(
        "loaded %s (%s): %d hidden states of %d dims at %.2f Hz from %d Hz audio",
        path, name, adapter.num_layers, adapter.hidden_dim, adapter.frame_rate, adapter.sample_rate,
    )
    return DownstreamModel(model, adapter, name, path).to(device)
