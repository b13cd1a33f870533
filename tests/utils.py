"""Helpers shared by the tests: fairseq-hydra-train as a user runs it, its logged losses, example
configs composed in-process, and untrained checkpoints written from them."""

import os
import re
import subprocess
import sys
from typing import List, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRAIN_LOSS = re.compile(r"\[train_inner\].*?\bloss=([0-9.eE+-]+)")


def fairseq_hydra_train_command() -> List[str]:
    """The console script of the interpreter running the tests (the venv's)."""
    script = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "fairseq_cli.hydra_train"]


def run_fairseq_hydra_train(
    config_dir: str, config_name: str, overrides: Sequence[str], cwd: str = REPO_ROOT, timeout: int = 600
) -> Tuple[subprocess.CompletedProcess, List[float]]:
    """Run ``fairseq-hydra-train --config-dir D --config-name N overrides...`` and parse its losses.

    Raises AssertionError with the end of the log when the run fails, so a failing smoke test
    shows fairseq's own error.
    """
    command = fairseq_hydra_train_command() + ["--config-dir", config_dir, "--config-name", config_name]
    command += list(overrides)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(command)} failed:\n{log[-6000:]}"
    return proc, train_losses(log)


def train_losses(log: str) -> List[float]:
    return [float(m) for m in _TRAIN_LOSS.findall(log)]


def compose_example_config(learner: str, config_name: str, overrides: Sequence[str] = ()):
    """Compose examples/<learner>/<config_name>.yaml as fairseq-hydra-train does, in-process
    (``audio_ssl_ext.tools.configs.compose_config``). ``learner`` is a folder under examples/, or a
    path to any config directory."""
    from audio_ssl_ext.tools.configs import compose_config

    is_path = os.path.isabs(learner) or os.sep in learner
    config_dir = os.path.abspath(learner) if is_path else os.path.join(REPO_ROOT, "examples", learner)
    return compose_config(config_dir, config_name, overrides)


def write_untrained_checkpoint(
    config_path: str, out_path: str, seed: int = 0, overrides: Sequence[str] = (), num_label_classes: int = 0
) -> str:
    """Build the model of a config file (e.g. examples/music2vec/tiny.yaml) with weights drawn from
    ``seed`` and save it as fairseq saves a trained one (``cfg`` with ``common``, ``task`` and
    ``model``, and the ``model`` weights), so ``load_model`` reads both alike: a random-init
    baseline, and test inputs.

    ``overrides`` are ``key=value`` pairs, set whether or not the config names the key (hydra's
    ``++``). ``task.data`` and ``task.label_dir``, when the config leaves them to the user, become
    "unused": building a model does not read them. A HuBERT-style config names label sets whose
    dictionaries size the model: with ``num_label_classes`` > 0 and no ``task.label_dir`` given,
    dictionaries of that many classes are written to ``<out_path>.labels/`` and the saved config
    points there.
    """
    import torch
    from fairseq import tasks
    from omegaconf import OmegaConf

    config_dir, name = os.path.split(os.path.abspath(config_path))
    overrides = [o if o.startswith(("+", "~")) else "++" + o for o in overrides]
    full = compose_example_config(config_dir, os.path.splitext(name)[0], overrides)
    cfg = OmegaConf.create({"common": full.common, "task": full.task, "model": full.model})
    cfg.common.user_dir = None
    for key in ("data", "label_dir"):
        if key in list(cfg.task.keys()) and OmegaConf.is_missing(cfg.task, key):
            cfg.task[key] = "unused"
    labels = list(cfg.task.get("labels") or [])
    if labels and num_label_classes > 0 and cfg.task.get("label_dir") in (None, "unused"):
        label_dir = os.path.abspath(out_path) + ".labels"
        os.makedirs(label_dir, exist_ok=True)
        for label_name in labels:
            with open(os.path.join(label_dir, f"dict.{label_name}.txt"), "w") as f:
                f.writelines(f"{k} 1\n" for k in range(num_label_classes))
        cfg.task.label_dir = label_dir
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save({"cfg": OmegaConf.to_container(cfg, enum_to_str=True), "model": model.state_dict(), "args": None}, out_path)
    return out_path


def require_kit(module: str, in_ci: bool, import_it: bool = True) -> None:
    """Tests of external kits skip where the kit is missing or broken, but fail in CI, where
    `make test` installs them (`make setup-eval`). ``import_it=False`` only checks that the module
    is installed (tensorflow's import alone costs ~15 s; the kit's own command imports it)."""
    import importlib.util

    import pytest

    try:
        if import_it:
            __import__(module)
        elif importlib.util.find_spec(module) is None:
            raise ImportError("not installed")
    except Exception as err:  # ImportError, or a kit failing on import
        message = f"{module} unusable ({err}): make setup-eval installs the evaluation extras"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
