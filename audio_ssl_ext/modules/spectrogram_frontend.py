"""Waveform batch -> normalized log-mel -> whole patches: the input of the spectrogram learners
(MW-MAE / MAE, Audio-JEPA), and their feature interface (``PatchEncoderFeatures``).

Runs inside the model, on the batch's device, so the data loader only reads audio.

One frame grid for training and extraction. Frames are centred (frame i on sample i * hop; each
clip padded by half a window at both ends, by reflection as torchaudio and nnAudio do in the
references, or with zeros), so a clip of N seconds has 100 N + 1 frames at a 10 ms hop. The
padding is applied per example at its own length, so a clip's frames do not depend on what it
is batched with. Training crops this grid (``forward(..., crop_start=)``: the crop task hands
the model the clip, or a window of it, and where the crop starts, in frames); extraction
(``chunks``) cuts the whole grid into model inputs. Normalization (``normalization``):

- ``per_clip``: each clip's log-mel standardized by its own mean and std, then cropped
  (MW-MAE's official training and HEAR code);
- ``dataset``: a fixed ``norm_mean`` / ``norm_std`` for every input (Audio-JEPA's reference;
  ``scripts/norm_stats.py`` computes them over a manifest), so absolute level is kept;
- ``per_crop``: each model input (training crop, extraction chunk) standardized on its own; what
  configs from before these fields were trained with, hence the default.

Frames past a clip's end (a short clip, the last chunk) are filled as ``chunk_padding`` says:
reflected (MW-MAE's HEAR code) or zeros, i.e. the normalized mean (the M2D runtime Audio-JEPA is
evaluated with); patches that reach into them are flagged so that a loss can leave them out.
"""

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
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


class CropFraming(NamedTuple):
    """What the crop task needs to know of a model's frame grid to hand it crops (``tasks/
    crop_pretraining.py``): frame i of a clip is centred on sample i * ``hop_length`` and reads
    samples up to ``context_samples`` away; a crop is ``input_frames`` frames; ``per_clip``: the
    model standardizes by the statistics of the audio it is given, so give it the clip."""

    hop_length: int
    context_samples: int
    input_frames: int
    per_clip: bool


def reflect_index(positions: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Index into a sequence of ``length`` for (possibly out-of-range) ``positions``, reflecting at
    both ends without repeating the edge (numpy's and torch's "reflect"), repeatedly for positions
    more than a length away (as numpy.pad, where torch.nn.functional.pad refuses). Broadcasts;
    lengths below 1 give 0 (the caller masks those)."""
    period = (2 * (length - 1)).clamp_min(1)
    folded = positions.remainder(period)
    reflected = torch.where(folded < length, folded, period - folded)
    return torch.where(length > 1, reflected, torch.zeros_like(reflected))


def standardize_valid_frames(spec: torch.Tensor, valid_frames: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit (population) std over the first ``valid_frames[b]`` frames and all bands
    of each example; frames past them become 0."""
    frame_is_valid = torch.arange(spec.shape[1], device=spec.device)[None, :] < valid_frames[:, None]
    weight = frame_is_valid[:, :, None].to(spec.dtype)
    count = (valid_frames.clamp_min(1) * spec.shape[2]).to(spec.dtype)[:, None, None]
    mean = (spec * weight).sum(dim=(1, 2), keepdim=True) / count
    var = ((spec - mean).square() * weight).sum(dim=(1, 2), keepdim=True) / count
    return (spec - mean) / var.sqrt().clamp_min(eps) * weight


class LogMelPatches(nn.Module):
    """(B, T) waveforms (+ padding mask) -> normalized log-mel -> (time x frequency) patches.

    ``input_frames`` is the model's fixed input length in frames (a whole number of patches):
    :meth:`forward` crops that many frames (a training crop); :meth:`chunks` cuts a clip of any
    length into such inputs for feature extraction.
    """

    @classmethod
    def from_config(cls, cfg) -> "LogMelPatches":
        return cls(
            sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, input_frames=cfg.input_frames,
            patch_time=cfg.patch_time, patch_freq=cfg.patch_freq, win_ms=cfg.win_ms,
            hop_ms=cfg.hop_ms, f_min=cfg.f_min, f_max=cfg.f_max, n_fft=cfg.n_fft,
            center_padding=cfg.center_padding, normalization=cfg.normalization,
            norm_mean=cfg.norm_mean, norm_std=cfg.norm_std, chunk_padding=cfg.chunk_padding,
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
        n_fft: Optional[int] = None,
        center_padding: str = "zero",
        normalization: str = "per_crop",
        norm_mean: Optional[float] = None,
        norm_std: Optional[float] = None,
        chunk_padding: str = "zero",
    ):
        super().__init__()
        # Centring is done here, per example at its own length (the frontend's own centring would
        # pad the batch as a whole).
        self.logmel = LogMelSpectrogram(
            sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms,
            f_min=f_min, f_max=f_max, center=False, n_fft=n_fft,
        )
        self.grid: Tuple[int, int] = patch_grid(input_frames, n_mels, patch_time, patch_freq)
        self.input_frames = input_frames
        self.patch_time = patch_time
        self.patch_freq = patch_freq
        for name, value, choices in (
            ("center_padding", center_padding, ("zero", "reflect")),
            ("chunk_padding", chunk_padding, ("zero", "reflect")),
            ("normalization", normalization, ("per_crop", "per_clip", "dataset")),
        ):
            if str(value) not in choices:
                raise ValueError(f"model.{name}={value!r}: one of {', '.join(choices)}")
        self.center_padding, self.chunk_padding = str(center_padding), str(chunk_padding)
        self.normalization = str(normalization)
        if self.normalization == "dataset":
            if norm_mean is None or norm_std is None:
                raise ValueError(
                    "model.normalization=dataset needs model.norm_mean and model.norm_std: compute them "
                    "over your training manifest with `python scripts/norm_stats.py --config-dir DIR "
                    "--config-name NAME MANIFEST`, which prints the overrides"
                )
            if not (math.isfinite(norm_mean) and math.isfinite(norm_std) and norm_std > 0):
                raise ValueError(f"model.norm_mean={norm_mean}, model.norm_std={norm_std}: need finite numbers, std > 0")
        elif norm_mean is not None or norm_std is not None:
            raise ValueError(
                f"model.norm_mean / model.norm_std are set but model.normalization={self.normalization} "
                "does not use them: set model.normalization=dataset or remove them"
            )
        self.norm_mean, self.norm_std = norm_mean, norm_std

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_time * self.patch_freq

    @property
    def frame_rate(self) -> float:
        return self.logmel.frame_rate

    @property
    def hop_length(self) -> int:
        return self.logmel.hop_length

    def crop_framing(self) -> CropFraming:
        half = self.logmel.win_length // 2
        return CropFraming(self.hop_length, max(half, self.logmel.win_length - half), self.input_frames,
                           self.normalization == "per_clip")

    def min_input_samples(self) -> int:
        """Fewest samples that give ``input_frames`` frames (1 + T // hop >= input_frames)."""
        return (self.input_frames - 1) * self.hop_length

    def frames(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw log-mel (B, frames, n_mels) on the centred grid, real frames per example (B,)).
        Frames past an example's real ones are those of its zero padding."""
        batch, samples = source.shape
        if padding_mask is None:
            lengths = torch.full((batch,), samples, device=source.device)
        else:
            lengths = (~padding_mask).sum(dim=1)
        half = self.logmel.win_length // 2
        if padding_mask is not None:
            source = source.masked_fill(padding_mask, 0.0)
        padded = nn.functional.pad(source, (half, half))
        if self.center_padding == "reflect" and half:
            # Only the half windows at each example's ends are filled, so the index tensors are
            # (B, half), not the size of the batch.
            offsets = torch.arange(half, device=source.device)[None, :]
            real = (lengths > 0)[:, None].to(source.dtype)
            left = source.gather(1, reflect_index(offsets - half, lengths[:, None])) * real
            right = source.gather(1, reflect_index(lengths[:, None] + offsets, lengths[:, None])) * real
            padded[:, :half] = left
            padded.scatter_(1, half + lengths[:, None] + offsets, right)
        spec = self.logmel(padded)
        # Frame i is centred on sample i * hop, so a clip of L samples owns frames 0 .. L // hop.
        valid_frames = torch.where(lengths > 0, 1 + lengths // self.hop_length, 0).clamp_max(spec.shape[1])
        return spec, valid_frames

    def normalize(self, spec: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """Normalize over each example's first ``valid_frames`` (per_crop and per_clip: their own
        statistics; dataset: the fixed ones); frames past them become 0."""
        if self.normalization == "dataset":
            frame_is_valid = torch.arange(spec.shape[1], device=spec.device)[None, :] < valid_frames[:, None]
            return (spec - self.norm_mean) / self.norm_std * frame_is_valid[:, :, None].to(spec.dtype)
        return standardize_valid_frames(spec, valid_frames)

    def fill_past_end(self, spec: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """Frames past each example's ``valid_frames`` filled as ``chunk_padding`` says (they are 0
        after ``normalize``)."""
        if self.chunk_padding == "zero":
            return spec
        positions = torch.arange(spec.shape[1], device=spec.device)[None, :]
        index = torch.where(positions < valid_frames[:, None], positions, reflect_index(positions, valid_frames[:, None]))
        return spec.gather(1, index[:, :, None].expand(-1, -1, spec.shape[2]))

    def spectrogram(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(normalized log-mel of the whole input (B, frames, n_mels), real frames per example (B,));
        frames past an example's end are 0."""
        spec, valid_frames = self.frames(source, padding_mask)
        return self.normalize(spec, valid_frames), valid_frames

    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        crop_start: Optional[torch.Tensor] = None,
    ) -> SpectrogramPatches:
        """A training crop: ``input_frames`` frames of each example from frame ``crop_start[b]``
        (default 0) of its centred grid, normalized as configured, as patches."""
        spec, valid_frames = self.frames(source, padding_mask)
        batch = spec.shape[0]
        if crop_start is None:
            crop_start = torch.zeros(batch, dtype=torch.long, device=spec.device)
        crop_start = crop_start.to(spec.device)
        needed = int(crop_start.max()) + self.input_frames
        if spec.shape[1] < needed:
            raise ValueError(
                f"the input has {source.shape[1]} samples = {spec.shape[1]} frames; the model needs "
                f"{self.input_frames} frames from frame {needed - self.input_frames} = at least "
                f"{(needed - 1) * self.hop_length} samples: raise task.crop_seconds "
                f"(to {self.min_input_samples() / self.logmel.sample_rate:g} s or more)"
            )
        crop_valid = (valid_frames - crop_start).clamp(0, self.input_frames)
        index = crop_start[:, None] + torch.arange(self.input_frames, device=spec.device)[None, :]
        if self.normalization == "per_crop":
            spec = self.normalize(_take_frames(spec, index), crop_valid)
        else:
            spec = _take_frames(self.normalize(spec, valid_frames), index)
        patches = patchify(self.fill_past_end(spec, crop_valid), self.patch_time, self.patch_freq)
        # A time patch is real if its last frame is; all frequency patches of a time step share it.
        time_patch_end = (torch.arange(self.grid[0], device=spec.device) + 1) * self.patch_time
        time_valid = time_patch_end[None, :] <= crop_valid[:, None]
        return SpectrogramPatches(patches, time_valid.repeat_interleave(self.grid[1], dim=1))

    def chunks(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> ChunkedPatches:
        """A clip of any length cut into ``input_frames`` chunks (the papers' feature extraction:
        2 s chunks, embeddings concatenated), each chunk what training would see of a crop there:
        normalized as configured (per_crop: each chunk on its own), frames past the clip's end
        filled as ``chunk_padding`` says."""
        spec, valid_frames = self.frames(source, padding_mask)
        batch, frames, mels = spec.shape
        num_chunks = -(-frames // self.input_frames)
        spec = nn.functional.pad(spec, (0, 0, 0, num_chunks * self.input_frames - frames))
        if self.normalization == "per_crop":
            spec = spec.reshape(batch * num_chunks, self.input_frames, mels)
            starts = torch.arange(num_chunks, device=spec.device) * self.input_frames
            chunk_valid = (valid_frames[:, None] - starts[None, :]).clamp(0, self.input_frames).reshape(-1)
            spec = self.fill_past_end(self.normalize(spec, chunk_valid), chunk_valid)
        else:
            spec = self.fill_past_end(self.normalize(spec, valid_frames), valid_frames)
            spec = spec.reshape(batch * num_chunks, self.input_frames, mels)
        return ChunkedPatches(patchify(spec, self.patch_time, self.patch_freq), num_chunks, valid_frames)


def _take_frames(spec: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """spec (B, F, M), index (B, K) -> (B, K, M)."""
    return spec.gather(1, index[:, :, None].expand(-1, -1, spec.shape[2]))


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
    the whole clip (``LogMelPatches.chunks``: each chunk normalized as a training crop there
    would be), each time step's frequency patches concatenated, chunks concatenated in time. The
    model chunks, so a wrapper need not (``feature_chunking``). A CLS token, where a model has
    one, is never part of the features: ``encode_patches`` returns patch tokens only.
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
