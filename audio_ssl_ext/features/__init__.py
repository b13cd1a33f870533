"""Spectral frontends: batched (B, T) waveforms on any device -> (B, frames, dim) features.

Each frontend has ``.dim``, ``.frame_rate`` (Hz) and ``.num_frames(num_samples)``.
"""

from audio_ssl_ext.features.base import SpectralFrontend, StftFrontend, hop_length_for
from audio_ssl_ext.features.build import FRONTEND_NAMES, build_frontend
from audio_ssl_ext.features.chroma import Chroma
from audio_ssl_ext.features.cqt import CQT
from audio_ssl_ext.features.logmel import LogMelSpectrogram, standardize_per_instance
from audio_ssl_ext.features.mfcc import MFCC, compute_deltas

__all__ = [
    "CQT",
    "Chroma",
    "FRONTEND_NAMES",
    "LogMelSpectrogram",
    "MFCC",
    "SpectralFrontend",
    "StftFrontend",
    "build_frontend",
    "compute_deltas",
    "hop_length_for",
    "standardize_per_instance",
]
