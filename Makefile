# audio_ssl_ext. Quick start: `make demo` (the main job) and `make test` (the whole suite).
# Both run `make setup` first. See README.md.
SHELL := /bin/bash
# The interpreter the venv is built from. A cluster with its own torch (and faiss-gpu):
#   make setup PYTHON=/path/to/python SYSTEM_SITE_PACKAGES=1
# keeps that torch and faiss; setup only installs what is missing.
PYTHON ?= python3
SYSTEM_SITE_PACKAGES ?= 0
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
FAIRSEQ_PACKAGE ?= ve-fairseq==0.12.3
DEMO_DIR ?= demo
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
VENV_FLAGS := $(if $(filter 1,$(SYSTEM_SITE_PACKAGES)),--system-site-packages)

.PHONY: setup test test-fast demo clean
setup: $(VENV)/.setup-done

# The stamp makes a repeated `make setup` instant; it is redone when these files change.
# Order matters: torch first and never replaced (pip would swap in a CUDA build), then fairseq
# with --no-deps (it pins torchaudio, which pins torch), then everything else by name.
$(VENV)/.setup-done: setup.py requirements.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing torch==$(TORCH_VERSION)"; $(PIP) install torch==$(TORCH_VERSION); }
	@$(PY) -c "import fairseq" 2>/dev/null || { echo "installing $(FAIRSEQ_PACKAGE)"; $(PIP) install --no-deps $(FAIRSEQ_PACKAGE); }
	@$(PY) -c "import faiss" 2>/dev/null || { echo "installing faiss-cpu"; $(PIP) install faiss-cpu; }
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	@$(PY) -c "import audio_ssl_ext, torch, fairseq, faiss; print('setup ok: torch', torch.__version__, '| fairseq', fairseq.__version__, '| faiss', faiss.__version__)"
	@touch $@

# The whole suite: unit, one command-line smoke run per learner, integration.
test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The inner loop: unit + smoke.
test-fast: setup
	$(PY) -m pytest tests -m "not integration" $(PYTEST_ARGS)

# Demo corpus -> manifests -> a tiny training run per learner on the CPU; outputs under $(DEMO_DIR)/.
demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
