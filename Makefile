# make demo: the whole XPERT experiment at CPU scale; make test: the import layers (lint-imports) and the test suite.
# Both create/refresh the virtual environment first. Torch is installed on its own, pinned, before the package:
# on this kind of machine `torch==2.13.0` is a CPU wheel on local disk, and once it is there the package's looser
# torch range is already satisfied, so pip never pulls a multi-GB CUDA build. Elsewhere choose the build with
# TORCH_SPEC / TORCH_INDEX (e.g. make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Cells of `make bench` trained at once, each with an equal share of torch's threads (make bench JOBS=2 on a 2-core CPU).
JOBS ?= 1
BIN := $(VENV)/bin
STAMP := $(VENV)/.xpert-installed

.PHONY: venv demo test lint bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xpert bench run configs/bench/demo.yaml
	$(BIN)/xpert report runs/demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/xpert bench run configs/bench/reference.yaml --jobs $(JOBS)
	$(BIN)/xpert report runs/bench-reference

bench-quick: $(STAMP)
	$(BIN)/xpert bench run configs/bench/quick.yaml
	$(BIN)/xpert report runs/bench-quick

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs
