"""Waveform batch -> standardized log-mel -> whole patches: the input of the spectrogram learners
(MW-MAE / MAE, Audio-JEPA), and their feature interface (``PatchEncoderFeatures``).

Runs inside the model, on the batch's device, so the data loader only reads and crops audio.

Frames are centred (frame i on sample i * hop, the input zero-padded by half a window at both
ends), so N seconds give 100 N + 1 frames at a 10 ms hop: 2 s -> 201 frames, cropped to the
model's 200 (50 patches of 4 frames); 2.08 s -> 209, cropped to 208 (13 patches of 16). Centring
also makes a zero-padded clip's frames identical to those of the clip alone up to its own frame
count, which is how padded batches are handled: per-instance standardization uses only an
example's real frames, the padded frames are set to 0 (the standardized mean), and patches that
reach into them are flagged so that a loss can leave them out.
"""

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from fairseq.dataclass import FairseqDataclass
from omegaconf import II
from torch import nn

from audio_ssl_ext.features import LogMelSpectrogram
from audio_ssl_ext.modules.learner import Learner
from audio_ssl_ext.modules.patches import patch_grid, patchify


class SpectrogramPatches(NamedTuple):
    patches: torch.Tensor  # (B, N, patch_time * patch_freq), time-major
    patch_valid: torch.Tensor  # (B, N) bool: every frame of the patch is real audio


class ChunkedPatches(NamedTuple):
    patches: torch.Tensor  # (B * chunks, N, patch_time * patch_freq): chunk c of example b at b * chunks + c
    num_chunks: int
    valid_frames: torch.Tensor  # (B,) real frames of each example


def standardize_valid_frames(spec: torch.Tensor, valid_frames: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit (population) std over the first ``valid_frames[b]`` frames and all bands
    of each example; frames past them become 0."""
    frame_is_valid = torch.arange(spec.shape[1], device=spec.device)[None, :] < valid_frames[:, None]
    weight = frame_is_valid[:, :, None].to(spec.dtype)
    count = (valid_frames.clamp_min(1) * spec.shape[2]).to(spec.dtype)[:, None, None]
    mean = (spec * weight).sum(dim=(1, 2), keepdim=True) / count
    var = ((spec - mean).square() * weight).sum(dim=(1, 2), keepdim=True) / count
    return (spec - mean) / var.sqrt().clamp_min(eps) * weight


@dataclass
class LogMelPatchesConfig(FairseqDataclass):
    """The input fields of a spectrogram learner's config (MW-MAE's defaults: 2 s = 200 frames x
    80 bands in 4 x 16 patches). A learner's config subclasses it and overrides what differs."""

    sample_rate: int = II("task.sample_rate")
    n_mels: int = field(default=80, metadata={"help": "mel bands"})
    f_min: float = field(default=50.0, metadata={"help": "lowest mel filter edge (Hz)"})
    f_max: float = field(default=8000.0, metadata={"help": "highest mel filter edge (Hz)"})
    win_ms: float = field(default=25.0, metadata={"help": "STFT window (ms)"})
    hop_ms: float = field(default=10.0, metadata={"help": "STFT hop (ms)"})
    input_frames: int = field(
        default=200, metadata={"help": "frames per model input (2 s at 10 ms); task.crop_seconds must cover them"}
    )
    patch_time: int = field(default=4, metadata={"help": "frames per patch"})
    patch_freq: int = field(default=16, metadata={"help": "mel bands per patch"})


@dataclass
class PatchEncoderConfig(LogMelPatchesConfig):
    """A spectrogram learner's input fields, its ViT encoder (ViT-B by default) and mask seed."""

    encoder_embed_dim: int = 768
    encoder_layers: int = 12
    encoder_attention_heads: int = 12
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP width / model width, in every ViT block"})
    seed: int = II("common.seed")  # masks are drawn from (seed, update, sample id)


class LogMelPatches(nn.Module):
    """(B, T) waveforms (+ padding mask) -> standardized log-mel -> (time x frequency) patches.

    ``input_frames`` is the model's fixed input length in frames (a whole number of patches):
    training crops must give at least that many; :meth:`chunks` cuts a clip of any length into
    such inputs for feature extraction.
    """

    @classmethod
    def from_config(cls, cfg: LogMelPatchesConfig) -> "LogMelPatches":
        return cls(
            sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, input_frames=cfg.input_frames,
            patch_time=cfg.patch_time, patch_freq=cfg.patch_freq, win_ms=cfg.win_ms,
            hop_ms=cfg.hop_ms, f_min=cfg.f_min, f_max=cfg.f_max,
        )

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        input_frames: int = 200,
        patch_time: int = 4,
        patch_freq: int = 16,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 50.0,
        f_max: float = 8000.0,
    ):
        super().__init__()
        self.logmel = LogMelSpectrogram(
            sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms,
            f_min=f_min, f_max=f_max, center=True,
        )
        self.grid: Tuple[int, int] = patch_grid(input_frames, n_mels, patch_time, patch_freq)
        self.input_frames = input_frames
        self.patch_time = patch_time
        self.patch_freq = patch_freq

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_time * self.patch_freq

    @property
    def frame_rate(self) -> float:
        return self.logmel.frame_rate

    def min_input_samples(self) -> int:
        """Fewest samples that give ``input_frames`` frames (1 + T // hop >= input_frames)."""
        return (self.input_frames - 1) * self.logmel.hop_length

    def spectrogram(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(standardized log-mel (B, frames, n_mels), real frames per example (B,))."""
        spec = self.logmel(source)
        if padding_mask is None:
            valid_frames = torch.full((source.shape[0],), spec.shape[1], device=spec.device)
        else:
            lengths = (~padding_mask).sum(dim=1)
            # Centred frames: frame i is centred on sample i * hop, so a clip of L samples owns
            # frames 0 .. L // hop (the frontend's own count for L samples).
            valid_frames = torch.where(lengths > 0, 1 + lengths // self.logmel.hop_length, 0)
            valid_frames = valid_frames.clamp_max(spec.shape[1])
        return standardize_valid_frames(spec, valid_frames), valid_frames

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> SpectrogramPatches:
        """Fixed-length input (a training crop): its first ``input_frames`` frames as patches."""
        spec, valid_frames = self.spectrogram(source, padding_mask)
        if spec.shape[1] < self.input_frames:
            raise ValueError(
                f"the input has {source.shape[1]} samples = {spec.shape[1]} frames; the model needs "
                f"{self.input_frames} frames = at least {self.min_input_samples()} samples "
                f"({self.min_input_samples() / self.logmel.sample_rate:g} s): raise task.crop_seconds"
            )
        patches = patchify(spec[:, : self.input_frames], self.patch_time, self.patch_freq)
        # A time patch is real if its last frame is; all frequency patches of a time step share it.
        time_patch_end = (torch.arange(self.grid[0], device=spec.device) + 1) * self.patch_time
        time_valid = time_patch_end[None, :] <= valid_frames[:, None]
        return SpectrogramPatches(patches, time_valid.repeat_interleave(self.grid[1], dim=1))

    def chunks(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> ChunkedPatches:
        """A clip of any length, standardized as a whole, zero-padded to whole inputs and cut into
        ``input_frames`` chunks (the paper's feature extraction: 2 s chunks, embeddings concatenated)."""
        spec, valid_frames = self.spectrogram(source, padding_mask)
        batch, frames, mels = spec.shape
        num_chunks = -(-frames // self.input_frames)
        spec = nn.functional.pad(spec, (0, 0, 0, num_chunks * self.input_frames - frames))
        spec = spec.reshape(batch * num_chunks, self.input_frames, mels)
        return ChunkedPatches(patchify(spec, self.patch_time, self.patch_freq), num_chunks, valid_frames)


def chunk_features(chunked: ChunkedPatches, layer_results: List[torch.Tensor], patch_time: int, time_patches: int) -> Dict:
    """Per-chunk encoder outputs -> the papers' per-time-step features of whole clips.

    Each of ``layer_results`` is (B * chunks, time_patches * freq_patches, D), chunk ``c`` of
    example ``b`` at ``b * chunks + c`` (``LogMelPatches.chunks``). Each time step's frequency
    patches are concatenated ('b (t f) d -> b t (f d)'), and an example's chunks follow each other
    in time. Returns ``layer_results`` (B, T_out, freq_patches * D) each, ``x`` (the last),
    ``padding_mask`` (B, T_out, True past an example's end) and ``clip`` (the mean of ``x`` over
    real steps), T_out = ceil(real frames / patch_time) of the longest example.
    """
    batch = chunked.valid_frames.shape[0]
    steps_per_example = -(-chunked.valid_frames // patch_time)
    out_steps = int(steps_per_example.max())
    layer_results = [
        h.reshape(batch, chunked.num_chunks * time_patches, -1)[:, :out_steps] for h in layer_results
    ]
    padding = torch.arange(out_steps, device=chunked.patches.device)[None, :] >= steps_per_example[:, None]
    x = layer_results[-1]
    real = (~padding)[:, :, None].to(x.dtype)
    clip = (x * real).sum(dim=1) / real.sum(dim=1).clamp_min(1)
    return {"layer_results": layer_results, "x": x, "padding_mask": padding, "clip": clip}


class PatchEncoderFeatures(Learner):
    """The feature interface (``modules/learner.py``) of a model with a ``frontend``
    (``LogMelPatches``) and ``encode_patches(patches, layer_results)``: the unmasked encoder over
    all (B, N, patch_dim) patches, appending each block's output to ``layer_results`` and
    returning the last one through the encoder's final norm.

    Features, as the papers extract them: the unmasked encoder over ``input_frames`` chunks of
    the whole clip (standardized as a whole), each time step's frequency patches concatenated,
    chunks concatenated in time. The model chunks, so a wrapper need not (``feature_chunking``).
    """

    # An output step groups patch_time centred frames; it is stamped with its first frame's
    # centre, so the last stamp never lies past the end of the audio.
    first_frame_seconds = 0.0

    @property
    def sample_rate(self) -> int:
        return self.frontend.logmel.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.frontend.frame_rate / self.frontend.patch_time

    def num_frames(self, num_samples: int) -> int:
        # Centred spectrogram frames (1 + samples // hop), grouped patch_time to an output step.
        frames = 1 + num_samples // self.frontend.logmel.hop_length
        return -(-frames // self.frontend.patch_time) if num_samples > 0 else 0

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict:
        """``chunk_features``'s dict: ``layer_results`` (one (B, T_out, freq_patches * D) per
        encoder block, the last through the final norm), ``x`` (the last), ``padding_mask`` and
        ``clip``, T_out = ``num_frames`` of the longest item."""
        chunked = self.frontend.chunks(source, padding_mask)
        layer_results: List[torch.Tensor] = []
        final = self.encode_patches(chunked.patches, layer_results)
        layer_results[-1] = final  # the last block's output through the encoder's final norm
        return chunk_features(chunked, layer_results, self.frontend.patch_time, self.frontend.grid[0])

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        padding_mask = torch.arange(source.size(1), device=source.device)[None, :] >= lengths[:, None]
        out = self.extract_features(source, padding_mask if padding_mask.any() else None)
        return [h.masked_fill(out["padding_mask"][..., None], 0.0) for h in out["layer_results"]]
