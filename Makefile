# Two entry points for a new user: `make demo` and `make test`. Both create .venv from a bare Python 3.11 first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output
BUNDLE_CLI := $(BIN)/python -m monai.bundle

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

# torch goes in first, pinned to the CPU wheel, so that the project's range does not pull a multi-GB CUDA build.
# cuCIM goes in last without its dependencies: it reads slides on the CPU without CuPy and nvImageCodec, which are
# 2.8 GB of CUDA libraries that this bundle never calls (decoding on the GPU is not offered: bench/research/README.md).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps 'cucim-cu12>=25.2'
	touch $@

# Inference with the shipped model (bundle/models/model.pt) on the bundled demo slide (bundle/sample_data/).
demo: $(STAMP)
	$(BUNDLE_CLI) run inference --config_file bundle/configs/inference.json --output_dir $(DEMO_OUT)
	@echo "open $(DEMO_OUT)/report.html in a browser; open a slide's regions.geojson in QuPath or regions.xml in ASAP"

test: $(STAMP)
	$(BIN)/python -m pytest

# Throughput ratios beside the committed ones (bench/results/cpu/ratios.json); a drop of over 25 % fails. Not in
# `make test`: timing on a shared machine is too noisy to gate CI.
bench: $(STAMP)
	cd bench && ../$(BIN)/python ratios.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV)
