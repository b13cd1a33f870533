"""The probe benchmark: its statistics on hand-computed cases, the classifier, and the script."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from audio_ssl_ext.downstream.hear_tasks import Clip, write_hear_task
from audio_ssl_ext.downstream.probe import (
    ProbeConfig,
    confidence_interval,
    normalized_scores,
    select_layer,
    train_classifier,
)
from tests.utils import write_untrained_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_confidence_interval_hand_case():
    mean, half = confidence_interval([0.1, 0.2, 0.3])
    # t(0.975, 2) = 4.3027; sample std 0.1; sqrt(3)
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert confidence_interval([0.5]) == (0.5, 0.0)


def test_normalized_score_hand_case():
    means = {"a": {"t1": 0.9, "t2": 0.5}, "b": {"t1": 0.5, "t2": 0.7}, "c": {"t1": 0.7, "t2": 0.6}}
    assert normalized_scores(means) == pytest.approx({"a": 50.0, "b": 50.0, "c": 50.0})
    means["a"]["t2"] = 0.8  # a is now best on both tasks
    scores = normalized_scores(means)
    assert scores["a"] == pytest.approx(100.0) and scores["b"] == pytest.approx((0 + 0.5) / 2 * 100)


def test_select_layer():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(select_layer(x, "last"), x[:, 2:3])
    assert np.array_equal(select_layer(x, "0"), x[:, 0:1])
    assert np.array_equal(select_layer(x, "mean"), x.mean(1, keepdims=True))
    assert select_layer(x, "weighted").shape == (2, 3, 4)
    assert select_layer(x[:, :1], "2").shape == (2, 1, 4)  # a single-layer baseline passes through
    with pytest.raises(ValueError, match="out of range"):
        select_layer(x, "3")


def synthetic_splits(rng, informative_layer, n=(120, 60, 60), classes=3):
    """Three layers; only ``informative_layer`` separates the classes."""
    splits = {}
    for split, count in zip(("train", "valid", "test"), n):
        y = rng.integers(0, classes, size=count)
        x = rng.normal(size=(count, 3, 8)).astype(np.float32)
        x[:, informative_layer, 0] += 4.0 * y
        splits[split] = (x, y)
    return splits


def test_classifier_learns_and_the_layer_weighting_finds_the_informative_layer():
    rng = np.random.default_rng(0)
    splits = synthetic_splits(rng, informative_layer=1, n=(300, 100, 100))
    cfg = ProbeConfig(max_epochs=200, patience=10, seeds=1, batch_size=32, hidden_dim=128)
    informed = train_classifier(splits, 3, ProbeConfig(**{**cfg.__dict__, "layer": "1"}), seed=0)
    assert informed["test"] > 0.9
    assert informed["epochs"] < 200  # early stopping ended it
    blind = train_classifier(splits, 3, ProbeConfig(**{**cfg.__dict__, "layer": "0"}), seed=0)
    assert blind["test"] < 0.5  # layer 0 holds no label information (chance is 1/3)
    weighted = train_classifier(splits, 3, ProbeConfig(**{**cfg.__dict__, "layer": "weighted"}), seed=0)
    assert weighted["test"] > 0.6
    assert np.argmax(weighted["layer_weights"]) == 1


@pytest.mark.integration
def test_probe_script_writes_the_table(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 24), ("valid", 12), ("test", 12)):
        clips = []
        for i in range(count):
            label = ["low", "mid", "high"][i % 3]
            f0 = {"low": 220.0, "mid": 440.0, "high": 880.0}[label] * rng.uniform(0.97, 1.03)
            t = np.arange(8000) / 16000
            audio = (0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
            clips.append(Clip(f"{split}_{i:03d}.wav", label, audio))
        splits[split] = clips
    tasks = tmp_path / "tasks"
    write_hear_task(str(tasks), "tones", splits, 0.5)
    checkpoint = write_untrained_checkpoint(os.path.join(REPO, "examples/music2vec/tiny.yaml"), str(tmp_path / "m.pt"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "probe.py"), "--tasks-dir", str(tasks),
         "--checkpoint", f"m2v={checkpoint}", "--seeds", "2", "--max-epochs", "30", "--patience", "5",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(out / "probe.json"))
    assert results["models"] == ["m2v", "m2v (random init)", "log-mel stats"]
    logmel = results["tasks"]["tones"]["log-mel stats"]
    assert len(logmel["runs"]) == 2 and logmel["test_mean"] > 0.9  # three octaves apart: easy
    assert (out / "probe.png").stat().st_size > 0
    assert "| log-mel stats |" in (out / "probe.md").read_text() and "s(m)" in proc.stdout
