"""``crop_pretraining``: fixed-duration waveform crops, no labels (MW-MAE, MAE, Audio-JEPA).

Every item is cut (or zero-padded, with a padding mask) to ``crop_seconds``: a random crop in
training, seeded by (seed, epoch, sample index) so a resumed run sees the same crops, and the
centre crop in validation. The spectrogram is computed in the model, on the training device.
The learners seed their masks from the batch's sample ids, which the criterion
``model_with_sample_ids`` hands them, so masks too are exactly reproducible.
"""

import logging
import os
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from audio_ssl_ext.data.manifest import read_manifest
from audio_ssl_ext.data.waveform_dataset import WaveformDataset
from audio_ssl_ext.tasks.waveform_pretraining import WaveformTask

logger = logging.getLogger(__name__)


@dataclass
class CropPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    sample_rate: int = field(
        default=16_000, metadata={"help": "files at another rate are refused, never resampled here"}
    )
    crop_seconds: float = field(
        default=2.0, metadata={"help": "duration of every training/validation crop (shorter files are zero-padded)"}
    )
    seed: int = II("common.seed")  # crops are drawn from (seed, epoch, sample index)


@register_task("crop_pretraining", dataclass=CropPretrainingConfig)
class CropPretrainingTask(WaveformTask):
    cfg: CropPretrainingConfig

    def __init__(self, cfg: CropPretrainingConfig):
        super().__init__(cfg)
        if cfg.crop_seconds <= 0:
            raise ValueError(f"task.crop_seconds must be positive, got {cfg.crop_seconds}")

    @property
    def crop_samples(self) -> int:
        return int(round(self.cfg.crop_seconds * self.cfg.sample_rate))

    def load_dataset(self, split: str, **kwargs):
        manifest = read_manifest(os.path.join(self.cfg.data, f"{split}.tsv"))
        self.datasets[split] = WaveformDataset(
            manifest,
            sample_rate=self.cfg.sample_rate,
            fixed_length=self.crop_samples,
            random_crop=split == "train",
            seed=self.cfg.seed,
        )
        logger.info(
            f"{split}: {len(self.datasets[split])} files, {self.cfg.crop_seconds:g} s crops "
            f"({'random' if split == 'train' else 'centre'})"
        )
