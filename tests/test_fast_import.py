"""``import audio_ssl_ext`` and the data-preparation scripts leave fairseq (hydra, omegaconf) unloaded;
registration then happens when fairseq's import ends (``audio_ssl_ext/_registry.py``), including
when the first import of fairseq comes from one of the package's own modules."""

import json
import os
import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

# A finder that refuses fairseq, hydra and omegaconf: what was imported without them is proven
# not to need them.
BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('fairseq', 'hydra', 'omegaconf'):
            raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, Blocker())
"""

# Scripts that prepare data (and the export's, which imports fairseq only to read a checkpoint):
# they must start without fairseq.
DATA_SCRIPTS = ["make_manifest.py", "make_demo_corpus.py", "build_eval_tasks.py", "learn_kmeans.py", "export.py"]


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_import_leaves_fairseq_hydra_and_omegaconf_out():
    out = run_python(
        "import sys, json, audio_ssl_ext\n"
        "from audio_ssl_ext import load_model\n"
        "print(json.dumps([m for m in ('fairseq', 'hydra', 'omegaconf') if m in sys.modules]))"
    )
    assert json.loads(out) == []


def test_the_package_imports_where_fairseq_cannot():
    out = run_python(BLOCKER + "import audio_ssl_ext, audio_ssl_ext.inference, audio_ssl_ext.export\nprint('ok')")
    assert out == "ok"


@pytest.mark.parametrize("first_import", [
    "from fairseq.models import MODEL_REGISTRY",  # fairseq after the package
    "import audio_ssl_ext.modules.ema",  # fairseq's import started by a module of ours
    "import audio_ssl_ext.models.jooci",  # ... in the middle of the models' registration
])
def test_registration_follows_fairseqs_import(first_import):
    out = run_python(
        "import json, audio_ssl_ext\n"
        f"{first_import}\n"
        "from fairseq.models import MODEL_REGISTRY\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        "from audio_ssl_ext import atomic_checkpoint\n"
        "print(json.dumps([sorted(MODEL_REGISTRY), sorted(TASK_REGISTRY), sorted(CRITERION_REGISTRY),"
        " atomic_checkpoint.patched()]))"
    )
    models, tasks, criterions, patched = json.loads(out)
    assert {"music_hubert", "music2vec", "mw_mae", "audio_mae", "audio_jepa", "jooci"} <= set(models)
    assert {"waveform_pretraining", "crop_pretraining"} <= set(tasks)
    assert {"music_hubert", "model_with_sample_ids"} <= set(criterions)
    assert patched


def test_without_the_watch_nothing_registers():
    # The check above can fail: with the finder taken off, fairseq imported later knows none of ours.
    out = run_python(
        "import sys, audio_ssl_ext\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_RegisterAfterFairseq']\n"
        "from fairseq.models import MODEL_REGISTRY\n"
        "print('music2vec' in MODEL_REGISTRY)"
    )
    assert out == "False"


@pytest.mark.parametrize("script", DATA_SCRIPTS)
def test_data_preparation_scripts_start_without_fairseq(script):
    path = os.path.join(REPO_ROOT, "scripts", script)
    code = BLOCKER + (
        f"import runpy\nsys.argv = [{path!r}, '--help']\n"
        f"try:\n    runpy.run_path({path!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('ok')"
    )
    assert run_python(code) == "ok"
