"""Fault suite, audio (#14 items 3, 5, 6, 10): bad samples, bad shapes and bad lengths are refused
with the manifest line, the file or the batch item; a long file is read a crop at a time."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl_ext.data.audio import MAX_ABS_SAMPLE, AudioInputError, read_audio
from audio_ssl_ext.data.manifest import read_manifest
from audio_ssl_ext.data.waveform_dataset import WaveformDataset
from tests.utils import REPO_ROOT, compose_example_config, write_untrained_checkpoint

SR = 16000


def write_manifest_of(root, signals, subtype="FLOAT"):
    """One float wav per signal under root/audio, and root/train.tsv over them."""
    os.makedirs(root / "audio", exist_ok=True)
    lines = [str(root / "audio")]
    for i, signal in enumerate(signals):
        sf.write(root / "audio" / f"{i}.wav", np.asarray(signal, dtype=np.float32), SR, subtype=subtype)
        lines.append(f"{i}.wav\t{len(signal)}")
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return read_manifest(str(root / "train.tsv"))


def first_batch(dataset):
    return dataset.collater([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sample_is_refused_with_line_file_and_sample(tmp_path, bad):
    clean = np.zeros(16000, dtype=np.float32)
    broken = clean.copy()
    broken[1234] = bad
    manifest = write_manifest_of(tmp_path, [clean, broken])
    dataset = WaveformDataset(manifest, SR, max_sample_size=16000, shuffle=False)
    with pytest.raises(AudioInputError, match=r"train\.tsv, line 3: .*1\.wav: 1 non-finite samples .*at sample 1234"):
        first_batch(dataset)


def test_float_samples_far_outside_full_scale_are_refused(tmp_path):
    # int16 values stored as floats without scaling: the classic way a float wav goes wrong.
    unscaled = (np.sin(np.arange(8000) / 10) * 20000).astype(np.float32)
    manifest = write_manifest_of(tmp_path, [unscaled])
    with pytest.raises(AudioInputError, match=r"line 2: .*0\.wav: samples reach 2e\+04 .*far outside"):
        first_batch(WaveformDataset(manifest, SR))
    # Overshoot of real audio (resampling, lossy decoding) stays under the bound and passes.
    overshoot = np.full(8000, 1.2, dtype=np.float32)
    assert 1.2 < MAX_ABS_SAMPLE
    path = tmp_path / "overshoot.wav"
    sf.write(path, overshoot, SR, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(str(path)), overshoot)


def test_stereo_channels_are_checked_before_they_are_averaged(tmp_path):
    # +3 and -3 average to 0: a check after the channel mean would miss both.
    stereo = np.zeros((4000, 2), dtype=np.float32)
    stereo[100] = (3.0, -3.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SR, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="at sample 100"):
        read_audio(str(path))


def test_empty_file_is_refused_when_the_dataset_loads(tmp_path):
    manifest = write_manifest_of(tmp_path, [np.zeros(8000), np.zeros(0)])
    with pytest.raises(AudioInputError, match=r"train\.tsv, line 3: .*1\.wav: the file is empty"):
        WaveformDataset(manifest, SR, fixed_length=8000)


def test_file_shorter_than_the_receptive_field_is_refused_at_load(tmp_path):
    """The waveform task learns the model's shortest input when it builds it; music2vec's tiny
    conv stack, kernels (10, 8, 4, 4) and strides (5, 4, 4, 4), sees 1 + 9 + 7*5 + 3*20 + 3*80 =
    345 samples per frame."""
    from fairseq import tasks

    write_manifest_of(tmp_path, [np.zeros(16000), np.zeros(344), np.zeros(345)])
    cfg = compose_example_config("music2vec", "tiny", [f"task.data={tmp_path}", "task.min_sample_size=null"])
    task = tasks.setup_task(cfg.task)
    task.build_model(cfg.model)
    assert task.min_input_samples == 345
    with pytest.raises(AudioInputError, match=r"train\.tsv, line 3: .*1\.wav: 344 samples, fewer than the 345 .*receptive field"):
        task.load_dataset("train")
    # A min_sample_size above it leaves the short file out instead (fairseq's filter), as before.
    cfg.task.min_sample_size = 400
    task = tasks.setup_task(cfg.task)
    task.build_model(cfg.model)
    task.load_dataset("train")
    assert len(task.dataset("train")) == 1


def test_dataset_loaded_before_the_model_is_checked_when_the_model_is_built(tmp_path):
    from fairseq import tasks

    write_manifest_of(tmp_path, [np.zeros(16000), np.zeros(100)])
    cfg = compose_example_config("music2vec", "tiny", [f"task.data={tmp_path}", "task.min_sample_size=null"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    with pytest.raises(AudioInputError, match=r"line 3: .*1\.wav: 100 samples, fewer than the 345"):
        task.build_model(cfg.model)


def test_only_the_crop_of_a_long_file_is_decoded(tmp_path, monkeypatch):
    """A 60 s file, 1 s crops: each item decodes 16000 samples, not 960000 (counted at soundfile's
    read, what is decoded); the crops are the seeded ones (the ramp's first value is the offset)."""
    minute = (np.arange(60 * SR) / 1e6).astype(np.float32)
    manifest = write_manifest_of(tmp_path, [minute, minute])
    decoded = []
    original = sf.SoundFile.read

    def counting_read(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        decoded.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    dataset = WaveformDataset(manifest, SR, max_sample_size=SR, seed=5, shuffle=False)
    batch = first_batch(dataset)
    assert decoded == [SR, SR]
    starts = [dataset.crop_start(i, 60 * SR, SR) for i in range(2)]
    offsets = (batch["net_input"]["source"][:, 0].double() * 1e6).round().long().tolist()
    assert offsets == starts and starts[0] != starts[1]
    # The crop holds the file's samples from its offset on, exactly.
    torch.testing.assert_close(batch["net_input"]["source"][1], torch.from_numpy(minute[starts[1] : starts[1] + SR]))


# ---- downstream: tensors handed in by s3prl, HEAR and the probe ----


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "music2vec.pt"
    return write_untrained_checkpoint(os.path.join(REPO_ROOT, "examples", "music2vec", "tiny.yaml"), str(out))


def test_s3prl_upstream_refuses_stereo_and_names_non_finite_items(checkpoint):
    from audio_ssl_ext.downstream.s3prl import UpstreamExpert

    upstream = UpstreamExpert(checkpoint)
    mono = torch.zeros(8000)
    with pytest.raises(ValueError, match=r"wavs\[1\] has shape \(2, 8000\).*mono"):
        upstream([mono, torch.zeros(2, 8000)])
    broken = mono.clone()
    broken[77] = float("nan")
    with pytest.raises(ValueError, match=r"wavs\[1\]: 1 non-finite samples .*first at sample 77"):
        upstream([mono, broken])
    assert upstream([mono, mono[None]])["hidden_states"][0].shape[0] == 2  # (1, S) is mono


def test_load_model_hear_and_s3prl_name_the_non_finite_batch_item(checkpoint):
    from audio_ssl_ext import hear
    from audio_ssl_ext.downstream.load import load_model

    model = hear.load_model(checkpoint)
    audio = torch.zeros(3, 8000)
    audio[2, 5] = float("inf")
    with pytest.raises(ValueError, match=r"wavs\[2\]: 1 non-finite samples"):
        hear.get_scene_embeddings(audio, model)
    with pytest.raises(ValueError, match=r"wavs\[2\]: 1 non-finite samples"):
        hear.get_timestamp_embeddings(audio, model)
    with pytest.raises(ValueError, match=r"wavs\[2\]: 1 non-finite samples"):
        load_model(checkpoint).extract_features(audio)


def test_probe_reads_task_audio_through_the_checks(tmp_path):
    from audio_ssl_ext.downstream.probe import embed_split

    path = tmp_path / "clip.wav"
    clip = np.zeros(1600, dtype=np.float32)
    clip[3] = np.nan
    sf.write(path, clip, SR, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=r"clip\.wav: 1 non-finite samples"):
        embed_split(lambda clips: np.zeros((len(clips), 1, 2)), [str(path)])


def test_a_truncated_file_whose_header_keeps_its_length_is_refused(tmp_path):
    """A cut MP3 keeps its header's frame count and decodes short: the missing samples must not
    become padding."""
    path = tmp_path / "cut.mp3"
    sf.write(path, (0.1 * np.sin(np.arange(48000) / 10)).astype(np.float32), SR, format="MP3")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert sf.info(str(path)).frames == 48000
    with pytest.raises(AudioInputError, match=r"cut\.mp3: decoded 0 samples from sample 30000, the header promises 10000"):
        read_audio(str(path), SR, start=30000, frames=10000, expected_length=48000)
