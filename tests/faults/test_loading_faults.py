"""Fault suite, loading (#14 items 5, 7, 8): manifests and checkpoints that would be misread are
refused with their names; checkpoints are read without running code from them."""

import argparse
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from audio_ssl_ext.checkpoint_io import CheckpointError, load_checkpoint
from audio_ssl_ext.data.manifest import ManifestError, read_manifest
from tests.utils import REPO_ROOT, write_untrained_checkpoint

# ---- manifests ----


def test_manifest_without_root_line_is_refused(tmp_path):
    (tmp_path / "train.tsv").write_text("a.wav\t16000\nb.wav\t16000\n")
    with pytest.raises(ManifestError, match=r"train\.tsv, line 1: 'a\.wav\\t16000' is an entry, not the audio root"):
        read_manifest(str(tmp_path / "train.tsv"))


@pytest.mark.parametrize("root, problem", [("a_file", "is not a folder"), ("nowhere", "does not exist")])
def test_manifest_root_that_is_not_a_folder_is_refused(tmp_path, root, problem):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "train.tsv").write_text(f"{tmp_path / root}\na.wav\t16000\n")
    with pytest.raises(ManifestError, match=rf"train\.tsv, line 1: the audio root .*{root}' {problem}"):
        read_manifest(str(tmp_path / "train.tsv"))


def test_duplicate_manifest_entries_are_refused_with_both_lines(tmp_path):
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.wav\t16000\nb.wav\t8000\n./a.wav\t16000\n")
    with pytest.raises(ManifestError, match=r"train\.tsv, line 4: '\./a\.wav' is listed again \(first on line 2\)"):
        read_manifest(str(tmp_path / "train.tsv"))


# ---- checkpoints ----


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "music2vec.pt"
    return write_untrained_checkpoint(os.path.join(REPO_ROOT, "examples", "music2vec", "tiny.yaml"), str(out))


class RunsCodeWhenUnpickled:
    """What a hostile checkpoint holds: unpickling it calls open(marker, "w")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def hostile_copy(checkpoint, path):
    """``checkpoint`` with a payload that creates ``<folder>/ran`` when unpickled; the marker's path."""
    marker = path.parent / "ran"
    state = torch.load(checkpoint, weights_only=True)
    state["extra_state"] = {"payload": RunsCodeWhenUnpickled(str(marker))}
    torch.save(state, path)
    return marker


def test_checkpoint_holding_other_classes_is_refused_without_running_them(checkpoint, tmp_path):
    from audio_ssl_ext.downstream.load import load_model

    hostile = tmp_path / "hostile.pt"
    marker = hostile_copy(checkpoint, hostile)
    with pytest.raises(CheckpointError, match=r"hostile\.pt: the checkpoint refers to io\.open, outside the allow-list.*trust_checkpoint=True"):
        load_model(str(hostile))
    assert not marker.exists()
    # The documented opt-in reads it with the full unpickler (and runs what it holds), also for
    # feature dumping (scripts/dump_features.py --trust-checkpoint).
    from audio_ssl_ext.clustering.dump import CheckpointFeatures

    with pytest.raises(CheckpointError, match="outside the allow-list"):
        CheckpointFeatures(str(hostile), 1)
    assert not marker.exists()
    CheckpointFeatures(str(hostile), 1, trust_checkpoint=True)
    assert marker.exists()


def test_fairseq_checkpoint_layouts_load_weights_only(checkpoint, tmp_path):
    """What fairseq's trainer writes besides tensors (trainer.state_dict: optimizer history, metric
    meters whose values may be numpy scalars, a numpy ``best``), a ``cfg`` saved as a DictConfig,
    and an old checkpoint's ``args`` Namespace: all load weights-only through the allow-list,
    which plain ``torch.load(weights_only=True)`` refuses."""
    from fairseq.logging import metrics
    from omegaconf import OmegaConf

    from audio_ssl_ext.downstream.load import load_model

    state = torch.load(checkpoint, weights_only=True)
    with metrics.aggregate(new_root=True) as meters:  # a private aggregator: other tests' metrics untouched
        metrics.log_scalar("loss", torch.tensor(1.5), 2, round=3)
        metrics.log_scalar("accuracy", np.float64(0.5), 2)
    state["cfg"] = OmegaConf.create(state["cfg"])
    state["optimizer_history"] = [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": np.float64(2.5)}, "num_updates": 7}]
    state["extra_state"] = {"metrics": {"train": meters.state_dict()}, "best": np.float64(2.5), "val_loss": np.float32(2.5),
                            "legacy_args": argparse.Namespace(arch="hubert", lr=[0.1])}
    layered = tmp_path / "layered.pt"
    torch.save(state, layered)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(layered, weights_only=True)
    loaded = load_checkpoint(str(layered))
    assert loaded["extra_state"]["legacy_args"].arch == "hubert" and loaded["extra_state"]["best"] == 2.5
    model = load_model(str(layered))
    reference = load_model(checkpoint)
    wav = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    torch.testing.assert_close(model.extract_features(wav).hidden_states[-1], reference.extract_features(wav).hidden_states[-1])


def test_checkpoint_with_nan_weights_names_the_parameter(checkpoint, tmp_path):
    from audio_ssl_ext.downstream.load import load_model

    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.dim() == 2)
    state["model"][name][0, 0] = float("nan")
    state["model"][name][1, 0] = float("inf")
    diverged = tmp_path / "diverged.pt"
    torch.save(state, diverged)
    with pytest.raises(CheckpointError, match=rf"diverged\.pt: parameter '{name}' holds 2 NaN/inf values"):
        load_model(str(diverged))


def test_jooci_reads_its_content_checkpoint_safely(checkpoint, tmp_path):
    from audio_ssl_ext.models.jooci import JoociModel

    hostile = tmp_path / "content.pt"
    marker = hostile_copy(checkpoint, hostile)
    stub = types.SimpleNamespace(cfg=types.SimpleNamespace(content_checkpoint=str(hostile)),
                                 content_initialized=torch.tensor(False))
    with pytest.raises(CheckpointError, match=r"content\.pt: the checkpoint refers to io\.open"):
        JoociModel._init_content_once(stub)
    assert not marker.exists()


def test_s3prl_runner_loads_its_checkpoints_weights_only_without_a_process_wide_switch(tmp_path, monkeypatch):
    """s3prl's own checkpoints hold an argparse.Namespace: inside the runner they load with
    torch's weights-only default, and nothing turns weights-only off for the process tree."""
    from audio_ssl_ext.downstream import s3prl_run

    s3prl_ckpt = tmp_path / "dev-best.ckpt"
    torch.save({"Args": argparse.Namespace(upstream="audio_ssl"), "Step": 3}, s3prl_ckpt)
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"Args": RunsCodeWhenUnpickled(str(tmp_path / "ran"))}, hostile)
    seen = {}

    def fake_main():
        seen["env"] = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        seen["args"] = torch.load(s3prl_ckpt, map_location="cpu")["Args"]  # s3prl's call, weights_only unset
        with pytest.raises(Exception, match="io.open"):
            torch.load(hostile, map_location="cpu")

    package = types.ModuleType("s3prl")
    package.__file__ = str(tmp_path / "s3prl" / "__init__.py")
    package.hub = types.ModuleType("s3prl.hub")
    package.run_downstream = types.SimpleNamespace(main=fake_main)
    monkeypatch.setitem(sys.modules, "s3prl", package)
    monkeypatch.setitem(sys.modules, "s3prl.hub", package.hub)
    monkeypatch.setitem(sys.modules, "s3prl.run_downstream", package.run_downstream)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setattr(sys, "argv", ["s3prl_run"])
    s3prl_run.main(["-m", "evaluate", "-e", str(s3prl_ckpt), "--device", "cpu"])
    assert seen["env"] is None and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert seen["args"].upstream == "audio_ssl"
    assert not (tmp_path / "ran").exists()
    with pytest.raises(Exception, match="argparse.Namespace"):  # the allowance ends with the runner
        torch.load(s3prl_ckpt, map_location="cpu")


# ---- the probe's table ----


def test_probe_refuses_two_checkpoints_of_one_name(tmp_path):
    from audio_ssl_ext.downstream.probe import check_model_names

    with pytest.raises(ValueError, match=r"a/checkpoint_last\.pt and b/checkpoint_last\.pt are both named 'checkpoint_last'"):
        check_model_names([("checkpoint_last", "a/checkpoint_last.pt"), ("checkpoint_last", "b/checkpoint_last.pt")])
    with pytest.raises(ValueError, match="taken by a baseline"):
        check_model_names([("x (random init)", "x.pt")])
    check_model_names([("content", "j.pt"), ("other", "j.pt")])  # one file under two names: two models

    # The script refuses before loading anything (the files here are empty).
    for run in ("a", "b"):
        os.makedirs(tmp_path / run)
        (tmp_path / run / "checkpoint_last.pt").write_bytes(b"")
    os.makedirs(tmp_path / "tasks" / "t")
    (tmp_path / "tasks" / "t" / "task_metadata.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "probe.py"), "--tasks-dir", str(tmp_path / "tasks"),
         "--checkpoint", str(tmp_path / "a" / "checkpoint_last.pt"), "--checkpoint", str(tmp_path / "b" / "checkpoint_last.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "are both named 'checkpoint_last'" in proc.stderr, proc.stderr[-2000:]
