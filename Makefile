# make demo: set up, then data -> train -> sweep -> register -> serve on built-in data, local Ray and MLflow.
# make test: set up (the browser for the gallery test included) and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-fast bench results clean

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

# Debian's Chromium and ChromeDriver for the gallery's browser test. Installed when missing and
# this is root with apt-get; otherwise that one test skips (unless GENRAY_REQUIRE_BROWSER is set).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (Debian) for the browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null); \
	else echo "chromium/chromedriver missing and not root: the browser test will skip"; fi

# Two passes: the cluster tests start their own Ray cluster, apart from the session Ray the others share.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not cluster"
	$(BIN)/python -m pytest -q -m cluster

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not cluster"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/serve_load.py

# Train every shipped config and evaluate it: docs/RESULTS.md (about an hour on 2 CPU cores).
results: $(STAMP)
	$(BIN)/python benchmarks/results.py

clean:
	rm -rf genray-runs .pytest_cache
