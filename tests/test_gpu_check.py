"""scripts/gpu_check.py: every learner's updates in fp32 / fp16 / bf16 and a DDP step. The CPU run
covers the code path here (it found musicHuBERT's and music2vec's mask embedding breaking under
autocast); the CUDA run is the real check and skips without a GPU."""

import os
import subprocess
import sys

import pytest
import torch

from tests.utils import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "scripts", "gpu_check.py")
LEARNERS = ("musichubert", "music2vec", "mwmae", "mae", "audiojepa", "jooci")


def run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.smoke
def test_every_learner_updates_in_every_precision_on_the_cpu():
    out = run("--device", "cpu", "--updates", "2")
    for learner in LEARNERS:
        for dtype in ("fp32", "fp16", "bf16", "bf16-model"):
            assert f"{learner:12s} {dtype}:" in out and "NOT FINITE" not in out, out
        assert f"{learner:12s} DDP (world size 1): loss finite" in out, out
    assert out.rstrip().endswith("gpu_check: all finite"), out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_learner_on_the_gpu():
    print(run("--updates", "5"))
