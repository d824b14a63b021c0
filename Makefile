# fastiou: `make demo` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastiou-installed
SOURCES := $(shell find csrc python -type f -not -name '*.pyc') CMakeLists.txt pyproject.toml

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "tensorflow>=2.21,<2.22" "keras>=3.10" numpy pytest pybind11 \
		"scikit-build-core>=0.10" ninja
	touch $@

# Built without isolation against the venv's TensorFlow: the op library must
# match the TensorFlow it is loaded into.
$(STAMP): $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps .
	touch $@

demo: setup
	$(PY) benchmarks/bench_losses.py --quick

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench_losses.py

clean:
	rm -rf build $(VENV)
