"""llmpi: loss landscapes (Li et al., *Visualizing the Loss Landscape of Neural Nets*, NeurIPS 2018) over MPI.

    mpirun -n 8 python -m llmpi.sweep jobs/vgg56.yaml

From Python, on a network in memory (a notebook, or every rank of ``mpirun -n 8 python script.py``):

    import llmpi
    s = llmpi.surface(model, (inputs, targets), grid=((-1, 1, 21), (-1, 1, 21)), output="surfaces/mine.h5")
    s.plot()                                   # also llmpi.open(path), llmpi.Job, llmpi.interpolate/plane/pca
    h = llmpi.spectrum(model, (inputs, targets), analyses=["topk", "trace", "density"])   # the Hessian at θ*

The API (``surface``, ``spectrum``, ``open``, ``Surface``, ``Spectrum``, ``Job``, ``interpolate``, ``plane``, ``pca``,
``JobError``, ``SweepError``, ``Interrupted``) is imported on first use: ``import llmpi`` alone loads neither torch,
nor mpi4py, nor h5py, nor matplotlib (every command imports this package first).

The map of the code. At the front door, the commands:

* ``sweep`` -- ``python -m llmpi.sweep JOB.yaml ...``: the surfaces, on every rank;
* ``spectrum`` -- ``python -m llmpi.spectrum JOB.yaml``: top-k eigenpairs, trace and spectral density at θ*, on every
  rank;
* ``status`` -- ``python -m llmpi.status FILE``: how far a sweep is, and the surface's metrics (or a spectrum's);
* ``plot`` -- ``python -m llmpi.plot FILE``: the pictures (drawn by ``report/``);
* ``train`` -- ``python -m llmpi.train JOB.yaml``: the minimiser to sweep around;
* ``slurm`` -- ``python -m llmpi.slurm``: the sbatch script;
* ``directions`` -- ``python -m llmpi.directions materialise``: a recipe file's directions written out;
* ``jobschema`` -- ``python -m llmpi.jobschema``: the job files' JSON Schemas.

Behind it, one room per concern; each imports only the rooms below it (``pyproject.toml``'s import contracts,
checked by ``make lint`` and ``make test``):

* ``ranks/`` -- the sweep over MPI ranks: ``run`` (the set-up every rank takes together, rank 0's preparation of each
  surface, the blocks computed, the results committed), ``api`` (``llmpi.surface`` and ``llmpi.spectrum``: the same
  sweep and spectrum called from Python, on parts given in memory), ``protocol`` (how a block is handed out; MPI,
  never torch), ``placement`` (which GPU and how many threads a rank takes), ``worker`` (what a rank loads and
  computes), ``record`` (progress and ``<file>.run.json``), ``fingerprint`` (what decides a resume), ``faults`` (fault
  injection for the tests), ``spectrum`` (the spectrum over the ranks in step: products summed over the ranks' shares
  of the data, or whole probes and runs per rank), ``lockstep`` (the agreements and ordered sums of ranks in step;
  MPI, never torch);
* ``report/`` -- what a surface file says for people: ``surface`` (the ``Surface`` that ``llmpi.surface`` and
  ``llmpi.open`` return: values, pictures, metrics), ``summary`` (what ``status`` reports), ``metrics`` (sharpness,
  curvature, basin), and its pictures: ``landscape`` (a surface read for drawing: values, labels, scales, marks),
  ``static`` (matplotlib: contours, heat maps, 3D, 1D curves), ``viewer`` (the offline HTML viewer), ``paraview``
  (legacy VTK); and of a spectrum file, ``spectrum`` (the ``Spectrum`` that ``llmpi.spectrum`` returns; its numbers
  for ``status``, its density and per-layer traces);
* ``compute/`` -- the values at a point, never MPI: ``evaluate`` (loss and accuracy over the data), ``forward``
  (eager, folded, compiled), ``fold`` (BatchNorm folded), ``batches`` (data on the device or streamed), ``losses``,
  ``hessian`` (Hessian-vector products, Lanczos), ``spectrum`` (top-k eigenpairs, Hutchinson's trace per entry,
  stochastic Lanczos quadrature, the density), ``data`` (CIFAR-10 and your data), ``runtime`` (device,
  threads, precision, kernels), ``oom`` (the out-of-memory retry);
* ``space/`` -- the plane in weight space: ``checkpoint`` (θ* and the other points, read from files),
  ``directions`` (Gaussian directions and their normalisations), ``recipe`` (directions made anywhere from a
  seed), ``between`` (directions between checkpoints: interpolation, plane), ``pca`` (a training trajectory's
  components), ``plan`` (the directions a job gets), ``theta`` (θ = θ* + αδ + βη formed at a point);
* ``file/`` -- the surface file: ``store`` (the one writer, and the one way to read it), ``grid`` (the points, their
  order and blocks), ``atomic`` (writes that a crash cannot leave half done); and the spectrum file: ``spectrum``
  (its one writer and reader);
* ``job/`` -- what a user asks and is told: ``config`` (a sweep's job tree), ``training`` (a training job's),
  ``schema`` (``--keys`` and the JSON Schemas), ``factories`` (your model, data and loss by import path),
  ``memory`` (your model, data and loss given in memory: their labels in the job, the objects beside it),
  ``errors`` (what a user can fix, a failing disk included), ``exits`` (how every command ends), ``version``;
* ``models/`` -- the paper's networks by name: ``resnet``, ``resnet_imagenet``, ``vgg``, ``densenet``.

``schemas/`` holds the shipped JSON Schemas (data, not code).
"""

from __future__ import annotations

import importlib
from typing import Any

from .job.version import __version__

# The API, by where it lives; each imported on first use (PEP 562), so that ``import llmpi`` stays cheap.
_API = {
    "surface": "llmpi.ranks.api",
    "spectrum": "llmpi.spectrum",  # the command's module, callable: llmpi.ranks.api.spectrum (see its docstring)
    "Spectrum": "llmpi.report.spectrum",
    "open": "llmpi.report.surface",
    "Surface": "llmpi.report.surface",
    "Job": "llmpi.job.config",
    "interpolate": "llmpi.job.memory",
    "plane": "llmpi.job.memory",
    "pca": "llmpi.job.memory",
    "JobError": "llmpi.job.errors",
    "SweepError": "llmpi.job.errors",
    "Interrupted": "llmpi.job.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module = importlib.import_module(_API[name])
        value = module if module.__name__ == f"llmpi.{name}" else getattr(module, name)
        globals()[name] = value  # found once
        return value
    raise AttributeError(f"module 'llmpi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
