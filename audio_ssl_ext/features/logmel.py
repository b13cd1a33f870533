"""Log-mel spectrogram: the input of the spectrogram learners (MW-MAE, MAE, Audio-JEPA)."""

from typing import Optional

import torch

from audio_ssl_ext.features.base import StftFrontend, hop_length_for, samples_in
from audio_ssl_ext.features.filterbanks import mel_filterbank


class LogMelSpectrogram(StftFrontend):
    """(B, T) waveforms -> (B, frames, n_mels) natural-log mel power.

    Power spectra of Hann-windowed frames (see StftFrontend: win_ms window, n_fft the next power
    of two unless given, Kaldi framing unless center=True), Slaney mel filters with Slaney area normalisation
    (librosa's defaults), then ``log(max(mel_power, log_floor))``. The floor (1e-6, 60 dB below
    the power of a unit-amplitude frame) keeps digital silence finite. With standardize=True each
    example is shifted and scaled to zero mean and unit standard deviation over all its frames and
    bands (per-instance normalisation; padding, if any, counts as part of the example).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 50.0,
        f_max: Optional[float] = 8000.0,
        center: bool = False,
        log_floor: float = 1e-6,
        standardize: bool = False,
        n_fft: Optional[int] = None,
    ):
        if hop_ms <= 0:
            raise ValueError(f"hop_ms must be positive, got {hop_ms}")
        super().__init__(
            sample_rate,
            win_length=samples_in(sample_rate, win_ms),
            hop_length=hop_length_for(sample_rate, 1000.0 / hop_ms),
            center=center,
            n_fft=n_fft,
        )
        if log_floor <= 0:
            raise ValueError(f"log_floor must be positive, got {log_floor}")
        self.n_mels = self.dim = int(n_mels)
        self.log_floor = float(log_floor)
        self.standardize = bool(standardize)
        filters = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, f_min, f_max)
        self.register_constant("mel_filters", torch.from_numpy(filters))

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        mel = self.power_spectrogram(waveforms) @ self.constant("mel_filters", waveforms)
        log_mel = mel.clamp_min(self.log_floor).log()
        if self.standardize:
            log_mel = standardize_per_instance(log_mel)
        return log_mel


def standardize_per_instance(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit (population) standard deviation over frames and bands of each example."""
    mean = features.mean(dim=(1, 2), keepdim=True)
    std = features.std(dim=(1, 2), keepdim=True, unbiased=False)
    return (features - mean) / std.clamp_min(eps)
