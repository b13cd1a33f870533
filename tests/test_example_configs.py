"""Every config under examples/ composes as fairseq-hydra-train composes it, and carries the
settings that keep relative paths working (see README, "Running a config"); every overlay in an
examples/<learner>/<group>/ folder changes only the keys it lists."""

import glob
import os

import pytest
from omegaconf import OmegaConf

from tests.utils import REPO_ROOT, compose_example_config

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "*", "*.yaml")))
# Overlays: examples/<learner>/<group>/<name>.yaml, used as `--config-name base +<group>=<name>`.
OVERLAYS = sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "*", "*", "*.yaml")))


def flat(node, prefix=""):
    """{"model.masking": "time", ...} for a nested dict."""
    items = {}
    for key, value in node.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO_ROOT, "examples")))
def test_config_composes_with_the_registered_model_and_task(path):
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    learner, name = os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0]
    with open(path) as f:  # a primary config is the root: hydra warns on `# @package _group_` there
        assert not f.readline().startswith("# @package"), path
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


def test_there_are_overlays():
    assert OVERLAYS, "examples/audiojepa/variant/ holds the Audio-JEPA variants"


@pytest.mark.parametrize("primary", ["base", "tiny"])
@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: os.path.relpath(p, os.path.join(REPO_ROOT, "examples")))
def test_overlay_changes_only_its_own_keys(path, primary):
    # Composed through the real mechanism (`+variant=time` on the command line), not compared as
    # files: an overlay without the `_global_` package would land under `variant.` instead.
    with open(path) as f:
        assert f.readline().strip() == "# @package _global_", path
    group_dir, name = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    learner, group = os.path.basename(os.path.dirname(group_dir)), os.path.basename(group_dir)
    overlay = flat(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    assert overlay and not any(key.startswith("hydra.") for key in overlay)
    plain = flat(OmegaConf.to_container(compose_example_config(learner, primary, ["task.data=/nonexistent"])))
    composed = compose_example_config(learner, primary, ["task.data=/nonexistent", f"+{group}={name}"])
    changed = flat(OmegaConf.to_container(composed))
    assert changed.keys() == plain.keys()
    assert {key for key in plain if plain[key] != changed[key]} <= overlay.keys()
    assert all(changed[key] == value for key, value in overlay.items())
    # what a primary config with `defaults: [base]` would lose under fairseq-hydra-train
    for key in ("common.user_dir", "optimization.max_update", "dataset.batch_size", "task._name"):
        assert changed[key] == plain[key], key
