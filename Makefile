# Graft: `make demo` runs the pipeline on Fashion-MNIST; `make test` runs the test suite.
# Set-up steps are stamp files under .make/, so a second run skips them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMPS := .make
FMNIST_DIR := /usr/share/datasets/fashion-mnist

# dvc.yaml calls `graft <stage>`: the venv's console scripts must be on PATH.
export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint bench clean

setup: $(STAMPS)/venv $(STAMPS)/dataset

$(STAMPS)/venv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $@

# Debian's dataset-fashion-mnist ships the official idx files; installed only when missing.
$(STAMPS)/dataset:
	@if [ ! -e $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST is missing from $(FMNIST_DIR): install Debian's dataset-fashion-mnist," \
	         "or point params.yaml ingest.source/ingest.path at your own images." >&2; exit 1; \
	  fi; \
	fi
	@mkdir -p $(STAMPS) && touch $@

demo: setup
	$(BIN)/dvc repro
	$(BIN)/graft summary

# one test file per worker, a worker per core: module fixtures are built once per file
test: setup
	$(BIN)/python -m pytest -n auto --dist loadfile

lint: setup
	$(BIN)/ruff check src tests flows benchmarks

bench: setup
	$(BIN)/python benchmarks/feature_extraction.py

clean:
	rm -rf $(STAMPS) $(VENV)
