# Two entry points for a new user: `make demo` and `make test`. Both create .venv from a bare Python 3.11 first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test lint venv clean

venv: $(STAMP)

# torch goes in first, pinned to the CPU wheel, so that the project's range does not pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/python -m monai.bundle run inference --config_file bundle/configs/inference.json --output_dir $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV)
