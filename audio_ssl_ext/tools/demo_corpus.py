"""A synthetic, labelled demo corpus: a few minutes of varied audio made with numpy alone.

The corpus is the embedded default for ``make demo`` and the end-to-end tests: no download, a
few seconds to make, and labels that a clustering quality report (PNMI / purity against pitch)
and a probe can score against.

What it contains. Clip ``i`` has the class ``CLIP_CLASSES[i % 4]`` (so classes stay balanced):

- ``harmonic``: one instrument per clip (``plucked``, ``bowed`` or ``organ``) playing a melody of
  notes and chords from a random key and register (main notes MIDI 36-79);
- ``percussive``: a drum pattern of ``kick``, ``snare`` and ``hihat`` hits at a random tempo;
- ``noise``: coloured noise bursts (white, pink, brown, band-pass) with varied envelopes;
- ``speech``: speech-like utterances from one synthetic speaker: a glottal source through
  formant resonators, vowel sequences with moving formants, a falling pitch contour with
  accents, and fricatives between some syllables.

Each clip is a sequence of events with varied onsets, durations and loudness (0 to -18 dB),
separated by silences, over a faint pink background noise (45-60 dB below the loudest event).
Events never overlap, and every event starts and ends on a label-frame boundary, so each label
frame holds exactly one event (or silence). Each clip is peak-normalized to -1 dBFS and written
as 16-bit PCM. Everything is deterministic from ``seed``; clip ``i`` depends only on
``(seed, i)``, so a corpus with more clips extends one with fewer.

Files in the corpus directory (``file`` is the wav's path relative to the directory, the same
relative path that ``scripts/make_manifest.py`` writes for a manifest over the directory):

- ``clip_NNNN.wav``: the audio.
- ``labels.json``: what the labels mean: ``sample_rate``, ``clip_seconds``, ``num_clips``,
  ``seed``, ``label_rate`` (frames per second, 50 by default), ``hop_samples``
  (= sample_rate / label_rate), ``frames_per_clip``, ``clip_classes``, ``event_types`` (the
  event id is the index in this list; 0 is silence) and a sentence describing ``pitch``.
- ``clip_labels.tsv``: header ``file<TAB>class``, then one line per clip, class a name from
  ``clip_classes``.
- ``frame_labels.tsv``: header ``file<TAB>pitch<TAB>event``, then one line per clip holding two
  space-separated integer sequences of ``frames_per_clip`` values each. Frame ``j`` covers
  samples ``[j * hop_samples, (j + 1) * hop_samples)``. ``pitch`` is the MIDI note number of
  the main note (the root of a chord; the rounded fundamental of voiced speech) and 0 for
  unpitched frames (drums, noise, fricatives, silence). ``event`` is the index of the sounding
  event type in ``event_types``.
- ``events.tsv``: header ``file<TAB>onset<TAB>offset<TAB>event<TAB>notes``, one line per event,
  times in seconds, ``notes`` the comma-separated MIDI notes of a note or chord (root first),
  empty otherwise. For inspection and event-detection use.

Read them back with ``read_clip_labels``, ``read_frame_labels`` and ``read_label_info``;
``audio_ssl_ext.clustering.quality.frame_labels_at_rate`` maps frame labels onto a model's frame
rate. Tooling (``scripts/make_demo_corpus.py``, ``make demo``, the tests), not imported by the
core package.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

CLIP_CLASSES = ("harmonic", "percussive", "noise", "speech")
EVENT_TYPES = ("silence", "plucked", "bowed", "organ", "kick", "snare", "hihat", "noise", "speech")
EVENT_ID = {name: i for i, name in enumerate(EVENT_TYPES)}
PITCH_DESCRIPTION = (
    "MIDI note number of the main note (root of a chord, rounded fundamental of voiced speech); "
    "0 = unpitched (drums, noise, fricatives) or silence"
)

LABELS_JSON = "labels.json"
CLIP_LABELS = "clip_labels.tsv"
FRAME_LABELS = "frame_labels.tsv"
EVENTS = "events.tsv"
FRAME_LABEL_NAMES = ("pitch", "event")

PEAK_DBFS = -1.0
# Below this many label frames a clip cannot hold an event and a silence.
MIN_FRAMES_PER_CLIP = 10


class DemoCorpusError(ValueError):
    """Bad arguments to the generator, or a corpus directory whose label files do not parse."""


# ---------------------------------------------------------------------------------------------
# Small signal helpers
# ---------------------------------------------------------------------------------------------


def midi_to_hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def hz_to_midi(hz):
    return 69.0 + 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / 440.0)


def _db(gain_db: float) -> float:
    return 10.0 ** (gain_db / 20.0)


def _seconds(num_samples: int, sample_rate: int) -> np.ndarray:
    return np.arange(num_samples) / sample_rate


def _fades(num_samples: int, sample_rate: int, attack_s: float, release_s: float) -> np.ndarray:
    """Linear fade-in and fade-out, so that no event starts or stops with a click."""
    t = _seconds(num_samples, sample_rate)
    attack = np.clip(t / max(attack_s, 1e-4), 0.0, 1.0)
    release = np.clip(t[::-1] / max(release_s, 1e-4), 0.0, 1.0)
    return attack * release


def _peak_normalize(wave: np.ndarray) -> np.ndarray:
    peak = np.max(np.abs(wave))
    return wave / peak if peak > 0 else wave


def coloured_noise(
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    exponent: float = 0.0,
    band: Tuple[float, float] = (20.0, np.inf),
) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown) inside ``band``.

    Shaped in the frequency domain: one FFT, a spectral weight, one inverse FFT.
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    low, high = band
    weight = np.where((freqs >= low) & (freqs <= high), 1.0, 0.0)
    weight[1:] *= freqs[1:] ** (-exponent / 2.0)
    weight[0] = 0.0
    return _peak_normalize(np.fft.irfft(spectrum * weight, n=num_samples))


def _additive(
    freqs: np.ndarray,
    amps: np.ndarray,
    envelopes: np.ndarray,
    warped_time: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sum of sinusoids: ``sum_p amps[p] * envelopes[p] * sin(2 pi freqs[p] warped_time + phase_p)``.

    ``envelopes`` is (P, N) or (N,) shared by all partials; ``warped_time`` lets a common
    vibrato modulate every partial coherently. Partials near Nyquist are dropped (no aliasing).
    """
    keep = freqs < 0.45 * sample_rate
    freqs, amps = freqs[keep], amps[keep]
    if envelopes.ndim == 2:
        envelopes = envelopes[keep]
    phases = rng.uniform(0.0, 2.0 * np.pi, size=len(freqs))
    sines = np.sin(2.0 * np.pi * np.outer(freqs, warped_time) + phases[:, None])
    return (
        np.einsum("p,pn->n", amps, sines * envelopes)
        if envelopes.ndim == 2
        else (amps @ sines) * envelopes
    )


def _harmonic_series(
    f0s: np.ndarray, levels: np.ndarray, partial_ratios: np.ndarray, partial_amps: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Frequencies and amplitudes of every partial of every note of a chord, flattened."""
    freqs = np.outer(f0s, partial_ratios).ravel()
    amps = np.outer(levels, partial_amps).ravel()
    return freqs, amps


# ---------------------------------------------------------------------------------------------
# Sound types: one function each. f0s are the notes of a chord (one entry for a single note),
# levels their relative amplitudes; every function returns a peak-normalized float64 wave.
# ---------------------------------------------------------------------------------------------


def plucked_note(
    f0s: np.ndarray,
    levels: np.ndarray,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A plucked string (guitar / harp-like): instant attack, exponential decay.

    Partial k of a string plucked at a fraction ``x`` of its length has amplitude
    ``|sin(pi k x)| / k``; stiffness stretches partials (``k sqrt(1 + B k^2)``); higher partials
    die faster (decay time ``tau / (1 + 0.4 (k - 1))``), which makes the tone darken as it rings.
    """
    k = np.arange(1, 25)
    pluck_position = rng.uniform(0.1, 0.3)
    stiffness = rng.uniform(0.0, 2e-4)
    ratios = k * np.sqrt(1.0 + stiffness * k**2)
    freqs, amps = _harmonic_series(
        f0s, levels, ratios, np.abs(np.sin(np.pi * k * pluck_position)) / k
    )
    duration = num_samples / sample_rate
    tau = (duration / rng.uniform(1.5, 3.0)) / (1.0 + 0.4 * (np.tile(k, len(f0s)) - 1))
    t = _seconds(num_samples, sample_rate)
    envelopes = np.exp(-t[None, :] / tau[:, None]) * _fades(num_samples, sample_rate, 0.002, 0.01)
    return _peak_normalize(_additive(freqs, amps, envelopes, t, sample_rate, rng))


def bowed_note(
    f0s: np.ndarray,
    levels: np.ndarray,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A bowed string (violin / cello-like): slow attack, sustained, vibrato after the attack.

    A bowed string moves as a sawtooth (Helmholtz motion), so partial k has amplitude ~1/k, here
    with a random extra spectral tilt; the vibrato (5-6.5 Hz, 10-25 cents) warps time so all
    partials move together.
    """
    k = np.arange(1, 25)
    tilt = rng.uniform(0.0, 0.6)
    freqs, amps = _harmonic_series(f0s, levels, k.astype(float), 1.0 / k ** (1.0 + tilt))
    t = _seconds(num_samples, sample_rate)
    attack_s = rng.uniform(0.05, 0.2)
    rate, depth = rng.uniform(5.0, 6.5), (2.0 ** (rng.uniform(10, 25) / 1200.0) - 1.0)
    depth_t = depth * np.clip((t - attack_s) / 0.2, 0.0, 1.0)  # vibrato fades in after the attack
    warped_time = t + depth_t * (1.0 - np.cos(2.0 * np.pi * rate * t)) / (2.0 * np.pi * rate)
    envelope = _fades(num_samples, sample_rate, attack_s, rng.uniform(0.03, 0.1))
    return _peak_normalize(_additive(freqs, amps, envelope, warped_time, sample_rate, rng))


# Hammond drawbar footages as partial ratios (16' left out: it would sound below the labelled pitch).
ORGAN_RATIOS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])


def organ_note(
    f0s: np.ndarray,
    levels: np.ndarray,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """An organ (drawbar-like): a few fixed harmonic ratios at random drawbar levels, flat envelope.

    No decay and no vibrato: the steady counterpart of the plucked and bowed notes. The
    fundamental's drawbar is always well up, so the note sounds at its labelled pitch.
    """
    drawbars = rng.uniform(0.0, 1.0, size=len(ORGAN_RATIOS)) ** 2
    drawbars[0] = rng.uniform(0.7, 1.0)
    freqs, amps = _harmonic_series(f0s, levels, ORGAN_RATIOS, drawbars)
    t = _seconds(num_samples, sample_rate)
    envelope = _fades(num_samples, sample_rate, 0.01, 0.02)
    return _peak_normalize(_additive(freqs, amps, envelope, t, sample_rate, rng))


def kick_drum(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A kick drum: a sine whose pitch sweeps down exponentially (from 110-200 Hz to 40-60 Hz), plus a click."""
    t = _seconds(num_samples, sample_rate)
    f_start, f_end, sweep_s = rng.uniform(110, 200), rng.uniform(40, 60), rng.uniform(0.02, 0.05)
    freq = f_end + (f_start - f_end) * np.exp(-t / sweep_s)
    decay_s = num_samples / sample_rate / rng.uniform(2.0, 3.5)
    body = np.sin(2.0 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / decay_s)
    click = coloured_noise(num_samples, sample_rate, rng, 0.0, (1000.0, 6000.0)) * np.exp(
        -t / 0.003
    )
    wave = body + rng.uniform(0.1, 0.4) * click
    return _peak_normalize(wave * _fades(num_samples, sample_rate, 0.0005, 0.005))


def snare_drum(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A snare drum: a short decaying drum-head tone (160-240 Hz) under a burst of bright noise (the wires)."""
    t = _seconds(num_samples, sample_rate)
    decay_s = num_samples / sample_rate / rng.uniform(2.0, 3.5)
    tone = np.sin(2.0 * np.pi * rng.uniform(160, 240) * t) * np.exp(-t / (0.5 * decay_s))
    wires = coloured_noise(num_samples, sample_rate, rng, 0.5, (1000.0, 0.45 * sample_rate))
    wave = rng.uniform(0.3, 0.8) * tone + wires * np.exp(-t / decay_s)
    return _peak_normalize(wave * _fades(num_samples, sample_rate, 0.0005, 0.005))


def hihat(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A hi-hat: high-passed noise, decaying fast (a closed hat: short events) or slowly (open: long ones)."""
    t = _seconds(num_samples, sample_rate)
    nyquist = sample_rate / 2.0
    wave = coloured_noise(
        num_samples, sample_rate, rng, 0.0, (min(6000.0, 0.6 * nyquist), 0.95 * nyquist)
    )
    decay_s = num_samples / sample_rate / rng.uniform(2.0, 3.5)
    return _peak_normalize(
        wave * np.exp(-t / decay_s) * _fades(num_samples, sample_rate, 0.0005, 0.005)
    )


def noise_burst(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A noise event (wind, hiss, rumble, a steam burst): coloured or band-pass noise under a random envelope.

    Colours: white, pink (1/f), brown (1/f^2), or white noise band-passed around 300-5000 Hz.
    Envelopes: a swell (slow in, slow out), a burst (fast in, exponential out) or flat.
    """
    colour = rng.integers(4)
    if colour < 3:
        wave = coloured_noise(num_samples, sample_rate, rng, float(colour))
    else:
        centre = rng.uniform(300.0, min(5000.0, 0.3 * sample_rate))
        half_width = centre / rng.uniform(1.0, 4.0) / 2.0
        wave = coloured_noise(
            num_samples, sample_rate, rng, 0.0, (centre - half_width, centre + half_width)
        )
    t = _seconds(num_samples, sample_rate)
    duration = num_samples / sample_rate
    shape = rng.integers(3)
    if shape == 0:
        envelope = np.sin(np.pi * t / duration) ** rng.uniform(0.5, 2.0)
    elif shape == 1:
        envelope = np.exp(-t / (duration / rng.uniform(2.0, 3.5))) * _fades(
            num_samples, sample_rate, 0.005, 0.01
        )
    else:
        envelope = _fades(num_samples, sample_rate, 0.02, 0.05)
    return _peak_normalize(wave * envelope)


# Formants (F1, F2, F3, F4 in Hz) of an adult male voice (after Peterson & Barney, 1952).
VOWEL_FORMANTS = {
    "a": (730, 1090, 2440, 3400),
    "e": (530, 1840, 2480, 3500),
    "i": (270, 2290, 3010, 3700),
    "o": (570, 840, 2410, 3300),
    "u": (300, 870, 2240, 3300),
}
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])


@dataclass
class Speaker:
    """A synthetic voice: its pitch (f0 in Hz at the start of an utterance) and vocal tract scale."""

    base_f0: float
    formant_scale: float

    @staticmethod
    def draw(rng: np.random.Generator) -> "Speaker":
        if rng.random() < 0.5:  # lower voice, longer tract
            return Speaker(rng.uniform(90, 140), rng.uniform(0.95, 1.05))
        return Speaker(rng.uniform(170, 250), rng.uniform(1.12, 1.22))


def _formant_gain(freqs: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Magnitude response of a cascade of 2-pole resonators (unit gain at DC) at ``freqs``.

    ``freqs`` is (K, N), ``formants`` (4, N): one resonance per formant, bandwidths from
    FORMANT_BANDWIDTHS: ``|H(f)| = prod_i F_i^2 / sqrt((F_i^2 - f^2)^2 + (B_i f)^2)``.
    """
    gain = np.ones_like(freqs)
    for formant, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
        gain *= formant**2 / np.sqrt((formant**2 - freqs**2) ** 2 + (bandwidth * freqs) ** 2)
    return gain


def _plan_syllables(
    num_frames: int, frame_seconds: float, rng: np.random.Generator
) -> List[Tuple[str, int]]:
    """Segments ("fricative" or a vowel letter, length in frames) filling ``num_frames``.

    Syllables are a vowel of 120-300 ms, after the first one preceded by a 50-120 ms fricative
    with probability 0.4.
    """
    segments: List[Tuple[str, int]] = []
    used = 0
    while used < num_frames:
        if segments and rng.random() < 0.4:
            fricative = min(_frames(rng.uniform(0.05, 0.12), 1 / frame_seconds), num_frames - used)
            segments.append(("fricative", fricative))
            used += fricative
        vowel = min(_frames(rng.uniform(0.12, 0.3), 1 / frame_seconds), num_frames - used)
        if vowel > 0:
            segments.append((str(rng.choice(list(VOWEL_FORMANTS))), vowel))
            used += vowel
    return segments


def _voiced_speech(f0: np.ndarray, formants: np.ndarray, sample_rate: int) -> np.ndarray:
    """A glottal pulse train at ``f0`` (per sample) through formant resonators (``formants``: (4, N)).

    Computed as the source's harmonics (partial k at k f0(t), amplitude 1/k: the glottal pulse's
    -12 dB/octave slope plus lip radiation's +6 dB/octave), each weighted by the resonators'
    response at its frequency, so pitch and formants glide sample by sample without a
    time-varying IIR filter. All harmonics start in phase, as the pulses of a real glottis do.
    """
    num_samples = len(f0)
    top = min(5000.0, 0.45 * sample_rate)
    k = np.arange(1, int(top / f0.min()) + 1)[:, None]
    # Harmonic amplitudes change slowly: compute them every 2 ms and interpolate linearly.
    step = max(1, sample_rate // 500)
    control = np.arange(0, num_samples + step, step).clip(max=num_samples - 1)
    harmonic_freqs = k * f0[None, control]
    # Fade harmonics out over the last 200 Hz below the top, not abruptly as f0 glides.
    band_limit = np.clip((top - harmonic_freqs) / 200.0, 0.0, 1.0)
    amps = _formant_gain(harmonic_freqs, formants[:, control]) * band_limit / k
    phase = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    return np.einsum(
        "kn,kn->n", _interpolate_columns(amps, step, num_samples), np.sin(k * phase[None, :])
    )


def speech_utterance(
    num_frames: int, hop: int, sample_rate: int, speaker: Speaker, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """A speech-like utterance: syllables of (fricative +) vowel; returns (wave, frame_f0).

    Vowels are a glottal source through formant resonators (``_voiced_speech``) with a little
    aspiration noise. Pitch falls through the utterance (declination, 0.3 octave) with an accent
    on some syllables; formants glide between vowel targets over 40 ms. Fricatives are
    band-passed noise ("s": 4-8 kHz, "sh": 2-6 kHz). Segment borders fall on frame borders;
    ``frame_f0`` is the fundamental at each frame's centre, 0 in fricatives.
    """
    num_samples = num_frames * hop
    voiced = np.zeros(num_samples, dtype=bool)
    formant_targets = np.full((4, num_samples), np.nan)  # NaN in fricatives: formants glide through
    accents = np.zeros(num_samples)
    fricatives = np.zeros(num_samples)
    start = 0
    for kind, frames in _plan_syllables(num_frames, hop / sample_rate, rng):
        stop = start + frames * hop
        if kind == "fricative":
            low, high = (4000.0, 8000.0) if rng.random() < 0.5 else (2000.0, 6000.0)
            band = (min(low, 0.35 * sample_rate), min(high, 0.45 * sample_rate))
            fricatives[start:stop] = coloured_noise(
                stop - start, sample_rate, rng, 0.0, band
            ) * _fades(stop - start, sample_rate, 0.02, 0.02)
        else:
            voiced[start:stop] = True
            formant_targets[:, start:stop] = (
                np.array(VOWEL_FORMANTS[kind])[:, None] * speaker.formant_scale
            )
            if rng.random() < 0.4:
                accents[start:stop] = rng.uniform(0.05, 0.2)  # a stressed syllable, in octaves
        start = stop
    formants = np.stack(
        [_fill_and_smooth(track, int(0.04 * sample_rate)) for track in formant_targets]
    )
    declination = np.linspace(0.1, -0.2, num_samples)  # octaves
    f0 = speaker.base_f0 * 2.0 ** (declination + _fill_and_smooth(accents, int(0.06 * sample_rate)))
    voicing = _voicing_envelope(voiced, int(0.015 * sample_rate))
    vowels = _peak_normalize(_voiced_speech(f0, formants, sample_rate))
    vowels = (vowels + 0.02 * coloured_noise(num_samples, sample_rate, rng, 1.0)) * voicing
    wave = vowels + rng.uniform(0.15, 0.35) * fricatives
    frame_centres = np.arange(num_frames) * hop + hop // 2
    frame_f0 = np.where(voiced[frame_centres], f0[frame_centres], 0.0)
    return _peak_normalize(wave * _fades(num_samples, sample_rate, 0.01, 0.02)), frame_f0


def _interpolate_columns(values: np.ndarray, step: int, num_samples: int) -> np.ndarray:
    """(K, M) values at samples 0, step, 2 step, ... -> (K, num_samples) by linear interpolation."""
    position = np.arange(num_samples) / step
    left = position.astype(np.int64)
    weight = position - left
    return values[:, left] * (1.0 - weight) + values[:, left + 1] * weight


def _fill_and_smooth(track: np.ndarray, width: int) -> np.ndarray:
    """Fill NaN gaps by linear interpolation, then smooth with a moving average of ``width`` samples."""
    index = np.arange(len(track))
    known = ~np.isnan(track)
    filled = np.interp(index, index[known], track[known]) if known.any() else np.zeros_like(track)
    if width < 2:
        return filled
    padded = np.pad(filled, (width // 2, width - width // 2 - 1), mode="edge")
    cumulative = np.concatenate([[0.0], np.cumsum(padded)])
    return (cumulative[width:] - cumulative[:-width]) / width


def _voicing_envelope(voiced: np.ndarray, ramp: int) -> np.ndarray:
    """1 in voiced samples, ramping to 0 over ``ramp`` samples inside each voiced segment's edges."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], voiced, [False]]).astype(int)))
    envelope = np.zeros(len(voiced))
    for start, stop in zip(edges[::2], edges[1::2]):
        envelope[start:stop] = _fades(stop - start, 1, ramp, ramp)
    return envelope


# ---------------------------------------------------------------------------------------------
# Clips: a plan of events on the label-frame grid, then their synthesis
# ---------------------------------------------------------------------------------------------


@dataclass
class Event:
    """One sound in a clip: frames [start, stop) on the label grid, its type, wave and pitch labels."""

    start: int
    stop: int
    event_type: str
    wave: np.ndarray
    frame_pitch: np.ndarray  # MIDI per frame, 0 = unpitched
    notes: List[int] = field(default_factory=list)


def _frames(seconds: float, frame_rate: float) -> int:
    """A duration in whole frames, at least one."""
    return max(1, int(round(seconds * frame_rate)))


def _lead_in(num_frames: int, label_rate: int, rng: np.random.Generator) -> int:
    """Silent frames before a clip's first event: up to 0.3 s, and at most a quarter of the clip."""
    return min(_frames(rng.uniform(0.0, 0.3), label_rate), max(1, num_frames // 4))


def _sequence(
    num_frames: int,
    label_rate: int,
    rng: np.random.Generator,
    draw_seconds: Callable[[], float],
    draw_gap_seconds: Callable[[], float],
) -> List[Tuple[int, int]]:
    """Non-overlapping [start, stop) frame spans: a short lead-in, then event, gap, event, ..."""
    spans = []
    cursor = _lead_in(num_frames, label_rate, rng)
    while cursor < num_frames - 2:
        stop = min(cursor + _frames(draw_seconds(), label_rate), num_frames)
        spans.append((cursor, stop))
        cursor = stop + _frames(draw_gap_seconds(), label_rate)
    return spans


# Major / natural minor scales and chords (semitones above the root).
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 7), (0, 4, 7, 10), (0, 7, 12))
INSTRUMENTS = {"plucked": plucked_note, "bowed": bowed_note, "organ": organ_note}


def harmonic_clip(
    num_frames: int, hop: int, label_rate: int, sample_rate: int, rng: np.random.Generator
) -> List[Event]:
    """One instrument plays notes and chords from a random key in a random register."""
    instrument = str(rng.choice(list(INSTRUMENTS)))
    tonic = int(rng.integers(12))
    scale = SCALES[str(rng.choice(list(SCALES)))]
    register = int(rng.integers(43, 73))  # centre of the melody, MIDI
    pitches = [m for m in range(register - 7, register + 8) if (m - tonic) % 12 in scale]
    spans = _sequence(
        num_frames,
        label_rate,
        rng,
        lambda: rng.uniform(0.15, 1.0),
        lambda: 0.0 if rng.random() < 0.3 else rng.uniform(0.05, 0.4),
    )
    events = []
    for start, stop in spans:
        root = int(rng.choice(pitches))
        notes = (
            [root + interval for interval in CHORDS[rng.integers(len(CHORDS))]]
            if rng.random() < 0.3
            else [root]
        )
        levels = np.array([1.0] + [rng.uniform(0.5, 0.8) for _ in notes[1:]])
        n = (stop - start) * hop
        wave = INSTRUMENTS[instrument](midi_to_hz(notes), levels, n, sample_rate, rng)
        events.append(Event(start, stop, instrument, wave, np.full(stop - start, root), notes))
    return events


DRUMS = {
    "kick": (kick_drum, (0.2, 0.4)),
    "snare": (snare_drum, (0.15, 0.3)),
    "hihat": (hihat, (0.05, 0.3)),
}


def percussive_clip(
    num_frames: int, hop: int, label_rate: int, sample_rate: int, rng: np.random.Generator
) -> List[Event]:
    """A drum pattern on an eighth-note grid: kick on the beats 1 and 3, snare on 2 and 4, hi-hats between.

    Each hit lasts a random drum-specific time, cut short by the next hit, and decays to about
    -20 to -30 dB within it, so its frames are audible to the end.
    """
    step = _frames(60.0 / rng.uniform(80, 150) / 2.0, label_rate)
    first = _lead_in(num_frames, label_rate, rng)
    hits = []
    for index, start in enumerate(range(first, num_frames - 1, step)):
        beat = index % 8
        if beat in (0, 4) and rng.random() < 0.85:
            hits.append((start, "kick"))
        elif beat in (2, 6) and rng.random() < 0.85:
            hits.append((start, "snare"))
        elif rng.random() < 0.6:
            hits.append((start, "hihat"))
    if not hits:  # a very short clip: still one hit
        hits.append((first, "kick"))
    events = []
    for (start, drum), next_start in zip(hits, [h[0] for h in hits[1:]] + [num_frames]):
        synth, (shortest, longest) = DRUMS[drum]
        stop = min(start + _frames(rng.uniform(shortest, longest), label_rate), next_start)
        wave = synth((stop - start) * hop, sample_rate, rng)
        events.append(Event(start, stop, drum, wave, np.zeros(stop - start, dtype=int)))
    return events


def noise_clip(
    num_frames: int, hop: int, label_rate: int, sample_rate: int, rng: np.random.Generator
) -> List[Event]:
    """Noise bursts of 0.2-1.5 s separated by 0.1-0.6 s of silence."""
    spans = _sequence(
        num_frames, label_rate, rng, lambda: rng.uniform(0.2, 1.5), lambda: rng.uniform(0.1, 0.6)
    )
    events = []
    for start, stop in spans:
        wave = noise_burst((stop - start) * hop, sample_rate, rng)
        events.append(Event(start, stop, "noise", wave, np.zeros(stop - start, dtype=int)))
    return events


def speech_clip(
    num_frames: int, hop: int, label_rate: int, sample_rate: int, rng: np.random.Generator
) -> List[Event]:
    """One speaker says utterances of 0.6-2 s separated by 0.2-0.6 s pauses."""
    speaker = Speaker.draw(rng)
    spans = _sequence(
        num_frames, label_rate, rng, lambda: rng.uniform(0.6, 2.0), lambda: rng.uniform(0.2, 0.6)
    )
    events = []
    for start, stop in spans:
        wave, frame_f0 = speech_utterance(stop - start, hop, sample_rate, speaker, rng)
        frame_pitch = np.where(
            frame_f0 > 0, np.round(hz_to_midi(np.maximum(frame_f0, 1.0))), 0
        ).astype(int)
        events.append(Event(start, stop, "speech", wave, frame_pitch))
    return events


CLIP_SYNTHS = {
    "harmonic": harmonic_clip,
    "percussive": percussive_clip,
    "noise": noise_clip,
    "speech": speech_clip,
}


def synthesize_clip(
    clip_class: str, num_samples: int, sample_rate: int, label_rate: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[Event]]:
    """Synthesize one clip: (wave float32 peaking at -1 dBFS, frame pitch, frame event id, events)."""
    hop = sample_rate // label_rate
    num_frames = num_samples // hop
    events = CLIP_SYNTHS[clip_class](num_frames, hop, label_rate, sample_rate, rng)
    wave = np.zeros(num_samples)
    pitch = np.zeros(num_frames, dtype=np.int64)
    event_id = np.zeros(num_frames, dtype=np.int64)
    for event in events:
        wave[event.start * hop : event.stop * hop] = event.wave * _db(rng.uniform(-18.0, 0.0))
        pitch[event.start : event.stop] = event.frame_pitch
        event_id[event.start : event.stop] = EVENT_ID[event.event_type]
    loudest = np.max(np.abs(wave))
    wave += (
        coloured_noise(num_samples, sample_rate, rng, 1.0)
        * loudest
        * _db(rng.uniform(-60.0, -45.0))
    )
    wave = _peak_normalize(wave) * _db(PEAK_DBFS)
    return wave.astype(np.float32), pitch, event_id, events


# ---------------------------------------------------------------------------------------------
# The corpus on disk
# ---------------------------------------------------------------------------------------------


def _check_arguments(
    num_clips: int, clip_seconds: float, sample_rate: int, label_rate: int
) -> None:
    if num_clips < 1:
        raise DemoCorpusError(f"num_clips must be at least 1, got {num_clips}")
    if label_rate < 1 or sample_rate % label_rate != 0:
        raise DemoCorpusError(
            f"label_rate {label_rate} must divide sample_rate {sample_rate} (a frame is a whole number of samples)"
        )
    if sample_rate < 8000:
        raise DemoCorpusError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    if int(round(clip_seconds * sample_rate)) // (sample_rate // label_rate) < MIN_FRAMES_PER_CLIP:
        raise DemoCorpusError(
            f"clip_seconds {clip_seconds} is too short: a clip needs at least {MIN_FRAMES_PER_CLIP} label "
            f"frames at {label_rate} Hz"
        )


def _previous_corpus_files(out_dir: str) -> List[str]:
    """Wavs of a corpus generated here before (to replace); refuses a folder holding other wavs."""
    listed = (
        set(read_clip_labels(out_dir))
        if os.path.isfile(os.path.join(out_dir, CLIP_LABELS))
        else set()
    )
    present = {name for name in os.listdir(out_dir) if name.lower().endswith(".wav")}
    foreign = sorted(present - listed)
    if foreign:
        raise DemoCorpusError(
            f"{out_dir} holds wav files that are not from a demo corpus ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder"
        )
    return sorted(present & listed)


def make_demo_corpus(
    out_dir: str,
    num_clips: int = 96,
    clip_seconds: float = 4.0,
    sample_rate: int = 16000,
    label_rate: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> str:
    """Write ``num_clips`` wavs of ``clip_seconds`` and their label files into ``out_dir``; return it.

    See the module docstring for the files and their formats. A corpus already in ``out_dir``
    (one this function wrote) is replaced; any other wav there is an error.
    """
    _check_arguments(num_clips, clip_seconds, sample_rate, label_rate)
    os.makedirs(out_dir, exist_ok=True)
    for stale in _previous_corpus_files(out_dir):
        os.remove(os.path.join(out_dir, stale))
    num_samples = int(round(clip_seconds * sample_rate))
    hop = sample_rate // label_rate
    clip_rows = ["file\tclass"]
    frame_rows = ["file\tpitch\tevent"]
    event_rows = ["file\tonset\toffset\tevent\tnotes"]
    for index in tqdm(range(num_clips), desc="demo corpus", unit="clip", disable=not progress):
        clip_class = CLIP_CLASSES[index % len(CLIP_CLASSES)]
        rng = np.random.default_rng([seed, index])
        wave, pitch, event_id, events = synthesize_clip(
            clip_class, num_samples, sample_rate, label_rate, rng
        )
        name = f"clip_{index:04d}.wav"
        sf.write(os.path.join(out_dir, name), wave, sample_rate, subtype="PCM_16")
        clip_rows.append(f"{name}\t{clip_class}")
        frame_rows.append(f"{name}\t{' '.join(map(str, pitch))}\t{' '.join(map(str, event_id))}")
        for event in events:
            event_rows.append(
                f"{name}\t{event.start / label_rate:.3f}\t{event.stop / label_rate:.3f}\t"
                f"{event.event_type}\t{','.join(map(str, event.notes))}"
            )
    info = {
        "sample_rate": sample_rate,
        "clip_seconds": clip_seconds,
        "num_clips": num_clips,
        "seed": seed,
        "label_rate": label_rate,
        "hop_samples": hop,
        "frames_per_clip": num_samples // hop,
        "clip_classes": list(CLIP_CLASSES),
        "event_types": list(EVENT_TYPES),
        "pitch": PITCH_DESCRIPTION,
        "frame_labels": {"file": FRAME_LABELS, "columns": ["file", *FRAME_LABEL_NAMES]},
        "clip_labels": {"file": CLIP_LABELS, "columns": ["file", "class"]},
        "events": {"file": EVENTS, "columns": ["file", "onset", "offset", "event", "notes"]},
    }
    for filename, rows in (
        (CLIP_LABELS, clip_rows),
        (FRAME_LABELS, frame_rows),
        (EVENTS, event_rows),
    ):
        with open(os.path.join(out_dir, filename), "w") as f:
            f.write("\n".join(rows) + "\n")
    with open(os.path.join(out_dir, LABELS_JSON), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return out_dir


def read_label_info(corpus_dir: str) -> dict:
    """The corpus' ``labels.json`` (sample and label rates, frames per clip, class and event names)."""
    path = os.path.join(corpus_dir, LABELS_JSON)
    if not os.path.isfile(path):
        raise DemoCorpusError(
            f"{path}: not found (is {corpus_dir} a demo corpus from make_demo_corpus?)"
        )
    with open(path) as f:
        return json.load(f)


def _read_rows(path: str, header: Sequence[str]) -> List[Tuple[int, List[str]]]:
    """(line number, fields) of a tab-separated file after checking its header."""
    if not os.path.isfile(path):
        raise DemoCorpusError(f"{path}: not found")
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t") != list(header):
        raise DemoCorpusError(f"{path}, line 1: expected the header {'<TAB>'.join(header)!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DemoCorpusError(
                f"{path}, line {number}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        rows.append((number, fields))
    return rows


def read_clip_labels(corpus_dir: str) -> Dict[str, str]:
    """``clip_labels.tsv`` as {file: class name}, in file order."""
    path = os.path.join(corpus_dir, CLIP_LABELS)
    return {fields[0]: fields[1] for _, fields in _read_rows(path, ("file", "class"))}


def read_frame_labels(corpus_dir: str, name: str = "pitch") -> Dict[str, np.ndarray]:
    """``frame_labels.tsv`` as {file: int64 array of frames_per_clip labels}; ``name`` is "pitch" or "event".

    The rate is ``read_label_info(corpus_dir)["label_rate"]``; frame j covers samples
    [j * hop_samples, (j + 1) * hop_samples).
    """
    if name not in FRAME_LABEL_NAMES:
        raise DemoCorpusError(f"frame label name must be one of {FRAME_LABEL_NAMES}, got {name!r}")
    expected_frames = read_label_info(corpus_dir)["frames_per_clip"]
    path = os.path.join(corpus_dir, FRAME_LABELS)
    column = 1 + FRAME_LABEL_NAMES.index(name)
    labels = {}
    for number, fields in _read_rows(path, ("file", *FRAME_LABEL_NAMES)):
        try:
            values = np.array([int(v) for v in fields[column].split()], dtype=np.int64)
        except ValueError as err:
            raise DemoCorpusError(
                f"{path}, line {number}: {name} labels must be integers ({err})"
            ) from err
        if len(values) != expected_frames:
            raise DemoCorpusError(
                f"{path}, line {number}: {len(values)} {name} labels for {fields[0]}, expected {expected_frames}"
            )
        labels[fields[0]] = values
    return labels



def reference_labels(corpus_dir: str, name: str = "pitch"):
    """The corpus' frame labels ``name`` as ``clustering.quality.ReferenceLabels``, the reference
    that ``scripts/hubert_iterations.py --demo-corpus`` and ``scripts/cluster_quality.py`` score
    pseudo-labels against (keyed by the paths a manifest over the corpus holds)."""
    from audio_ssl_ext.clustering.quality import ReferenceLabels  # imports fairseq: only when asked

    return ReferenceLabels(
        name=name,
        by_file=read_frame_labels(corpus_dir, name),
        rate=float(read_label_info(corpus_dir)["label_rate"]),
        where=corpus_dir,
    )
