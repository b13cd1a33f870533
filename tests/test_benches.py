"""The benchmark scripts still run against the current models (their numbers are read by people,
not asserted: shared machines are too noisy for timed asserts)."""

import re
import subprocess
import sys

from tests.utils import REPO_ROOT


def test_train_bench_prints_one_ratio_per_learner_against_its_stock_model():
    proc = subprocess.run(
        [sys.executable, "scripts/train_bench.py", "--learners", "mw_mae", "music_hubert", "--pairs", "1", "--warmup", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"train_bench: shape=tiny mw_mae=\d+\.\d\d music_hubert=\d+\.\d\d", last), last
    assert "stock (fairseq hubert)" in proc.stdout
