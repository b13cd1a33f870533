"""Evaluation tasks from Debian packages: HEAR layout, honest splits, the notes and words asked for."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from audio_ssl_ext.downstream.hear_tasks import read_hear_task
from audio_ssl_ext.tools import eval_tasks
from audio_ssl_ext.tools.eval_tasks import Note, build_eval_tasks, write_note_midi


def require_tools(in_ci):
    missing = [tool for tool in ("fluidsynth", "flite") if shutil.which(tool) is None]
    missing += [sf2 for sf2 in (eval_tasks.TRAIN_SOUNDFONT, eval_tasks.TEST_SOUNDFONT)
                if not os.path.isfile(os.path.join(eval_tasks.SOUNDFONT_DIR, sf2))]
    if missing:
        message = f"missing {missing}: run `make setup-eval`"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)


def test_midi_file_bytes_on_a_hand_made_case(tmp_path):
    path = tmp_path / "one.mid"
    write_note_midi(str(path), [Note(program=40, pitch=69, velocity=100, family="string")], 1.5, 0.75)
    data = path.read_bytes()
    assert data[:14] == b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x03\xe8"  # format 0, 1 track, 1000 tpb
    assert data[14:18] == b"MTrk"
    track = data[22:]
    assert int.from_bytes(data[18:22], "big") == len(track)
    assert track == (
        b"\x00\xff\x51\x03\x0f\x42\x40"  # tempo 1 000 000 us per beat: 1 tick = 1 ms
        b"\x00\xc0\x28"  # program 40
        b"\x00\x90\x45\x64"  # note on A4, velocity 100
        b"\x85\x6e\x80\x45\x00"  # 750 ticks later (variable length 0x85 0x6e), note off
        b"\x85\x6e\xff\x2f\x00"  # 750 ticks to the end of the slot, end of track
    )


@pytest.fixture(scope="module")
def small_tasks(tmp_path_factory):
    if shutil.which("fluidsynth") is None or shutil.which("flite") is None:
        return None
    return build_eval_tasks(str(tmp_path_factory.mktemp("eval_tasks")), small=True)


def test_layout_and_splits(small_tasks, in_ci):
    require_tools(in_ci)
    names = [os.path.basename(t) for t in small_tasks]
    assert names == ["instrument_family", "pitch", "spoken_digit"]
    for task in small_tasks:
        metadata = json.load(open(os.path.join(task, "task_metadata.json")))
        assert metadata["embedding_type"] == "scene" and metadata["split_mode"] == "trainvaltest"
        for split in ("train", "valid", "test"):
            paths, targets, vocabulary = read_hear_task(task, split)
            assert len(paths) == metadata["num_examples"][split] > 0
            info = sf.info(paths[0])
            assert info.samplerate == 16000 and info.duration == pytest.approx(metadata["sample_duration"])

    family = small_tasks[0]
    train = json.load(open(os.path.join(family, "train.json")))
    valid = json.load(open(os.path.join(family, "valid.json")))
    # 10 families, 2 programs each; valid holds out one program per family, test is all of them.
    assert sorted({v[0] for v in train.values()}) == sorted(eval_tasks.FAMILY_PROGRAMS)
    train_programs = {name.split("_")[2] for name in train}
    valid_programs = {name.split("_")[2] for name in valid}
    assert train_programs.isdisjoint(valid_programs) and len(train_programs) == len(valid_programs) == 10
    pitch_labels = read_hear_task(small_tasks[1], "test")[2]
    assert pitch_labels == ["48", "55", "60", "67", "72"]

    digits = small_tasks[2]
    voices = {split: {name.split("_")[1] for name in json.load(open(os.path.join(digits, f"{split}.json")))}
              for split in ("train", "valid", "test")}
    assert voices == {"train": {"kal16", "awb"}, "valid": {"rms"}, "test": {"slt"}}
    for split, count in (("train", 20), ("valid", 10), ("test", 10)):
        labels = sorted(v[0] for v in json.load(open(os.path.join(digits, f"{split}.json"))).values())
        assert len(labels) == count and set(labels) == set(eval_tasks.DIGITS)


def test_rendered_notes_have_the_asked_pitch(small_tasks, in_ci):
    require_tools(in_ci)
    paths, targets, names = read_hear_task(small_tasks[1], "test")
    flutes = [(p, int(names[t])) for p, t in zip(paths, targets) if "_p073_" in p]  # GM flute
    assert len(flutes) == 5
    for path, midi in flutes:
        audio, rate = sf.read(path)
        spectrum = np.abs(np.fft.rfft(audio[: rate // 2] * np.hanning(rate // 2)))
        peak_hz = np.argmax(spectrum) * rate / (rate // 2)
        # The strongest partial is a harmonic of the note (a low flute's 2nd can beat its 1st).
        harmonic = peak_hz / (440.0 * 2 ** ((midi - 69) / 12))
        assert round(harmonic) in (1, 2, 3, 4) and abs(harmonic - round(harmonic)) < 0.03, (path, peak_hz)


def test_spoken_digits_are_cut_at_the_words(small_tasks, in_ci):
    require_tools(in_ci)
    paths, _, _ = read_hear_task(small_tasks[2], "train")
    for path in paths[:10]:
        audio, rate = sf.read(path)
        onset = np.argmax(np.abs(audio) > 0.05 * np.abs(audio).max()) / rate
        assert onset < 0.15, (path, onset)  # the word starts at the clip's start (30 ms margin)
        assert np.abs(audio[-rate // 10 :]).max() == 0  # and the clip ends in padding
