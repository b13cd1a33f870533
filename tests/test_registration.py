"""Importing the package registers its names with fairseq (what `common.user_dir` relies on)."""

import json
import subprocess
import sys

NAMES = {
    "models": ["music_hubert", "music2vec", "mw_mae", "audio_mae", "audio_jepa", "jooci"],
    "tasks": ["waveform_pretraining", "crop_pretraining"],
    "criterions": ["music_hubert", "model_with_sample_ids"],
}


def test_import_registers_every_name():
    # A fresh interpreter: registration must not depend on what other tests imported.
    code = (
        "import json, audio_ssl_ext\n"
        "from fairseq.models import MODEL_REGISTRY\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        "print(json.dumps({'models': sorted(MODEL_REGISTRY), 'tasks': sorted(TASK_REGISTRY),"
        " 'criterions': sorted(CRITERION_REGISTRY)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    registered = json.loads(out.stdout.strip().splitlines()[-1])
    for kind, names in NAMES.items():
        missing = sorted(set(names) - set(registered[kind]))
        assert not missing, f"{kind} not registered by `import audio_ssl_ext`: {missing}"
