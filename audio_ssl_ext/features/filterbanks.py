"""Fixed linear maps applied to power spectra: mel and chroma filterbanks, the DCT, Kaldi's lifter.

Built once in float64 numpy at construction time; the frontends keep them as float32 buffers.
The mel and chroma banks reproduce librosa's defaults (``librosa.filters.mel(htk=False,
norm="slaney")`` and ``librosa.filters.chroma()``), which the tests check against librosa itself.
"""

from typing import Optional

import numpy as np

# Slaney's mel scale (Auditory Toolbox; librosa's default, htk=False): linear below 1 kHz with
# 3 mels per 200 Hz, logarithmic above with 27 mels per factor 6.4.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    octaves_above_break = np.log(np.maximum(hz, 1e-10) / _SLANEY_BREAK_HZ)
    logarithmic = _SLANEY_BREAK_MEL + octaves_above_break / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, logarithmic, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
    return np.where(mel >= _SLANEY_BREAK_MEL, logarithmic, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: Optional[float]
) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters on Slaney's mel scale, area-normalised.

    Equals ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T`` (htk=False, norm="slaney"):
    the filters' corners are n_mels + 2 points equally spaced in mel between f_min and f_max, and
    each triangle is scaled by 2 / (its width in Hz) so that a flat spectrum gives the same energy
    in every band. An empty filter (bands narrower than the FFT bins) is an error, not a silent
    constant channel.
    """
    nyquist = sample_rate / 2.0
    f_max = nyquist if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(
            f"mel filterbank needs 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, "
            f"f_max={f_max}, sample_rate={sample_rate}"
        )
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    corner_mels = np.linspace(hz_to_slaney_mel(f_min), hz_to_slaney_mel(f_max), n_mels + 2)
    corners_hz = slaney_mel_to_hz(corner_mels)
    lower, centre, upper = corners_hz[:-2, None], corners_hz[1:-1, None], corners_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, bins)
    weights *= (2.0 / (upper - lower))
    empty = np.flatnonzero(weights.max(axis=1) <= 0.0)
    if empty.size:
        raise ValueError(
            f"{empty.size} of {n_mels} mel filters are empty (first: {empty[0]}): the bands "
            f"between {f_min} and {f_max} Hz are narrower than the {sample_rate / n_fft:.2f} Hz "
            f"FFT bins of n_fft={n_fft}; use fewer mel bands or a longer window"
        )
    return weights.T


def chroma_filterbank(sample_rate: int, n_fft: int, n_chroma: int = 12) -> np.ndarray:
    """(n_fft // 2 + 1, n_chroma) pitch-class weights of ``librosa.filters.chroma`` (defaults).

    Each FFT bin spreads onto the pitch classes by a Gaussian in semitones around its pitch
    (A440 tuning, width set by the bin spacing), each bin's weights are L2-normalised, then
    weighted by a Gaussian over octaves centred on octave 5 (~ 520 Hz) with a 2-octave
    half-width. Row 0 is C.
    """
    # Pitch of every FFT bin in chroma bins relative to A0/16 (librosa's hz_to_octs * n_chroma).
    bin_hz = np.linspace(0.0, sample_rate, n_fft, endpoint=False)[1:]
    pitch = n_chroma * np.log2(bin_hz / (440.0 / 16.0))
    # The DC bin gets a made-up pitch 1.5 octaves below bin 1, as librosa does.
    pitch = np.concatenate(([pitch[0] - 1.5 * n_chroma], pitch))
    bin_width = np.concatenate((np.maximum(np.diff(pitch), 1.0), [1.0]))
    half = np.round(n_chroma / 2.0)
    # Distance from each bin to each pitch class, wrapped to [-n_chroma/2, n_chroma/2).
    distance = pitch[None, :] - np.arange(n_chroma)[:, None]
    distance = np.remainder(distance + half + 10 * n_chroma, n_chroma) - half
    weights = np.exp(-0.5 * (2.0 * distance / bin_width[None, :]) ** 2)
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    octave_centre, octave_half_width = 5.0, 2.0
    weights *= np.exp(-0.5 * ((pitch / n_chroma - octave_centre) / octave_half_width) ** 2)[None, :]
    weights = np.roll(weights, -3 * (n_chroma // 12), axis=0)  # start at C instead of A
    return np.ascontiguousarray(weights[:, : n_fft // 2 + 1].T)


def dct_matrix(n_inputs: int, n_outputs: int) -> np.ndarray:
    """(n_inputs, n_outputs) orthonormal DCT-II, the first n_outputs coefficients.

    ``x @ dct_matrix(N, K)`` equals ``scipy.fft.dct(x, type=2, norm="ortho")[..., :K]`` (librosa's
    MFCC; Kaldi's compute-mfcc-feats uses the same orthonormal DCT).
    """
    n = np.arange(n_inputs)[:, None]
    k = np.arange(n_outputs)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2.0 * n_inputs)) * np.sqrt(2.0 / n_inputs)
    basis[:, 0] /= np.sqrt(2.0)
    return basis


def kaldi_lifter(n_mfcc: int, cepstral_lifter: float) -> np.ndarray:
    """Kaldi's cepstral liftering weights 1 + L/2 sin(pi i / L), i = 0..n_mfcc-1 (c0 unchanged).

    librosa's ``lifter`` uses i = 1..n_mfcc instead (shifted by one coefficient); we follow
    Kaldi because HuBERT's first-iteration MFCCs come from Kaldi's recipe.
    """
    if cepstral_lifter <= 0:
        return np.ones(n_mfcc)
    i = np.arange(n_mfcc)
    return 1.0 + 0.5 * cepstral_lifter * np.sin(np.pi * i / cepstral_lifter)
