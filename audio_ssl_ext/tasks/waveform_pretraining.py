"""``waveform_pretraining``: raw waveforms with optional frame labels (musicHuBERT, music2vec, JOOCI).

Like fairseq's ``hubert_pretraining`` (same config names and batch keys, so fairseq's HuBERT model
builds against it), but with labels optional, checked against the audio and the dictionaries at
load time, and with crops seeded per sample so a resumed run sees the data an uninterrupted one
would.
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from audio_ssl_ext.data.labels import load_dictionary, load_label_set
from audio_ssl_ext.data.manifest import read_manifest
from audio_ssl_ext.data.waveform_dataset import WaveformDataset
from audio_ssl_ext.modules.conv_features import conv_num_frames, parse_conv_layers
from audio_ssl_ext.modules.learner import Learner

logger = logging.getLogger(__name__)


@dataclass
class WaveformPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    labels: List[str] = field(
        default_factory=list,
        metadata={"help": "label set names: files {label_dir}/{split}.{name} and dict.{name}.txt"},
    )
    label_dir: Optional[str] = field(
        default=None, metadata={"help": "directory of the label files (default: data)"}
    )
    label_rate: float = field(
        default=-1.0, metadata={"help": "frames per second of every label set (-1: no labels)"}
    )
    sample_rate: int = field(
        default=16_000, metadata={"help": "files at another rate are refused, never resampled here"}
    )
    normalize: bool = field(
        default=False, metadata={"help": "zero mean, unit variance per waveform (layer norm)"}
    )
    enable_padding: bool = field(
        default=False, metadata={"help": "pad to the longest item instead of cropping to the shortest"}
    )
    max_sample_size: Optional[int] = field(
        default=None, metadata={"help": "crop longer waveforms to this many samples"}
    )
    min_sample_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "leave out shorter files (default: none); files too short for one frame of the model "
            "(its conv stack's receptive field) are refused whatever this says"
        },
    )
    random_crop: bool = field(
        default=True, metadata={"help": "random crop offsets in training (centre otherwise)"}
    )
    label_length_tolerance: float = field(
        default=0.1, metadata={"help": "seconds a label sequence may differ from its audio"}
    )
    seed: int = II("common.seed")  # crops are drawn from (seed, epoch, sample index)


def shortest_input(num_frames: Callable[[int], int]) -> int:
    """The fewest samples for which ``num_frames`` gives one frame (bisection)."""
    n = 1
    while num_frames(n) < 1:
        n *= 2
    lo, hi = n // 2, n
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if num_frames(mid) >= 1 else (mid, hi)
    return hi


def model_min_samples(model, model_cfg) -> int:
    """The shortest input that gives ``model`` one frame: from the feature interface of our
    learners, from the conv stack of a foreign fairseq waveform model, else 1."""
    if isinstance(model, Learner):
        return shortest_input(model.num_frames)
    spec = getattr(model_cfg, "conv_feature_layers", None)
    if isinstance(spec, str):
        layers = parse_conv_layers(spec)
        return shortest_input(lambda n: conv_num_frames(n, layers))
    return 1


class WaveformTask(FairseqTask):
    """What both of our tasks share: no source/target dictionary (self-supervised), lengths
    handled by the dataset's cropping rather than by fairseq's size filter, and files too short
    for the model refused with their manifest line (fairseq builds the model before it loads the
    data; datasets loaded earlier are checked when the model is built)."""

    min_input_samples: Optional[int] = None  # known once the model is built

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self.min_input_samples = model_min_samples(model, cfg)
        for dataset in self.datasets.values():
            self.check_lengths(dataset)
        return model

    def check_lengths(self, dataset: WaveformDataset) -> None:
        if self.min_input_samples is not None:
            dataset.require_min_samples(self.min_input_samples, "the model needs for one frame (its receptive field)")

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg)

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return sys.maxsize, sys.maxsize

    def filter_indices_by_size(self, indices, *args, **kwargs):
        return indices  # the dataset crops (and pads) every item to its batch length


@register_task("waveform_pretraining", dataclass=WaveformPretrainingConfig)
class WaveformPretrainingTask(WaveformTask):
    cfg: WaveformPretrainingConfig

    def __init__(self, cfg: WaveformPretrainingConfig):
        super().__init__(cfg)
        if cfg.labels and cfg.label_rate <= 0:
            raise ValueError(f"task.labels={list(cfg.labels)} needs task.label_rate > 0 (frames/s)")
        self.label_dir = cfg.label_dir or cfg.data
        # Loaded here, not lazily: the model is built from them before any data is read.
        self.dictionaries = [load_dictionary(self.label_dir, name) for name in cfg.labels]

    def load_dataset(self, split: str, **kwargs):
        manifest = read_manifest(os.path.join(self.cfg.data, f"{split}.tsv"))
        label_sets = [
            load_label_set(
                self.label_dir,
                split,
                name,
                manifest,
                self.cfg.sample_rate,
                self.cfg.label_rate,
                self.cfg.label_length_tolerance,
            )
            for name in self.cfg.labels
        ]
        self.datasets[split] = WaveformDataset(
            manifest,
            sample_rate=self.cfg.sample_rate,
            max_sample_size=self.cfg.max_sample_size,
            min_sample_size=self.cfg.min_sample_size or 0,
            pad_audio=self.cfg.enable_padding,
            normalize=self.cfg.normalize,
            random_crop=self.cfg.random_crop and split == "train",
            seed=self.cfg.seed,
            label_sets=label_sets,
        )
        self.check_lengths(self.datasets[split])
