"""Helpers shared by the tests: fairseq-hydra-train as a user runs it, and its logged losses."""

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
    """Compose examples/<learner>/<config_name>.yaml as fairseq-hydra-train does, in-process.

    Returns the resolved DictConfig after fairseq's ``add_defaults`` (the registered dataclass
    defaults merged in), i.e. what ``fairseq_cli.train.main`` receives.
    """
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import audio_ssl_ext  # noqa: F401  (registers what the config names)

    GlobalHydra.instance().clear()
    hydra_init(config_name)
    config_dir = os.path.join(REPO_ROOT, "examples", learner)
    with initialize_config_dir(config_dir=config_dir, version_base="1.1"):  # as fairseq's hydra.main
        cfg = compose(config_name=config_name, overrides=list(overrides))
    add_defaults(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


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
