# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# Tier 3 runs with ComfyUI's own Python when COMFYUI_PATH points at a ComfyUI checkout.
COMFYUI_PYTHON ?= $(firstword $(wildcard $(COMFYUI_PATH)/.venv/bin/python $(COMFYUI_PATH)/venv/bin/python) python3)

.PHONY: demo test bench clean

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

bench: $(BIN)/.stylekit-installed
	$(BIN)/python -m pytest tests/benchmarks -m benchmark -s

clean:
	rm -rf $(VENV) out .pytest_cache
