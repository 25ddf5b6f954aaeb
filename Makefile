# Fresh machine: `make demo` runs the main job offline, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must be a matching pair; override to use another build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.hfkd-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install test lint demo segmentation-demo detection-demo labelfree-demo demo-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The newest releases inside setup.cfg's bounds, dependencies included (eager), with the torch pair pinned.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install --upgrade --upgrade-strategy eager $(TORCH_SPEC) -e ".[tests]"
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check hfkd tests examples benchmarks

# `make test`: the quick suite (tests marked slow are deselected by setup.cfg's addopts). The slow ones (runs of two
# processes, killed-and-resumed runs, the smoke run of every recipe) run under `make test-all`, which CI runs too.
test: lint
	$(OFFLINE) $(BIN)/python -m pytest -q

test-slow: lint
	$(OFFLINE) $(BIN)/python -m pytest -q -m slow

test-all: test test-slow

# The demo's data: Debian's dataset-fashion-mnist when apt can install it; otherwise the demo falls back to the
# Hub copy (online) or scikit-learn's digits, and says which it used.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

demo-data:
	@if [ ! -e $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's dataset-fashion-mnist into $(FASHION_MNIST_DIR)"; \
		$(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "Could not install dataset-fashion-mnist; the demo will fall back to other data."; \
	fi

demo: install demo-data
	$(BIN)/python examples/run_demo.py --output_dir runs/demo

# Segmentation: a SegFormer teacher, then CE / DIST / CWD / KD students on scenes of Fashion-MNIST items.
segmentation-demo: install demo-data
	$(BIN)/python examples/run_segmentation_demo.py --output_dir runs/segmentation_demo

# Detection: a RetinaNet-R34 teacher, then CE / DIST / mimic / CWD RetinaNet-R18 students on Fashion-MNIST scenes.
detection-demo: install demo-data
	$(BIN)/python examples/run_detection_demo.py --output_dir runs/detection_demo

labelfree-demo: install demo-data
	$(BIN)/python examples/run_labelfree_demo.py --output_dir runs/labelfree_demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
