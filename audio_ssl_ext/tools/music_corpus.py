"""A music pretraining corpus rendered offline: MIDI that this module writes (melodies, chords,
drum patterns over many General MIDI programs), played by fluidsynth with two soundfonts.

Each clip is a short piece at its own tempo and key: a melody (a random walk on the key's scale)
on one program, a chord progression (triads, two or four beats each) on another, and in most
clips a drum pattern (kick, snare, hi-hat with variations) on GM percussion (channel 10).

**Kept apart from the evaluation tasks** (``eval_tasks.py``): their test split is single notes of
GM programs 0-79 played by TimGM6mb; their train and valid splits are single notes of the same
programs played by FluidR3 (material the probe's classifier is trained on anyway). So here:

- FluidR3 plays any program (0-127) and its drum kit;
- TimGM6mb plays only programs 80-127 (synth leads and pads, ethnic, percussive, effects) and its
  drum kit, never the programs whose TimGM6mb samples are the test split's sources.

A model pretrained here has therefore never heard a sample the test split is made of.
``clips.tsv`` records each clip's soundfont, programs and drums; ``check_separation`` re-reads it.

Rendering is one fluidsynth run per soundfont and batch of clips (one MIDI file, clips one after
another with a gap for the release tails), then sliced: a process per clip would cost a second of
soundfont loading each. Tooling (``scripts/study.py``), not imported by the core package.
"""

import csv
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf

from audio_ssl_ext.downstream.hear_tasks import SAMPLE_RATE
from audio_ssl_ext.tools.eval_tasks import (
    FAMILY_PROGRAMS,
    TEST_SOUNDFONT,
    TRAIN_SOUNDFONT,
    EvalTaskError,
    render_slots,
    soundfont_path,
    write_midi as write_timed_midi,
)

logger = logging.getLogger(__name__)

# The programs each soundfont may play here (see the module docstring for why).
EVAL_PROGRAMS = frozenset(p for programs in FAMILY_PROGRAMS.values() for p in programs)
PROGRAMS: Dict[str, Tuple[int, ...]] = {
    TRAIN_SOUNDFONT: tuple(range(128)),
    TEST_SOUNDFONT: tuple(range(80, 128)),
}
TEST_SOUNDFONT_SHARE = 0.25  # of the clips, played by TimGM6mb (the rest by FluidR3)
DRUM_CHANNEL = 9  # GM percussion (channel 10)
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
GAP_SECONDS = 1.0  # silence after each clip in the rendering: the release tails die there
BATCH_CLIPS = 200  # clips per fluidsynth run (one long wav in a temporary folder)


class MusicCorpusError(EvalTaskError):
    """The corpus cannot be made, or what is on disk breaks the separation from the test split."""


@dataclass
class Piece:
    soundfont: str
    melody_program: int
    chord_program: int
    drums: bool
    tempo: float  # beats per minute
    key: int  # MIDI note of the tonic
    events: List[Tuple[int, bytes]]  # (milliseconds from the clip start, MIDI message)


def compose(rng: np.random.Generator, soundfont: str, seconds: float) -> Piece:
    """One clip's notes: a melody, chords and (in 70% of clips) drums, all ending 0.3 s before
    ``seconds`` so that the clip holds no note cut off mid-attack."""
    programs = PROGRAMS[soundfont]
    melody_program, chord_program = (int(p) for p in rng.choice(programs, size=2))
    tempo = float(rng.uniform(80, 160))
    beat = 60.0 / tempo
    key = int(rng.integers(48, 60))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    end = seconds - 0.3
    events: List[Tuple[int, bytes]] = [(0, bytes([0xC0, melody_program])), (0, bytes([0xC1, chord_program]))]

    def note(channel: int, pitch: int, velocity: int, start: float, stop: float) -> None:
        stop = min(stop, end)
        if stop - start >= 0.05 and 0 <= pitch < 128:
            events.append((round(start * 1000), bytes([0x90 | channel, pitch, velocity])))
            events.append((round(stop * 1000), bytes([0x80 | channel, pitch, 0])))

    degree, t = int(rng.integers(0, 7)), 0.0
    while t < end:  # melody: steps and small leaps on the scale, an octave above the key
        length = beat * float(rng.choice((0.5, 0.5, 1.0, 1.0, 1.5, 2.0)))
        degree = int(np.clip(degree + rng.choice((-2, -1, -1, 0, 1, 1, 2, 4, -4)), -3, 12))
        pitch = key + 12 + 12 * (degree // 7) + scale[degree % 7]
        if rng.random() > 0.1:  # a rest now and then
            note(0, pitch, int(rng.integers(70, 115)), t, t + 0.9 * length)
        t += length
    t = 0.0
    while t < end:  # chords: triads on scale degrees, two or four beats each
        length = beat * float(rng.choice((2.0, 4.0)))
        root = int(rng.choice((0, 3, 4, 5, 1)))
        velocity = int(rng.integers(50, 90))
        for third in (0, 2, 4):
            d = root + third
            note(1, key - 12 + 12 * (d // 7) + scale[d % 7], velocity, t, t + 0.95 * length)
        t += length
    drums = bool(rng.random() < 0.7)
    if drums:
        step, i = beat / 2, 0
        while i * step < end:  # eighth notes: kick on 1 and 3, snare on 2 and 4, hats between
            t = i * step
            hits = [CLOSED_HAT if rng.random() < 0.85 else OPEN_HAT]
            if i % 4 == 0 or (i % 8 == 7 and rng.random() < 0.3):
                hits.append(KICK)
            if i % 4 == 2:
                hits.append(SNARE)
            if i == 0 and rng.random() < 0.3:
                hits.append(CRASH)
            for hit in hits:
                note(DRUM_CHANNEL, hit, int(rng.integers(60, 120)), t, t + 0.1)
            i += 1
    return Piece(soundfont, melody_program, chord_program, drums, tempo, key, events)


def write_midi(path: str, pieces: Sequence[Piece], slot_seconds: float) -> None:
    """A MIDI file playing piece i from i * slot_seconds."""
    timed = sorted(
        ((round(i * slot_seconds * 1000) + ms, 0 if message[0] >> 4 in (0x8, 0xC) else 1, message)
         for i, piece in enumerate(pieces) for ms, message in piece.events),
        key=lambda e: (e[0], e[1]),  # note-offs and program changes before the note-ons of their instant
    )
    write_timed_midi(path, ((ms, message) for ms, _, message in timed), round(len(pieces) * slot_seconds * 1000))


def render(pieces: Sequence[Piece], soundfont: str, seconds: float) -> List[np.ndarray]:
    """All ``pieces`` (of one soundfont) in one fluidsynth run, cut into one clip each."""
    slot = seconds + GAP_SECONDS
    return render_slots(lambda midi: write_midi(midi, pieces, slot), soundfont_path(soundfont), len(pieces), slot,
                        seconds, gain=0.4)


def build_music_corpus(out_dir: str, clips: int = 600, seconds: float = 4.0, seed: int = 0) -> str:
    """``clips`` pieces of ``seconds`` under ``out_dir/wavs/<soundfont>/``, 16 kHz mono 16-bit,
    each peak-normalised to -1 dBFS, and ``out_dir/clips.tsv``; returns ``out_dir``. Clip i is
    drawn from (seed, i) alone; a quarter of the clips are TimGM6mb's (programs 80-127 only)."""
    wav_root = os.path.join(out_dir, "wavs")
    if os.path.isdir(wav_root):
        shutil.rmtree(wav_root)
    plan: Dict[str, List[Tuple[int, Piece]]] = {TRAIN_SOUNDFONT: [], TEST_SOUNDFONT: []}
    for i in range(clips):
        rng = np.random.default_rng([seed, i])
        soundfont = TEST_SOUNDFONT if rng.random() < TEST_SOUNDFONT_SHARE else TRAIN_SOUNDFONT
        plan[soundfont].append((i, compose(rng, soundfont, seconds)))
    rows = []
    for soundfont, items in plan.items():
        folder = os.path.join(wav_root, os.path.splitext(soundfont)[0])
        os.makedirs(folder, exist_ok=True)
        for start in range(0, len(items), BATCH_CLIPS):
            batch = items[start : start + BATCH_CLIPS]
            for (i, piece), audio in zip(batch, render([p for _, p in batch], soundfont, seconds)):
                peak = float(np.abs(audio).max())
                if peak < 1e-3:
                    raise MusicCorpusError(f"clip {i} ({soundfont}, programs {piece.melody_program}/"
                                           f"{piece.chord_program}) rendered silent: is the soundfont complete?")
                path = os.path.join(folder, f"clip_{i:05d}.wav")
                sf.write(path, audio * (10 ** (-1 / 20) / peak), SAMPLE_RATE, subtype="PCM_16")
                rows.append((os.path.relpath(path, out_dir), soundfont, piece.melody_program,
                             piece.chord_program, int(piece.drums), f"{piece.tempo:.1f}", piece.key))
    rows.sort()
    with open(os.path.join(out_dir, "clips.tsv"), "w") as f:
        f.write("file\tsoundfont\tmelody_program\tchord_program\tdrums\ttempo\tkey\n")
        f.writelines("\t".join(map(str, row)) + "\n" for row in rows)
    check_separation(out_dir)
    logger.info("music corpus: %d clips x %g s in %s (%d TimGM6mb)", len(rows), seconds, wav_root,
                len(plan[TEST_SOUNDFONT]))
    return out_dir


def check_separation(out_dir: str) -> None:
    """Refuse a corpus whose ``clips.tsv`` has a TimGM6mb clip on a program of the evaluation
    tasks (the test split's source)."""
    path = os.path.join(out_dir, "clips.tsv")
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
            if row["soundfont"] != TEST_SOUNDFONT:
                continue
            used = {int(row["melody_program"]), int(row["chord_program"])} & EVAL_PROGRAMS
            if used:
                raise MusicCorpusError(
                    f"{path}:{line}: {row['file']} plays program(s) {sorted(used)} with {TEST_SOUNDFONT}, the "
                    f"evaluation test split's source: rebuild the corpus with build_music_corpus"
                )
