"""fairseq-hydra-train as a user runs it: from another directory, with overrides of fields the
YAML does not list. Both are fairseq traps (see README, "Running a config")."""

import os

import pytest

from tests.utils import REPO_ROOT, run_fairseq_hydra_train


@pytest.mark.smoke
def test_tiny_config_runs_from_another_directory(demo_manifest_dir, tmp_path):
    user_dir = os.path.join(REPO_ROOT, "audio_ssl_ext")
    _, losses = run_fairseq_hydra_train(
        os.path.join(REPO_ROOT, "examples", "wav2vec2"),
        "tiny",
        [
            f"common.user_dir={user_dir}",
            f"task.data={demo_manifest_dir}",
            "checkpoint.save_dir=run/checkpoints",  # relative: must land under the caller's cwd
            "common.tensorboard_logdir=run/tb",
            "optimization.max_update=4",
            "++model.mask_length=5",  # not in the YAML: needs '++' (or '+')
        ],
        cwd=str(tmp_path),
    )
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt")
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "hydra_train.log")
    assert not os.path.exists(tmp_path / "outputs")  # hydra did not change directory
    assert "'mask_length': 5" in (tmp_path / "run" / "checkpoints" / "hydra_train.log").read_text()
    assert len(losses) == 4
