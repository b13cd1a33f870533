#!/usr/bin/env bash
# Python extras for the downstream tests and `make eval` (s3prl, HEAR kits, tensorflow-cpu, ...).
# Usage: scripts/setup_eval_python.sh [PYTHON]   (default .venv/bin/python). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
PIP=("$PY" -m pip --disable-pip-version-check -q)
before=$("$PY" -c "import torch, numpy; print(torch.__version__, numpy.__version__)")
"${PIP[@]}" install -r requirements-eval.txt
"${PIP[@]}" install --no-deps -r requirements-eval-nodeps.txt
# torchaudio 2.8's compiled libraries are built against torch 2.8 and fail to load with ours;
# without them it runs in pure-Python mode (soundfile backend), which is all s3prl's runner needs.
ta_lib=$("$PY" -c "import importlib.util, os; s = importlib.util.find_spec('torchaudio'); print(os.path.join(os.path.dirname(s.origin), 'lib'))")
rm -f "$ta_lib"/*.so
after=$("$PY" -c "import torch, numpy; print(torch.__version__, numpy.__version__)")
if [ "$before" != "$after" ]; then
  echo "setup_eval_python: torch/numpy changed from '$before' to '$after': refusing to continue" >&2
  exit 1
fi
"$PY" -c "import s3prl, hearvalidator, heareval, tensorflow, pytorch_lightning, torchaudio; print('eval extras ok: torch/numpy', '$after')"
