# The two commands of the README:
#   make bench   set up, build, and run the main job (for now: the operator benchmark)
#   make test    set up, build, and run the test suite (what CI runs)
# and make cuda-build: the library with its CUDA kernels against a CUDA build of torch (in
# .venv-cuda and build-cuda/), which CI runs too where nvcc exists; no GPU is needed.
# PYTHON picks the interpreter that owns torch; by default a virtual environment .venv with
# the CPU build of torch (TORCH_SPEC). On a GPU machine: make test PYTHON=python3 (its torch).
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTHON ?= $(VENV)/bin/python

CUDA_VENV ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1

.PHONY: setup build test bench check-cuda cuda-build clean

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

$(CUDA_VENV)/bin/python:
	python3 -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q "$(CUDA_TORCH_SPEC)" numpy

cuda-build: $(CUDA_VENV)/bin/python
	cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAPA_CUDA=ON \
	    -DPython3_EXECUTABLE=$(abspath $(CUDA_VENV))/bin/python
	cmake --build build-cuda --parallel
	$(CUDA_VENV)/bin/python -c "import torch; torch.ops.load_library('build-cuda/librapa_ops.so'); \
	    assert torch._C._dispatch_has_kernel_for_dispatch_key('rapa::tiled_conv', 'CUDA'); \
	    print('rapa: CUDA build loads, CUDA kernels registered')"

clean:
	rm -rf build build-cuda rapa/librapa_ops*.so
