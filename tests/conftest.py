"""Fixtures shared by the suite: a small demo corpus and its manifests, made once per session."""

import logging
import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads made
# tiny training steps about 10x slower. Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from audio_ssl_ext.data.make_manifest import ManifestOptions, build_manifests  # noqa: E402
from audio_ssl_ext.tools.demo_corpus import make_demo_corpus  # noqa: E402

# Two threads: the size of CI's machine, and tests then do not fight over cores.
torch.set_num_threads(2)
# Importing fairseq sets the root logger to DEBUG; numba (under librosa) then logs every bytecode
# it compiles, which is slow and buries real failures.
logging.getLogger("numba").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """16 clips x 3 s at 16 kHz (4 per class), with clip and frame labels (see tools/demo_corpus.py)."""
    return make_demo_corpus(str(tmp_path_factory.mktemp("demo_corpus")), num_clips=16, clip_seconds=3.0)


@pytest.fixture(scope="session")
def demo_manifest_dir(demo_corpus, tmp_path_factory):
    """train.tsv (12 clips) and valid.tsv (4 clips) over ``demo_corpus``."""
    out = str(tmp_path_factory.mktemp("demo_manifest"))
    build_manifests(demo_corpus, out, ManifestOptions(valid_percent=0.25, seed=0, progress=False))
    return out


@pytest.fixture
def in_ci():
    return os.environ.get("CI", "").lower() == "true"
