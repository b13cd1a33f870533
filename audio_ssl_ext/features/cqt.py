"""Constant-Q transform with MERT's settings (nnAudio's CQT1992v2 kernels), log-magnitude."""

from typing import Optional

import numpy as np
import torch
from nnAudio.utils import create_cqt_kernels
from torch import nn

from audio_ssl_ext.features.base import SpectralFrontend, hop_length_for


class CQT(SpectralFrontend):
    """(B, T) waveforms -> (B, frames, n_bins) log |CQT|, frames = 1 + T // hop.

    MERT computes its CQT target with ``nnAudio.features.cqt.CQT`` (= CQT1992v2): fmin 32.7 Hz
    (C1), 336 bins, 48 per octave (7 octaves, up to ~4.2 kHz), Hann-windowed kernels with L1 norm
    and librosa's output scaling, centred frames with zero padding, hop = sample_rate / frame_rate
    (24000 / 75 = 320 for MERT-v1, 16000 / 50 = 320 for MERT-v0). This module builds the same
    kernels with nnAudio's ``create_cqt_kernels`` and applies them the same way, but trims the
    kernel columns that are zero for every bin (nnAudio pads the longest, 2.1 s, kernel to the next
    power of two), which halves memory and time; the output equals nnAudio's.

    Output is ``log(max(|CQT|, log_floor))``; ``log_floor=None`` returns the raw magnitude, which
    is what MERT's CQT reconstruction loss regresses. Frames are centred, so any input of at least
    one sample gives 1 + T // hop frames, but the lowest bins see mostly padding until the input
    is as long as their kernels (about Q * sample_rate / f_min samples, 2.1 s at 32.7 Hz).

    Cost: the kernels hold n_bins x Q*sample_rate/f_min taps (90 MB at 16 kHz, 136 MB at
    24 kHz), and one second of audio costs ~2 GFLOP at 16 kHz / 50 Hz (~5 GFLOP at 24 kHz /
    75 Hz): cheap on a GPU, ~0.3 s per second of audio on 2 CPU cores. Building the
    kernels takes ~1 s (nnAudio's kernel loop).
    """

    def __init__(
        self,
        sample_rate: int,
        frame_rate: float,
        f_min: float = 32.7,
        n_bins: int = 336,
        bins_per_octave: int = 48,
        log_floor: Optional[float] = 1e-6,
    ):
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.hop_length = hop_length_for(sample_rate, frame_rate)
        self.dim = self.n_bins = int(n_bins)
        if log_floor is not None and log_floor <= 0:
            raise ValueError(f"log_floor must be positive or None, got {log_floor}")
        self.log_floor = log_floor
        top_hz = f_min * 2.0 ** ((n_bins - 1) / bins_per_octave)
        if top_hz >= sample_rate / 2:
            raise ValueError(
                f"the top CQT bin ({top_hz:.1f} Hz for f_min={f_min}, n_bins={n_bins}, "
                f"bins_per_octave={bins_per_octave}) is above Nyquist ({sample_rate / 2} Hz)"
            )
        quality = 1.0 / (2.0 ** (1.0 / bins_per_octave) - 1.0)  # filter_scale = 1
        kernels, width, lengths, frequencies = create_cqt_kernels(
            quality, self.sample_rate, f_min, self.n_bins, bins_per_octave, norm=1, window="hann"
        )
        used = np.flatnonzero(np.any(kernels != 0, axis=0))
        first, last = int(used[0]), int(used[-1]) + 1
        kernels = kernels[:, first:last]
        # nnAudio pads width // 2 zeros on both sides and convolves the full-width kernels; the
        # trimmed kernels start `first` columns later, so pad that much less on the left, and
        # enough on the right for frames = 1 + T // hop.
        self.left_pad = width // 2 - first
        self.right_pad = (last - first) - self.left_pad
        self.frequencies = np.asarray(frequencies, dtype=np.float64)  # centre of each bin, Hz
        for part, values in (("real", kernels.real), ("imag", kernels.imag)):
            kernel = torch.from_numpy(np.ascontiguousarray(values))[:, None, :]
            self.register_constant(f"kernels_{part}", kernel)  # (n_bins, 1, taps) for conv1d
        # librosa's scaling: the L1-normalised kernel response times sqrt(kernel length).
        self.register_constant("output_scale", lengths.sqrt()[None, :])

    def num_frames(self, num_samples: int) -> int:
        if num_samples < 1:
            raise ValueError(f"CQT: an input of {num_samples} samples has no frames")
        return 1 + num_samples // self.hop_length

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(waveforms[:, None, :], (self.left_pad, self.right_pad))
        real, imag = (
            nn.functional.conv1d(padded, self.constant(name, waveforms), stride=self.hop_length)
            for name in ("kernels_real", "kernels_imag")
        )
        magnitude = torch.sqrt(real.square() + imag.square()).transpose(1, 2)
        magnitude = magnitude * self.constant("output_scale", waveforms)
        if self.log_floor is None:
            return magnitude
        return magnitude.clamp_min(self.log_floor).log()
