"""build_frontend: a frontend by name, for configs that say which features to use."""

from audio_ssl_ext.features.base import SpectralFrontend
from audio_ssl_ext.features.chroma import Chroma
from audio_ssl_ext.features.cqt import CQT
from audio_ssl_ext.features.logmel import LogMelSpectrogram
from audio_ssl_ext.features.mfcc import MFCC

FRONTEND_NAMES = ("logmel", "mfcc", "chroma", "cqt")


def build_frontend(
    name: str, sample_rate: int, frame_rate: float = 100, **kwargs
) -> SpectralFrontend:
    """``name`` in FRONTEND_NAMES at ``frame_rate`` frames per second; kwargs go to its class.

    For "logmel" the hop is 1000 / frame_rate ms; sample_rate / frame_rate must be a whole number
    of samples for every frontend.
    """
    if name == "logmel":
        if "hop_ms" in kwargs:
            raise ValueError(
                "build_frontend('logmel', ...) sets hop_ms from frame_rate; pass frame_rate"
            )
        return LogMelSpectrogram(sample_rate=sample_rate, hop_ms=1000.0 / frame_rate, **kwargs)
    if name == "mfcc":
        return MFCC(sample_rate=sample_rate, frame_rate=frame_rate, **kwargs)
    if name == "chroma":
        return Chroma(sample_rate=sample_rate, frame_rate=frame_rate, **kwargs)
    if name == "cqt":
        return CQT(sample_rate=sample_rate, frame_rate=frame_rate, **kwargs)
    raise ValueError(f"unknown frontend {name!r}; choose one of: {', '.join(FRONTEND_NAMES)}")
