"""Jobs: one validated dataclass tree, loaded from YAML, overridden from the command line.

    python -m llmpi.sweep jobs/vgg56.yaml --set grid.x=[-0.5,0.5,21] --set output=surfaces/zoom.h5

Every default below says why it is what it is (``python -m llmpi.sweep --keys`` prints them all, and the JSON
Schema that ``llmpi.jobschema`` generates from this tree carries them to editors). A key that is not in the tree is
an error naming the nearest valid key, a value of the wrong type or outside its range is an error naming the key
and what it accepts: a typo must never silently fall back to a default and cost a cluster night.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import JobError

Auto = Literal["auto"]


def _why(default: Any, why: str, requires: Mapping[str, str] | None = None) -> Any:
    """A field default together with the reason for it (kept in the field's metadata, shown by ``--keys``).

    ``requires`` (sections only): keys of the section that this tree needs although the section's own class
    does not, with the reason -- a sweep needs ``model.checkpoint``, a training run (same ModelSpec) does not.
    """
    meta: dict[str, Any] = {"why": why}
    if requires:
        assert isinstance(default, type), "requires names keys of a section"
        meta["requires"] = dict(requires)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    if isinstance(default, type):  # a section: built when absent (validating it then, not at import)
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _required(why: str) -> Any:
    """A key the job file must give: loading refuses a job without it, ``--keys`` and the schema say so.

    The default None only satisfies the dataclass; ``from_dict`` never lets it through."""
    return field(default=None, metadata={"why": why, "required": True})


@dataclass(frozen=True)
class ModelSpec:
    arch: str | None = _why(None, "a name from llmpi.models (vgg56 = resnet56_noshort, the paper's name)")
    checkpoint: str | None = _why(
        None,
        "the trained minimiser θ* (a state_dict, or a dict with 'state_dict'); sweeps need it, training writes output",
    )
    checkpoint2: str | None = _why(None, "directions.kind interpolate and plane only: the model at α = 1")
    checkpoint3: str | None = _why(None, "directions.kind plane only: the model at β = 1")
    factory: str | None = _why(None, "your own network instead of arch: package.module:function -> nn.Module")
    kwargs: dict[str, Any] = _why({}, "keyword arguments for model.factory")

    def __post_init__(self) -> None:
        if self.arch is not None and self.factory is not None:
            raise JobError("model.arch and model.factory both given: a network comes from one of them; drop one")
        if self.arch is None and self.factory is None:
            raise JobError("missing required key 'model.arch' (a name from llmpi.models), or model.factory")
        if self.kwargs and self.factory is None:
            raise JobError("model.kwargs are arguments for model.factory, which is not given")
        if self.arch is not None:
            from ..models import canonical_arch

            try:
                object.__setattr__(self, "arch", canonical_arch(self.arch))
            except ValueError as e:  # llmpi.models knows nothing of job files: the message names the key
                raise JobError(f"model.arch: {e}") from None

    @property
    def label(self) -> str:
        """How messages and files name the network."""
        return self.arch if self.arch is not None else self.factory


@dataclass(frozen=True)
class DataSpec:
    dataset: Literal["cifar10", "synthetic"] = _why("cifar10", "the paper's dataset")
    root: str = _why("data", "holds cifar-10-batches-py/, the standard python-pickle release")
    split: Literal["train", "test", "both"] = _why(
        "train", "the paper's surfaces are of the training loss; both: train_* and test_* in one file"
    )
    subset: int | None = _why(None, "all images, as in the paper; N = first N of a permutation seeded by data.seed")
    seed: int = _why(0, "fixes which images a subset holds")
    batch_size: int | Auto = _why("auto", "a speed knob only: the loss is an exactly-rounded sum of per-image values")
    factory: str | None = _why(
        None, "your own data instead of dataset/root: package.module:function(split, **kwargs) -> Dataset or tensors"
    )
    kwargs: dict[str, Any] = _why({}, "keyword arguments for data.factory")
    placement: Literal["auto", "device", "host"] = _why(
        "auto",
        "the selection resident on the device when it takes at most half its free memory, else in host memory with "
        "each batch copied while the previous one computes; the same values either way (llmpi.compute.batches)",
    )

    def __post_init__(self) -> None:
        if self.kwargs and self.factory is None:
            raise JobError("data.kwargs are arguments for data.factory, which is not given")
        if self.subset is not None and self.subset < 1:
            raise JobError(f"data.subset must be null or a positive number of images, not {self.subset}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise JobError(f"data.batch_size must be 'auto' or a positive integer, not {self.batch_size}")


@dataclass(frozen=True)
class DirectionsSpec:
    kind: Literal["random", "interpolate", "plane", "pca", "hessian"] = _why(
        "random",
        "Gaussian directions, the paper's main method; interpolate: the line checkpoint -> checkpoint2; plane: "
        "through checkpoint, checkpoint2, checkpoint3; pca: top-2 principal components of a training trajectory; "
        "hessian: the top eigenvector of the Hessian at θ* (a line), or the top two (a plane)",
    )
    seed: int = _why(0, "directions are reproducible from the seed alone (kind random)")
    norm: Literal["filter", "layer", "weight", "none"] | None = _why(
        None,
        "null: the kind's own -- filter for random (filter normalisation makes sharpness comparable across nets, "
        "the paper's point), none for hessian (unit eigenvectors, PyHessian's picture; filter rescales them "
        "filter-wise); interpolate and plane use the checkpoints' differences as they are",
    )
    ignore: Literal["biasbn", "none"] = _why(
        "biasbn", "the paper zeroes biases and BatchNorm parameters (kinds random and pca; the Hessian's parameters)"
    )
    type: Literal["weights", "states"] = _why("weights", "states also perturbs BN running statistics")
    trajectory: str | None = _why(
        None, "kind pca only: the snapshot folder llmpi.train writes with train.save_every (checkpoints/<name>/)"
    )
    rescale: Literal["none", "filter"] = _why(
        "none", "kind pca only: the paper's code uses the unit components; filter rescales them filter-wise"
    )
    store: Literal["auto", "full", "recipe"] = _why(
        "auto",
        "full (the directions in the file, 4 bytes per parameter each) up to 100 M parameters, where that is under "
        "1 GB and any script can read them; recipe above (a few MB: how every rank makes them; not for kind pca "
        "or hessian)",
    )
    spectrum: str | None = _why(
        None,
        "kind hessian only: a spectrum file of this network at θ* (python -m llmpi.spectrum) to take the "
        "eigenvectors from; null: the sweep computes them first, on every rank, into <output>.spectrum.h5",
    )

    def __post_init__(self) -> None:
        if self.norm is None:  # the kind's own normalisation: see the key's reason
            object.__setattr__(self, "norm", "none" if self.kind == "hessian" else "filter")
        if self.spectrum is not None and self.kind != "hessian":
            raise JobError(f"directions.spectrum is for directions.kind: hessian, not {self.kind}; drop it")
        if self.kind == "hessian" and self.store == "recipe":
            raise JobError(
                "directions.store: recipe makes random directions and differences of checkpoints; kind hessian's "
                "eigenvectors are stored in full: set directions.store: full (or auto)"
            )
        if self.trajectory is not None and self.kind != "pca":
            raise JobError(f"directions.trajectory is for directions.kind: pca, not {self.kind}; drop it")
        if self.rescale != "none" and self.kind != "pca":
            raise JobError(f"directions.rescale is for directions.kind: pca, not {self.kind}; drop it")
        if self.store == "recipe" and self.kind == "pca":
            raise JobError(
                "directions.store: recipe makes random directions and differences of checkpoints; kind pca's "
                "components come from a trajectory and are stored in full: set directions.store: full (or auto)"
            )
        if self.kind == "pca" and self.trajectory is None:
            raise JobError(
                "directions.kind: pca needs directions.trajectory, the folder of training snapshots "
                "(python -m llmpi.train with train.save_every: 1 writes checkpoints/<name>/epoch_<N>.pt)"
            )


GridAxis = tuple[float, float, int]


@dataclass(frozen=True)
class GridSpec:
    x: GridAxis = _why((-1.0, 1.0, 51), "the paper's 51x51 surfaces over [-1, 1]")
    y: GridAxis | None = _why(None, "omitted: a 1D line along x")
    block: int | Auto = _why("auto", "points handed to a worker at a time; auto balances load and overhead")

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            axis = getattr(self, name)
            if axis is None:
                continue
            lo, hi, num = axis
            if num < 1:
                raise JobError(f"grid.{name}: num must be at least 1, not {num} (grid.{name} is [min, max, num])")
            if lo > hi:
                raise JobError(f"grid.{name}: min {lo} is greater than max {hi} (grid.{name} is [min, max, num])")
            if num > 1 and lo == hi:
                raise JobError(f"grid.{name}: {num} points between equal min and max {lo}; use num: 1 or widen it")
        if isinstance(self.block, int) and self.block < 1:
            raise JobError(f"grid.block must be 'auto' or a positive integer, not {self.block}")

    @property
    def size(self) -> int:
        return self.x[2] * (self.y[2] if self.y is not None else 1)


@dataclass(frozen=True)
class RuntimeSpec:
    device: Literal["auto", "cuda", "cpu"] = _why("auto", "a GPU when there is one, else the CPU")
    threads: int | Auto = _why(
        "auto", "cores / ranks on the node: MPICH's mpirun otherwise leaves torch one thread per rank"
    )
    # Precision changes values and is in the fingerprint; fold, compile and kernels only change last bits: the
    # forward path is decided once on rank 0 for all ranks (see llmpi.compute.evaluate).
    precision: Literal["fp32", "tf32", "bf16"] = _why(
        "fp32", "the paper's float32; tf32/bf16 are faster on GPUs and deviate more (python -m bench measures it)"
    )
    compile: bool | Auto = _why(
        "auto",
        "torch.compile (CUDA graphs on GPUs) where the sweep is long enough to pay for compiling: rank 0 times "
        "it against eager, compile time included",
    )
    fold: bool | Auto = _why(
        "auto",
        "BatchNorm folded into the convolution before it at every point (fewer kernels, last-bit differences); "
        "auto: where it applies and times faster",
    )
    kernels: Literal["deterministic", "fast"] = _why(
        "deterministic",
        "1 rank and N ranks give bitwise-equal files; fast lets cuDNN and the compiler pick kernels by timing "
        "(ranks may then differ in the last bits)",
    )
    hold_directions: Literal["auto", "device", "host", "regenerate"] = _why(
        "auto",
        "on the device up to 100 M parameters (fastest); above, regenerated per point from the recipe or streamed "
        "from host memory, so the device holds about 2x the weights (llmpi.space.theta)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.threads, int) and self.threads < 1:
            raise JobError(f"runtime.threads must be 'auto' or a positive integer, not {self.threads}")


@dataclass(frozen=True)
class LossSpec:
    name: Literal["crossentropy", "mse"] = _why(
        "crossentropy", "the paper's loss; mse is its alternative (softmax vs one-hot, mean over classes)"
    )
    factory: str | None = _why(
        None, "your own loss instead of name: package.module:function(model, batch) -> (summed loss, n, correct|None)"
    )


@dataclass(frozen=True)
class EvaluationSpec:
    bn: Literal["eval", "recalibrate"] = _why(
        "eval", "the checkpoint's BatchNorm statistics, as the paper; recalibrate recomputes them at every point"
    )
    bn_batches: int = _why(10, "training batches whose statistics replace BatchNorm's at every point (recalibrate)")
    bn_batch_size: int = _why(128, "the training batch size: BatchNorm statistics are per-batch averages")

    def __post_init__(self) -> None:
        for name in ("bn_batches", "bn_batch_size"):
            if getattr(self, name) < 1:
                raise JobError(f"evaluation.{name} must be a positive integer, not {getattr(self, name)}")


# What ``metrics: [hessian]`` stores at every point, in this order: λmax and λmin (the extreme Ritz values),
# |λmin/λmax|, whether Lanczos met hessian.tol within hessian.max_hvps (1.0, else 0.0: the values then lie inside
# the spectrum but may fall short of its ends), the larger relative residual of the two extreme Ritz pairs, and the
# Hessian-vector products the point cost.
HESSIAN_VALUES = ["max_eig", "min_eig", "eig_ratio", "eig_converged", "eig_residual", "eig_hvps"]
# What ``hessian.trace: true`` adds after them: the trace estimate and its standard error (llmpi.compute.spectrum).
TRACE_VALUES = ["trace", "trace_se"]


@dataclass(frozen=True)
class HessianSpec:
    """How ``metrics: [hessian]`` computes λmax and λmin at every point (llmpi.compute.hessian)."""

    tol: float = _why(
        1e-3, "relative residual of both extreme Ritz pairs; 1e-2 moved a measured ratio across the 1% line"
    )
    max_hvps: int = _why(300, "Hessian-vector products per point at most, a cap on the cost (about 20 are typical)")
    basis: int = _why(40, "Lanczos vectors kept (float64 on the device: 40 x resnet56 = 280 MB), then thick restarts")
    images: int | None = _why(
        None, "null: all the selected images (the loss's own data); N: the first N of them, as the products cost ~10x"
    )
    seed: int = _why(0, "Lanczos start vector: the value depends on the point and seed only, never on the rank")
    batch_size: int | Auto = _why(
        "auto", "the loss's batch, at most 512: a double backward keeps the graph, several times a forward's memory"
    )
    trace: bool = _why(
        False,
        "also the trace of the Hessian at every point (datasets trace, trace_se): the Lanczos basis's exact share "
        "plus Hutchinson on the rest, with trace_probes probes from a fixed seed (the same probes at every point)",
    )
    trace_probes: int = _why(
        10, "Rademacher probes per point for hessian.trace: one product each, the standard error ~ 1/sqrt(probes)"
    )
    ignore: Literal["biasbn", "none"] | None = _why(
        None,
        "null: the parameters the directions move (directions.ignore; the paper's Hessian); biasbn: tensors of two "
        "or more dimensions only; none: every parameter, biases and BatchNorm's included (at every point and for "
        "python -m llmpi.spectrum alike)",
    )

    def parameters(self, directions: DirectionsSpec) -> str:
        """The ``ignore`` rule the Hessian's parameter set follows: its own, else the directions'."""
        return self.ignore if self.ignore is not None else directions.ignore

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise JobError(f"hessian.batch_size must be 'auto' or a positive integer, not {self.batch_size}")
        if self.trace_probes < 2:
            raise JobError(
                f"hessian.trace_probes must be at least 2 (a standard error needs two samples), not {self.trace_probes}"
            )
        if not 1e-12 <= self.tol < 1:
            raise JobError(f"hessian.tol must be in [1e-12, 1), not {self.tol}")
        if self.max_hvps < 1:
            raise JobError(f"hessian.max_hvps must be a positive integer, not {self.max_hvps}")
        if self.basis < 3:
            raise JobError(f"hessian.basis must be at least 3, not {self.basis}")
        if self.images is not None and self.images < 1:
            raise JobError(f"hessian.images must be null or a positive number of images, not {self.images}")


SPECTRUM_ANALYSES = ("topk", "trace", "density")


@dataclass(frozen=True)
class TopkSpec:
    """``spectrum.topk``: the largest (and most negative) eigenpairs, by Lanczos (llmpi.compute.spectrum)."""

    k: int = _why(5, "the top five eigenvalues with their eigenvectors: the outliers that carry most of the curvature")
    bottom: int = _why(0, "the most negative eigenpairs too (0: none): how non-convex θ* is along its worst directions")
    tol: float = _why(
        1e-6,
        "each pair's residual ‖Hv − λv‖ <= tol · |λmax|, measured with one more product per pair: every value is then "
        "within tol·|λmax| of an eigenvalue (in practice far closer), and 1e-6 costs few products beyond 1e-3",
    )
    max_hvps: int = _why(1000, "Hessian-vector products at most: a cap on the cost (top-5 typically takes 50-150)")
    basis: int = _why(
        40, "Lanczos vectors kept (float64 on the device: 40 x resnet56's 0.85 M parameters = 280 MB), then restarts"
    )

    def __post_init__(self) -> None:
        if self.k < 0 or self.bottom < 0 or self.k + self.bottom < 1:
            raise JobError(
                f"spectrum.topk asks for {self.k} top and {self.bottom} bottom eigenpairs: ask for at least one "
                "(spectrum.topk.k: 5), or leave topk out of spectrum.analyses"
            )
        if not 1e-14 <= self.tol < 1:
            raise JobError(f"spectrum.topk.tol must be in [1e-14, 1), not {self.tol}")
        if self.max_hvps < self.k + self.bottom:
            raise JobError(
                f"spectrum.topk.max_hvps {self.max_hvps} cannot find {self.k + self.bottom} eigenpairs: give at least "
                "that many products (the default 1000 is a cap, rarely reached)"
            )
        if self.basis < self.k + self.bottom + 2:
            raise JobError(
                f"spectrum.topk.basis {self.basis} cannot hold {self.k + self.bottom} eigenpairs and room to restart: "
                f"give at least {self.k + self.bottom + 2} (about 3 x k is a good choice)"
            )


@dataclass(frozen=True)
class TraceSpec:
    """``spectrum.trace``: the trace by Hutchinson, and each parameter entry's from the same probes."""

    rel_se: float = _why(0.01, "stop once the standard error is 1% of the trace")
    max_probes: int = _why(1000, "Rademacher probes at most (one product each): the cap when rel_se is not reached")
    min_probes: int = _why(
        10, "probes before the stopping rule is trusted: a standard error from fewer is itself noise"
    )
    deflate: int = _why(
        20,
        "Ritz vectors of the top-k's Lanczos basis (those of largest |θ|, one product each) whose exact share of "
        "the trace is taken out, only the rest estimated (needs topk in spectrum.analyses): a network's few large "
        "eigenvalues make most of the plain estimator's variance (resnet20: 40x fewer probes measured with 10); "
        "0: plain Hutchinson, PyHessian's estimator",
    )

    def __post_init__(self) -> None:
        if self.max_probes < 1:
            raise JobError(
                f"spectrum.trace.max_probes must be at least 1, not {self.max_probes} (zero probes estimate nothing); "
                "to skip the trace, leave trace out of spectrum.analyses"
            )
        if not 0 < self.rel_se < 1:
            raise JobError(f"spectrum.trace.rel_se must be in (0, 1), not {self.rel_se} (0.01 = 1%)")
        if self.deflate < 0:
            raise JobError(
                f"spectrum.trace.deflate must be 0 (plain Hutchinson) or a number of vectors, not {self.deflate}"
            )
        if not 2 <= self.min_probes <= self.max_probes:
            raise JobError(
                f"spectrum.trace.min_probes must be between 2 and max_probes ({self.max_probes}), not {self.min_probes}"
            )


@dataclass(frozen=True)
class DensitySpec:
    """``spectrum.density``: the eigenvalue density by stochastic Lanczos quadrature."""

    runs: int = _why(10, "independent start vectors: the density is their mean (its noise falls as 1/sqrt(runs))")
    steps: int = _why(
        50, "Lanczos steps per run (products per run): Gauss quadrature exact for moments up to 2 x steps - 1"
    )
    sigma: float | Auto = _why(
        "auto",
        "the Gaussian width of the density on its grid; auto: sqrt(1e-5 x max(1, span of the nodes)), PyHessian's, "
        "so the figures compare (the nodes and weights are stored: any other width can be drawn from them)",
    )
    points: int = _why(10000, "grid points of the stored density, enough to resolve the width over the whole span")

    def __post_init__(self) -> None:
        for name in ("runs", "steps"):
            if getattr(self, name) < 1:
                raise JobError(
                    f"spectrum.density.{name} must be at least 1, not {getattr(self, name)}; to skip the density, "
                    "leave density out of spectrum.analyses"
                )
        if self.sigma != "auto" and not self.sigma > 0:
            raise JobError(f"spectrum.density.sigma must be 'auto' or positive, not {self.sigma}")
        if self.points < 2:
            raise JobError(f"spectrum.density.points must be at least 2, not {self.points}")


@dataclass(frozen=True)
class SpectrumSpec:
    """What ``python -m llmpi.spectrum`` computes at θ* (llmpi.compute.spectrum, llmpi.ranks.spectrum)."""

    analyses: list[Literal["topk", "trace", "density"]] = _why(
        ["topk", "trace", "density"], "PyHessian's toolkit: top eigenpairs, trace (and per layer), spectral density"
    )
    output: str | None = _why(None, "null: spectra/<name>.h5")
    images: int | None = _why(
        None, "null: all the selected images (the loss's own data); N: the first N of them, as products cost ~10x"
    )
    batch_size: int | Auto = _why(
        "auto", "the products' batch, a speed knob: auto is 128 images (at most the selection)"
    )
    block: int = _why(
        4,
        "probes or density runs multiplied together, one forward and backward per batch serving them all: fewer "
        "passes, block x the memory of a product",
    )
    spread: Literal["auto", "data", "whole"] = _why(
        "auto",
        "how the trace's probes and the density's runs use the ranks: data, every product split over the ranks' "
        "shares of the data; whole, each rank computes whole probes or runs over all the data (no communication, "
        "results independent of the rank count); auto: whole where the ranks have enough of them to share "
        "(the top-k always splits the data: it is one chain of products)",
    )
    seed: int = _why(0, "the Lanczos start vector, the trace's probes and the density's start vectors")
    topk: TopkSpec = _why(TopkSpec, "the largest (and most negative) eigenpairs")
    trace: TraceSpec = _why(TraceSpec, "the trace and the trace of each parameter entry")
    density: DensitySpec = _why(DensitySpec, "the eigenvalue spectral density")

    def __post_init__(self) -> None:
        if not self.analyses:
            raise JobError(f"spectrum.analyses is empty: list one or more of {', '.join(SPECTRUM_ANALYSES)}")
        if len(set(self.analyses)) != len(self.analyses):
            raise JobError(f"spectrum.analyses lists an analysis twice: {self.analyses}")
        if self.images is not None and self.images < 1:
            raise JobError(f"spectrum.images must be null or a positive number of images, not {self.images}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise JobError(f"spectrum.batch_size must be 'auto' or a positive integer, not {self.batch_size}")
        if self.block < 1:
            raise JobError(f"spectrum.block must be a positive integer, not {self.block}")
        if "trace" in self.analyses and self.trace.deflate and "topk" not in self.analyses:
            raise JobError(
                "spectrum.trace.deflate takes the exact share of the top-k's Lanczos vectors out of the trace, but "
                "spectrum.analyses has no topk: add topk (a few dozen products that typically cut the probes the "
                "trace needs tenfold or more), or set spectrum.trace.deflate: 0"
            )
        if "trace" in self.analyses and self.trace.deflate > self.topk.basis:
            raise JobError(
                f"spectrum.trace.deflate {self.trace.deflate} asks for more vectors than the top-k's Lanczos basis "
                f"holds (spectrum.topk.basis {self.topk.basis}): at most that many"
            )


@dataclass(frozen=True)
class Job:
    """A sweep: the loss at every grid point around ``model.checkpoint`` along two directions.

    The job file's tree, and ``llmpi.Job`` in Python: ``Job.from_yaml(path)``, ``Job.from_dict(mapping)``,
    ``job.replace(**keys)``, ``job.to_yaml(path)``, and ``llmpi.surface(job=job)`` runs it. Every key, its type,
    default and reason: ``python -m llmpi.sweep --keys`` or ``help(llmpi.surface)``."""

    name: str = _required("names the job in messages and in the default output path")
    model: ModelSpec = _why(
        ModelSpec, "the network and its trained weights", requires={"checkpoint": "the trained network to sweep around"}
    )
    data: DataSpec = _why(DataSpec, "the images (or your data) the loss is the mean over")
    directions: DirectionsSpec = _why(DirectionsSpec, "the plane (or line) through the weights the grid spans")
    grid: GridSpec = _why(GridSpec, "the coordinates (α, β) of the points")
    loss: LossSpec = _why(LossSpec, "what is evaluated at every point")
    evaluation: EvaluationSpec = _why(EvaluationSpec, "how BatchNorm statistics are treated at every point")
    metrics: list[Literal["hessian"]] = _why(
        [],
        "loss and accuracy only; hessian adds max_eig, min_eig, eig_ratio = |min/max|, eig_converged, "
        "eig_residual and eig_hvps at every point",
    )
    hessian: HessianSpec = _why(HessianSpec, "how metrics: [hessian] computes the extreme eigenvalues")
    spectrum: SpectrumSpec = _why(
        SpectrumSpec, "python -m llmpi.spectrum: top-k eigenpairs, trace and spectral density at θ*"
    )
    output: str | None = _why(None, "null: surfaces/<name>.h5")
    runtime: RuntimeSpec = _why(RuntimeSpec, "devices, threads and speed knobs (precision is part of the result)")

    def __post_init__(self) -> None:
        if self.output is None:
            object.__setattr__(self, "output", f"surfaces/{self.name}.h5")
        if self.spectrum.output is None:
            object.__setattr__(self.spectrum, "output", f"spectra/{self.name}.h5")
        if self.hessian.trace and "hessian" not in self.metrics:
            raise JobError(
                "hessian.trace: true adds the trace to metrics: [hessian] (it reuses the Lanczos basis of each "
                "point): add hessian to metrics, or drop hessian.trace"
            )
        if len(set(self.metrics)) != len(self.metrics):
            raise JobError(f"metrics lists a metric twice: {self.metrics}")
        if self.runtime.hold_directions == "regenerate" and self.directions.store == "full":
            raise JobError(
                "runtime.hold_directions: regenerate makes the directions again from their recipe, but "
                "directions.store is full; set directions.store: recipe (or auto), or hold_directions: device or host"
            )
        if "hessian" in self.metrics and self.runtime.precision == "bf16":
            raise JobError(
                "metrics: [hessian] needs runtime.precision fp32 or tf32: bfloat16 loses the small eigenvalues "
                "that make the eigen-ratio"
            )
        if "hessian" in self.metrics and (self.loss.factory is not None or self.loss.name != "crossentropy"):
            raise JobError(
                "metrics: [hessian] differentiates the mean cross-entropy of a classifier: use loss.name: "
                "crossentropy without loss.factory, or drop metrics: [hessian]"
            )
        if self.runtime.fold is True and (self.evaluation.bn == "recalibrate" or self.loss.factory is not None):
            why = (
                "evaluation.bn: recalibrate runs BatchNorm in train mode"
                if self.evaluation.bn == "recalibrate"
                else "a loss.factory gets your network itself, BatchNorm and all"
            )
            raise JobError(
                f"runtime.fold: true folds eval-mode BatchNorm into the layer before it, but {why}; "
                f"set runtime.fold: auto (or false)"
            )
        self._check_kind()

    def _check_kind(self) -> None:
        """What each directions.kind needs of the other sections (cross-section rules, one message each)."""
        kind, m = self.directions.kind, self.model
        needs = {
            "random": (),
            "pca": (),
            "hessian": (),
            "interpolate": ("checkpoint2",),
            "plane": ("checkpoint2", "checkpoint3"),
        }
        for key in ("checkpoint2", "checkpoint3"):
            if key in needs[kind] and getattr(m, key) is None:
                raise JobError(f"directions.kind: {kind} needs model.{key} (the model at {_CORNER[key]})")
            if key not in needs[kind] and getattr(m, key) is not None:
                raise JobError(f"model.{key} is only used by directions.kind {_USED_BY[key]}, not {kind}; drop it")
        if kind == "interpolate" and self.grid.y is not None:
            raise JobError(
                "directions.kind: interpolate is a 1D line from model.checkpoint (α = 0) to model.checkpoint2 "
                "(α = 1): drop grid.y (e.g. grid.x: [-0.5, 1.5, 401])"
            )
        if kind in ("plane", "pca") and self.grid.y is None:
            raise JobError(f"directions.kind: {kind} spans a plane: give grid.y too (e.g. grid.y: [-0.5, 1.5, 41])")
        if kind == "hessian" and self.directions.spectrum is None and self.runtime.precision == "bf16":
            raise JobError(
                "directions.kind: hessian computes the top eigenvectors first, which needs runtime.precision fp32 or "
                "tf32 (bfloat16 loses the Hessian's small eigenvalues); or give directions.spectrum, a spectrum "
                "file computed in fp32"
            )

    @property
    def cautions(self) -> list[str]:
        """What the job allows but probably does not mean, one line each (the sweep prints them as warnings).

        ``type: states`` mixes the checkpoints' BatchNorm running variances with the weights (1 - α, α) of an
        interpolation, (1 - α - β, α, β) of a plane. Within the segment (the triangle) that is an average of
        variances, positive; beyond it a weight is negative and the variance becomes negative wherever the
        networks' variances differ enough -- NaN losses there.
        """
        kind, x, y = self.directions.kind, self.grid.x, self.grid.y
        if self.directions.type != "states" or kind not in ("interpolate", "plane"):
            return []
        if kind == "interpolate" and (x[0] < 0 or x[1] > 1):
            where = f"grid.x [{x[0]:g}, {x[1]:g}] leaves [0, 1]"
        elif kind == "plane" and y is not None and (x[0] < 0 or y[0] < 0 or x[1] + y[1] > 1):
            where = "the grid leaves the triangle of the three models (α, β >= 0, α + β <= 1)"
        else:
            return []
        return [
            f"directions.type: states with directions.kind: {kind}, and {where}: the BatchNorm running variances "
            "are extrapolated there and turn negative where the networks' variances differ enough (NaN losses). "
            "Beyond the models use directions.type: weights with evaluation.bn: recalibrate (statistics "
            "recomputed at every point), or keep the grid within the models"
        ]

    @property
    def splits(self) -> tuple[str, ...]:
        """The data splits the sweep evaluates: ('train',), ('test',) or both."""
        return ("train", "test") if self.data.split == "both" else (self.data.split,)

    def value_names(self, accuracy: bool = True) -> list[str]:
        """The grid-shaped datasets of the surface file, in the order a point's values are computed: loss and
        accuracy per split (loss only when a loss factory counts no correct predictions), then the Hessian's
        (``HESSIAN_VALUES``)."""
        names = [f"{split}_{what}" for split in self.splits for what in ("loss", "acc")[: 2 if accuracy else 1]]
        if "hessian" in self.metrics:
            names += HESSIAN_VALUES
            if self.hessian.trace:
                names += TRACE_VALUES
        return names

    @property
    def output_path(self) -> Path:
        return Path(self.output)

    # -- in Python: ``llmpi.Job`` ----------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> Job:
        """The job file at ``path`` with ``--set``-style overrides (``"grid.x=[-0.5,0.5,21]"``), loaded and checked
        as ``python -m llmpi.sweep path --set ...`` loads it."""
        return load_job(path, overrides)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Job:
        """A job from a mapping shaped like a job file (sections as nested mappings), checked as a file is."""
        return from_dict(cls, raw)

    def to_dict(self) -> dict:
        """The job as a plain mapping, as a job file holds it (every key, defaults resolved)."""
        return to_dict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The job file ``python -m llmpi.sweep`` and ``sbatch slurm/sweep.sbatch`` take, as text (also written to
        ``path`` if given). A job with parts given to ``llmpi.surface`` in memory is refused: the message says how
        to name each from files (save the checkpoint, name the factory)."""
        from .memory import refuse_labels

        raw = to_dict(self)
        refuse_labels(raw, "a job file")
        text = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **keys: Any) -> Job:
        """A copy with some keys changed, in the keyword forms of ``llmpi.surface`` (``runtime={"threads": 1}``,
        ``data_subset=256``, ``**{"data.placement": "host"}``, ``grid=(-1, 1, 21)``), checked as a file is."""
        raw = to_dict(self)
        if "name" in keys and raw.get("output") == f"surfaces/{self.name}.h5":
            raw["output"] = None  # the default output follows the new name
        apply_keywords(raw, keys)
        return from_dict(Job, raw)


_CORNER = {"checkpoint2": "α = 1", "checkpoint3": "β = 1"}
_USED_BY = {"checkpoint2": "interpolate and plane", "checkpoint3": "plane"}


# ----------------------------------------------------------------------------------------------------------------
# Generic loading: raw YAML mapping -> dataclass tree, with messages that name the key and suggest the fix.


# Keys that existed once: a job file that still has one gets told what became of it, not "unknown key".
REMOVED = {
    "runtime.points_per_pass": "runtime.points_per_pass is gone: several points per forward pass never measured "
    "faster than one (bench/README.md), and every sweep now runs one point per pass; delete the key from the job "
    "file",
}


def _nearest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid: {', '.join(choices)}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    if origin in (dict, Mapping):
        return "a mapping"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


# A number in exponent notation without a dot (1e-8) is a string to YAML 1.1, which PyYAML reads, and a number to
# YAML 1.2, JSON and people: a float key takes it as the number it means.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in its canonical Python form."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise JobError(f"{path}: {value!r} is not allowed; {_nearest(str(value), [str(c) for c in choices])}")
    if origin in (Union, types.UnionType):
        for alternative in typing.get_args(tp):
            try:
                return _coerce(value, alternative, path)
            except JobError:
                continue
        if isinstance(value, str):
            literals = [
                str(c) for a in typing.get_args(tp) if typing.get_origin(a) is Literal for c in typing.get_args(a)
            ]
            if literals:
                raise JobError(f"{path}: {value!r} is not allowed; {_nearest(value, literals)} or {_type_name(tp)}")
        raise JobError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise JobError(f"{path}: expected a list {_type_name(tp)}, got {value!r}")
        return tuple(_coerce(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise JobError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise JobError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # 1e-8: a string to YAML 1.1, a number to us
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    else:
        raise AssertionError(f"unsupported annotation {tp!r} at {path}")
    raise JobError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, raw: Any, path: str = "") -> Any:
    """Build the dataclass ``cls`` from a raw mapping, rejecting unknown and missing keys by name."""
    where = path or "the job"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise JobError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = f"{path}.{key}" if path else str(key)
            if full in REMOVED:
                raise JobError(REMOVED[full])
            raise JobError(f"unknown key '{full}'; {_nearest(str(key), names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        full = f"{path}.{f.name}" if path else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], full)
        elif f.metadata.get("required"):
            raise JobError(f"missing required key '{full}' ({f.metadata['why']})")
        elif dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = from_dict(hints[f.name], {}, full)
    built = cls(**kwargs)
    for f in dataclasses.fields(cls):  # after every other check: a missing key is the last thing to fix
        for key, reason in f.metadata.get("requires", {}).items():
            if getattr(getattr(built, f.name), key) is None:
                raise JobError(f"{path + '.' if path else ''}{f.name}.{key} is required: {reason}")
    return built


def to_dict(obj: Any) -> Any:
    """The dataclass tree as plain YAML-able Python (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


SHORT_SECTIONS = ("grid", "loss")  # sections a keyword may give as a short value instead of a mapping


def apply_keywords(raw: dict, keys: Mapping[str, Any]) -> None:
    """Apply ``llmpi.surface``'s (and ``Job.replace``'s) job keywords to the raw job mapping, in order. Each keyword
    is one of: a top-level key (``name="vgg"``, ``output="s.h5"``, ``metrics=["hessian"]``); a section as a mapping
    of its keys, merged into it (``runtime={"threads": 1}``); one key of a section as ``<section>_<key>``
    (``data_subset=256``, ``runtime_hold_directions="host"``) or dotted (``**{"data.placement": "host"}``); and two
    short forms: ``grid=(min, max, num)`` for a line, ``grid=((min, max, num), (min, max, num))`` for a plane, and
    ``loss="mse"`` (a name; ``"package.module:function"`` a loss factory). Values are Python values, checked
    when the job is built; an unknown keyword is an error naming the nearest valid one."""
    hints = typing.get_type_hints(Job)
    sections = {name: tp for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    for keyword, value in keys.items():
        path = _keyword_path(keyword, hints, sections)
        section, _, key = path.partition(".")
        if key:
            node = raw.get(section)
            if not isinstance(node, dict):
                node = raw[section] = {}
            node[key] = value
        elif section in sections:
            raw[section] = {**(raw.get(section) or {}), **_section_value(section, value)}
        else:
            raw[section] = value


def _keyword_path(keyword: str, hints: Mapping[str, Any], sections: Mapping[str, type]) -> str:
    """The job key a keyword names (``data_subset`` -> ``data.subset``), or a JobError naming the nearest."""
    section, dot, key = keyword.partition(".")
    if dot:
        if section in sections and key in typing.get_type_hints(sections[section]):
            return keyword
    elif keyword in hints:
        return keyword
    else:
        section, _, key = keyword.partition("_")
        if section in sections and key in typing.get_type_hints(sections[section]):
            return f"{section}.{key}"
    valid = list(hints) + [f"{s}_{k}" for s, tp in sections.items() for k in typing.get_type_hints(tp)]
    raise JobError(f"unknown job keyword '{keyword}'; {_nearest(keyword.replace('.', '_'), valid)}")


def _section_value(section: str, value: Any) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if section == "grid" and isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, (list, tuple)) for v in value) and len(value) in (1, 2):
            return {"x": list(value[0]), "y": list(value[1]) if len(value) == 2 else None}
        if len(value) == 3 and not any(isinstance(v, (list, tuple)) for v in value):
            return {"x": list(value), "y": None}
    if section == "loss" and isinstance(value, str):
        return {"factory": value} if ":" in value else {"name": value}
    shorts = {
        "grid": "(min, max, num) for a line or ((min, max, num), (min, max, num)) for a plane, or a mapping",
        "loss": "a name ('crossentropy', 'mse'), 'package.module:function', a function, or a mapping",
    }
    given = f"{type(value).__name__} {value!r}"
    raise JobError(
        f"{section}: {shorts.get(section, 'a mapping of its keys')} expected, not {given}; e.g. "
        + ("grid=(-1, 1, 21)" if section == "grid" else f"{section}={{...}} or {section}_<key>=...")
    )


def _schema_child(cls: type, key: str, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    if key not in hints:
        if path in REMOVED:
            raise JobError(f"--set: {REMOVED[path]}")
        raise JobError(f"--set: unknown key '{path}'; {_nearest(key, list(hints))}")
    return hints[key]


def apply_override(raw: dict, cls: type, assignment: str) -> None:
    """Apply one ``--set a.b=value`` (value parsed as YAML) to the raw mapping, checking the key exists."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise JobError(f"--set expects key=value, e.g. --set grid.x=[-0.5,0.5,21]; got {assignment!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise JobError(f"--set {key}: the value {text!r} is not valid YAML ({e})") from None
    parts = key.split(".")
    node, tp = raw, cls
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        tp = _schema_child(tp, part, here)
        if depth == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise JobError(f"--set: '{here}' is a value, not a section; use --set {here}=...")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise JobError(f"--set: '{here}' in the job file is not a mapping")
        node = child


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning every way it can be unreadable into a one-line message."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise JobError(f"job file {path} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise JobError(f"job file {path} cannot be read: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise JobError(f"job file {path} is not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobError(f"job file {path} must be a mapping of keys (name:, model:, ...), not {type(raw).__name__}")
    return raw


def load(cls: type, path: str | Path, overrides: Iterable[str] = ()) -> Any:
    """Load a job of type ``cls`` from a YAML file with ``--set`` overrides applied in order."""
    raw = read_yaml(path)
    for assignment in overrides:
        apply_override(raw, cls, assignment)
    return from_dict(cls, raw)


def load_job(path: str | Path, overrides: Iterable[str] = ()) -> Job:
    return load(Job, path, overrides)


def load_jobs(paths: Sequence[str], overrides: Sequence[str]) -> list[Job]:
    """The jobs of one run, validated together: distinct outputs, and one device and thread count per rank."""
    jobs = [load_job(path, overrides) for path in paths]
    outputs: dict[str, str] = {}
    for path, job in zip(paths, jobs):
        key = os.path.realpath(job.output)
        if key in outputs:
            hint = (
                " (--set output=... gives every job the same output)" if any("output=" in o for o in overrides) else ""
            )
            raise JobError(f"{outputs[key]} and {path} both write {job.output}{hint}: give each job its own output")
        outputs[key] = path
    for key in ("device", "threads", "kernels"):
        seen = {getattr(job.runtime, key) for job in jobs}
        if len(seen) > 1:
            raise JobError(
                f"the jobs ask for different runtime.{key} ({', '.join(sorted(map(str, seen)))}): the ranks of one "
                f"run share one; make them agree (e.g. --set runtime.{key}=...) or run the jobs separately"
            )
    return jobs
