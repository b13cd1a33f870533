"""The multi-speaker speech set (tools/speech_corpus.py): helpers on hand-made cases, then a small
build: HEAR layout, speakers in every split of speaker_id, unseen sentences and speakers in test."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from audio_ssl_ext.downstream.hear_tasks import read_hear_task
from audio_ssl_ext.tools import speech_corpus as sc

RATE = 16000


def test_fill_clips_strings_pieces_and_cuts_the_last():
    pieces = [np.full(5, 1.0), np.full(3, 2.0), np.full(4, 3.0), np.full(2, 4.0)]
    clips = sc.fill_clips(pieces, length=8, gap=1)
    # clip 1: 5 ones, gap, 2 of the twos (cut); clip 2: 4 threes, gap, 2 fours, then padding (7/8 full)
    assert [c.tolist() for c in clips] == [[1, 1, 1, 1, 1, 0, 2, 2], [3, 3, 3, 3, 0, 4, 4, 0]]
    assert sc.fill_clips([np.ones(3)], length=8, gap=1) == []  # under half full: dropped
    assert all(c.dtype == np.float32 for c in clips)


def test_trim_silence_and_loudness():
    tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(RATE // 2) / RATE)
    hiss = 0.003 * np.random.default_rng(0).standard_normal(RATE // 2)  # -40 dB: a recording's floor
    audio = np.concatenate([hiss, tone + hiss[: len(tone)], hiss]).astype(np.float32)
    trimmed = sc.trim_silence(audio)
    margin = round(0.03 * RATE)
    assert abs(len(trimmed) - (len(tone) + 2 * margin)) <= RATE // 100
    loud = sc.normalize_loudness(trimmed)
    assert np.sqrt((loud[margin:-margin] ** 2).mean()) == pytest.approx(sc.TARGET_RMS, rel=0.05)
    # a file that is all speech keeps everything within 25 dB of its peak
    assert len(sc.trim_silence(tone.astype(np.float32))) == len(tone)


def test_sentences_are_distinct_and_seeded():
    a = sc.sentences(50, np.random.default_rng(3))
    assert len(set(a)) == 50 and a == sc.sentences(50, np.random.default_rng(3))
    assert all(4 <= len(s.split()) <= 8 and set(s.split()) <= set(sc.WORDS) for s in a)
    b = sc.sentences(20, np.random.default_rng(3), exclude=a)
    assert not set(a) & set(b)
    splits = sc.speaker_task_sentences(np.random.default_rng(0))
    assert not (set(splits["train"]) & set(splits["test"])) and not (set(splits["train"]) & set(splits["valid"]))


def test_speakers_and_words_tables():
    names = [s.name for s in sc.SPEAKERS]
    assert len(names) == len(set(names)) == 22
    assert {s.name for s in sc.SPEAKERS if s.recorded} == {f"tuxpaint_{x}" for x in "fr ro ru ca bg es be el da".split()}
    assert set(sc.WORD_TEXT) == set(sc.DIGITS) | set("abcdefghijklmnopqrstuvwxyz") | set(sc.SHORT_WORDS)
    for items in sc.RECORDED_WORD_SOURCES.values():
        assert {w for w, _ in items} <= set(sc.WORD_TEXT)
    speakers = [n for names in sc.WORD_SPEAKERS.values() for n in names]
    assert len(speakers) == len(set(speakers))  # spoken_word: no speaker in two splits
    assert set(sc.DEBIAN_PACKAGES) >= {s.package for s in sc.SPEAKERS} | {"klettres-data"}


def _missing_tools():
    missing = [t for t in ("flite", "festival") if shutil.which(t) is None]
    missing += [p for p in (sc.TUXPAINT_STAMPS, sc.KLETTRES_DIR, os.path.join(sc.FESTIVAL_VOICES, "czech"))
                if not os.path.isdir(p)]
    return missing


@pytest.fixture(scope="module")
def small_tasks(tmp_path_factory):
    if _missing_tools():
        return None
    return sc.build_speech_tasks(str(tmp_path_factory.mktemp("speech_tasks")), small=True, progress=False)


def require_tools(in_ci):
    missing = _missing_tools()
    if missing:
        message = f"missing {missing}: run `make setup-eval`"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)


def _split_speakers(task, metadata):
    return {split: set(metadata["examples_per_speaker"][split]) for split in ("train", "valid", "test")}


def test_small_tasks_layout_and_splits(small_tasks, in_ci):
    require_tools(in_ci)
    assert [os.path.basename(t) for t in small_tasks] == ["speaker_id", "spoken_word", "spoken_word_real"]
    for task in small_tasks:
        metadata = json.load(open(os.path.join(task, "task_metadata.json")))
        for split in ("train", "valid", "test"):
            paths, targets, vocabulary = read_hear_task(task, split)
            assert len(paths) == metadata["num_examples"][split] == sum(metadata["examples_per_label"][split].values())
            audio, rate = sf.read(paths[0])
            assert rate == RATE and len(audio) == round(metadata["sample_duration"] * RATE)
            assert np.abs(audio).max() > 0.05
    speaker_id = json.load(open(os.path.join(small_tasks[0], "task_metadata.json")))
    speakers = _split_speakers(small_tasks[0], speaker_id)
    assert speakers["train"] == speakers["valid"] == speakers["test"] == set(speaker_id["speakers"])
    assert speaker_id["examples_per_speaker"]["train"] == {s: 2 for s in speaker_id["speakers"]}
    word = json.load(open(os.path.join(small_tasks[1], "task_metadata.json")))
    speakers = _split_speakers(small_tasks[1], word)
    assert speakers == {split: set(names) for split, names in sc.WORD_SPEAKERS.items()}
    assert set(word["examples_per_label"]["test"]) == {"zero", "seven", "b", "w", "dog", "sky"}
    real = json.load(open(os.path.join(small_tasks[2], "task_metadata.json")))
    assert set(real["examples_per_speaker"]["test"]) == set(sc.RECORDED_WORD_SOURCES)
    assert real["examples_per_speaker"]["train"] == word["examples_per_speaker"]["train"]


def test_small_pretraining_corpus(tmp_path, in_ci):
    require_tools(in_ci)
    out = sc.build_pretraining_corpus(str(tmp_path), speakers=("flite_awb", "festival_krb", "tuxpaint_da"),
                                      utterances=2, seconds=3.0, progress=False)
    rows = open(os.path.join(out, "utterances.tsv")).read().splitlines()[1:]
    assert len(rows) == 6
    for row in rows:
        path, speaker = row.split("\t")[:2]
        info = sf.info(os.path.join(out, path))
        assert info.samplerate == RATE and info.channels == 1 and info.duration == pytest.approx(3.0)
        assert os.path.basename(os.path.dirname(path)) == speaker
