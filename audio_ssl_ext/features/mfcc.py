"""MFCC with deltas and delta-deltas: the 39-dimensional input of HuBERT's first k-means iteration.

fairseq's examples/hubert/simple_kmeans/dump_mfcc_feature.py computes
``torchaudio.compliance.kaldi.mfcc(use_energy=False)`` (13 coefficients, 25 ms / 10 ms, 23 mel
bands from 20 Hz to Nyquist, cepstral lifter 22), then ``compute_deltas`` twice, and concatenates
[mfcc, delta, delta-delta]. This module follows that recipe without torchaudio. The frame grid
(snip edges, 512-point FFT of 400-sample frames), the power spectrum, the natural log with
Kaldi's floor, the orthonormal DCT, the lifter and the deltas are Kaldi's/torchaudio's. It differs
from Kaldi's signal processing in three places, so values are close to but not equal to Kaldi's:
a Hann window instead of Kaldi's "povey" window (Hann^0.85); no pre-emphasis (0.97), DC-offset
removal or dither; librosa's Slaney mel filters instead of Kaldi's HTK-scale, unnormalised ones
(the normalisation only adds a constant per coefficient). For k-means pseudo-labels, what matters
is that every clip gets the same transform.
"""

from typing import Optional

import torch
from torch import nn

from audio_ssl_ext.features.base import StftFrontend, hop_length_for, samples_in
from audio_ssl_ext.features.filterbanks import dct_matrix, kaldi_lifter, mel_filterbank

# Kaldi floors mel energies at float32 epsilon before the log (torchaudio.compliance.kaldi too).
KALDI_LOG_FLOOR = float(torch.finfo(torch.float32).eps)
# torchaudio.functional.compute_deltas' default, used by HuBERT's recipe: +-2 frames.
DELTA_WIDTH = 5


def compute_deltas(features: torch.Tensor, width: int = DELTA_WIDTH) -> torch.Tensor:
    """Regression deltas along the time axis of (B, frames, dim) features.

    delta[t] = sum_{k=1..N} k (x[t+k] - x[t-k]) / (2 sum_{k=1..N} k^2), N = (width - 1) // 2, with
    the first and last frames repeated beyond the edges. Equals torchaudio's
    ``compute_deltas(win_length=width)`` and ``librosa.feature.delta(width=width, order=1,
    mode="nearest")``. Delta-deltas are the deltas of the deltas (torchaudio/HuBERT), which is not
    librosa's ``order=2`` (a second-order Savitzky-Golay fit).
    """
    if width < 3 or width % 2 == 0:
        raise ValueError(f"delta width must be an odd number >= 3, got {width}")
    n = (width - 1) // 2
    padded = nn.functional.pad(features.transpose(1, 2), (n, n), mode="replicate")
    frames = features.shape[1]
    delta = sum(
        k * (padded[..., n + k : n + k + frames] - padded[..., n - k : n - k + frames])
        for k in range(1, n + 1)
    )
    return (delta / (2 * sum(k * k for k in range(1, n + 1)))).transpose(1, 2)


class MFCC(StftFrontend):
    """(B, T) waveforms -> (B, frames, 3 * n_mfcc): [MFCC, delta, delta-delta] at frame_rate Hz."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mfcc: int = 13,
        frame_rate: float = 100,
        win_ms: float = 25.0,
        n_mels: int = 23,
        f_min: float = 20.0,
        f_max: Optional[float] = None,
        cepstral_lifter: float = 22.0,
        center: bool = False,
    ):
        super().__init__(
            sample_rate,
            win_length=samples_in(sample_rate, win_ms),
            hop_length=hop_length_for(sample_rate, frame_rate),
            center=center,
        )
        if not 1 <= n_mfcc <= n_mels:
            raise ValueError(f"need 1 <= n_mfcc <= n_mels, got n_mfcc={n_mfcc}, n_mels={n_mels}")
        self.n_mfcc = int(n_mfcc)
        self.dim = 3 * self.n_mfcc
        filters = mel_filterbank(self.sample_rate, self.n_fft, n_mels, f_min, f_max)
        # One matrix for DCT and lifter: log-mel @ (dct * lifter) = liftered cepstra.
        lifter = kaldi_lifter(self.n_mfcc, cepstral_lifter)
        cepstra = dct_matrix(n_mels, self.n_mfcc) * lifter[None, :]
        self.register_constant("mel_filters", torch.from_numpy(filters))
        self.register_constant("cepstral_basis", torch.from_numpy(cepstra))

    def static_mfcc(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, n_mfcc) liftered MFCC without deltas."""
        mel = self.power_spectrogram(waveforms) @ self.constant("mel_filters", waveforms)
        return mel.clamp_min(KALDI_LOG_FLOOR).log() @ self.constant("cepstral_basis", waveforms)

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        mfcc = self.static_mfcc(waveforms)
        delta = compute_deltas(mfcc)
        return torch.cat([mfcc, delta, compute_deltas(delta)], dim=-1)
