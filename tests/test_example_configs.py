"""Every config under examples/ composes as fairseq-hydra-train composes it, and carries the
settings that keep relative paths working (see README, "Running a config")."""

import glob
import os

import pytest
from omegaconf import OmegaConf

from tests.utils import REPO_ROOT, compose_example_config

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "*", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO_ROOT, "examples")))
def test_config_composes_with_the_registered_model_and_task(path):
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    learner, name = os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0]
    cfg = compose_example_config(learner, name, ["task.data=/nonexistent"])
    assert cfg.common.user_dir == "audio_ssl_ext"
    assert cfg.model._name in MODEL_REGISTRY and cfg.task._name in TASK_REGISTRY
    # The hydra block is not part of the composed job config: read it unresolved from the file.
    hydra = OmegaConf.to_container(OmegaConf.load(path).hydra, resolve=False)
    assert hydra["job"]["chdir"] is False
    assert hydra["run"]["dir"] == "${checkpoint.save_dir}"
    if name.endswith("tiny"):
        assert cfg.common.cpu, "tiny configs run on a CPU"
        assert cfg.dataset.required_batch_size_multiple == 1, "a tiny valid set would be empty"
