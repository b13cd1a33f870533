"""The benchmark scripts still run against the current models (their numbers are read by people,
not asserted: shared machines are too noisy for timed asserts)."""

import re
import subprocess
import sys

from tests.utils import REPO_ROOT


def test_train_bench_prints_one_ratio_per_learner_against_its_stock_model():
    proc = subprocess.run(
        [sys.executable, "scripts/train_bench.py", "--learners", "mw_mae", "music_hubert", "--pairs", "1", "--warmup", "0",
         "--shapes", "tiny", "small"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    for shape, last in zip(("tiny", "small"), [line for line in lines if line.startswith("train_bench:")]):
        assert re.fullmatch(rf"train_bench: shape={shape} mw_mae=\d+\.\d\d music_hubert=\d+\.\d\d", last), last
    assert "stock (fairseq hubert)" in proc.stdout
    # small is the study's size (192-wide encoders, tiny's are 64): several times tiny's FLOPs per step
    gflops = [float(g) for g in re.findall(r"ours: ([\d.]+) GFLOP per step", proc.stdout)]
    assert len(gflops) == 4 and all(small > 3 * tiny for tiny, small in zip(gflops[:2], gflops[2:])), gflops
