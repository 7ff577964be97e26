# gmpd: the two commands are `make demo` and `make test` (see README.md).
# Both create .venv, install gmpd with pip (which compiles native/), and need
# only Python >= 3.11, gcc and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CFLAGS := -std=gnu11 -O2 -Wall -Wextra -Werror
NATIVE_SRC := $(wildcard native/*.c native/*.h)

.PHONY: all build native lint typecheck pytest test demo bench spin clean

all: build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(NATIVE_SRC) | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# gmpd's bytecode, compiled here: every cluster starts two fresh interpreters
# (coordinator, node agent), and where PYTHONDONTWRITEBYTECODE is set (it is
# on the development machine) an editable install never caches it, so each
# compiled gmpd's modules from source again: ~80 ms of a cluster's start
# (0.29 -> 0.21 s to the first result, 6 runs each).  Up-to-date files are
# skipped.
build: $(STAMP)
	$(BIN)/python -m compileall -q gmpd

# The Python-free ring layer alone, warnings as errors, with its C self-test.
native: build/runq_selftest
	./build/runq_selftest

build/runq_selftest: native/runq_selftest.c native/runq.c native/runq.h
	@mkdir -p build
	$(CC) $(CFLAGS) -Inative -o $@ native/runq_selftest.c native/runq.c

lint: build
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: build
	$(BIN)/mypy

pytest: build
	$(BIN)/python -X faulthandler -m pytest

test: build native lint typecheck pytest

# The main job: a real CPU-bound farm (prime counting over heavy-tailed
# ranges, with nested fan-out) on the embedded cluster, beside
# ProcessPoolExecutor running the same work.
demo: build
	$(BIN)/python examples/primes.py

bench: build
	$(BIN)/python bench/runq.py --json

# Model-check the put/get/steal protocol with spin (apt-get install spin).
spin:
	$(MAKE) -C native/model

clean:
	rm -rf build $(VENV) *.egg-info gmpd/*.so gmpd/__pycache__
