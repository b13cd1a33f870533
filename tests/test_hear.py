"""The HEAR module: API contract on our checkpoints, and the real hear-validator."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soxr
import torch

from audio_ssl_ext import hear
from tests.utils import require_kit, write_untrained_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("hear") / "music2vec_tiny.pt"
    return write_untrained_checkpoint(os.path.join(REPO, "examples/music2vec/tiny.yaml"), str(out))


@pytest.fixture(scope="module")
def model(checkpoint):
    return hear.load_model(checkpoint)


def test_attributes_and_shapes(model):
    assert model.sample_rate == 16000
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    audio = torch.rand(3, 25000) * 2 - 1
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    frames = model.model.num_frames(25000)
    assert embeddings.shape == (3, frames, model.timestamp_embedding_size)
    assert embeddings.dtype == torch.float32
    assert timestamps.shape == (3, frames)
    # Frame centres: the conv stack's receptive field (345 samples) / 2, then every 20 ms.
    expected = (345 / 2 / 16000 + np.arange(frames) * 0.02) * 1000
    np.testing.assert_allclose(timestamps[0].numpy(), expected, atol=1e-3)
    assert timestamps[0, -1] <= 25000 / 16000 * 1000
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size)
    torch.testing.assert_close(scene, embeddings.mean(dim=1))


def test_layer_option(model):
    audio = torch.rand(1, 16000) * 2 - 1
    states = model.model.extract_features(audio).hidden_states
    first = hear.HearModel(model.model, layer=0)
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, first)[0], states[0])
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, model)[0], states[-1])
    mean = hear.HearModel(model.model, layer="mean")
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, mean)[0], torch.stack(states).mean(0))
    with pytest.raises(ValueError, match="out of range"):
        hear.HearModel(model.model, layer=len(states))


def test_a_24khz_model_declares_16khz_and_resamples_inside(tmp_path):
    path = write_untrained_checkpoint(
        os.path.join(REPO, "examples/wav2vec2/tiny.yaml"), str(tmp_path / "w24.pt"), overrides=["task.sample_rate=24000"]
    )
    model = hear.load_model(path)
    assert model.model.sample_rate == 24000 and model.sample_rate == 16000
    audio = torch.rand(2, 16000) * 2 - 1
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    at_24k = torch.stack([torch.from_numpy(soxr.resample(a.numpy(), 16000, 24000, quality="HQ")) for a in audio])
    expected = model.model.extract_features(at_24k).hidden_states[-1]
    torch.testing.assert_close(embeddings, expected)
    assert timestamps[0, -1] <= 1000.0
    assert torch.allclose(timestamps[0, 1:] - timestamps[0, :-1], torch.tensor(1000 * 320 / 24000))


@pytest.mark.integration
def test_hear_validator_passes(checkpoint, in_ci, tmp_path):
    require_kit("hearvalidator", in_ci, import_it=False)
    require_kit("tensorflow", in_ci, import_it=False)
    proc = subprocess.run(
        [sys.executable, "-m", "hearvalidator.validate", "audio_ssl_ext.hear", "-m", checkpoint, "-d", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Looks good!" in proc.stdout


def write_tone_task(out_dir):
    """A 3-class scene task in HEAR's format (tones an octave apart), no Debian packages needed."""
    from audio_ssl_ext.downstream.hear_tasks import Clip, write_hear_task

    splits = {}
    for split, count in (("train", 12), ("valid", 6), ("test", 6)):
        clips = []
        for i in range(count):
            label = ["low", "mid", "high"][i % 3]
            f0 = {"low": 220.0, "mid": 440.0, "high": 880.0}[label]
            t = np.arange(8000) / 16000
            clips.append(Clip(f"{split}_{i:02d}.wav", label, (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)))
        splits[split] = clips
    return write_hear_task(str(out_dir), "tones", splits, 0.5)


@pytest.mark.integration
def test_heareval_embedding_and_prediction_runners(checkpoint, in_ci, tmp_path):
    require_kit("heareval", in_ci, import_it=False)
    require_kit("pytorch_lightning", in_ci, import_it=False)
    write_tone_task(tmp_path / "tasks")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    for command in (
        ["heareval.embeddings.runner", "audio_ssl_ext.hear", "--model", checkpoint,
         "--tasks-dir", "tasks", "--embeddings-dir", "embeddings"],
        ["heareval.predictions.runner", "embeddings/audio_ssl_ext.hear/tones", "--grid", "faster", "--grid-points", "1"],
    ):
        proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    task = tmp_path / "embeddings" / "audio_ssl_ext.hear" / "tones"
    assert json.loads((task / "train.embedding-dimensions.json").read_text()) == [12, 64]
    done = json.loads((task / "test.predicted-scores.json").read_text())
    assert 0.0 <= done["test"]["test_top1_acc"] <= 1.0
