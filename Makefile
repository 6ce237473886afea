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

.PHONY: demo test test-comfy bench clean

$(BIN)/.stylekit-installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.stylekit-installed
	$(BIN)/python -m stylekit.demo --out out

test: $(BIN)/.stylekit-installed
ifdef COMFYUI_PATH
	$(BIN)/python -m pytest tests -m "not benchmark" --ignore=tests/tier3
	COMFYUI_PATH=$(COMFYUI_PATH) $(COMFYUI_PYTHON) -m pytest tests/tier3 -p no:cacheprovider
else
	$(BIN)/python -m pytest tests -m "not benchmark"
endif

test-comfy:
	COMFYUI_PATH=$(COMFYUI_PATH) $(COMFYUI_PYTHON) -m pytest tests/tier3 -p no:cacheprovider

bench: $(BIN)/.stylekit-installed
	$(BIN)/python -m pytest tests/benchmarks -m benchmark -s

clean:
	rm -rf $(VENV) out .pytest_cache
