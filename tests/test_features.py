"""Spectral frontends against independent references (librosa, nnAudio, hand-computed cases).

Signals: a C-major chord of three harmonic notes (C4, E4, G4, five partials each, with an attack
and decay) and an exponential sine sweep 100 Hz -> 4 kHz, both over faint noise so that the
log-mel comparison is not a comparison of floors. Tolerances are stated where they are used; "log"
values are natural logs of power, so an absolute tolerance of 1e-3 on them is a relative tolerance
of 0.1% on the power.
"""

import logging

import librosa
import numpy as np
import pytest
import torch
from nnAudio.features import CQT1992v2

from audio_ssl_ext.features import (
    CQT,
    FRONTEND_NAMES,
    MFCC,
    Chroma,
    LogMelSpectrogram,
    build_frontend,
    compute_deltas,
)
from audio_ssl_ext.features.mfcc import KALDI_LOG_FLOOR

# Importing fairseq sets the root logger to DEBUG; numba (librosa's JIT) then logs every
# bytecode instruction it compiles, which is slow and buries real failures.
logging.getLogger("numba").setLevel(logging.WARNING)

SR = 16000
C4, E4, G4 = 261.63, 329.63, 392.00


def harmonic_note(f0, seconds, sr=SR, partials=5):
    t = np.arange(int(seconds * sr)) / sr
    return sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, partials + 1))


def c_major_chord(seconds=1.0, sr=SR, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    envelope = np.minimum(1.0, t / 0.05) * np.exp(-1.5 * t)
    notes = sum(harmonic_note(f0, seconds, sr) for f0 in (C4, E4, G4))
    noise = 1e-2 * np.random.default_rng(seed).standard_normal(t.size)
    return 0.2 * envelope * notes + noise


def sine_sweep(seconds=1.0, sr=SR, f_start=100.0, f_end=4000.0, seed=1):
    t = np.arange(int(seconds * sr)) / sr
    rate = np.log(f_end / f_start) / seconds
    noise = 3e-3 * np.random.default_rng(seed).standard_normal(t.size)
    return 0.5 * np.sin(2 * np.pi * f_start * (np.exp(rate * t) - 1) / rate) + noise


SIGNALS = {"chord": c_major_chord(), "sweep": sine_sweep()}


def run(frontend, signal, dtype=torch.float64):
    """(T,) numpy -> (dim, frames) numpy, librosa's layout."""
    with torch.no_grad():
        return frontend(torch.tensor(signal, dtype=dtype)[None])[0].double().numpy().T


def snip_edges_for_librosa(signal, win_length, n_fft):
    # librosa centres a win_length window in each n_fft frame; padding (n_fft - win) / 2 zeros on
    # both sides makes its frame i cover our frame i = samples [i * hop, i * hop + win_length).
    pad = (n_fft - win_length) // 2
    return np.pad(signal, (pad, n_fft - win_length - pad))


def librosa_mel(signal, n_mels, f_min, f_max, center=False):
    if not center:
        signal = snip_edges_for_librosa(signal, 400, 512)
    return librosa.feature.melspectrogram(
        y=signal, sr=SR, n_fft=512, hop_length=160, win_length=400, window="hann",
        center=center, power=2.0, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=False,
        norm="slaney", dtype=np.float64,
    )


# ---------------------------------------------------------------------------------- log-mel


@pytest.mark.parametrize("name", sorted(SIGNALS))
@pytest.mark.parametrize("center", [False, True])
def test_logmel_matches_librosa_melspectrogram(name, center):
    signal = SIGNALS[name]
    frontend = LogMelSpectrogram(center=center)  # 16 kHz, 80 mels, 25/10 ms, 50-8000 Hz
    reference = np.log(np.maximum(librosa_mel(signal, 80, 50.0, 8000.0, center), 1e-6))
    assert reference.shape[1] == frontend.num_frames(signal.size)
    assert np.mean(reference > np.log(1e-6) + 1) > 0.9  # the comparison is not about the floor
    # float64 input: only our float32 filterbank rounding differs (~1e-7 relative power).
    np.testing.assert_allclose(run(frontend, signal, torch.float64), reference, rtol=0, atol=1e-6)
    # float32 input, the normal case: 0.1% relative on the mel power.
    np.testing.assert_allclose(run(frontend, signal, torch.float32), reference, rtol=0, atol=1e-3)


def test_logmel_with_the_references_400_point_fft_matches_librosa():
    """n_fft=400 (MW-MAE's torchaudio and Audio-JEPA's nnAudio frontends): librosa with n_fft =
    win_length = 400, so no zero-padding of the window."""
    signal = SIGNALS["chord"]
    frontend = LogMelSpectrogram(center=True, n_fft=400)
    assert frontend.n_fft == 400 and LogMelSpectrogram().n_fft == 512
    reference = librosa.feature.melspectrogram(
        y=signal, sr=SR, n_fft=400, hop_length=160, win_length=400, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=80, fmin=50.0, fmax=8000.0, htk=False, norm="slaney",
        dtype=np.float64,
    )
    reference = np.log(np.maximum(reference, 1e-6))
    np.testing.assert_allclose(run(frontend, signal, torch.float64), reference, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="n_fft=256 is shorter than the 400-sample window"):
        LogMelSpectrogram(n_fft=256)


def test_logmel_standardize_gives_zero_mean_unit_std_per_instance():
    batch = torch.tensor(np.stack([SIGNALS["chord"], 3.0 * SIGNALS["sweep"]]), dtype=torch.float32)
    plain = LogMelSpectrogram()(batch)
    standardized = LogMelSpectrogram(standardize=True)(batch)
    mean = standardized.mean(dim=(1, 2))
    std = standardized.std(dim=(1, 2), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(std, torch.ones(2), rtol=0, atol=1e-4)
    # Per instance, not per batch: each example is the standardization of its own log-mel.
    for i in range(2):
        expected = (plain[i] - plain[i].mean()) / plain[i].std(unbiased=False)
        torch.testing.assert_close(standardized[i], expected, rtol=0, atol=1e-4)


def test_mel_filterbank_with_empty_bands_is_an_error():
    with pytest.raises(ValueError, match="mel filters are empty"):
        LogMelSpectrogram(n_mels=256, f_min=0.0)


# ------------------------------------------------------------------------------------- MFCC


def test_compute_deltas_on_a_hand_computed_ramp():
    # x = t: interior deltas are 1; at the edges the repeated first/last frame flattens the
    # slope: delta[0] = (1 * (1 - 0) + 2 * (2 - 0)) / 10 = 0.5, delta[1] = (2 + 2 * 3) / 10 = 0.8.
    ramp = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1)
    expected = torch.tensor([0.5, 0.8, 1.0, 1.0, 0.8, 0.5], dtype=torch.float64)
    torch.testing.assert_close(compute_deltas(ramp)[0, :, 0], expected)
    with pytest.raises(ValueError, match="odd"):
        compute_deltas(ramp, width=4)


def test_compute_deltas_equals_librosa_delta_nearest():
    features = np.random.default_rng(1).standard_normal((2, 7, 30))  # (B, dim, frames)
    ours = compute_deltas(torch.from_numpy(features).transpose(1, 2)).transpose(1, 2).numpy()
    reference = librosa.feature.delta(features, width=5, order=1, mode="nearest", axis=-1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_mfcc_matches_librosa_mfcc_with_kaldi_lifter_and_deltas(name):
    signal = SIGNALS[name]
    frontend = MFCC()  # 13 coefficients, 23 mels 20 Hz-Nyquist, lifter 22, 25 ms / 100 Hz
    assert frontend.dim == 39 and frontend.frame_rate == 100
    log_mel = np.log(np.maximum(librosa_mel(signal, 23, 20.0, 8000.0), KALDI_LOG_FLOOR))
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=13, dct_type=2, norm="ortho", lifter=0)
    # Kaldi's cepstral lifter 22, written out: 1 + 11 sin(pi i / 22), i = 0..12 (c0 unchanged).
    mfcc *= (1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0))[:, None]
    delta = librosa.feature.delta(mfcc, width=5, order=1, mode="nearest")
    delta_delta = librosa.feature.delta(delta, width=5, order=1, mode="nearest")
    reference = np.concatenate([mfcc, delta, delta_delta])
    for dtype, relative in ((torch.float64, 1e-5), (torch.float32, 1e-4)):
        ours = run(frontend, signal, dtype)
        assert ours.shape == reference.shape
        # Per block (static, delta, delta-delta): error within `relative` of the block's range.
        for block in range(3):
            rows = slice(13 * block, 13 * (block + 1))
            scale = np.abs(reference[rows]).max()
            np.testing.assert_allclose(ours[rows], reference[rows], rtol=0, atol=relative * scale)


# ----------------------------------------------------------------------------------- chroma


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_chroma_matches_librosa_chroma_stft(name):
    signal = SIGNALS[name]
    frontend = Chroma(SR)  # 128 ms = 2048-sample window, 100 Hz
    reference = librosa.feature.chroma_stft(
        y=signal, sr=SR, n_fft=2048, hop_length=160, win_length=2048, window="hann",
        center=False, tuning=0.0, norm=np.inf,
    )
    np.testing.assert_allclose(run(frontend, signal, torch.float64), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(run(frontend, signal, torch.float32), reference, rtol=0, atol=1e-5)


def test_chroma_of_c_major_chord_peaks_at_c_e_g():
    chroma = run(Chroma(SR), SIGNALS["chord"], torch.float32)  # (12, frames)
    assert set(np.argsort(chroma.mean(axis=1))[-3:]) == {0, 4, 7}  # C, E, G
    assert np.all(chroma.max(axis=0) == pytest.approx(1.0))  # each frame's peak is 1


# -------------------------------------------------------------------------------------- CQT


CHEAP_CQT = dict(f_min=65.4, n_bins=96, bins_per_octave=24)  # short kernels, same code path


@pytest.fixture(scope="module")
def mert_cqt():
    """MERT-v0's CQT: 16 kHz, 50 Hz, 32.7 Hz, 336 bins, 48 per octave (built once: ~1 s)."""
    return CQT(SR, frame_rate=50)


TONES = (110.0, 440.0, 1000.0, 3000.0)
CQT_SECONDS = 0.8
MIDDLE = slice(16, 25)  # frames whose kernels (up to 0.63 s, at 110 Hz) lie inside the clip


@pytest.fixture(scope="module")
def mert_cqt_spectra(mert_cqt):
    """One batched pass (the kernels are long): the tones, 440 Hz 10x louder, the chord."""
    t = np.arange(int(CQT_SECONDS * SR)) / SR
    tones = [0.1 * np.sin(2 * np.pi * f * t) for f in TONES]
    batch = np.stack(tones + [10.0 * tones[1], c_major_chord(CQT_SECONDS)])
    with torch.no_grad():
        return mert_cqt(torch.tensor(batch, dtype=torch.float32))


def expected_bin(frequency, f_min=32.7, bins_per_octave=48):
    return int(round(bins_per_octave * np.log2(frequency / f_min)))


def test_cqt_pure_tones_peak_at_their_bins_and_scale_with_amplitude(mert_cqt, mert_cqt_spectra):
    assert mert_cqt.dim == 336 and mert_cqt.frame_rate == 50
    frames = mert_cqt.num_frames(int(CQT_SECONDS * SR))
    assert mert_cqt_spectra.shape == (len(TONES) + 2, frames, 336) and frames == 1 + 12800 // 320
    for i, frequency in enumerate(TONES):
        peak = expected_bin(frequency)  # 48 * log2(f / 32.7), rounded
        assert (mert_cqt_spectra[i, MIDDLE].argmax(dim=-1) == peak).all(), frequency
        assert abs(mert_cqt.frequencies[peak] / frequency - 1) < 0.008  # within half a bin
    # log |CQT| is linear in amplitude: 10x louder adds log(10) at the peak (within 1e-4).
    peak = expected_bin(440.0)
    loud, quiet = mert_cqt_spectra[len(TONES), MIDDLE, peak], mert_cqt_spectra[1, MIDDLE, peak]
    loud_minus_quiet = loud - quiet
    expected = torch.full_like(loud_minus_quiet, float(np.log(10.0)))
    torch.testing.assert_close(loud_minus_quiet, expected, rtol=0, atol=1e-4)


def test_cqt_of_a_chord_has_its_three_largest_peaks_at_the_fundamentals(mert_cqt_spectra):
    profile = mert_cqt_spectra[-1, MIDDLE].mean(dim=0).numpy()
    is_peak = (profile[1:-1] > profile[:-2]) & (profile[1:-1] > profile[2:])
    peaks = np.flatnonzero(is_peak) + 1
    top3 = peaks[np.argsort(profile[peaks])[-3:]]
    assert sorted(top3) == [expected_bin(C4), expected_bin(E4), expected_bin(G4)]


def test_cqt_equals_nnaudio_cqt_as_mert_calls_it():
    # A cheaper setting than MERT's (shorter kernels) through the same code path.
    ours = CQT(SR, frame_rate=50, log_floor=None, **CHEAP_CQT)
    reference = CQT1992v2(
        sr=SR, hop_length=320, fmin=65.4, fmax=None, n_bins=96, bins_per_octave=24,
        filter_scale=1, norm=1, window="hann", center=True, pad_mode="constant",
        trainable=False, output_format="Magnitude", verbose=False,
    )
    batch = torch.tensor(np.stack([SIGNALS["chord"], SIGNALS["sweep"]]), dtype=torch.float32)
    with torch.no_grad():
        expected = reference(batch).transpose(1, 2)
        got = ours(batch)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))
    logged = CQT(SR, frame_rate=50, **CHEAP_CQT)(batch)
    torch.testing.assert_close(logged, expected.clamp_min(1e-6).log(), rtol=0, atol=1e-4)


def test_cqt_hop_must_be_whole_samples_and_top_bin_below_nyquist():
    with pytest.raises(ValueError, match="whole number of samples"):
        CQT(16000, frame_rate=75)  # 213.33 samples
    with pytest.raises(ValueError, match="Nyquist"):
        CQT(8000, frame_rate=50)  # top bin ~4.1 kHz > 4 kHz


# ---------------------------------------------------------------------- shared behaviour


def cheap_frontend(name, **kwargs):
    if name == "cqt":
        return build_frontend("cqt", SR, frame_rate=50, **CHEAP_CQT, **kwargs)
    return build_frontend(name, SR, frame_rate=100, **kwargs)


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_batch_of_two_signals_equals_each_alone(name):
    frontend = cheap_frontend(name)
    batch = torch.tensor(np.stack([SIGNALS["chord"], SIGNALS["sweep"]]), dtype=torch.float32)
    with torch.no_grad():
        together = frontend(batch)
        alone = [frontend(batch[i : i + 1])[0] for i in range(2)]
    assert together.dtype == torch.float32
    assert together.shape == (2, frontend.num_frames(batch.shape[1]), frontend.dim)
    for i in range(2):
        torch.testing.assert_close(together[i], alone[i], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


@pytest.mark.parametrize("name", FRONTEND_NAMES)
@pytest.mark.parametrize("center", [False, True])
def test_num_frames_equals_output_length(name, center):
    if name == "cqt" and center is False:
        pytest.skip("the CQT is always centred (MERT)")
    frontend = cheap_frontend(name) if name == "cqt" else cheap_frontend(name, center=center)
    win = getattr(frontend, "win_length", 1)
    hop = frontend.hop_length
    for num_samples in (win, win + 1, win + hop - 1, win + hop, 3 * hop + win + 7, SR):
        out = frontend(torch.zeros(1, num_samples))
        assert out.shape == (1, frontend.num_frames(num_samples), frontend.dim), num_samples
        if name != "cqt" and not center:
            assert out.shape[1] == 1 + (num_samples - win) // hop  # Kaldi's snip-edges count
        else:
            assert out.shape[1] == 1 + num_samples // hop


def test_center_true_aligns_frontends_with_different_windows():
    # log-mel (25 ms) and chroma (128 ms) can be concatenated frame by frame with center=True.
    clip = torch.tensor(SIGNALS["chord"], dtype=torch.float32)[None]
    log_mel = LogMelSpectrogram(center=True)(clip)
    chroma = Chroma(SR, center=True)(clip)
    assert log_mel.shape[1] == chroma.shape[1] == 1 + SR // 160
    assert LogMelSpectrogram()(clip).shape[1] != Chroma(SR)(clip).shape[1]


def test_inputs_shorter_than_one_window_and_bad_shapes_are_errors():
    logmel = LogMelSpectrogram()
    with pytest.raises(ValueError, match="399 samples is shorter than one 400-sample window"):
        logmel(torch.zeros(2, 399))
    with pytest.raises(ValueError, match="shorter than one 2048-sample window"):
        Chroma(SR).num_frames(2000)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        logmel(torch.zeros(16000))
    with pytest.raises(TypeError, match="float"):
        logmel(torch.zeros(1, 16000, dtype=torch.int16))


def test_build_frontend_choices_dims_and_frame_rates():
    expected = {"logmel": (LogMelSpectrogram, 80), "mfcc": (MFCC, 39), "chroma": (Chroma, 12)}
    for name, (cls, dim) in expected.items():
        frontend = build_frontend(name, sample_rate=24000, frame_rate=75)
        assert isinstance(frontend, cls) and frontend.dim == dim
        assert frontend.hop_length == 320 and frontend.frame_rate == 75
    cqt = build_frontend("cqt", sample_rate=SR, frame_rate=50, **CHEAP_CQT)
    assert isinstance(cqt, CQT) and cqt.dim == 96 and cqt.hop_length == 320
    assert build_frontend("logmel", SR, n_mels=64).dim == 64  # kwargs reach the class
    with pytest.raises(ValueError, match="choose one of: logmel, mfcc, chroma, cqt"):
        build_frontend("fbank", SR)
    for name in FRONTEND_NAMES:
        with pytest.raises(ValueError, match="whole number of samples"):
            build_frontend(name, sample_rate=16000, frame_rate=75)


def test_constants_follow_the_device_stay_float32_and_stay_out_of_checkpoints():
    frontend = MFCC()
    assert frontend.state_dict() == {}
    frontend.half()  # what fairseq's --fp16 does to the whole model
    assert all(buffer.dtype == torch.float32 for buffer in frontend.buffers())
    clip = torch.tensor(SIGNALS["chord"], dtype=torch.float32)[None]
    half_out = frontend(clip.half())
    assert half_out.dtype == torch.float16
    # Half precision rounds the waveform and the output (3 significant digits).
    torch.testing.assert_close(half_out.float(), frontend(clip), rtol=5e-3, atol=0.05)
    frontend.to(torch.float64)
    assert frontend.mel_filters.dtype == torch.float32
    assert frontend(clip.double()).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_cuda_output_matches_cpu(name):
    frontend = cheap_frontend(name)
    batch = torch.tensor(np.stack([SIGNALS["chord"], SIGNALS["sweep"]]), dtype=torch.float32)
    expected = frontend(batch)
    frontend.cuda()
    assert all(buffer.is_cuda for buffer in frontend.buffers())
    got = frontend(batch.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
