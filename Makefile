# make demo: set up, then data -> train -> sweep -> register -> serve on built-in data, local Ray and MLflow.
# make test: set up (the browser for the gallery test included) and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install datasets browser demo test test-fast bench results compare clean

install: $(STAMP) datasets

# Debian's dataset-fashion-mnist (Fashion-MNIST's four IDX files) for `genray data prepare
# fashion_mnist`, and espeak-ng (a speech synthesiser) for `genray data prepare spoken_digits`.
# Installed when missing and this is root with apt-get; otherwise fashion_mnist needs
# `--from DIR`, spoken_digits is unavailable, and the tests of either skip.
datasets:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist (Debian)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else echo "dataset-fashion-mnist missing and not root: genray data prepare fashion_mnist needs --from DIR"; fi
	@if command -v espeak-ng >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing espeak-ng (Debian) for the spoken_digits dataset"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null); \
	else echo "espeak-ng missing and not root: genray data prepare spoken_digits is unavailable"; fi

# Reinstall only when the project's metadata changes. torch first, pinned: the CPU build lies
# on local disk here, and an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m genray.pipelines.demo

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
test: $(STAMP) datasets browser
	$(BIN)/python -m pytest -q -m "not cluster" --durations=20
	$(BIN)/python -m pytest -q -m cluster --durations=20

test-fast: $(STAMP) datasets
	$(BIN)/python -m pytest -q -m "not integration and not cluster"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/serve_load.py

# Train every shipped config and evaluate it: docs/RESULTS.md (about an hour on 2 CPU cores).
results: $(STAMP)
	$(BIN)/python benchmarks/results.py

# Every family with a Fashion-MNIST config, 10 minutes of training x 3 seeds, scored by genray eval:
# docs/COMPARISON.md, docs/comparison.csv and the plots (upwards of 7 hours on 2 CPU cores, one
# trial at a time). The token priors join when their tokenizer is trained: genray train vqvae/vqvae_fashion.
compare: $(STAMP) datasets
	$(BIN)/python -m genray compare --data fashion_mnist --budget-minutes 10 --seeds 3 --out docs/

clean:
	rm -rf genray-runs .pytest_cache
