"""Evaluation tasks from real audio that installs offline (Debian packages), in HEAR's format.

Three scene-level multiclass tasks, each split so that the test material comes from a source the
classifier never saw (a random split within one source overstates accuracy badly):

- ``instrument_family``: 10 NSynth-style families (GM programs grouped as NSynth groups them),
  single notes rendered by fluidsynth. Train and valid: the FluidR3 soundfont (real recorded
  samples), split by program (valid holds out every fourth program of each family); test: the
  TimGM6mb soundfont, an independent sample set.
- ``pitch``: the same notes, labelled with their MIDI pitch.
- ``spoken_digit``: "zero" .. "nine" spoken by flite's voices at several speaking rates and
  pitches, split by speaker: train kal16 + awb, valid rms, test slt (four distinct speakers;
  festival's kal and slt are the same people, so they are not used as extra speakers).

Rendering is one process per split and source (one MIDI file per soundfont and split, one flite
session per voice and setting), then sliced: loading a soundfont per clip would cost a second per
clip. Each task is a folder in HEAR 2021's format (``audio_ssl_ext/downstream/hear_tasks.py``),
read by heareval and by ``scripts/probe.py``::

    OUT/<task>/task_metadata.json  labelvocabulary.csv  {train,valid,test}.json
    OUT/<task>/16000/{train,valid,test}/*.wav

Tooling (``scripts/build_eval_tasks.py``, ``make eval``, the tests), not imported by the core package.
"""

import logging
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from audio_ssl_ext.downstream.hear_tasks import SAMPLE_RATE, SPLITS, Clip, write_hear_task

logger = logging.getLogger(__name__)

SOUNDFONT_DIR = "/usr/share/sounds/sf2"
TRAIN_SOUNDFONT = "FluidR3_GM.sf2"  # fluid-soundfont-gm
TEST_SOUNDFONT = "TimGM6mb.sf2"  # timgm6mb-soundfont

# General MIDI programs (0-based) of each NSynth instrument family (NSynth's 11th, synth_lead,
# has no GM counterpart). Left out: harp (46) and timpani (47), orchestra hit (55).
FAMILY_PROGRAMS: Dict[str, Tuple[int, ...]] = {
    "keyboard": tuple(range(0, 8)),
    "mallet": tuple(range(8, 16)),
    "organ": tuple(range(16, 24)),
    "guitar": tuple(range(24, 32)),
    "bass": tuple(range(32, 40)),
    "string": (40, 41, 42, 43, 44, 45, 48, 49, 50, 51),
    "vocal": (52, 53, 54),
    "brass": tuple(range(56, 64)),
    "reed": tuple(range(64, 72)),
    "flute": tuple(range(72, 80)),
}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKER_SPLITS = {"train": ("kal16", "awb"), "valid": ("rms",), "test": ("slt",)}
# flite's int_f0_target_mean (Hz) per voice: lower, default-like and higher.
VOICE_F0 = {"kal16": (95, 110, 125), "awb": (95, 110, 125), "rms": (95, 110, 125), "slt": (150, 170, 190)}
SPEAKING_RATES = (0.8, 1.0, 1.25)  # flite's duration_stretch


class EvalTaskError(RuntimeError):
    """A tool or a resource the tasks need is missing, or its output is not what it should be."""


# ---------------------------------------------------------------------------------------------
# Notes: one MIDI file per split and soundfont, rendered by fluidsynth, sliced
# ---------------------------------------------------------------------------------------------


@dataclass
class Note:
    program: int
    pitch: int
    velocity: int
    family: str


def _var_len(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def write_midi(path: str, events: Iterable[Tuple[int, bytes]], end_ms: int) -> None:
    """A format-0 MIDI file of (millisecond, message) events in time order, ending at ``end_ms``.
    One tick is one millisecond (1000 ticks per beat at 1 000 000 us per beat)."""
    track = bytearray(b"\x00\xff\x51\x03" + (1_000_000).to_bytes(3, "big"))  # tempo: 1 s per beat
    now = 0
    for ms, message in events:
        track += _var_len(ms - now) + message
        now = ms
    track += _var_len(max(0, end_ms - now)) + b"\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000))
        f.write(b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def write_note_midi(path: str, notes: Sequence[Note], slot_seconds: float, note_seconds: float) -> None:
    """``notes`` one after another, note i at i * slot_seconds, each setting its program first on
    channel 0 (channel 9 is GM percussion)."""
    events = []
    for i, note in enumerate(notes):
        on, off = round(i * slot_seconds * 1000), round((i * slot_seconds + note_seconds) * 1000)
        events += [(on, bytes([0xC0, note.program])), (on, bytes([0x90, note.pitch, note.velocity])),
                   (off, bytes([0x80, note.pitch, 0]))]
    write_midi(path, events, round(len(notes) * slot_seconds * 1000))


def soundfont_path(name: str) -> str:
    path = os.path.join(SOUNDFONT_DIR, name)
    if not os.path.isfile(path):
        raise EvalTaskError(f"{path} not found: run `make setup-eval` (apt-get install fluid-soundfont-gm timgm6mb-soundfont)")
    return path


def render_slots(write_midi: Callable[[str], None], soundfont: str, count: int, slot_seconds: float,
                 clip_seconds: float, gain: float) -> List[np.ndarray]:
    """Render the MIDI file ``write_midi(path)`` writes in one fluidsynth run (reverb and chorus
    off) and cut ``count`` clips of ``clip_seconds``, one every ``slot_seconds`` (mono)."""
    if shutil.which("fluidsynth") is None:
        raise EvalTaskError("fluidsynth not found: run `make setup-eval` (apt-get install fluidsynth)")
    with tempfile.TemporaryDirectory() as tmp:
        midi, wav = os.path.join(tmp, "slots.mid"), os.path.join(tmp, "slots.wav")
        write_midi(midi)
        command = ["fluidsynth", "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", str(gain),
                   "-r", str(SAMPLE_RATE), "-F", wav, soundfont, midi]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(wav):
            raise EvalTaskError(f"{' '.join(command)} failed: {proc.stderr[-2000:]}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise EvalTaskError(f"fluidsynth wrote {rate} Hz, asked for {SAMPLE_RATE}")
    audio = audio.mean(axis=1)
    slot, length = round(slot_seconds * SAMPLE_RATE), round(clip_seconds * SAMPLE_RATE)
    clips = []
    for i in range(count):
        clip = np.zeros(length, dtype=np.float32)
        piece = audio[i * slot : i * slot + length]
        clip[: len(piece)] = piece
        clips.append(clip)
    return clips


def render_notes(notes: Sequence[Note], soundfont: str, slot_seconds: float = 1.5, note_seconds: float = 0.75,
                 clip_seconds: float = 1.0) -> List[Optional[np.ndarray]]:
    """One clip per note (None where the soundfont stayed silent), all in one fluidsynth run."""
    clips = render_slots(lambda midi: write_note_midi(midi, notes, slot_seconds, note_seconds), soundfont,
                         len(notes), slot_seconds, clip_seconds, gain=0.5)
    return [clip if np.abs(clip).max() >= 1e-3 else None for clip in clips]


def note_plan(pitches: Sequence[int], programs_per_family: Optional[int], rng: np.random.Generator):
    """(FluidR3 train notes, FluidR3 valid notes, all notes for the TimGM6mb test split)."""
    train, valid, test = [], [], []
    for family, programs in FAMILY_PROGRAMS.items():
        programs = programs if programs_per_family is None else programs[:programs_per_family]
        for k, program in enumerate(programs):
            for pitch in pitches:
                note = Note(program, int(pitch), int(rng.integers(64, 113)), family)
                held_out = k % 4 == 3 or (len(programs) < 4 and k == len(programs) - 1)
                (valid if held_out else train).append(note)
                test.append(Note(program, int(pitch), int(rng.integers(64, 113)), family))
    return train, valid, test


def build_note_tasks(out_dir: str, pitches: Sequence[int] = tuple(range(48, 73)),
                     programs_per_family: Optional[int] = None, seed: int = 0) -> List[str]:
    """``instrument_family`` and ``pitch`` (same audio, two label sets)."""
    rng = np.random.default_rng(seed)
    plan = dict(zip(SPLITS, note_plan(pitches, programs_per_family, rng)))
    fonts = {"train": TRAIN_SOUNDFONT, "valid": TRAIN_SOUNDFONT, "test": TEST_SOUNDFONT}
    family_splits, pitch_splits = {}, {}
    for split in SPLITS:
        notes = plan[split]
        logger.info("rendering %d notes for %s with %s", len(notes), split, fonts[split])
        audio = render_notes(notes, soundfont_path(fonts[split]))
        family_splits[split], pitch_splits[split] = [], []
        silent = [f"program {n.program} pitch {n.pitch}" for n, a in zip(notes, audio) if a is None]
        if silent:
            logger.warning("%s: %d notes left out, %s has no sample for them: %s",
                           split, len(silent), fonts[split], ", ".join(silent))
        for i, (note, clip) in enumerate(zip(notes, audio)):
            if clip is None:
                continue
            name = f"{split}_{i:05d}_p{note.program:03d}_n{note.pitch:03d}.wav"
            family_splits[split].append(Clip(name, note.family, clip))
            pitch_splits[split].append(Clip(name, str(note.pitch), clip))
    return [
        write_hear_task(out_dir, "instrument_family", family_splits, 1.0),
        write_hear_task(out_dir, "pitch", pitch_splits, 1.0),
    ]


# ---------------------------------------------------------------------------------------------
# Spoken digits: one flite session per voice and setting, cut at the words' pauses
# ---------------------------------------------------------------------------------------------


def flite_session(words: Sequence[str], voice: str, duration_stretch: float, f0_mean: float):
    """Speak ``words`` as separate sentences in one flite run; return the audio and each word's
    (start, end) in seconds, read from flite's own segment timings (``-psdur``)."""
    if shutil.which("flite") is None:
        raise EvalTaskError("flite not found: run `make setup-eval` (apt-get install flite)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "session.wav")
        command = ["flite", "-voice", voice, "--setf", f"duration_stretch={duration_stretch}",
                   "--setf", f"int_f0_target_mean={f0_mean}", "-psdur", "-t", ". ".join(words) + ".", "-o", wav]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(wav):
            raise EvalTaskError(f"{' '.join(command)} failed: {proc.stderr[-2000:]}")
        audio, rate = sf.read(wav, dtype="float32")
    if rate != SAMPLE_RATE:
        raise EvalTaskError(f"flite voice {voice} speaks at {rate} Hz; use a 16 kHz voice (kal16, awb, rms, slt)")
    spans, start, previous_end = [], None, 0.0
    for token in proc.stdout.split():
        phone, end = token.rsplit(":", 1)
        end = float(end)
        if phone == "pau":
            if start is not None:
                spans.append((start, previous_end))
                start = None
        elif start is None:
            start = previous_end
        previous_end = end
    if start is not None:
        spans.append((start, previous_end))
    if len(spans) != len(words):
        raise EvalTaskError(f"flite {voice}: {len(spans)} spoken segments for {len(words)} words")
    return audio, spans


def build_digit_task(out_dir: str, rates: Sequence[float] = SPEAKING_RATES, f0_steps: int = 3,
                     clip_seconds: float = 1.2, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    length, margin = round(clip_seconds * SAMPLE_RATE), round(0.03 * SAMPLE_RATE)
    splits: Dict[str, List[Clip]] = {}
    for split, voices in SPEAKER_SPLITS.items():
        splits[split] = []
        for voice in voices:
            for rate in rates:
                for f0 in VOICE_F0[voice][:f0_steps]:
                    order = [DIGITS[i] for i in rng.permutation(len(DIGITS))]
                    audio, spans = flite_session(order, voice, rate, f0)
                    for word, (start, end) in zip(order, spans):
                        a = max(0, round(start * SAMPLE_RATE) - margin)
                        b = min(len(audio), round(end * SAMPLE_RATE) + margin)
                        if b - a > length:
                            raise EvalTaskError(f"flite {voice} rate {rate}: '{word}' lasts {(b - a) / SAMPLE_RATE:.2f} s > {clip_seconds} s")
                        clip = np.zeros(length, dtype=np.float32)
                        clip[: b - a] = audio[a:b]
                        name = f"{split}_{voice}_r{rate:g}_f{f0}_{word}.wav"
                        splits[split].append(Clip(name, word, clip))
    return write_hear_task(out_dir, "spoken_digit", splits, clip_seconds)


def build_eval_tasks(out_dir: str, small: bool = False, seed: int = 0) -> List[str]:
    """All tasks; ``small`` is the subset the test suite builds (5 pitches, 2 programs per family,
    one speaking rate and pitch per voice)."""
    os.makedirs(out_dir, exist_ok=True)
    if small:
        tasks = build_note_tasks(out_dir, pitches=(48, 55, 60, 67, 72), programs_per_family=2, seed=seed)
        tasks.append(build_digit_task(out_dir, rates=(1.0,), f0_steps=1, seed=seed))
    else:
        tasks = build_note_tasks(out_dir, seed=seed)
        tasks.append(build_digit_task(out_dir, seed=seed))
    return tasks

