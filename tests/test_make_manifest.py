"""scripts/make_manifest.py and audio_ssl_ext.data.make_manifest on small generated folders."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from audio_ssl_ext.data import make_manifest as mm
from audio_ssl_ext.data.make_manifest import ManifestOptions, NoUsableAudioError, build_manifests
from audio_ssl_ext.data.manifest import ManifestError, read_manifest, write_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "make_manifest.py")

STEREO_RATE, STEREO_FRAMES = 44100, 66150  # 1.5 s
MONO_FRAMES = 16000  # 1.0 s at 16 kHz


def sine(freq, frames, rate, amplitude):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(frames) / rate)).astype(np.float32)


@pytest.fixture
def audio_dir(tmp_path):
    """16 kHz mono, 44.1 kHz stereo in a nested folder, a 0.2 s file, a corrupt and an empty file."""
    root = tmp_path / "audio"
    (root / "nested" / "deeper").mkdir(parents=True)
    sf.write(root / "mono16k.wav", sine(440, MONO_FRAMES, 16000, 0.5), 16000)
    # Different content per channel, so that the mix-down (mean) is checked, not one channel.
    left = sine(1000, STEREO_FRAMES, STEREO_RATE, 0.8)
    right = sine(3000, STEREO_FRAMES, STEREO_RATE, 0.4)
    sf.write(root / "nested" / "deeper" / "stereo44k.wav", np.stack([left, right], axis=1), STEREO_RATE)
    sf.write(root / "short.wav", sine(440, 3200, 16000, 0.5), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00not really a wave file" * 10)
    (root / "nested" / "empty.flac").write_bytes(b"")
    (root / "notes.txt").write_text("not audio, not listed")
    return root


def build(audio_dir, out_dir, **kw):
    kw.setdefault("valid_percent", 0.0)
    return build_manifests(str(audio_dir), str(out_dir), ManifestOptions(progress=False, **kw))


def tsv_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def reasons(report):
    return {os.path.basename(item.path): item.reason for item in report.left_out}


def test_manifest_lists_files_as_they_are(audio_dir, tmp_path):
    out = tmp_path / "out"
    report = build(audio_dir, out)

    train = tsv_lines(out / "train.tsv")
    assert train[0] == os.path.realpath(audio_dir)
    assert train[1:] == [
        f"mono16k.wav\t{MONO_FRAMES}",
        f"nested/deeper/stereo44k.wav\t{STEREO_FRAMES}",
        "short.wav\t3200",
    ]
    assert tsv_lines(out / "valid.tsv") == [os.path.realpath(audio_dir)]  # valid 0: root line only

    manifest = read_manifest(str(out / "train.tsv"))
    assert manifest.sizes == [MONO_FRAMES, STEREO_FRAMES, 3200]
    assert sf.info(manifest.audio_path(1)).frames == STEREO_FRAMES
    assert report.sample_rates == {16000: 2, 44100: 1} and report.channels == {1: 2, 2: 1}
    assert any("mixed sample rates" in w for w in report.warnings)


def test_unreadable_files_are_reported_not_listed(audio_dir, tmp_path):
    out = tmp_path / "out"
    report = build(audio_dir, out)

    left_out = reasons(report)
    assert set(left_out) == {"corrupt.wav", "empty.flac"}
    assert left_out["corrupt.wav"].startswith("unreadable")
    assert left_out["empty.flac"] == "unreadable: empty file (0 bytes)"
    listed = "\n".join(tsv_lines(out / "train.tsv") + tsv_lines(out / "valid.tsv"))
    assert "corrupt" not in listed and "empty" not in listed
    written = (out / mm.REPORT_NAME).read_text()
    assert f"{audio_dir / 'corrupt.wav'}\tunreadable" in written
    assert f"{audio_dir / 'nested' / 'empty.flac'}\tunreadable" in written


def test_undecodable_data_and_broken_links_are_reported(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", sine(440, 1600, 16000, 0.5), 16000)
    sf.write(audio / "truncated.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 44100), 44100)
    data = (audio / "truncated.flac").read_bytes()
    (audio / "truncated.flac").write_bytes(data[: len(data) // 2])  # the header still reads
    os.symlink(audio / "gone.wav", audio / "dangling.wav")

    report = build(audio, tmp_path / "out", sample_rate=16000)
    assert [e.name for e in report.train] == ["good.wav"]
    left_out = reasons(report)
    assert left_out["truncated.flac"].startswith("unreadable: decoding failed")
    assert left_out["dangling.wav"] == "unreadable: not a file (a broken link?)"
    assert not (tmp_path / "out" / "cache_16000" / "truncated.wav").exists()
    assert not list((tmp_path / "out" / "cache_16000").glob("*.partial"))


def test_unsupported_mp3_is_reported_per_file(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", sine(440, 1600, 16000, 0.5), 16000)
    (audio / "b.mp3").write_bytes(b"\xff\xfb" * 100)
    formats = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(mm.sf, "available_formats", lambda: formats)  # an old libsndfile

    report = build(audio, tmp_path / "out")
    assert "b.mp3" in reasons(report) and "cannot read .mp3" in reasons(report)["b.mp3"]
    assert [e.name for e in report.train] == ["a.wav"]


def test_min_and_max_seconds_leave_files_out_with_reasons(audio_dir, tmp_path):
    report = build(audio_dir, tmp_path / "out", min_seconds=0.5, max_seconds=1.2)

    assert [e.name for e in report.train] == ["mono16k.wav"]
    left_out = reasons(report)
    assert left_out["short.wav"] == "too short: 0.200 s < --min-seconds 0.5"
    assert left_out["stereo44k.wav"] == "too long: 1.500 s > --max-seconds 1.2"
    assert "1 x too long" in report.text() and "1 x too short" in report.text()


def test_split_sizes_and_seed():
    assert sum(mm.split_train_valid(200, 0.1, seed=1)) == 20
    assert mm.split_train_valid(200, 0.1, seed=1) == mm.split_train_valid(200, 0.1, seed=1)
    assert mm.split_train_valid(200, 0.1, seed=1) != mm.split_train_valid(200, 0.1, seed=2)
    assert sum(mm.split_train_valid(10, 0.01, seed=1)) == 1  # at least one when asked for
    assert sum(mm.split_train_valid(2, 0.9, seed=1)) == 1  # train never empty
    assert sum(mm.split_train_valid(1, 0.5, seed=1)) == 0
    assert sum(mm.split_train_valid(50, 0.0, seed=1)) == 0
    with pytest.raises(ValueError, match="valid_percent"):
        mm.split_train_valid(10, 1.0, seed=1)


def test_split_of_a_folder_is_disjoint_and_deterministic(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(20):
        sf.write(audio / f"clip{i:02d}.wav", sine(200 + 10 * i, 1600 + i, 16000, 0.5), 16000)

    first = build(audio, tmp_path / "a", valid_percent=0.25, seed=3)
    again = build(audio, tmp_path / "b", valid_percent=0.25, seed=3)
    other = build(audio, tmp_path / "c", valid_percent=0.25, seed=4)

    train, valid = tsv_lines(tmp_path / "a" / "train.tsv")[1:], tsv_lines(tmp_path / "a" / "valid.tsv")[1:]
    assert len(valid) == 5 and len(train) == 15
    assert sorted(train + valid) == [f"clip{i:02d}.wav\t{1600 + i}" for i in range(20)]
    assert train == sorted(train) and valid == sorted(valid)  # listing order is the path order
    assert (tmp_path / "b" / "valid.tsv").read_text() == (tmp_path / "a" / "valid.tsv").read_text()
    assert [e.name for e in first.valid] == [e.name for e in again.valid] != [e.name for e in other.valid]


def test_sample_rate_resamples_and_mixes_down_into_the_cache(audio_dir, tmp_path):
    out = tmp_path / "out"
    report = build(audio_dir, out, sample_rate=16000)
    cache = out / "cache_16000"

    manifest = read_manifest(str(out / "train.tsv"))
    assert manifest.root == os.path.realpath(cache)
    assert manifest.files == ["mono16k.wav", "nested/deeper/stereo44k.wav", "short.wav"]
    assert report.cache_counts == {"converted": 1, "up to date": 0, "linked": 2}

    # A file already at the rate and mono is linked, not copied.
    assert os.path.islink(cache / "mono16k.wav")
    assert os.readlink(cache / "mono16k.wav") == os.path.realpath(audio_dir / "mono16k.wav")

    converted = cache / "nested" / "deeper" / "stereo44k.wav"
    info = sf.info(converted)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "FLOAT")
    assert info.frames == manifest.sizes[1]
    assert abs(info.frames - round(STEREO_FRAMES * 16000 / STEREO_RATE)) <= 1

    wav, _ = sf.read(converted, dtype="float32")
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    freqs = np.fft.rfftfreq(len(wav), 1 / 16000)
    peak_1k = spectrum[np.argmin(np.abs(freqs - 1000))]
    peak_3k = spectrum[np.argmin(np.abs(freqs - 3000))]
    assert abs(freqs[np.argmax(spectrum)] - 1000) <= 1  # the frequency stays where it was
    assert peak_1k / peak_3k == pytest.approx(2.0, rel=0.02)  # mean of 0.8 and 0.4 amplitudes
    assert np.max(np.abs(wav)) < 0.7  # mean (<= 0.6), not sum (up to 1.2)


def test_streamed_conversion_equals_resampling_the_whole_file(audio_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(mm, "BLOCK_FRAMES", 4096)  # many blocks, so the stream joins are exercised
    source = audio_dir / "nested" / "deeper" / "stereo44k.wav"
    target = tmp_path / "converted.wav"

    written = mm.convert_to_cache(str(source), str(target), sf.info(source), 16000)

    stereo, _ = sf.read(source, dtype="float32")
    expected = soxr.resample(stereo.mean(axis=1), STEREO_RATE, 16000, quality="HQ")
    got, _ = sf.read(target, dtype="float32")
    assert written == len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not os.path.exists(str(target) + ".partial")


def test_rerun_reuses_the_cache_and_writes_the_same_manifests(audio_dir, tmp_path):
    out = tmp_path / "out"
    build(audio_dir, out, sample_rate=16000, valid_percent=0.4)
    first = {name: (out / name).read_text() for name in ("train.tsv", "valid.tsv")}
    converted = out / "cache_16000" / "nested" / "deeper" / "stereo44k.wav"
    before = os.stat(converted)

    report = build(audio_dir, out, sample_rate=16000, valid_percent=0.4)

    assert {name: (out / name).read_text() for name in first} == first
    after = os.stat(converted)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert report.cache_counts == {"converted": 0, "up to date": 1, "linked": 2}

    # A changed source (new mtime) is converted again.
    source = audio_dir / "nested" / "deeper" / "stereo44k.wav"
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert build(audio_dir, out, sample_rate=16000).cache_counts["converted"] == 1


def test_a_cache_inside_the_audio_folder_is_not_taken_for_input(audio_dir):
    out = audio_dir / "manifests"
    first = build(audio_dir, out, sample_rate=8000)
    second = build(audio_dir, out, sample_rate=8000)
    assert first.found == second.found == 5
    assert [e.name for e in second.train] == [e.name for e in first.train]


def test_a_cache_folder_holding_the_audio_is_refused(audio_dir, tmp_path):
    with pytest.raises(ManifestError, match="is, or contains, the audio folder"):
        build(audio_dir, tmp_path / "out", sample_rate=16000, cache_dir=str(tmp_path))


def test_cache_name_clash_is_reported(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "take.flac", sine(440, 4410, 44100, 0.5), 44100)  # converted to take.wav
    sf.write(audio / "take.wav", sine(440, 1600, 16000, 0.5), 16000)  # linked as take.wav

    report = build(audio, tmp_path / "out", sample_rate=16000)
    assert [e.name for e in report.train] == ["take.wav"]
    assert reasons(report)["take.wav"].startswith("name clash: its cache file take.wav is already taken")


def test_no_usable_file_raises_and_still_writes_the_report(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "broken.wav").write_bytes(b"garbage" * 20)
    out = tmp_path / "out"

    with pytest.raises(NoUsableAudioError, match="no usable audio file.*no manifest written"):
        build(audio, out)
    assert "broken.wav\tunreadable" in (out / mm.REPORT_NAME).read_text()
    assert not (out / "train.tsv").exists()
    with pytest.raises(ManifestError, match="audio folder not found"):
        build(tmp_path / "missing", out)


def test_cli_exit_status_without_usable_files(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_manifest_cli", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    (tmp_path / "audio").mkdir()

    assert cli.main([str(tmp_path / "audio"), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "no usable audio file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "audio"), str(tmp_path / "out"), "--ext", "aac"])


def test_write_manifest_round_trip_and_bad_names(tmp_path):
    path = str(tmp_path / "x.tsv")
    write_manifest(path, str(tmp_path), ["a/b.wav", "c.flac"], [10, 20])
    manifest = read_manifest(path)
    assert (manifest.root, manifest.files, manifest.sizes, manifest.line_numbers) == (
        str(tmp_path), ["a/b.wav", "c.flac"], [10, 20], [2, 3]
    )
    with pytest.raises(ManifestError, match="tab"):
        write_manifest(path, "/r", ["a\tb.wav"], [1])
    with pytest.raises(ManifestError, match="2 files but 1 sizes"):
        write_manifest(path, "/r", ["a.wav", "b.wav"], [1])


@pytest.mark.smoke
def test_command_line_end_to_end(audio_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, SCRIPT, str(audio_dir), str(out), "--sample-rate", "16000", "--valid-percent", "0.3",
         "--seed", "7", "--min-seconds", "0.5", "--ext", "wav,FLAC"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    train, valid = read_manifest(str(out / "train.tsv")), read_manifest(str(out / "valid.tsv"))
    assert train.root == valid.root == os.path.realpath(out / "cache_16000")
    assert sorted(train.files + valid.files) == ["mono16k.wav", "nested/deeper/stereo44k.wav"]
    assert len(valid) == 1
    for manifest in (train, valid):
        for i in range(len(manifest)):
            info = sf.info(manifest.audio_path(i))
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, manifest.sizes[i])
    assert "too short: 0.200 s" in result.stdout and "corrupt.wav\tunreadable" in result.stdout
    assert f"wrote {out / 'train.tsv'}" in result.stdout
