# make demo: set up and train a beta-VAE on built-in data with Ray Train + MLflow.
# make test: set up and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench results clean

install: $(STAMP)

# Reinstall only when the project's metadata changes. torch first, pinned: the CPU build lies
# on local disk here, and an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py

# Train every shipped config and evaluate it: docs/RESULTS.md (about an hour on 2 CPU cores).
results: $(STAMP)
	$(BIN)/python benchmarks/results.py

clean:
	rm -rf genray-runs .pytest_cache
