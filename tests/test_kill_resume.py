"""Checkpoints survive a kill: every checkpoint write is atomic (a failure at any step of fairseq's
save leaves checkpoint_last.pt the old or the new complete file), and a fairseq-hydra-train run
killed with SIGKILL in the middle of an epoch, restarted with the same command, ends with the
same parameters, teacher and optimizer state as a run that was never interrupted, for every
learner's tiny config."""

import glob
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from audio_ssl_ext import atomic_checkpoint
from tests.test_music_hubert import make_labels
from tests.utils import REPO_ROOT, fairseq_hydra_train_command

# ---- atomic writes: a failure injected at every step of fairseq's save_checkpoint ----


class Killed(BaseException):
    """Not an Exception: nothing between the failure and the test catches it or retries (a kill)."""


class StubTrainer:
    """The part of fairseq's Trainer that checkpoint_utils.save_checkpoint uses; its
    save_checkpoint writes as fairseq/trainer.py:456 does (checkpoint_utils.torch_persistent_save)."""

    data_parallel_rank = 0
    should_save_checkpoint_on_current_rank = True
    always_call_state_dict_during_save_checkpoint = False
    checkpoint_suffix = ""
    task = None

    def __init__(self, updates):
        self.updates = updates

    def consolidate_optimizer(self):
        pass

    def get_num_updates(self):
        return self.updates

    def save_checkpoint(self, filename, extra_state):
        from fairseq import checkpoint_utils

        checkpoint_utils.torch_persistent_save(state_at(self.updates, extra_state), filename)
        return filename


class StubEpochIterator:
    epoch = 1

    def end_of_epoch(self):
        return False

    def state_dict(self):
        return {"epoch": 1, "iterations_in_epoch": 0}


def state_at(updates, extra_state=None):
    generator = torch.Generator().manual_seed(updates)
    return {
        "args": None,
        "cfg": None,
        "model": {"w": torch.randn(256, 1024, generator=generator)},  # 1 MiB: copies take several chunks
        "optimizer_history": [
            {"criterion_name": "Stub", "optimizer_name": "Stub", "lr_scheduler_state": {"best": None}, "num_updates": updates}
        ],
        "last_optimizer_state": {"state": {}, "param_groups": []},
        "extra_state": extra_state or {},
    }


def save(save_dir, updates):
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import CheckpointConfig

    cfg = CheckpointConfig(save_dir=str(save_dir), save_interval_updates=1, keep_interval_updates=-1)
    checkpoint_utils.save_checkpoint(cfg, StubTrainer(updates), StubEpochIterator(), None)


class Injector:
    """Counts the calls of every step of a checkpoint write (file writes, flushes to disk, renames,
    copies) and fails call number ``fail_at``: a write fails half-way, having written half its bytes."""

    def __init__(self, monkeypatch, fail_at=None):
        self.calls, self.fail_at = 0, fail_at
        for owner, name, partial in (
            (torch, "save", True), (shutil, "copyfileobj", True), (os, "sendfile", True),
            (os, "fsync", False), (os, "replace", False), (os, "rename", False),
        ):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name), name, partial))
        monkeypatch.setattr(atomic_checkpoint.time, "sleep", lambda s: None)

    def wrap(self, original, name, partial):
        def step(*args, **kwargs):
            self.calls += 1
            if self.calls - 1 != self.fail_at:
                return original(*args, **kwargs)
            if partial:
                half_write(name, original, *args, **kwargs)
            raise Killed(f"{name}, step {self.fail_at}")

        return step


def half_write(name, original, *args, **kwargs):
    if name == "save":  # torch.save(obj, f): the first half of its bytes reach f
        import io

        buffer = io.BytesIO()
        original(args[0], buffer)
        data = buffer.getvalue()
        args[1].write(data[: len(data) // 2])
    elif name == "copyfileobj":
        src, dst = args[0], args[1]
        data = src.read()
        dst.write(data[: len(data) // 2])
    else:  # os.sendfile(out_fd, in_fd, offset, count): shutil.copyfile's Linux fast path
        out_fd, in_fd, offset, count = args
        size = os.fstat(in_fd).st_size
        original(out_fd, in_fd, offset, min(count, size // 2))


def assert_complete(path, allowed):
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    updates = state["optimizer_history"][-1]["num_updates"]
    assert updates in allowed, (path, updates)
    assert torch.equal(state["model"]["w"], state_at(updates)["model"]["w"]), path
    return updates



def saves_stopped_at_each_step(tmp_path, monkeypatch):
    """Folders in which checkpoint 1 was saved and then the save of checkpoint 2 stopped at write
    step k, for every k of the save (counted on a dry run)."""
    with monkeypatch.context() as m:
        counter = Injector(m)
        save(tmp_path / "count", 1)
    for fail_at in range(counter.calls):
        folder = tmp_path / f"fail_{fail_at}"
        save(folder, 1)
        with monkeypatch.context() as m:
            Injector(m, fail_at)
            with pytest.raises(Killed):
                save(folder, 2)
        yield folder


def test_a_failure_at_any_step_of_a_save_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    assert atomic_checkpoint.patched()  # importing the package patched fairseq
    outcomes = []
    for folder in saves_stopped_at_each_step(tmp_path, monkeypatch):
        outcomes.append(assert_complete(str(folder / "checkpoint_last.pt"), {1, 2}))
        for path in glob.glob(str(folder / "checkpoint*.pt")):  # the interval checkpoints too
            assert_complete(path, {1, 2})
        save(folder, 3)  # and the next save works, leftovers or not
        assert assert_complete(str(folder / "checkpoint_last.pt"), {3}) == 3
        assert not glob.glob(str(folder / ".*.tmp"))
    assert len(outcomes) >= 8  # save: write, fsync file, rename, fsync folder; copy to checkpoint_last: the same
    # failures before checkpoint_last's rename keep the old file, after it the new one
    assert outcomes[0] == 1 and outcomes[-1] == 2, outcomes


def test_a_killed_runs_temporaries_are_removed_by_the_next_runs_first_save(tmp_path, monkeypatch):
    """A SIGKILL leaves the temporary of an interval checkpoint, whose name is never written again."""
    monkeypatch.setattr(atomic_checkpoint, "_CLEANED_FOLDERS", set())  # a new process
    tmp_path.mkdir(exist_ok=True)
    stray = tmp_path / ".checkpoint_1_9.pt.k1lled.tmp"
    stray.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("not ours")
    save(tmp_path, 1)
    assert not stray.exists() and unrelated.exists()
    assert_complete(str(tmp_path / "checkpoint_last.pt"), {1})


def test_without_the_patch_a_failure_mid_copy_truncates_checkpoint_last(tmp_path, monkeypatch):
    """What the patch prevents: fairseq's own PathManager.copy (shutil.copyfile) stopped mid-copy."""
    from fairseq.file_io import PathManager

    monkeypatch.setattr(PathManager, "copy", staticmethod(atomic_checkpoint._ORIGINALS["copy"]))
    truncated = []
    for fail_at, folder in enumerate(saves_stopped_at_each_step(tmp_path, monkeypatch)):
        try:
            assert_complete(str(folder / "checkpoint_last.pt"), {1, 2})
        except Exception:  # fairseq cannot load it
            truncated.append(fail_at)
    assert truncated, "fairseq's copy failed half-way left a loadable checkpoint_last.pt"


# ---- kill and resume through fairseq-hydra-train ----

UPDATES = 8  # 6 batches an epoch (below): the runs cross into epoch 2
KILL_AFTER = 3  # SIGKILL as soon as the checkpoint of update 3 appears: inside epoch 1, often mid-copy
# (config dir, config name, needs labels, overrides giving 2 items a batch: 12 training clips, 6 batches)
LEARNERS = {
    "music2vec": ("music2vec", "tiny", False, ["dataset.max_tokens=32000", "lr_scheduler.phase_ratio=[0.25,0.5,0.25]"]),
    "mwmae": ("mwmae", "tiny", False, ["dataset.batch_size=2"]),
    "mae": ("mwmae", "mae_tiny", False, ["dataset.batch_size=2"]),
    "audiojepa": ("audiojepa", "tiny", False, ["dataset.batch_size=2"]),
    "musichubert": ("musichubert", "tiny", True, ["dataset.max_tokens=64000"]),
    "jooci": ("jooci", "tiny", True, ["dataset.max_tokens=64000", "model.content_frozen_updates=4"]),
}


@pytest.fixture(scope="module")
def labelled(demo_manifest_dir, tmp_path_factory):
    """The demo manifests with MFCC k=16 labels at 100 Hz (musicHuBERT's and JOOCI's `km`)."""
    root = str(tmp_path_factory.mktemp("kill_resume_labels"))
    make_labels(demo_manifest_dir, root, "km", "mfcc", 16)
    return demo_manifest_dir, root


def command(learner, data, labels, save_dir):
    config_dir, name, needs_labels, overrides = LEARNERS[learner]
    args = fairseq_hydra_train_command() + ["--config-dir", os.path.join(REPO_ROOT, "examples", config_dir), "--config-name", name]
    args += [f"task.data={data}", f"checkpoint.save_dir={save_dir}", "common.tensorboard_logdir=null", "common.log_interval=1"]
    args += [f"task.label_dir={labels}"] if needs_labels else []
    args += [
        f"optimization.max_update={UPDATES}", "checkpoint.save_interval_updates=1", "checkpoint.keep_interval_updates=-1",
        "dataset.disable_validation=true", *overrides,
    ]
    return args


def start(args, log_path):
    # One thread each: the straight and the killed run go side by side on 2 cores, and every run
    # computes with the same thread count (the same float sums).
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    log = open(log_path, "w")
    try:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def finish(proc, log_path, timeout=300):
    returncode = proc.wait(timeout=timeout)
    with open(log_path) as f:
        log = f.read()
    assert returncode == 0, f"{' '.join(proc.args)} failed:\n{log[-6000:]}"
    return log


def last_state(save_dir):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(os.path.join(save_dir, "checkpoint_last.pt"))


def assert_same(actual, expected, where):
    if isinstance(expected, dict):
        assert sorted(actual, key=str) == sorted(expected, key=str), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), f"{where}: max difference {(actual.float() - expected.float()).abs().max()}"
    else:
        assert actual == expected, where


@pytest.mark.smoke
@pytest.mark.parametrize("learner", list(LEARNERS))
def test_killed_run_resumes_to_the_uninterrupted_end_state(learner, labelled, tmp_path):
    data, labels = labelled
    straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
    straight = start(command(learner, data, labels, straight_dir), tmp_path / "straight.log")
    killed = start(command(learner, data, labels, killed_dir), tmp_path / "killed.log")

    deadline = time.monotonic() + 240
    while not glob.glob(os.path.join(killed_dir, f"checkpoint_*_{KILL_AFTER}.pt")):
        assert killed.poll() is None, open(tmp_path / "killed.log").read()[-6000:]
        assert time.monotonic() < deadline, f"no checkpoint of update {KILL_AFTER}"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    at_kill = sorted(os.path.basename(p) for p in glob.glob(os.path.join(killed_dir, "*")))
    assert f"checkpoint_1_{UPDATES}.pt" not in at_kill and "checkpoint1.pt" not in at_kill, at_kill  # inside epoch 1

    resumed = start(command(learner, data, labels, killed_dir), tmp_path / "resumed.log")
    finish(straight, tmp_path / "straight.log")
    log = finish(resumed, tmp_path / "resumed.log")
    assert "Loaded checkpoint" in log, log[-3000:]

    expected, actual = last_state(straight_dir), last_state(killed_dir)
    assert expected["optimizer_history"][-1]["num_updates"] == actual["optimizer_history"][-1]["num_updates"] == UPDATES
    assert any(k.startswith("_teacher.") for k in expected["model"]) == (learner in ("music2vec", "audiojepa", "jooci"))
    assert_same(actual["model"], expected["model"], "model")  # the teacher (_teacher.*) and buffers included
    assert_same(actual["last_optimizer_state"], expected["last_optimizer_state"], "last_optimizer_state")
    assert_same(actual["extra_state"]["train_iterator"], expected["extra_state"]["train_iterator"], "train_iterator")
