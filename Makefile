# The two commands of the README:
#   make bench   set up, build, and run the main job (for now: the operator benchmark)
#   make test    set up, build, and run the test suite (what CI runs)
# PYTHON picks the interpreter that owns torch; by default a virtual environment .venv with
# the CPU build of torch (TORCH_SPEC). On a GPU machine: make test PYTHON=python3 (its torch).
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTHON ?= $(VENV)/bin/python

.PHONY: setup build test bench check-cuda clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" numpy pytest expecttest setuptools

setup: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)

build: setup
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PYTHON) -m pytest -q

bench: build
	$(PYTHON) bench/bench_ops.py

check-cuda: setup
	$(PYTHON) tools/check_cuda_sources.py

clean:
	rm -rf build rapa/librapa_ops*.so
