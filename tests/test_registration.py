"""Importing the package registers its names with fairseq (what `common.user_dir` relies on)."""

import subprocess
import sys


def test_import_registers_tasks():
    # A fresh interpreter: registration must not depend on what other tests imported.
    code = (
        "import audio_ssl_ext\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "print(sorted(n for n in TASK_REGISTRY if n in {'waveform_pretraining', 'crop_pretraining'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "waveform_pretraining" in out.stdout
