# Two entry points, each self-contained on a fresh machine:
#   make demo   the main job (end-to-end run on built-in synthetic data)
#   make test   the test suite (fast tier + end-to-end tier with real nnU-Net commands)
# Both create .venv and install the package from setup.py. TORCH_SPEC is installed first: the default
# pins torch and torchvision together (nnU-Net's trainer lookup imports timm, hence torchvision);
# on another machine pick a matching pair, e.g.
#   make demo TORCH_SPEC=torch
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# The fastest reliable CPU settings for nnU-Net (measured in ../shared/NNUNET_NOTES.md).
export nnUNet_compile ?= f
export nnUNet_n_proc_DA ?= 0
export nnUNet_def_n_proc ?= 1
# OpenMP threads sleep instead of spin while waiting: on a busy 2-core machine spinning made a training step
# ~9x slower (0.53 s vs 0.06 s, measured); idle it costs little.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-fast lint clean-venv

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/nnUNetv2_rndpo_demo -o demo_output

# pytest exits 5 when it collects nothing; make treats any non-zero exit as failure, so an empty
# suite cannot pass silently.
test: $(BIN)/.installed
	$(BIN)/ruff check nnunetv2_rndpo trainers tests
	$(BIN)/python -m pytest -m "not e2e"
	$(BIN)/python -m pytest -m e2e

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not e2e"

lint: $(BIN)/.installed
	$(BIN)/ruff check nnunetv2_rndpo trainers tests

clean-venv:
	rm -rf $(VENV)
