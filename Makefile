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
EVAL_DIR ?= $(DEMO_DIR)/eval_tasks
# `make eval` builds the small task subset by default (minutes on a CPU); EVAL_TASKS_FLAGS= for
# the full tasks (about an hour of probing per checkpoint on 2 cores).
EVAL_TASKS_FLAGS ?= --small
PROBE_FLAGS ?= --seeds 3
# `make study`: everything under $(STUDY_DIR); STUDY_FLAGS=--quick for a first look (< 30 min on
# 2 cores), --only NAME ... for some runs (scripts/study.py --help).
STUDY_DIR ?= study
STUDY_FLAGS ?=
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
VENV_FLAGS := $(if $(filter 1,$(SYSTEM_SITE_PACKAGES)),--system-site-packages)

.PHONY: setup setup-eval test test-fast demo eval study clean
setup: $(VENV)/.setup-done

# What the downstream tests and `make eval` need on top of `setup`: Debian packages for the
# evaluation tasks (fluidsynth, two GM soundfonts, flite; apt-get, root or sudo) and the Python
# kits (s3prl, HEAR's validator and heareval, tensorflow-cpu, ...), which go in --no-deps where
# they would otherwise disturb torch or numpy (the script refuses any change to either).
setup-eval: setup $(VENV)/.setup-eval-done
	@bash scripts/setup_eval.sh

$(VENV)/.setup-eval-done: requirements-eval.txt requirements-eval-nodeps.txt scripts/setup_eval_python.sh $(VENV)/.setup-done
	bash scripts/setup_eval_python.sh $(PY)
	@touch $@

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

# The whole suite: unit, one command-line smoke run per learner, integration (external kits).
test: setup setup-eval
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The inner loop: unit + smoke.
test-fast: setup
	$(PY) -m pytest tests -m "not integration" $(PYTEST_ARGS)

# Demo corpus -> manifests -> a tiny training run per learner on the CPU; outputs under $(DEMO_DIR)/.
demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

# Probe table of the demo checkpoints next to the two baselines (random init, log-mel statistics).
# Runs `make demo` first when it has not been run.
eval: setup-eval
	@ls $(DEMO_DIR)/*/checkpoints/checkpoint_last.pt $(DEMO_DIR)/*/iter*/checkpoints/checkpoint_last.pt >/dev/null 2>&1 || $(MAKE) demo
	$(PY) scripts/build_eval_tasks.py $(EVAL_DIR) $(EVAL_TASKS_FLAGS)
	$(PY) scripts/probe.py --tasks-dir $(EVAL_DIR) $(PROBE_FLAGS) --out $(DEMO_DIR)/probe \
	  $(foreach c,$(sort $(wildcard $(DEMO_DIR)/*/checkpoints/checkpoint_last.pt $(DEMO_DIR)/musichubert/iter*/checkpoints/checkpoint_last.pt)),--checkpoint $(subst /checkpoints/checkpoint_last.pt,,$(patsubst $(DEMO_DIR)/%,%,$(c)))=$(c))

# The small-scale study: an offline music corpus (and speech), a `small` run per learner and claim
# variant, each probed next to its random-init twin and log-mel; report.{md,json,png} in $(STUDY_DIR)
# (audio_ssl_ext/tools/README.md#the-small-scale-study).
study: setup-eval
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) scripts/study.py $(STUDY_DIR) $(STUDY_FLAGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
