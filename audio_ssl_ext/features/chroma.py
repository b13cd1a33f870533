"""STFT chroma (12 pitch classes), as librosa.feature.chroma_stft computes it."""

import torch

from audio_ssl_ext.features.base import StftFrontend, hop_length_for, samples_in
from audio_ssl_ext.features.filterbanks import chroma_filterbank


class Chroma(StftFrontend):
    """(B, T) waveforms -> (B, frames, 12) chroma, bin 0 = C, A440 tuning.

    librosa's ``chroma_stft(tuning=0, norm=inf)`` on our frames: the power spectrum of each frame
    is mapped by librosa's chroma filterbank and divided by its largest pitch class, so every
    non-silent frame peaks at 1 (an all-zero frame stays zero). Unlike librosa, the tuning is not
    estimated from the signal: chroma of different clips stay comparable for clustering.

    Pitch classes need a fine frequency grid, so the default window is 128 ms (2048 samples at
    16 kHz, near librosa's default of 2048 at 22.05 kHz) instead of the 25 ms of log-mel/MFCC.
    With center=False this gives fewer frames than a 25 ms frontend on the same clip; use
    center=True on both to concatenate them frame by frame (frames = 1 + T // hop for both).
    """

    def __init__(
        self,
        sample_rate: int,
        frame_rate: float = 100,
        win_ms: float = 128.0,
        center: bool = False,
    ):
        super().__init__(
            sample_rate,
            win_length=samples_in(sample_rate, win_ms),
            hop_length=hop_length_for(sample_rate, frame_rate),
            center=center,
        )
        self.dim = 12
        filters = chroma_filterbank(self.sample_rate, self.n_fft, n_chroma=self.dim)
        self.register_constant("chroma_filters", torch.from_numpy(filters))

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        chroma = self.power_spectrogram(waveforms) @ self.constant("chroma_filters", waveforms)
        peak = chroma.amax(dim=-1, keepdim=True)
        tiny = torch.finfo(chroma.dtype).tiny
        return chroma / torch.where(peak > tiny, peak, torch.ones_like(peak))
