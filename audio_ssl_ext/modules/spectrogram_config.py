"""The config fields of the spectrogram learners' input and encoder, as fairseq dataclasses.

Apart from ``spectrogram_frontend.py`` (which builds the frontend from them) because fairseq's
dataclasses are all that binds it to fairseq: the frontend is part of what an exported model
carries, and runs where fairseq is not installed (``audio_ssl_ext/export``).
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

NORMALIZATION_CHOICES = ChoiceEnum(["per_crop", "per_clip", "dataset"])
PADDING_CHOICES = ChoiceEnum(["zero", "reflect"])


@dataclass
class LogMelPatchesConfig(FairseqDataclass):
    """The input fields of a spectrogram learner's config (MW-MAE's shape: 2 s = 200 frames x
    80 bands in 4 x 16 patches). A learner's config subclasses it and overrides what differs.
    The defaults of ``n_fft``, ``center_padding``, ``normalization`` and ``chunk_padding`` are
    what a checkpoint saved before those fields existed was trained with; the recipes set the
    references' values."""

    sample_rate: int = II("task.sample_rate")
    n_mels: int = field(default=80, metadata={"help": "mel bands"})
    f_min: float = field(default=50.0, metadata={"help": "lowest mel filter edge (Hz)"})
    f_max: float = field(default=8000.0, metadata={"help": "highest mel filter edge (Hz)"})
    win_ms: float = field(default=25.0, metadata={"help": "STFT window (ms)"})
    hop_ms: float = field(default=10.0, metadata={"help": "STFT hop (ms)"})
    n_fft: Optional[int] = field(
        default=None,
        metadata={"help": "FFT size; unset: the next power of two of the window (512 at 25 ms). "
                  "Both references use 400"},
    )
    center_padding: PADDING_CHOICES = field(
        default="zero", metadata={"help": "how a clip is padded by half a window at both ends: reflect (the references) | zero"}
    )
    normalization: NORMALIZATION_CHOICES = field(
        default="per_crop",
        metadata={"help": "per_clip: each clip's own mean/std (MW-MAE) | dataset: norm_mean/norm_std "
                  "(Audio-JEPA) | per_crop: each model input's own"},
    )
    norm_mean: Optional[float] = field(
        default=None, metadata={"help": "normalization=dataset: log-mel mean (scripts/norm_stats.py prints it)"}
    )
    norm_std: Optional[float] = field(
        default=None, metadata={"help": "normalization=dataset: log-mel standard deviation"}
    )
    chunk_padding: PADDING_CHOICES = field(
        default="zero",
        metadata={"help": "frames past a clip's end (short clips, the last extraction chunk): "
                  "reflect (MW-MAE) | zero, the normalized mean (Audio-JEPA's M2D runtime)"},
    )
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
