# Two entry points for a new user: `make demo` and `make test`. Both create .venv from a bare Python 3.11 first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA ?= ../shared/data
DEMO_OUT ?= demo_output
# `python -m scripts` is `python -m monai.bundle` without cuCIM's CPU-only "Failed to load nvjpeg" lines.
BUNDLE_CLI := PYTHONPATH=bundle $(BIN)/python -m scripts

.PHONY: demo test lint venv clean

venv: $(STAMP)

# torch goes in first, pinned to the CPU wheel, so that the project's range does not pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Until whole-slide inference lands, the demo is a short real training run: one epoch of the small preset on the
# normal tissue of the first 24 CAMELYON16 tiles (the last 8 are held out as the future demo slide).
demo: $(STAMP)
	@test -d $(SHARED_DATA)/camelyon16_tiles || { echo "demo needs $(SHARED_DATA)/camelyon16_tiles (set SHARED_DATA=...)"; exit 1; }
	$(BUNDLE_CLI) run training --config_file bundle/configs/train.json \
		--data_source tiles --dataset_dir $(SHARED_DATA)/camelyon16_tiles \
		--exclude "$$($(BIN)/python -c 'import sys; sys.path.insert(0, "bundle"); from scripts.datasets import DEMO_TILES; print(list(DEMO_TILES))')" \
		--max_epochs 1 --channels "[16,32,64,64,128,128]" --latent_channels 32 --batch_size 64 --num_workers 2 \
		--ckpt_dir $(DEMO_OUT)/models --output_dir $(DEMO_OUT)/runs
	@echo "checkpoint: $(DEMO_OUT)/models/model.pt; curves and reconstructions: tensorboard --logdir $(DEMO_OUT)/runs"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV)
