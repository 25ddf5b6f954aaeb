# Fresh machine: `make demo` runs the main job offline, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must be a matching pair; override to use another build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.hfkd-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install test lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[tests]"
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check hfkd tests examples

test: lint
	$(OFFLINE) $(BIN)/python -m pytest -q

demo: install
	$(OFFLINE) $(BIN)/python examples/minimal_distill.py --output_dir runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
