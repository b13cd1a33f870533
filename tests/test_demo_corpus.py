"""The demo corpus generator: determinism, files, label consistency, and labels that match the audio."""

import filecmp
import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf

from audio_ssl_ext.tools.demo_corpus import (
    CLIP_CLASSES,
    EVENT_TYPES,
    DemoCorpusError,
    make_demo_corpus,
    midi_to_hz,
    read_clip_labels,
    read_frame_labels,
    read_label_info,
)

NUM_CLIPS, CLIP_SECONDS, SAMPLE_RATE, LABEL_RATE = 8, 2.0, 16000, 50
HOP = SAMPLE_RATE // LABEL_RATE
PITCHED_EVENTS = {EVENT_TYPES.index(name) for name in ("plucked", "bowed", "organ", "speech")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_demo_corpus(
        str(tmp_path_factory.mktemp("demo")),
        num_clips=NUM_CLIPS,
        clip_seconds=CLIP_SECONDS,
        sample_rate=SAMPLE_RATE,
        label_rate=LABEL_RATE,
        seed=0,
    )


def corpus_files(corpus_dir):
    return sorted(name for name in os.listdir(corpus_dir) if not name.startswith("."))


def read_clip(corpus_dir, name):
    wave, sample_rate = sf.read(os.path.join(corpus_dir, name), dtype="float64")
    assert sample_rate == SAMPLE_RATE
    return wave


def frame_rms_db(wave, num_frames):
    frames = wave[: num_frames * HOP].reshape(num_frames, HOP)
    return 20.0 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)


def test_same_seed_gives_identical_bytes_and_clips_depend_only_on_seed_and_index(corpus, tmp_path):
    kwargs = dict(
        num_clips=4, clip_seconds=CLIP_SECONDS, sample_rate=SAMPLE_RATE, label_rate=LABEL_RATE
    )
    first = make_demo_corpus(str(tmp_path / "a"), seed=0, **kwargs)
    second = make_demo_corpus(str(tmp_path / "b"), seed=0, **kwargs)
    other_seed = make_demo_corpus(str(tmp_path / "c"), seed=1, **kwargs)
    names = corpus_files(first)
    assert names == corpus_files(second) == corpus_files(other_seed)
    assert all(
        filecmp.cmp(os.path.join(first, n), os.path.join(second, n), shallow=False) for n in names
    )
    wavs = [n for n in names if n.endswith(".wav")]
    assert len(wavs) == 4
    assert not any(
        filecmp.cmp(os.path.join(first, n), os.path.join(other_seed, n), shallow=False)
        for n in wavs
    )
    # The 8-clip corpus of the same seed starts with these 4 clips.
    assert all(
        filecmp.cmp(os.path.join(first, n), os.path.join(corpus, n), shallow=False) for n in wavs
    )


def test_files_counts_durations_and_format(corpus):
    wavs = [n for n in corpus_files(corpus) if n.endswith(".wav")]
    assert wavs == [f"clip_{i:04d}.wav" for i in range(NUM_CLIPS)]
    for name in wavs:
        info = sf.info(os.path.join(corpus, name))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (
            SAMPLE_RATE,
            1,
            int(CLIP_SECONDS * SAMPLE_RATE),
            "PCM_16",
        )
    info = read_label_info(corpus)
    assert info["label_rate"] == LABEL_RATE and info["hop_samples"] == HOP
    assert info["frames_per_clip"] == int(CLIP_SECONDS * LABEL_RATE)
    assert info["event_types"][0] == "silence" and info["clip_classes"] == list(CLIP_CLASSES)


def test_label_files_cover_every_clip_with_consistent_lengths_and_values(corpus):
    wavs = [n for n in corpus_files(corpus) if n.endswith(".wav")]
    clip_labels = read_clip_labels(corpus)
    pitch, event = read_frame_labels(corpus, "pitch"), read_frame_labels(corpus, "event")
    assert sorted(clip_labels) == sorted(pitch) == sorted(event) == wavs
    counts = [list(clip_labels.values()).count(c) for c in CLIP_CLASSES]
    assert counts == [NUM_CLIPS // len(CLIP_CLASSES)] * len(CLIP_CLASSES)
    for name in wavs:
        assert len(pitch[name]) == len(event[name]) == CLIP_SECONDS * LABEL_RATE
        assert set(event[name]) <= set(range(len(EVENT_TYPES)))
        assert (event[name] == 0).any() and (
            event[name] != 0
        ).any(), "every clip has silence and events"
        # Pitch only where something pitched sounds, and in a musical range.
        pitched = np.isin(event[name], list(PITCHED_EVENTS))
        assert (pitch[name][~pitched] == 0).all()
        assert ((pitch[name][pitch[name] > 0] >= 30) & (pitch[name][pitch[name] > 0] <= 96)).all()
        # The clip class decides which events sound.
        allowed = {
            "harmonic": {"plucked", "bowed", "organ"},
            "percussive": {"kick", "snare", "hihat"},
            "noise": {"noise"},
            "speech": {"speech"},
        }[clip_labels[name]]
        assert {EVENT_TYPES[i] for i in set(event[name]) - {0}} <= allowed
    assert (
        np.concatenate(list(pitch.values())) > 0
    ).sum() > 0.2 * NUM_CLIPS * CLIP_SECONDS * LABEL_RATE


def test_events_tsv_agrees_with_frame_labels(corpus):
    event = read_frame_labels(corpus, "event")
    pitch = read_frame_labels(corpus, "pitch")
    with open(os.path.join(corpus, "events.tsv")) as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    covered = {name: np.zeros_like(labels) for name, labels in event.items()}
    for name, onset, offset, event_type, notes in rows:
        start, stop = round(float(onset) * LABEL_RATE), round(float(offset) * LABEL_RATE)
        assert (event[name][start:stop] == EVENT_TYPES.index(event_type)).all()
        if notes:
            assert (pitch[name][start:stop] == int(notes.split(",")[0])).all()
        covered[name][start:stop] += 1
    for name, labels in event.items():
        assert ((covered[name] == 1) == (labels != 0)).all()


def spectrum(wave, sample_rate):
    padded = 16 * len(wave)  # zero-padding: a fine grid to locate peaks on
    return np.fft.rfftfreq(padded, 1.0 / sample_rate), np.abs(
        np.fft.rfft(wave * np.hanning(len(wave)), padded)
    )


def peak_db_near(freqs, magnitude, freq):
    """Spectrum peak within half a semitone of ``freq``, in dB above the spectrum's median."""
    near = (freqs > freq * 2 ** (-0.5 / 12)) & (freqs < freq * 2 ** (0.5 / 12))
    return 20.0 * np.log10(magnitude[near].max() / np.median(magnitude))


def peak_offset_semitones(freqs, magnitude, freq):
    """Where the strongest peak within 1.5 semitones of ``freq`` lies, in semitones from ``freq``."""
    near = (freqs > freq * 2 ** (-1.5 / 12)) & (freqs < freq * 2 ** (1.5 / 12))
    return 12.0 * np.log2(freqs[near][np.argmax(magnitude[near])] / freq)


def chord_frames(corpus_dir):
    with open(os.path.join(corpus_dir, "events.tsv")) as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    return {
        (name, j)
        for name, onset, offset, _, notes in rows
        if "," in notes
        for j in range(round(float(onset) * LABEL_RATE), round(float(offset) * LABEL_RATE))
    }


def test_pitched_frames_have_a_spectral_peak_at_the_labelled_pitch(corpus):
    pitch, event = read_frame_labels(corpus, "pitch"), read_frame_labels(corpus, "event")
    chords = chord_frames(corpus)
    checked = {}
    for name in pitch:
        wave = read_clip(corpus, name)
        for j in range(2, len(pitch[name]) - 2, 2):
            window = pitch[name][j - 2 : j + 2]
            if window[0] == 0 or (window != window[0]).any():
                continue  # 80 ms of one labelled pitch: enough resolution for the lowest notes
            freqs, magnitude = spectrum(wave[(j - 2) * HOP : (j + 2) * HOP], SAMPLE_RATE)
            f0 = float(midi_to_hz(window[0]))
            at_pitch = peak_db_near(freqs, magnitude, f0)
            # Nothing sounds an octave below the main note (the root is a chord's lowest note): a label
            # an octave too high would find the true fundamental there.
            below = peak_db_near(freqs, magnitude, f0 / 2)
            assert at_pitch > 30.0 and at_pitch > below + 15.0, (
                name,
                j,
                window[0],
                at_pitch,
                below,
            )
            if (name, j) not in chords:
                # A single voice: the fundamental's peak is where the label says, to within the rounding
                # to semitones (speech glides, bowed notes have vibrato); a label one semitone off fails.
                assert abs(peak_offset_semitones(freqs, magnitude, f0)) < 0.5, (name, j, window[0])
            kind = EVENT_TYPES[event[name][j]]
            checked[kind] = checked.get(kind, 0) + 1
    assert (
        checked.get("speech", 0) > 20
        and sum(checked.get(k, 0) for k in ("plucked", "bowed", "organ")) > 20
    ), checked


def test_silence_frames_are_quiet_and_no_clip_clips(corpus):
    event = read_frame_labels(corpus, "event")
    for name, labels in event.items():
        wave = read_clip(corpus, name)
        assert np.abs(wave).max() == pytest.approx(
            10 ** (-1 / 20), abs=1e-4
        )  # peak-normalized to -1 dBFS
        rms = frame_rms_db(wave, len(labels))
        silence, sounding = rms[labels == 0], rms[labels != 0]
        assert np.median(sounding) - np.median(silence) > 25.0, name
        # Every event's loudest frame stands well above the loudest silent frame.
        boundaries = np.flatnonzero(np.diff(np.concatenate([[0], labels, [0]])) != 0)
        for start, stop in zip(boundaries[:-1], boundaries[1:]):
            if labels[start] != 0:
                assert rms[start:stop].max() - silence.max() > 20.0, (name, start, stop)
        pcm = sf.read(os.path.join(corpus, name), dtype="int16")[0]
        assert np.abs(pcm.astype(np.int32)).max() < 32767


def test_regenerating_replaces_the_previous_corpus_and_refuses_foreign_wavs(tmp_path):
    out = str(tmp_path / "corpus")
    make_demo_corpus(out, num_clips=3, clip_seconds=1.0)
    make_demo_corpus(out, num_clips=2, clip_seconds=1.0)
    assert sorted(n for n in os.listdir(out) if n.endswith(".wav")) == [
        "clip_0000.wav",
        "clip_0001.wav",
    ]
    sf.write(os.path.join(out, "mine.wav"), np.zeros(100), 16000)
    with pytest.raises(DemoCorpusError, match="mine.wav"):
        make_demo_corpus(out, num_clips=2, clip_seconds=1.0)


def test_other_sample_and_label_rates(tmp_path):
    out = make_demo_corpus(
        str(tmp_path / "mert"), num_clips=4, clip_seconds=1.0, sample_rate=24000, label_rate=75
    )
    assert sf.info(os.path.join(out, "clip_0003.wav")).samplerate == 24000
    assert {len(v) for v in read_frame_labels(out, "event").values()} == {75}
    with pytest.raises(DemoCorpusError, match="must divide"):
        make_demo_corpus(str(tmp_path / "bad"), sample_rate=16000, label_rate=75)
    with pytest.raises(DemoCorpusError, match="too short"):
        make_demo_corpus(str(tmp_path / "bad"), clip_seconds=0.1)


def test_the_shortest_clips_still_hold_an_event_and_a_silence(tmp_path):
    out = make_demo_corpus(str(tmp_path / "short"), num_clips=16, clip_seconds=0.2)
    for labels in read_frame_labels(out, "event").values():
        assert len(labels) == 10 and labels[0] == 0 and (labels != 0).any()


def test_readers_name_the_file_and_line_of_bad_labels(corpus, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("labels.json", "clip_labels.tsv"):
        (broken / name).write_text(open(os.path.join(corpus, name)).read())
    lines = open(os.path.join(corpus, "frame_labels.tsv")).read().splitlines()
    name, pitch, event = lines[2].split("\t")
    lines[2] = "\t".join([name, pitch.rsplit(" ", 1)[0], event])
    (broken / "frame_labels.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DemoCorpusError, match=r"frame_labels.tsv, line 3: 99 pitch labels for clip_0001.wav"
    ):
        read_frame_labels(str(broken), "pitch")
    with pytest.raises(DemoCorpusError, match="must be one of"):
        read_frame_labels(str(broken), "chord")
    with pytest.raises(DemoCorpusError, match="labels.json: not found"):
        read_frame_labels(str(tmp_path), "pitch")
    assert json.load(open(broken / "labels.json"))["frames_per_clip"] == 100


def test_script_writes_a_corpus_and_reports_it(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_demo_corpus",
        os.path.join(os.path.dirname(__file__), "..", "scripts", "make_demo_corpus.py"),
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = str(tmp_path / "cli")
    assert script.main([out, "--num-clips", "2", "--clip-seconds", "1", "--seed", "3"]) == 0
    assert "wrote 2 wavs" in capsys.readouterr().out
    assert read_label_info(out)["seed"] == 3 and len(read_clip_labels(out)) == 2
    assert script.main([str(tmp_path / "bad"), "--label-rate", "7"]) == 2
    assert "must divide" in capsys.readouterr().err
