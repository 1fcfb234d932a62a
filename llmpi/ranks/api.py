"""llmpi from Python: the loss surface of a network in memory, in a notebook or in an SPMD program under mpirun.

    import llmpi
    s = llmpi.surface(model, (x, y), grid=((-1, 1, 21), (-1, 1, 21)), output="surfaces/mlp.h5")
    s.plot()                                    # a matplotlib Figure, inline in Jupyter

    mpirun -n 4 python script.py                # every rank calls llmpi.surface alike: rank 0 coordinates, all compute

    h = llmpi.spectrum(model, (x, y), spectrum={"analyses": ["topk", "trace", "density"]})
    h.eigenvalues, h.trace, h.layer_traces; h.plot("density")

``spectrum`` runs ``python -m llmpi.spectrum`` (``llmpi.ranks.spectrum``) the same way: the Hessian's top-k
eigenpairs, trace and spectral density at θ* of the network in memory, over every rank.

``surface`` runs the sweep of ``python -m llmpi.sweep`` (``llmpi.ranks.run.execute``: the same set-up, coordinator,
evaluator and file, hence the same bits on the equivalent job) on the ranks of ``comm``, here, in this process: one
process alone (a notebook: MPI starts as a singleton) uses this machine's device as the command does. The parts
given in memory (the network, whose current weights are θ*, the data, the loss, the other models of an
interpolation or a plane) travel beside the job as a ``llmpi.job.memory.Given``; the job itself is the job file's
dataclass tree (``llmpi.Job``), with labels where those parts would be named by files.

Where the command prints a message and exits, ``surface`` raises: ``llmpi.JobError`` (a ``ValueError``) with the
command's message for bad input, raised on every rank before any point is computed; ``DiskError`` (an
``OSError``) when the disk fails; ``llmpi.SweepError`` when a rank fails while computing; ``llmpi.Interrupted``
(a ``KeyboardInterrupt``) when SIGINT (Ctrl-C, Jupyter's stop button), SIGTERM or SIGUSR1 stops it -- within a
batch once the sweep runs, at the end of the set-up (loading, tuning, compiling) before that. The signal handlers
it installs, the torch settings it makes (threads, kernels, precision) and the communicators it duplicates are
put back or freed when it returns, however it returns; the output file is closed and its lock released, so a
second call (in the same kernel) resumes it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..job.config import Job, apply_keywords, to_dict
from ..job.errors import DiskError, Interrupted, JobError, SweepError
from ..job.memory import Along, Given, label

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()  # output not given: the job's, or memory


def surface(
    model: Any = None,
    data: Any = None,
    *,
    loss: Any = None,
    grid: Any = None,
    directions: Any = None,
    output: str | Path | None = UNSET,
    job: Job | str | Path | None = None,
    restart: bool = False,
    comm: Any = None,
    **keys: Any,
) -> Any:
    """The loss surface f(α, β) = L(θ* + αδ + βη) of ``model`` over ``data`` (Li et al. 2018), swept here by the
    sweep of ``python -m llmpi.sweep``: a ``llmpi.Surface``, the same on every rank.

    ``model``: an ``nn.Module`` whose current weights are θ*; it is never changed (the sweep works on a copy, in
    eval mode: BatchNorm uses its running statistics). ``data``: a pair ``(inputs, targets)`` of tensors, a
    ``Dataset`` or a ``DataLoader`` (its dataset's items in order: a shuffling loader gives the same values), or
    ``{"train": ..., "test": ...}`` (``data.split`` both, unless set); the samples are selected (``data_subset``)
    and held on the device as the command holds a data set -- inputs go to the network as they are. Either may be
    left out when ``job`` names it by files (``model.arch``/``model.factory`` with ``model.checkpoint``,
    ``data.dataset``/``data.factory``).

    ``loss``: ``"crossentropy"`` (the default), ``"mse"``, ``"package.module:function"`` or a function like a
    ``loss.factory``'s, ``fn(model, (inputs, targets)) -> (summed loss, number of samples, number correct or
    None)``. ``grid``: ``(min, max, num)`` for a line (the default: 51 points over [-1, 1]), ``((min, max, num),
    (min, max, num))`` for a plane, or the ``grid`` section's mapping. ``directions``: the ``directions`` section's
    mapping (``{"seed": 1, "norm": "layer"}``), or ``llmpi.interpolate(other)``, ``llmpi.plane(second, third)``,
    ``llmpi.pca(folder)`` (other models in memory or as checkpoint paths).

    ``output``: the HDF5 file, rank 0 writes it as the command does, and calling again resumes it (after an
    interrupt or a crash) and recomputes nothing; the fingerprint covers the parts given in memory (the network's
    weights, structure and code, the data's samples, the loss's code), so a changed model is refused, naming what
    differs (``restart=True`` starts the file anew). ``None`` (the default without ``job``) keeps the surface in
    memory: the sweep writes a temporary file that is removed at the end, and an interrupt loses its points.

    ``job``: a ``llmpi.Job`` (``llmpi.Job.from_yaml(path)``, or a path) whose keys the call starts from; the
    arguments above and ``keys`` change it. ``keys``: every key of a job file -- a top-level key (``name``,
    ``metrics=["hessian"]``), a section as a mapping (``runtime={"threads": 1}``, ``hessian={"max_hvps": 100}``),
    one key of a section as ``<section>_<key>`` (``data_subset=1000``, ``runtime_precision="bf16"``) or dotted
    (``**{"data.placement": "host"}``). ``comm``: the communicator whose ranks sweep (default
    ``MPI.COMM_WORLD``).

    SPMD: under ``mpirun -n N python script.py`` every rank calls ``surface`` with the same arguments, as in mpi4py
    programs; rank 0 coordinates and writes the file, every rank computes, and every rank returns the same Surface
    (rank 0 reads it and broadcasts it). Every rank must hold the same network, weights and data: their hashes are
    compared with rank 0's, and a rank that differs stops the run with one message naming it.

    Errors (the command's messages): ``llmpi.JobError`` (a ``ValueError``) for bad input, raised on every rank
    before any work -- a model without parameters, data whose shapes the model refuses, a loss returning the
    wrong thing, a grid with no points, an output another job wrote, any bad key; ``DiskError`` (an ``OSError``)
    for a failing disk; ``llmpi.SweepError`` when a rank fails while computing; ``llmpi.Interrupted`` (a
    ``KeyboardInterrupt``) on SIGINT, SIGTERM or SIGUSR1, the file resumable. Never ``SystemExit``.
    """
    if job is not None and not isinstance(job, Job):
        job = Job.from_yaml(job)
    given, raw = _job_of(model, data, loss, grid, directions, output, job, keys)
    from mpi4py import MPI

    from ..compute import runtime
    from . import protocol
    from .run import SetupFailed, execute

    comm = MPI.COMM_WORLD if comm is None else comm
    memory = raw["output"] is None
    scratch: list[Path] = []  # rank 0's temporary folder of a surface kept in memory
    built: list[Job] = []  # rank 0's job

    def load_jobs() -> list[Job]:
        if memory:
            scratch.append(Path(tempfile.mkdtemp(prefix="llmpi-surface-")))
        built.append(Job.from_dict({**raw, "output": str(scratch[0] / "surface.h5")} if memory else raw))
        return built

    saved = runtime.settings()
    interrupts = protocol.Interrupts().install()
    try:
        try:
            ended = execute(comm, load_jobs, restart=restart, debug=False, interrupts=interrupts, given=[given],
                            bar=_in_kernel() or None)  # fmt: skip
        except SetupFailed as e:
            raise _setup_error(e) from None
        return _result(comm, ended, built[0].output_path if built else None, memory)
    finally:
        interrupts.restore()
        runtime.restore(saved)
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _job_of(
    model: Any, data: Any, loss: Any, grid: Any, directions: Any, output: Any, job: Job | None, keys: dict
) -> tuple[Given, dict]:
    """The parts given in memory, and the raw job (a job file's mapping) that names them by their labels."""
    raw: dict[str, Any] = to_dict(job) if job is not None else {}
    given = Given()
    if model is not None:
        if not (hasattr(model, "state_dict") and hasattr(model, "parameters")):
            raise TypeError(
                f"model must be a torch.nn.Module (its current weights are θ*), not a {type(model).__name__}"
            )
        given.model = model
        others = {k: v for k, v in (raw.get("model") or {}).items() if k in ("checkpoint2", "checkpoint3")}
        raw["model"] = {"factory": label(model), "checkpoint": label(model, "θ*"), **others}
        raw.setdefault("name", type(model).__name__)
    if model is None and job is None:
        raise JobError(
            "llmpi.surface needs the network: model=an nn.Module whose weights are θ*, or job=a llmpi.Job whose "
            "model.arch (or model.factory) and model.checkpoint name it"
        )
    raw.setdefault("name", "surface")
    if data is not None:
        given.data = data
        section = {"factory": label(data), "kwargs": {}}
        if isinstance(data, Mapping):
            unknown = [k for k in data if k not in ("train", "test")]
            if unknown or not data:
                raise JobError(f"data: a mapping of splits takes 'train' and 'test', not {unknown or 'nothing'}")
            section["factory"] = label(next(iter(data.values())))
            section["split"] = "both" if len(data) == 2 else next(iter(data))
        raw["data"] = {**(raw.get("data") or {}), **section}
    if callable(loss) and not isinstance(loss, str):
        given.loss = loss
        raw["loss"] = {"name": "crossentropy", "factory": label(loss)}
    elif loss is not None:
        keys = {"loss": loss, **keys}
    if grid is not None:
        keys = {"grid": grid, **keys}
    if isinstance(directions, Along):
        raw["directions"] = {**(raw.get("directions") or {}), **directions.keys}
        section = raw.setdefault("model", {})
        for key, other in directions.models.items():
            name = key.split(".")[1]
            if isinstance(other, str):
                section[name] = other
            else:
                given.others[key] = other
                section[name] = label(other, f"({'second' if name == 'checkpoint2' else 'third'} model)")
    elif directions is not None:
        keys = {"directions": directions, **keys}
    if output is not UNSET:
        raw["output"] = None if output is None else str(output)
    elif job is None:
        raw["output"] = None  # a surface kept in memory
    apply_keywords(raw, keys)
    if data is not None and not isinstance(data, Mapping) and (raw.get("data") or {}).get("split") == "both":
        raise JobError(
            "data.split: both evaluates a train and a test split, but one data set was given: pass "
            "data={'train': ..., 'test': ...}"
        )
    return given, raw


def _in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (progress as a tqdm.auto bar there)."""
    return "ipykernel" in sys.modules and "IPython" in sys.modules


def _setup_error(e: Any) -> BaseException:
    """The exception a set-up failure raises on this rank: the rank's own where it happened, else one with the
    same message and kind."""
    if e.original is not None:
        return e.original
    from ..job.exits import EXIT_DISK, EXIT_USAGE

    if e.code == EXIT_USAGE:
        return JobError(str(e))
    if e.code == EXIT_DISK:
        return DiskError(0, str(e))
    return SweepError(f"the sweep's set-up failed on {e}")


def _result(comm: Any, ended: Any, path: Path | None, memory: bool) -> Any:
    """The Surface of a complete sweep, on every rank (rank 0, which wrote ``path``, reads it and broadcasts it); an
    exception otherwise, the same on every rank."""
    from ..file.store import read_directions, read_recipe, read_surface
    from ..report.surface import Surface
    from . import protocol

    rank = comm.Get_rank()
    if ended.state == protocol.COMPLETE:
        made = None
        if rank == 0:
            assert path is not None, "rank 0 built the job"
            found = read_surface(path)
            full = found.direction_store == "full"
            made = Surface.of(  # in memory: the directions too, read before the temporary file goes
                found,
                path=None if memory else path,
                directions=read_directions(path) if memory and full else None,
                recipe=read_recipe(path) if memory and not full else None,
            )
        return comm.bcast(made)
    told = (ended.message, ended.done, ended.total, ended.reason, ended.halted_by and str(ended.halted_by))
    message, done, total, reason, halted = comm.bcast(told if rank == 0 else None)
    if ended.state == protocol.INTERRUPTED:
        then = (
            "the points computed are lost with output=None: give output=PATH to keep them"
            if memory
            else "call llmpi.surface again with the same output to resume"
        )
        raise Interrupted(f"llmpi: interrupted ({reason}) with {done} of {total} points done; {then}", done, total)
    if ended.state == protocol.HALTED:
        if rank == 0 and isinstance(ended.halted_by, BaseException):
            raise ended.halted_by
        raise DiskError(0, halted or "the disk failed")
    text = (message or "the sweep failed").removeprefix("llmpi: error: ")
    raise SweepError(text.replace("rerun the same command", "call llmpi.surface again"))


def _keys_section() -> str:
    """The job's keys as ``--keys`` lists them, for ``surface``'s docstring (one source: the job's dataclasses)."""
    from textwrap import indent

    from ..job.schema import render_keys

    listing = render_keys(Job, "llmpi sweep job").split("\n", 2)[2]  # without --keys' heading
    return (
        "\n\n    The job's keys (``python -m llmpi.sweep --keys`` lists the same), each a keyword as above; a section's"
        "\n    key as ``<section>_<key>=`` or in the section's mapping:\n\n" + indent(listing, "        ")
    )


surface.__doc__ = (surface.__doc__ or "").rstrip() + _keys_section()


def spectrum(
    model: Any = None,
    data: Any = None,
    *,
    loss: Any = None,
    analyses: Any = None,
    output: str | Path | None = UNSET,
    job: Job | str | Path | None = None,
    restart: bool = False,
    comm: Any = None,
    **keys: Any,
) -> Any:
    """The Hessian's spectrum at θ* of ``model`` over ``data``, computed here by ``python -m llmpi.spectrum``'s
    code on the ranks of ``comm``: a ``llmpi.Spectrum`` (eigenvalues, eigenvectors, trace, per-layer traces,
    density, ``.plot()``), the same on every rank.

    ``model``, ``data``, ``loss``, ``job``, ``restart``, ``comm`` and ``keys`` as for :func:`surface` (the
    network is never changed; every rank of an SPMD program must hold the same). ``analyses``: which of
    ``"topk"``, ``"trace"``, ``"density"`` (default: the ``spectrum`` section's, top-k and trace); every other
    setting is the ``spectrum`` section's: ``spectrum={"topk": {"k": 10}, "trace": {"rse": 0.01}}`` or
    ``spectrum_images=2000``; the Hessian's parameters follow ``hessian_ignore`` (else ``directions_ignore``).

    ``output``: the spectrum file (``spectrum.output``), written by rank 0; calling again resumes it after an
    interrupt or a crash at the last finished eigenpair set, probe or run. ``None`` (the default without ``job``):
    kept in memory, in a temporary file removed at the end.

    Errors as for :func:`surface`: ``llmpi.JobError`` for bad input (k larger than the parameters, zero probes, a
    loss without a graph, any bad key), before any product; ``DiskError``; ``llmpi.SweepError`` when a rank fails;
    ``llmpi.Interrupted`` on SIGINT, SIGTERM or SIGUSR1. Never ``SystemExit``.
    """
    if job is not None and not isinstance(job, Job):
        job = Job.from_yaml(job)
    if analyses is not None:
        keys = {"spectrum_analyses": [analyses] if isinstance(analyses, str) else list(analyses), **keys}
    given, raw = _job_of(model, data, loss, None, None, UNSET, job, keys)
    section = raw.setdefault("spectrum", {})
    if not isinstance(section, dict):
        raise JobError("spectrum: a mapping of the spectrum section's keys, e.g. spectrum={'topk': {'k': 5}}")
    if output is not UNSET:
        section["output"] = None if output is None else str(output)
    elif job is None:
        section["output"] = None  # a spectrum kept in memory
    memory = section.get("output") is None
    from mpi4py import MPI

    from ..compute import runtime
    from . import protocol
    from . import spectrum as ranks_spectrum

    comm = MPI.COMM_WORLD if comm is None else comm
    scratch: list[Path] = []
    built: list[Job] = []

    def load_job() -> Job:
        if memory:
            scratch.append(Path(tempfile.mkdtemp(prefix="llmpi-spectrum-")))
            section["output"] = str(scratch[0] / "spectrum.h5")
        built.append(Job.from_dict(raw))
        return built[0]

    saved = runtime.settings()
    interrupts = protocol.Interrupts().install()
    try:
        try:
            ranks_spectrum.spectrum(
                comm, load_job, restart=restart, debug=False, interrupts=interrupts, given=given, raising=True
            )
        except Interrupted as e:
            if memory:
                raise Interrupted(
                    str(e).split(";")[0] + "; what was finished is lost with output=None: give output=PATH to keep it"
                ) from None
            raise
        from ..report.spectrum import Spectrum

        made = Spectrum.open(built[0].spectrum.output, memory=memory) if comm.Get_rank() == 0 else None
        return comm.bcast(made)
    finally:
        interrupts.restore()
        runtime.restore(saved)
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
