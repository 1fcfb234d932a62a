# llmpi — the two commands a fresh machine needs are `make demo` and `make test`.
# Every target installs what it needs into .venv first (CPU torch 2.13.0 before the package, so pip never
# pulls a multi-GB CUDA build on a machine without a GPU; clusters keep their own torch, setup.cfg says >=2.1).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
DEMO   := demo
NP     ?= 2

.PHONY: install demo test test-fast lint bench bench-memory soak clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,mpich]"
	touch $(STAMP)

# Trains a small net on the synthetic CIFAR-shaped set, sweeps a 21x21 filter-normalised surface on
# $(NP) MPI ranks, draws it. Offline, a few minutes at most on 2 CPU cores.
demo: $(STAMP)
	$(PY) -m llmpi.train jobs/train/demo.yaml
	$(VENV)/bin/mpirun -n $(NP) $(PY) -m llmpi.sweep jobs/demo.yaml
	$(PY) -m llmpi.plot $(DEMO)/demo.h5

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -ra

# Unit tests only (no mpirun, SLURM or browser): a minute or two while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not mpi and not slurm and not browser"

lint: $(STAMP)
	$(VENV)/bin/ruff check llmpi tests bench examples
	$(VENV)/bin/ruff format --check llmpi tests bench examples

# The kill -9 fault suite with many more seeded trials than `make test` runs.
soak: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" LLMPI_KILL_TRIALS=$${TRIALS:-200} $(PY) -m pytest -q -ra tests/test_faults.py -k kill_9

bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench

# Peak device memory per parameter and time per point of large networks, each case a fresh process (bench/README.md).
bench-memory: $(STAMP)
	$(PY) -m bench.memory

clean:
	rm -rf $(DEMO) .pytest_cache
