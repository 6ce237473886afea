# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# Tier 3 runs with ComfyUI's own Python when COMFYUI_PATH points at a ComfyUI checkout (0.3.64 or
# 0.33.0, each in its own venv: see README, Tests), e.g.
#   make test COMFYUI_PATH=~/ComfyUI-0.33.0 COMFYUI_PYTHON=~/ComfyUI-0.33.0/.venv/bin/python
COMFYUI_PYTHON ?= $(firstword $(wildcard $(COMFYUI_PATH)/.venv/bin/python $(COMFYUI_PATH)/venv/bin/python) python3)
# Torch threads the tests use (tolerances do not depend on it): TEST_THREADS=1 make test
TEST_THREADS ?= 2
export STYLEKIT_TEST_THREADS := $(TEST_THREADS)

# The real-size benchmark's device: cpu, or gpu (ComfyUI's CUDA device)
BENCH_DEVICE ?= cpu

.PHONY: demo test test-comfy test-browser bench bench-real toy clean

$(BIN)/.stylekit-installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.stylekit-installed
	$(BIN)/python -m stylekit.demo --out out

# Retrain the miniature world into toy/weights (about 2 h 50 min on 2 CPU cores; an interrupted run resumes
# from toy_work/). Never part of demo or test, which use the shipped weights.
toy: $(BIN)/.stylekit-installed
	$(BIN)/python -m stylekit.toy.train --out toy/weights --work toy_work --force

test: $(BIN)/.stylekit-installed
ifdef COMFYUI_PATH
	$(BIN)/python -m pytest tests -m "not benchmark" --ignore=tests/tier3
	COMFYUI_PATH=$(COMFYUI_PATH) $(COMFYUI_PYTHON) -m pytest tests/tier3 -m "not benchmark" -p no:cacheprovider
else
	$(BIN)/python -m pytest tests -m "not benchmark"
endif

test-comfy:
	COMFYUI_PATH=$(COMFYUI_PATH) $(COMFYUI_PYTHON) -m pytest tests/tier3 -m "not benchmark" -p no:cacheprovider

bench: $(BIN)/.stylekit-installed
	@echo "make bench: about 15-20 min on 2 CPU cores; figures in bench/*.json, missed targets as warnings (exit 0)"
	$(BIN)/python -m pytest tests/benchmarks -m benchmark -s

# Every method against plain sampling on full-size SD1.5 / SDXL UNets (random weights) inside a real ComfyUI;
# run on request, never in CI. Tables: bench/real_<cpu|gpu>.{md,json}. Knobs: see the test's docstring, e.g.
#   make bench-real COMFYUI_PATH=~/ComfyUI BENCH_DEVICE=gpu
#   STYLEKIT_BENCH_FAMILIES=sd15 STYLEKIT_BENCH_BATCHES=1 STYLEKIT_BENCH_STEPS=2 make bench-real COMFYUI_PATH=...
# The browser tier: every shipped workflow in ComfyUI's own frontend (headless Chromium from Debian's package:
# apt install chromium; playwright from pip, never `playwright install`). Screenshots and report: out/browser/.
#   make test-browser COMFYUI_PATH=~/ComfyUI-0.33.0
test-browser: $(BIN)/.stylekit-installed
	@test -n "$(COMFYUI_PATH)" || { echo "the browser tier runs ComfyUI's frontend: set COMFYUI_PATH"; exit 2; }
	$(BIN)/pip install -q playwright
	COMFYUI_PATH=$(COMFYUI_PATH) $(BIN)/python -m pytest tests/browser -m browser

bench-real:
	@test -n "$(COMFYUI_PATH)" || { echo "bench-real runs inside ComfyUI: set COMFYUI_PATH (and COMFYUI_PYTHON)"; exit 2; }
	COMFYUI_PATH=$(COMFYUI_PATH) STYLEKIT_COMFY_DEVICE=$(BENCH_DEVICE) $(COMFYUI_PYTHON) -m pytest \
		tests/tier3/test_real_size_bench.py -m benchmark -s -p no:cacheprovider

clean:
	rm -rf $(VENV) out .pytest_cache toy_work
