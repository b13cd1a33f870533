"""A model with the feature interface (``modules/learner.py``) as a frozen feature extractor:
what ``load_model`` returns, for a fairseq checkpoint and for an exported folder alike, and what
an exported model runs inside transformers (``modeling_audio_ssl.py``).

    features = model.extract_features(wavs, lengths)          # (B, S) float, (B,) samples
    features.hidden_states   # list of (B, T, D), one per layer
    features.lengths         # (B,) real frames per item
    features.frame_rate      # Hz
    features.sample_rate     # Hz of the input the model expects (``wavs`` may come at another
                             # rate with ``sample_rate=``; they are resampled inside)

What the wrapper adds to the model: batching with padding only where padding leaves the real
frames unchanged, inputs shorter than one frame, resampling, and long inputs cut where the model
asks (``feature_chunking``). No fairseq, hydra or omegaconf here: an exported folder carries this
file.
"""

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modules.learner import Learner

logger = logging.getLogger(__name__)


@dataclass
class HiddenStates:
    hidden_states: List[torch.Tensor]  # each (B, T, D), zeros past an item's length
    lengths: torch.Tensor  # (B,) long: real frames of each item
    frame_rate: float  # frames per second
    sample_rate: int  # the rate the model computes at



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
        check_finite_batch(items)
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


def check_finite_batch(wavs: Sequence[torch.Tensor], name: str = "wavs") -> None:
    """Refuse an item with a NaN or inf sample, naming it: one such sample makes every hidden
    state of its item NaN (and resampling would spread it)."""
    for i, wav in enumerate(wavs):
        bad = ~torch.isfinite(wav)
        if bad.any():
            first = int(torch.nonzero(bad.reshape(-1))[0])
            raise ValueError(f"{name}[{i}]: {int(bad.sum())} non-finite samples (NaN or inf), the first at sample {first}")


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
    try:
        import soxr
    except ImportError as err:  # an exported model used where only torch is installed
        raise ImportError(
            f"resampling {from_rate} Hz to {to_rate} Hz needs soxr (pip install soxr); or pass audio at {to_rate} Hz"
        ) from err

    out = soxr.resample(wav.detach().float().cpu().numpy(), from_rate, to_rate, quality="HQ")
    out = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return out.to(wav.device)
