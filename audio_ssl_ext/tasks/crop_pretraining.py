"""``crop_pretraining``: fixed-duration crops, no labels (MW-MAE, MAE, Audio-JEPA).

A crop is ``input_frames`` frames of the clip's own spectrogram grid (frame i centred on sample
i * hop, the clip padded at its ends, as at feature extraction), not a waveform excerpt given a
fresh STFT whose first frame would be half padding. The spectrogram is computed in the model, on
the training device, so the batch carries audio: each example's piece of the clip (the crop plus
the samples its frames' windows reach; under ``normalization=per_clip`` the whole clip, whose
statistics standardize the crop, up to ``clip_seconds``) and ``crop_start``, where the crop
begins in the piece's frames. The model (``LogMelPatches.forward``) frames the piece, normalizes
and crops. A random crop in training, seeded by (seed, epoch, sample index) so a resumed run sees
the same crops; the centre crop in validation. Clips shorter than a crop are padded past their
end as the model's ``chunk_padding`` says, and those patches are not scored.

For a model without a log-mel patch frontend the task serves plain waveform crops of
``crop_seconds``. The learners seed their masks from the batch's sample ids, which the criterion
``model_with_sample_ids`` hands them, so masks too are exactly reproducible.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Tuple

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from audio_ssl_ext.data.audio import read_audio
from audio_ssl_ext.data.manifest import Manifest, read_manifest
from audio_ssl_ext.data.waveform_dataset import WaveformDataset
from audio_ssl_ext.modules.spectrogram_frontend import CropFraming, LogMelPatches
from audio_ssl_ext.tasks.waveform_pretraining import WaveformTask

logger = logging.getLogger(__name__)


@dataclass
class CropPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    sample_rate: int = field(
        default=16_000, metadata={"help": "files at another rate are refused, never resampled here"}
    )
    crop_seconds: float = field(
        default=2.0,
        metadata={"help": "duration of every training/validation crop: model.input_frames frames at "
                  "the model's hop (shorter files are padded)"},
    )
    clip_seconds: float = field(
        default=10.0,
        metadata={"help": "model.normalization=per_clip: a file up to this long is given whole (its "
                  "statistics standardize the crop); a longer one as a window this long around the "
                  "crop, whose statistics are used instead (AudioSet clips are 10 s)"},
    )
    seed: int = II("common.seed")  # crops are drawn from (seed, epoch, sample index)


def piece_bounds(framing: CropFraming, first: int, count: int, length: int) -> Tuple[int, int]:
    """(start, end) samples of a clip of ``length`` from which the model's centred framing gives
    frames ``first`` .. ``first + count - 1`` of the clip's own grid: their windows' samples, from
    a whole frame before (so frame numbers stay whole), the clip's own ends where they are reached
    (whose padding the model then applies, as to the whole clip)."""
    hop = framing.hop_length
    context_frames = -(-framing.context_samples // hop)
    start = max(0, (first - context_frames) * hop)
    end = min(length, (first + count - 1) * hop + framing.context_samples)
    return start, end


class SpectrogramCropDataset(WaveformDataset):
    """Pieces of clips around crops on a model's frame grid (the module docstring).

    Batches: ``net_input`` = ``source`` (B, S), ``padding_mask`` (B, S), ``crop_start`` (B,)
    frames. Reads only each piece from its file (``WaveformDataset.read_crop``).
    """

    def __init__(self, manifest: Manifest, sample_rate: int, framing: CropFraming, clip_samples: int,
                 random_crop: bool, seed: int):
        self.framing = framing
        hop = framing.hop_length
        self.window_frames = max(framing.input_frames, 1 + clip_samples // hop) if framing.per_clip else framing.input_frames
        largest_piece = (self.window_frames + 1 + framing.context_samples // hop) * hop + framing.context_samples
        super().__init__(manifest, sample_rate, max_sample_size=largest_piece, random_crop=random_crop, seed=seed)

    def piece(self, sample_id: int, length: int):
        """(first sample, end sample, crop start in the piece's frames) for a clip of ``length``."""
        hop, frames = self.framing.hop_length, self.framing.input_frames
        clip_frames = 1 + length // hop
        first = self.crop_start(sample_id, clip_frames, frames)
        if clip_frames <= self.window_frames:
            return 0, length, first
        # A window of window_frames frames with the crop in its middle, inside the clip.
        window = min(max(0, first - (self.window_frames - frames) // 2), clip_frames - self.window_frames)
        start, end = piece_bounds(self.framing, window, self.window_frames, length)
        return start, end, first - start // hop

    def collater(self, samples):
        if not samples:
            return {}
        hop, frames = self.framing.hop_length, self.framing.input_frames
        pieces, crop_starts = [], []
        for sample in samples:
            start, end, crop_start = self.piece(sample["id"], sample["length"])
            pieces.append(self.read_crop(sample["entry"], start, end - start))
            crop_starts.append(crop_start)
        # Long enough for every crop's frames (a short clip's crop runs past its end).
        length = max(max(len(p), (c + frames - 1) * hop) for p, c in zip(pieces, crop_starts))
        audio = torch.zeros(len(samples), length)
        padding_mask = torch.ones(len(samples), length, dtype=torch.bool)
        for i, piece in enumerate(pieces):
            audio[i, : len(piece)] = piece
            padding_mask[i, : len(piece)] = False
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": {
                "source": audio,
                "padding_mask": padding_mask,
                "crop_start": torch.LongTensor(crop_starts),
            },
        }


@register_task("crop_pretraining", dataclass=CropPretrainingConfig)
class CropPretrainingTask(WaveformTask):
    cfg: CropPretrainingConfig
    framing: Optional[CropFraming] = None
    model_built = False

    def __init__(self, cfg: CropPretrainingConfig):
        super().__init__(cfg)
        if cfg.crop_seconds <= 0:
            raise ValueError(f"task.crop_seconds must be positive, got {cfg.crop_seconds}")
        if cfg.clip_seconds < cfg.crop_seconds:
            raise ValueError(f"task.clip_seconds={cfg.clip_seconds} is shorter than task.crop_seconds={cfg.crop_seconds}")

    @property
    def crop_samples(self) -> int:
        return int(round(self.cfg.crop_seconds * self.cfg.sample_rate))

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        frontend = getattr(model, "frontend", None)
        self.framing = frontend.crop_framing() if hasattr(frontend, "crop_framing") else None
        if self.framing is not None:
            crop_frames = self.crop_samples / self.framing.hop_length
            if not math.isclose(crop_frames, self.framing.input_frames):
                raise ValueError(
                    f"task.crop_seconds={self.cfg.crop_seconds:g} is {crop_frames:g} frames at the model's "
                    f"hop, model.input_frames={self.framing.input_frames}: set task.crop_seconds="
                    f"{self.framing.input_frames * self.framing.hop_length / self.cfg.sample_rate:g}"
                )
        self.model_built = True
        return model

    def load_dataset(self, split: str, **kwargs):
        if not self.model_built:
            raise RuntimeError(
                "crop_pretraining cuts crops on the model's frame grid: build the model "
                "(task.build_model) before loading data, as fairseq's trainer does"
            )
        manifest = read_manifest(os.path.join(self.cfg.data, f"{split}.tsv"))
        random_crop = split == "train"
        if self.framing is None:
            dataset = WaveformDataset(
                manifest, sample_rate=self.cfg.sample_rate, fixed_length=self.crop_samples,
                random_crop=random_crop, seed=self.cfg.seed,
            )
        else:
            clip_samples = int(round(self.cfg.clip_seconds * self.cfg.sample_rate))
            dataset = SpectrogramCropDataset(
                manifest, self.cfg.sample_rate, self.framing, clip_samples, random_crop, self.cfg.seed
            )
        self.datasets[split] = dataset
        self.check_lengths(dataset)
        whole = " of clips given whole up to task.clip_seconds" if self.framing is not None and self.framing.per_clip else ""
        logger.info(
            f"{split}: {len(dataset)} files, {self.cfg.crop_seconds:g} s crops{whole} "
            f"({'random' if random_crop else 'centre'})"
        )


def logmel_statistics(frontend: LogMelPatches, manifest: Manifest, entries: Iterable[int], block_frames: int = 6000):
    """(mean, std, values) of the raw log-mel of every frame of the files at ``entries`` of
    ``manifest``: what ``normalization=dataset`` divides by, on the model's own frame grid (its
    n_fft, centring, mel bands). Files are read in blocks of ``block_frames`` frames (60 s at
    10 ms), so a long file never sits in memory whole; float64 accumulation, merged per block
    (Chan et al.), population std."""
    framing = frontend.crop_framing()
    count, mean, m2 = 0, 0.0, 0.0
    for entry in entries:
        length = manifest.sizes[entry]
        where = dict(manifest=manifest.path, line=manifest.line_numbers[entry])
        for first in range(0, 1 + length // framing.hop_length, block_frames):
            frames = min(block_frames, 1 + length // framing.hop_length - first)
            start, end = piece_bounds(framing, first, frames, length)
            piece = read_audio(manifest.audio_path(entry), frontend.logmel.sample_rate, start=start,
                               frames=end - start, expected_length=length, **where)
            with torch.no_grad():
                spec, _ = frontend.frames(torch.from_numpy(piece)[None])
            offset = first - start // framing.hop_length
            block = spec[0, offset : offset + frames].double()
            n, block_mean = block.numel(), block.mean().item()
            block_m2 = (block - block_mean).square().sum().item()
            delta = block_mean - mean
            mean += delta * n / (count + n)
            m2 += block_m2 + delta * delta * count * n / (count + n)
            count += n
    if count == 0:
        raise ValueError(f"{manifest.path}: no audio to compute statistics over")
    return mean, math.sqrt(m2 / count), count
