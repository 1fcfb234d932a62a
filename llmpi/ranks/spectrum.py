"""The spectrum at θ* on every rank: top-k eigenpairs, trace (and per entry), spectral density, stored as they
finish, resumed after any crash.

    code = spectrum(MPI.COMM_WORLD, lambda: load_job("jobs/resnet20.yaml", []), restart=False, debug=False,
                    interrupts=protocol.Interrupts().install())                     # python -m llmpi.spectrum
    code = compute(comm, job, At(model, images, labels, loss), device, restart=False, interrupts=...)   # loaded

Called on every rank alike (SPMD). ``spectrum`` is the command's set-up (the job, each rank's device and threads,
θ* and the data, as for a sweep) around ``compute``, which takes what a rank has loaded -- the network at θ*, the
selected samples, the loss -- and runs the job's ``spectrum`` section: the mathematics of
``llmpi.compute.spectrum``, the ranks in step through ``lockstep``, rank 0 the only writer of the file
(``llmpi.file.spectrum``).

How the ranks share the work (``spectrum.spread``):

* **data** -- every product H·V is the sum of the ranks' shares: the selection is cut into batches of
  ``spectrum.batch_size`` (the same batches whatever the rank count), each rank takes a contiguous run of them, and
  the shares are summed in rank order (``Lockstep.ordered_sum``), so every rank holds the same bits and runs the
  same algorithm on them. The top-k always goes this way: Lanczos is one chain of products.
* **whole** -- each rank computes whole probes (trace) or whole runs (density) over all the selected data, with no
  communication but an agreement per step; the results are gathered and rank 0 writes them. A probe's or run's
  value is then a function of its index alone: the same bits on 1 rank or 8 (data mode's sums differ from one rank
  count to another in their last bits, ~1e-16 relative).
* **auto** (default): whole where every rank gets a share of each round (the trace when its ``min_probes`` reach
  the rank count; the density when its runs fill the rounds to at least three quarters), else data.

Resuming: the file records each finished unit -- the top-k eigenpairs as a set, each probe, each run -- and a rerun
continues after the last one, with the batch size the file was created with, so a resumed spectrum is bitwise
equal to an uninterrupted one on the same number of ranks. An interruption (SIGTERM, SIGUSR1, SIGINT) stops every
rank at its next batch; what was finished is kept, exit status 75. An error on any rank stops all of them at the
next agreement, reported once by rank 0 (``rank r of n on host`` and the traceback; a user's error in one line).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..job.exits import EXIT_DISK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .lockstep import ERROR, OK, STOP, USER_ERROR, Lockstep, Verdict

if TYPE_CHECKING:
    from ..file.spectrum import Layout, SpectrumStore
    from ..job.config import Job

DISK = 4  # a status of the agreement beyond lockstep's: rank 0's file failed
CODES = {STOP: EXIT_INTERRUPTED, USER_ERROR: EXIT_USAGE, DISK: EXIT_DISK, ERROR: EXIT_FAILED}


class Interrupted(Exception):
    """Raised between batches on a rank an interruption reached."""


class Halt(Exception):
    """Raised on every rank when an agreement found a rank that stopped or failed."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict)
        self.verdict = verdict


@dataclass
class At:
    """What a rank has loaded: the network at θ* (on its device), the selected samples, the loss
    ("crossentropy", "mse" or a ``llmpi.compute.losses.FactoryLoss``)."""

    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    loss: Any


class Ranks:
    """This rank in the computation: its part of every agreement, and the failure it has to report at the next."""

    def __init__(self, comm: Any, interrupts: Any, debug: bool = False) -> None:
        from .protocol import where

        self.debug = debug
        self.step = Lockstep(comm)
        self.rank, self.size = self.step.rank, self.step.size
        self.interrupts = interrupts
        self.where = where(comm)
        self.pending: tuple[int, str] | None = None  # a failure of rank 0's file, reported at the next agreement

    def check(self) -> None:
        """Between batches: leave the product when an interruption reached this rank."""
        if self.interrupts is not None and self.interrupts.requested:
            raise Interrupted(self.interrupts.requested)

    def attempt(self, fn: Callable[[], Any]) -> tuple[int, str, Any]:
        """``fn()`` with its failure as a status: (status, detail, value)."""
        from ..job.exits import explain

        if self.pending is not None:
            return (*self.pending, None)
        try:
            return OK, "", fn()
        except Halt:
            raise
        except Interrupted as e:
            return STOP, str(e), None
        except Exception as e:
            explained = explain(e)
            if explained is not None:
                code, message = explained
                if self.debug:
                    message = f"{traceback.format_exc()}{message}"
                return (DISK if code == EXIT_DISK else USER_ERROR), message, None
            return ERROR, f"{self.where}:\n{traceback.format_exc()}", None

    def agree(self, status: int = OK, detail: str = "") -> None:
        """Every rank's word; Halt on every rank unless all are OK."""
        if status == OK and self.pending is not None:
            status, detail = self.pending
        verdict = self.step.agree(status, detail)
        if not verdict.ok:
            raise Halt(verdict)

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on this rank, then an agreement: its value where every rank succeeded, else Halt everywhere."""
        status, detail, value = self.attempt(fn)
        self.agree(status, detail)
        return value

    def on_root(self, fn: Callable[[], Any]) -> None:
        """``fn()`` on rank 0 (a write of the file); its failure is reported at the next agreement."""
        if self.rank != 0 or self.pending is not None:
            return
        status, detail, _ = self.attempt(fn)
        if status != OK:
            self.pending = (status, detail)


# ----------------------------------------------------------------------------------------------------------------
# The products


class Products:
    """H·V on this rank: over its share of the batches summed over the ranks (``data``), or over all the selected
    data alone (``whole``)."""

    def __init__(
        self, ranks: Ranks, at: At, ignore: str, batch_size: int, device: torch.device, faults: Any = None
    ) -> None:
        from ..compute.hessian import HessianOperator
        from .faults import NONE

        self.ranks, self.device, self.faults = ranks, device, faults or NONE
        every = len(at.labels)
        batches = math.ceil(every / batch_size)
        lo, hi = (batches * ranks.rank // ranks.size, batches * (ranks.rank + 1) // ranks.size)
        start, stop = lo * batch_size, min(hi * batch_size, every)
        key = "spectrum.batch_size"  # what an out-of-memory error tells the user to set
        self.whole = HessianOperator(at.model, at.images, at.labels, batch_size, ignore, loss=at.loss, batch_key=key)
        self.share = (
            HessianOperator(
                at.model, at.images[start:stop], at.labels[start:stop], batch_size, ignore, loss=at.loss, batch_key=key
            )
            if stop > start
            else None
        )
        self.n, self.sizes = self.whole.n, self.whole.sizes
        self.share_images = stop - start
        self.products = 0  # vectors multiplied by this rank's products so far (data or whole)

    def count(self) -> None:
        """Every operator divides by the samples of the whole selection (a loss factory's own count)."""
        mine = self.ranks.run(lambda: self.share.count() if self.share is not None else 0)
        total = self.ranks.step.sum_int(mine)
        if total < 1:
            from ..job.errors import JobError

            raise JobError("the loss counted no samples in the selected data: there is no mean loss to differentiate")
        self.whole.total = total
        if self.share is not None:
            self.share.total = total

    def data(self, V: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of each rank's share of H·V (the same bits on every rank)."""
        V = V.to(self.device)

        def partial() -> np.ndarray:
            self.faults.before_point(self.ranks.check)  # the fault tests' injected errors and slow ranks
            if self.share is None:
                return np.zeros((len(V), self.n))
            return self.share.many(V, self.ranks.check).cpu().numpy()

        mine = self.ranks.run(partial)
        self.products += len(V)
        return torch.from_numpy(self.ranks.step.ordered_sum(mine)).to(self.device)

    def alone(self, V: torch.Tensor) -> torch.Tensor:
        """H·V over all the selected data on this rank (no communication)."""
        self.faults.before_point(self.ranks.check)
        self.products += len(V)
        return self.whole.many(V.to(self.device), self.ranks.check)


# ----------------------------------------------------------------------------------------------------------------
# The spectrum of a loaded network


def entries_of(model: torch.nn.Module, ignore: str) -> Any:
    from ..compute.hessian import hessian_parameters
    from ..file.spectrum import Entries

    chosen = hessian_parameters(model, ignore)
    return Entries(tuple(chosen), tuple(tuple(p.shape) for p in chosen.values()))


def layout_of(job: Job, entries: Any) -> Layout:
    from ..file.spectrum import Layout

    spec = job.spectrum
    top = spec.topk.k if "topk" in spec.analyses else 0
    bottom = spec.topk.bottom if "topk" in spec.analyses else 0
    if top + bottom > entries.n:
        from ..job.errors import JobError

        raise JobError(
            f"spectrum.topk asks for {top + bottom} eigenpairs, but the Hessian of {job.model.label} is over "
            f"{entries.n} parameters (ignore: {job.hessian.parameters(job.directions)}): ask for at most {entries.n}"
        )
    probes = spec.trace.max_probes if "trace" in spec.analyses else 0
    runs = spec.density.runs if "density" in spec.analyses else 0
    steps = min(spec.density.steps, entries.n) if runs else 0
    deflate = min(spec.trace.deflate, entries.n) if probes else 0
    return Layout(entries, top, bottom, probes, runs, steps, spec.density.points if runs else 0, deflate)


def spread(job: Job, analysis: str, size: int) -> str:
    """``spectrum.spread`` resolved for ``analysis`` (see the module docstring)."""
    spec = job.spectrum
    if analysis == "topk" or size == 1:
        return "data"
    if spec.spread != "auto":
        return spec.spread
    if analysis == "trace":
        return "whole" if spec.trace.min_probes >= size else "data"
    runs = spec.density.runs
    rounds = math.ceil(runs / size)
    return "whole" if runs >= size and runs / (rounds * size) >= 0.75 else "data"


def auto_batch(device: torch.device, images: int) -> int:
    """The products' batch when the job leaves it to llmpi: the forward's default, at most 512 (a double backward
    holds several activations per image)."""
    from ..compute import runtime

    return min(runtime.default_batch_size(device, images), 512)


class Say:
    """Rank 0's lines to the user, the progress of long phases at most every ``every`` seconds."""

    def __init__(self, rank: int, every: float = 10.0) -> None:
        self.rank, self.every, self.last = rank, every, time.monotonic()

    def __call__(self, text: str) -> None:
        if self.rank == 0:
            print(f"llmpi: {text}", flush=True)

    def progress(self, text: Callable[[], str]) -> None:
        now = time.monotonic()
        if self.rank == 0 and now - self.last >= self.every:
            self.last = now
            print(f"llmpi: {text()}", flush=True)


def compute(
    comm: Any,
    job: Job,
    at: At,
    device: torch.device,
    *,
    restart: bool,
    interrupts: Any,
    attrs: dict | None = None,
    identity: Any = None,
    quiet: bool = False,
    debug: bool = False,
    raising: bool = False,
) -> int:
    """The job's spectrum over the samples of ``at``, on every rank of ``comm``; the exit status (the same on every
    rank). ``identity`` (``llmpi.ranks.fingerprint.Identity``) and ``attrs`` describe the inputs in the file (rank
    0's); without them the file records the samples it was given (a network and data loaded by the caller).
    ``raising``: an ending other than success raises on every rank (``_exception``) instead of returning its status
    (``llmpi.spectrum`` from Python)."""
    from ..job import config
    from .faults import Faults

    ranks = Ranks(comm, interrupts, debug)
    faults = Faults.from_env(ranks.rank)
    say = Say(ranks.rank if not quiet else -1)
    store: SpectrumStore | None = None
    try:
        at.model.eval()
        entries = ranks.run(lambda: entries_of(at.model, job.hessian.parameters(job.directions)))
        layout = ranks.run(lambda: layout_of(job, entries))

        def open_file() -> tuple[SpectrumStore, dict]:
            from ..file.spectrum import SpectrumStore
            from .fingerprint import spectrum_fingerprint

            fields = spectrum_fingerprint(job, identity) if identity is not None else _loaded_fingerprint(job, at)
            chosen = job.spectrum.batch_size
            if chosen == "auto":
                chosen = auto_batch(device, len(at.labels))
            made = {"computed": json.dumps({"batch_size": chosen}), **(attrs or {})}
            opened = SpectrumStore.open(job.spectrum.output, layout, fields, config.to_yaml(job), made, restart)
            return opened, _resume_state(opened, layout)

        opened = ranks.run(open_file if ranks.rank == 0 else lambda: None)
        store, state = opened if opened is not None else (None, None)
        if store is not None:
            store.at_stage = faults.in_write  # the fault tests kill the writer inside a commit
        state = ranks.step.bcast(state)
        batch = state["batch_size"] if job.spectrum.batch_size == "auto" else job.spectrum.batch_size
        heavy = _share_heavy(ranks, store, layout, state)
        products = ranks.run(lambda: Products(ranks, at, job.hessian.parameters(job.directions), batch, device, faults))
        products.count()
        say(
            f"spectrum {job.name}: Hessian over {entries.n:,} parameters in {len(entries.names)} entries, "
            f"{len(at.labels)} samples, batch {batch}, {ranks.size} rank(s) -> {job.spectrum.output}"
        )
        phases = Phases(job, ranks, products, store, layout, state, heavy, say)
        for analysis in job.spectrum.analyses:
            # a failure outside the products (where the ranks agree anyway) is reported at an agreement too
            status, detail, _ = ranks.attempt(getattr(phases, analysis))
            if status != OK:
                ranks.agree(status, detail)
        ranks.agree()  # rank 0's last writes reached the disk before anyone reports success
        return EXIT_OK
    except Halt as halt:
        return _report(halt.verdict, ranks, job.spectrum.output, raising)
    finally:
        if store is not None:
            store.close()


def _loaded_fingerprint(job: Job, at: At) -> dict:
    """A spectrum of a network and data the caller loaded (no checkpoint file): identified by their bytes."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(at.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    d = hashlib.sha256(at.images.detach().cpu().contiguous().numpy().tobytes())
    d.update(at.labels.detach().cpu().contiguous().numpy().tobytes())
    settings = {"analyses": list(job.spectrum.analyses), "seed": job.spectrum.seed}
    for analysis in job.spectrum.analyses:
        from ..job.config import to_dict

        settings[analysis] = to_dict(getattr(job.spectrum, analysis))
    return {
        "format": 1,
        "kind": "spectrum",
        "weights_sha256": h.hexdigest(),
        "data_sha256": d.hexdigest(),
        "loss": at.loss if isinstance(at.loss, str) else at.loss.spec,
        "ignore": job.hessian.parameters(job.directions),
        "spectrum": settings,
    }


def _resume_state(store: SpectrumStore, layout: Layout) -> dict:
    """What the file says is done (rank 0), small enough to broadcast (the vectors go separately)."""
    from ..file.spectrum import LARGE

    state: dict = {"batch_size": json.loads(store.attr("computed"))["batch_size"]}
    for name in layout.datasets():
        if name not in LARGE:
            state[name] = store.read(name)
    return state


def _share_heavy(ranks: Ranks, store: SpectrumStore | None, layout: Layout, state: dict) -> dict:
    """The stored deflation space of the trace (and its products, once computed) on every rank, when the file has
    it: broadcast as raw float64 buffers."""
    out = {}
    shapes = layout.datasets()
    for name, flag in (("trace/basis", "topk/done"), ("trace/basis_products", "trace/basis_done")):
        if name not in shapes or not state[flag][0]:
            continue
        buffer = store.read(name) if ranks.rank == 0 else np.empty(shapes[name][0], dtype=np.float64)
        ranks.step.comm.Bcast(buffer, root=0)
        out[name] = buffer
    return out


def _report(verdict: Verdict, ranks: Ranks, output: str | None, raising: bool = False) -> int:
    """Why the run ended (the first failure, else the interruption): rank 0 says it, every rank returns its status;
    ``raising`` (``llmpi.spectrum`` from Python): every rank raises it instead, as the exception of its kind."""
    priority = [ERROR, DISK, USER_ERROR, STOP]
    status = next(s for s in priority if any(d[0] == s for d in verdict.details.values()))
    _, detail = next(d for _, d in sorted(verdict.details.items()) if d[0] == status)
    kept = f"what was finished is kept in {output}: " if output else ""
    if raising:
        raise _exception(status, detail, output)
    if ranks.rank == 0:
        if status == STOP:
            print(f"llmpi: interrupted ({detail}); {kept}rerun the same command to resume", file=sys.stderr, flush=True)
        elif status == ERROR:
            print(
                f"llmpi: error: the spectrum failed; {kept}fix the cause and rerun the same command to resume.\n"
                f"{detail}",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"llmpi: error: {detail}", file=sys.stderr, flush=True)
    return CODES[status]


def _exception(status: int, detail: str, output: str | None) -> BaseException:
    """The exception ``llmpi.spectrum`` raises for a run that ended with ``status``: the command's message, in the
    words of a call (``output`` None: a spectrum kept in memory, whose finished units an interruption loses)."""
    from ..job.errors import DiskError, Interrupted, JobError, SweepError

    again = "call llmpi.spectrum again with the same output to resume"
    if status == STOP:
        then = "what was finished is lost with output=None: give output=PATH to keep it" if output is None else again
        return Interrupted(f"llmpi: interrupted ({detail}); {then}")
    if status == USER_ERROR:
        return JobError(detail)
    if status == DISK:
        return DiskError(0, detail)
    kept = f"what was finished is kept in {output}; fix the cause and {again}" if output else "fix the cause"
    return SweepError(f"the spectrum failed; {kept}.\n{detail}")


# ----------------------------------------------------------------------------------------------------------------
# The analyses, in the job's order


class Phases:
    def __init__(
        self,
        job: Job,
        ranks: Ranks,
        products: Products,
        store: SpectrumStore | None,
        layout: Layout,
        state: dict,
        heavy: dict,
        say: Say,
    ) -> None:
        self.job, self.ranks, self.products, self.store = job, ranks, products, store
        self.layout, self.state, self.heavy, self.say = layout, state, heavy, say
        self.spec = job.spectrum
        self.device = products.device
        self.sizes = products.sizes

    def commit(self, values: dict, flags: dict) -> None:
        """Rank 0 writes (values, then flags); a failure is reported at the next agreement."""
        if self.store is not None:
            self.ranks.on_root(lambda: self.store.commit(values, flags))

    # -- top-k ------------------------------------------------------------------------------------------------

    def topk(self) -> None:
        from ..compute.spectrum import top_eigenpairs, verified

        spec = self.spec.topk
        if self.state["topk/done"][0]:
            self._say_topk(self.state["topk/values"], self.state["topk/residuals"], int(self.state["topk/hvps"][0]))
            return
        top, bottom = self.layout.top, self.layout.bottom
        started = time.monotonic()

        def matvec(V: torch.Tensor) -> torch.Tensor:
            out = self.products.data(V)
            self.say.progress(lambda: f"top-k: {self.products.products} products, {time.monotonic() - started:.0f} s")
            return out

        resume = self._lanczos_state()
        if resume is not None:
            self.say(f"top-k: resuming after {resume.hvps} products (from {self.job.spectrum.output}.topk-state)")
        pairs = top_eigenpairs(
            matvec,
            self.products.n,
            top=top,
            bottom=bottom,
            tol=spec.tol,
            max_hvps=spec.max_hvps,
            basis=spec.basis,
            seed=self.spec.seed,
            device=self.device,
            resume=resume,
            on_restart=self._save_lanczos_state,
            ritz=self.layout.deflate,
        )
        pairs = verified(matvec, pairs, spec.tol)
        vectors, W = pairs.vectors.cpu().numpy(), pairs.products.cpu().numpy()
        values = {
            "topk/values": (pairs.values, 0),
            "topk/residuals": (pairs.residuals, 0),
            "topk/converged": (pairs.converged.astype(np.uint8), 0),
            "topk/vectors": (vectors, 0),
            "topk/products": (W, 0),
            "topk/hvps": (np.array([pairs.hvps]), 0),
        }
        if self.layout.deflate:  # the trace's deflation space, from the same basis: written with the eigenpairs
            d, count = self.layout.deflate, len(pairs.ritz_values)
            basis = np.zeros((d, self.products.n))
            basis[:count] = pairs.ritz_vectors.cpu().numpy()
            ritz_values = np.full(d, np.nan)
            ritz_values[:count] = pairs.ritz_values
            values |= {
                "trace/basis": (basis, 0),
                "trace/basis_values": (ritz_values, 0),
                "trace/basis_count": (np.array([count]), 0),
            }
            self.heavy["trace/basis"] = basis
            self.state["trace/basis_count"] = np.array([count])
        self.commit(values, {"topk/done": (np.ones(1), 0)})
        self.ranks.agree()
        if self.store is not None:
            from ..file.spectrum import remove_lanczos_state

            self.ranks.on_root(lambda: remove_lanczos_state(self.store.path))
        self.state["topk/values"] = pairs.values
        self._say_topk(pairs.values, pairs.residuals, pairs.hvps, pairs.converged)

    def _state_key(self) -> str:
        return f"{self.store.attr('fingerprint')}:batch {self.products.whole.batch_size}"

    def _save_lanczos_state(self, state: Any) -> None:
        """Rank 0 keeps the Lanczos state of every thick restart (llmpi.file.spectrum's sidecar)."""
        from ..file.spectrum import save_lanczos_state

        if self.store is None:
            return
        arrays = {
            "basis": state.basis,
            "projected": state.projected,
            "hvps": np.array(state.hvps),
            "generator": state.generator,
        }
        self.ranks.on_root(lambda: save_lanczos_state(self.store.path, self._state_key(), arrays))

    def _lanczos_state(self) -> Any:
        """The state an earlier, killed run of this top-k left (rank 0 reads it, every rank gets it), or None."""
        from ..compute.spectrum import LanczosState
        from ..file.spectrum import load_lanczos_state

        found = load_lanczos_state(self.store.path, self._state_key()) if self.store is not None else None
        shape = self.ranks.step.bcast(None if found is None else found["basis"].shape)
        if shape is None:
            return None
        small = self.ranks.step.bcast(None if found is None else {k: v for k, v in found.items() if k != "basis"})
        basis = found["basis"] if found is not None else np.empty(shape, dtype=np.float64)
        self.ranks.step.comm.Bcast(basis, root=0)
        return LanczosState(basis, small["projected"], int(small["hvps"]), small["generator"])

    def _say_topk(self, values, residuals, hvps: int, converged=None) -> None:
        top = self.layout.top
        shown = ", ".join(f"{v:.6g}" for v in values[:top])
        low = ", ".join(f"{v:.6g}" for v in values[top:])
        scale = float(np.abs(values).max()) if len(values) else 0.0
        worst = float(np.max(residuals) / scale) if scale else 0.0
        note = ""
        if converged is not None and not np.all(converged):
            note = f"; {int((~converged.astype(bool)).sum())} not converged within spectrum.topk.max_hvps"
        bottom = f"; most negative {low}" if low else ""
        self.say(f"top-{top} eigenvalues {shown}{bottom} (relative residual <= {worst:.2g}, {hvps} products{note})")

    # -- trace ------------------------------------------------------------------------------------------------

    def _deflation(self) -> Any:
        """The trace's deflation: the stored Ritz vectors and their products (formed now, once, if not yet)."""
        from ..compute.spectrum import Deflation

        if not self.layout.deflate:
            return Deflation.none(self.products.n, len(self.sizes), self.device)
        count = int(self.state["trace/basis_count"][0])
        Q = torch.from_numpy(np.asarray(self.heavy["trace/basis"])[:count]).to(self.device)
        if "trace/basis_products" not in self.heavy:
            self.say(f"trace: the products of its {count} deflation vectors first")
            W = torch.cat([self.products.data(Q[s : s + self.spec.block]) for s in range(0, count, self.spec.block)])
            products = np.zeros((self.layout.deflate, self.products.n))
            products[:count] = W.cpu().numpy()
            self.commit({"trace/basis_products": (products, 0)}, {"trace/basis_done": (np.ones(1), 0)})
            self.heavy["trace/basis_products"] = products
        W = torch.from_numpy(np.asarray(self.heavy["trace/basis_products"])[:count]).to(self.device)
        return Deflation.of(Q, W, self.sizes)

    def trace(self) -> None:
        from ..compute.spectrum import estimate, probe_values, rademacher, stopping_count

        spec, state = self.spec.trace, self.state
        cap = self.layout.probes
        flat = self._deflation()
        if not state["trace/exact_done"][0]:
            self.commit(
                {"trace/exact": (np.array([flat.exact]), 0), "trace/exact_entries": (flat.exact_entries, 0)},
                {"trace/exact_done": (np.ones(1), 0)},
            )
        done = state["trace/done"].astype(bool)
        have = int(np.argmin(done)) if not done.all() else cap  # the finished probes are always a prefix
        samples = list(state["trace/samples"][:have])
        per_entry = list(state["trace/entries"][:have])
        mode = spread(self.job, "trace", self.ranks.size)
        if int(state["trace/used"][0]):
            used = int(state["trace/used"][0])
        else:
            if have:
                self.say(f"trace: resuming after {have} probes")
            started = time.monotonic()
            while (used := stopping_count(np.array(samples), flat.exact, spec.rel_se, spec.min_probes, cap)) is None:
                per_round = self.spec.block * (self.ranks.size if mode == "whole" else 1)
                indices = list(range(have, min(have + per_round, cap)))
                values, terms = self._probes(indices, mode, flat, rademacher, probe_values)
                self.commit(
                    {"trace/samples": (values, have), "trace/entries": (terms, have)},
                    {"trace/done": (np.ones(len(indices)), have)},
                )
                samples += list(values)
                per_entry += list(terms)
                have += len(indices)
                self.say.progress(lambda s=samples, h=have: self._trace_line(s, flat.exact, h, started))
            result = estimate(np.array(samples), np.array(per_entry), flat.exact, flat.exact_entries, used)
            running_mean = np.full(cap, np.nan)
            running_se = np.full(cap, np.nan)
            running_mean[:have], running_se[:have] = result.running_mean, result.running_se
            self.commit(
                {
                    "trace/value": (np.array([result.value]), 0),
                    "trace/se": (np.array([result.se]), 0),
                    "trace/layers": (result.entries, 0),
                    "trace/layers_se": (result.entries_se, 0),
                    "trace/running_mean": (running_mean, 0),
                    "trace/running_se": (running_se, 0),
                },
                {"trace/used": (np.array([used]), 0)},
            )
            self.ranks.agree()
        result = estimate(np.array(samples), np.array(per_entry), flat.exact, flat.exact_entries, used)
        deflated = f", {len(flat.Q)} Ritz vectors deflated (exact part {flat.exact:.6g})" if len(flat.Q) else ""
        reached = "" if result.relative_se <= spec.rel_se else f" (the cap of {cap} probes: rel_se not reached)"
        self.say(
            f"trace {result.value:.6g} ± {result.se:.3g} ({100 * result.relative_se:.2f}% standard error) from "
            f"{used} probes{reached}{deflated}"
        )

    def _trace_line(self, samples: list, exact: float, have: int, started: float) -> str:
        from ..compute.spectrum import running

        mean, se = running(np.array(samples), exact)
        rel = se[-1] / abs(mean[-1]) if len(samples) > 1 and mean[-1] else math.inf
        return f"trace: {have} probes, {mean[-1]:.6g} ({100 * rel:.2f}% SE), {time.monotonic() - started:.0f} s"

    def _probes(self, indices: list[int], mode: str, flat: Any, rademacher, probe_values) -> tuple:
        """The samples of the probes ``indices``, on every rank, in index order."""
        n = self.products.n

        def block(mine: list[int], product: Callable) -> tuple[np.ndarray, np.ndarray]:
            if not mine:
                return np.zeros(0), np.zeros((0, len(self.sizes)))
            Z = torch.stack([rademacher(n, self.spec.seed, i, device=self.device) for i in mine])
            Z = flat.project(Z)
            return probe_values(Z, product(Z), self.sizes)

        if mode == "data":
            return block(indices, self.products.data)
        mine = indices[self.ranks.rank :: self.ranks.size]
        values, terms = self.ranks.run(lambda: block(mine, self.products.alone))
        every = self.ranks.step.comm.allgather((values, terms))
        out_v, out_t = np.empty(len(indices)), np.empty((len(indices), len(self.sizes)))
        for r, (v, t) in enumerate(every):
            out_v[r :: self.ranks.size], out_t[r :: self.ranks.size] = v, t
        return out_v, out_t

    # -- density ----------------------------------------------------------------------------------------------

    def density(self) -> None:
        from ..compute.spectrum import auto_sigma, density, density_grid

        spec, state, layout = self.spec.density, self.state, self.layout
        done = state["density/done"].astype(bool)
        mode = spread(self.job, "density", self.ranks.size)
        steps = layout.steps
        nodes = [state["density/nodes"][r, : state["density/steps"][r]] for r in range(layout.runs)]
        weights = [state["density/weights"][r, : state["density/steps"][r]] for r in range(layout.runs)]
        if done.any() and not done.all():
            self.say(f"density: resuming with {int(done.sum())} of {layout.runs} runs done")
        started = time.monotonic()
        while not done.all():
            todo = [r for r in range(layout.runs) if not done[r]]
            chosen = todo[: self.spec.block * (self.ranks.size if mode == "whole" else 1)]
            for r, theta, tau in self._runs(chosen, mode, done, started):
                row_nodes, row_weights = np.full(steps, np.nan), np.full(steps, np.nan)
                row_nodes[: len(theta)], row_weights[: len(tau)] = theta, tau
                self.commit(
                    {
                        "density/nodes": (row_nodes[None], r),
                        "density/weights": (row_weights[None], r),
                        "density/steps": (np.array([len(theta)]), r),
                    },
                    {"density/done": (np.ones(1), r)},
                )
                nodes[r], weights[r] = theta, tau
                done[r] = True
        if not state["density/complete"][0]:
            sigma = spec.sigma if spec.sigma != "auto" else auto_sigma(nodes)
            grid = density_grid(nodes, sigma, layout.points)
            values = density(nodes, weights, grid, sigma)
            self.commit(
                {
                    "density/grid": (grid, 0),
                    "density/values": (values, 0),
                    "density/sigma": (np.array([sigma]), 0),
                },
                {"density/complete": (np.ones(1), 0)},
            )
            self.ranks.agree()
        every = np.concatenate(nodes)
        self.say(
            f"density from {layout.runs} runs x {steps} steps: Ritz nodes from {every.min():.6g} to {every.max():.6g}"
        )

    def _runs(self, chosen: list[int], mode: str, done: np.ndarray, started: float) -> list:
        """The SLQ runs ``chosen``, on every rank: [(run, nodes, weights), ...] in run order. Whole: each rank
        takes every size-th of them as one block, the ranks agreeing after every step; data: all together, every
        product summed over the ranks' shares."""
        from ..compute.spectrum import slq, slq_start

        steps, n = self.layout.steps, self.products.n
        taken = [0]

        def stepped() -> None:
            if mode == "whole":
                self.ranks.agree()
            taken[0] += 1
            self.say.progress(
                lambda: (
                    f"density: step {taken[0]} of {steps} of runs {chosen[0]}-{chosen[-1]} ({int(done.sum())} "
                    f"of {self.layout.runs} runs done), {time.monotonic() - started:.0f} s"
                )
            )

        def runs(mine: list[int], product: Callable) -> list:
            if not mine:  # no run of this round here: keep in step with the ranks that have some
                for _ in range(steps):
                    stepped()
                return []
            starts = torch.stack([slq_start(n, self.spec.seed, r, self.device) for r in mine])
            return list(zip(mine, *slq(product, starts, steps, stepped)))

        if mode == "data":
            return runs(chosen, self.products.data)
        mine = chosen[self.ranks.rank :: self.ranks.size]
        status, detail, found = self.ranks.attempt(lambda: runs(mine, self.products.alone))
        self.ranks.agree(status, detail)  # every rank's runs finished before the results are gathered
        return sorted((item for part in self.ranks.step.comm.allgather(found) for item in part), key=lambda i: i[0])


# ----------------------------------------------------------------------------------------------------------------
# The command: set-up on every rank, then compute


def spectrum(
    comm: Any,
    load_job: Callable[[], Job],
    *,
    restart: bool,
    debug: bool,
    interrupts: Any,
    given: Any = None,
    raising: bool = False,
) -> int:
    """``python -m llmpi.spectrum``: the job ``load_job`` gives on rank 0, its spectrum on every rank of ``comm``;
    the exit status, the same on every rank. A failure of the set-up on any rank (a missing file on one node)
    ends every rank at once, reported by rank 0. ``given`` (``llmpi.job.memory.Given``): the parts of the job held
    in memory (``llmpi.spectrum`` from Python), which every rank must hold alike; ``raising``: see ``compute``."""
    from mpi4py import MPI

    from ..compute import runtime
    from . import placement, protocol
    from .worker import DataCache, load, look, refuse_differing

    ranks = Ranks(comm, interrupts, debug)
    rank, size = ranks.rank, ranks.size
    try:
        ranks.run(lambda: placement.check_launch(os.environ, size, protocol.library()))
        job = ranks.step.bcast(ranks.run(lambda: check_job(load_job()) if rank == 0 else None))
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            seen = ranks.run(lambda: look(job.runtime.device))
            bound = placement.bind(
                local.allgather(seen), local.Get_rank(), job.runtime.threads, job.runtime.device != "cpu"
            )
        finally:
            local.Free()

        def set_up() -> tuple[Any, At, Any, dict, dict]:
            device = runtime.pick_device(job.runtime.device, bound.gpu)
            runtime.configure(device, bound.threads, job.runtime.precision, job.runtime.kernels)
            loaded = load(job, device, DataCache(), given)
            at = loaded_at(job, loaded, device)
            identity, attrs = inputs_identity(job, loaded, at) if rank == 0 else (None, {})
            return device, at, identity, attrs, loaded.held()

        device, at, identity, attrs, held = ranks.run(set_up)
        if given is not None:  # parts given in memory: every rank must hold rank 0's
            everyone = comm.allgather(held)
            ranks.run(lambda: refuse_differing(everyone))
        places = comm.gather(bound.place(rank, str(device), bound.threads, os.getpid()))
        if rank == 0:
            print("\n".join(placement.describe(places)), flush=True)
    except Halt as halt:
        return _report(halt.verdict, ranks, None, raising)
    return compute(
        comm,
        job,
        at,
        device,
        restart=restart,
        interrupts=interrupts,
        attrs=attrs,
        identity=identity,
        debug=debug,
        raising=raising,
    )


def inputs_identity(job: Job, loaded: Any, at: At) -> tuple[Any, dict]:
    """Rank 0: what a spectrum file records of its inputs, (fingerprint identity, root attributes): θ*'s bytes (its
    file's SHA-256, or the hash of a network given in memory) and the selected samples', as for a surface."""
    info = next(iter(loaded.splits.values())).info
    attrs = {
        "dataset": info.describe(),
        "synthetic": info.synthetic,
        "arch": job.model.label,
        "split": job.splits[0],
        "images": len(at.labels),
    }
    return loaded.identity(), attrs


def spectrum_path(job: Job) -> str:
    """Where a sweep of ``directions.kind: hessian`` without ``directions.spectrum`` keeps the spectrum it computes
    first: next to its surface, ``surfaces/<name>.spectrum.h5``."""
    from pathlib import Path

    return str(Path(job.output).with_suffix(".spectrum.h5"))


def eigenvectors_first(
    comm: Any,
    jobs: list[Job],
    device: Any,
    cache: Any,
    *,
    restart: bool,
    debug: bool,
    interrupts: Any,
    given: Any = (),
) -> int:
    """Every rank, before a sweep prepares its surfaces: the top eigenvectors of each ``directions.kind: hessian``
    job that names no ``directions.spectrum``, computed on every rank (``spectrum.topk``'s settings, k = 1 for a line
    and 2 for a plane) into ``spectrum_path(job)``, which the job then names (in ``jobs``, replaced). A file already
    complete is only read. The exit status (0, or why the sweep must end now). ``given``: per job, the parts held in
    memory (``llmpi.surface``), or empty."""
    from .worker import load

    rank = comm.Get_rank()
    for index, job in enumerate(jobs):
        if job.directions.kind != "hessian" or job.directions.spectrum is not None:
            continue
        path = spectrum_path(job)
        ndim = 1 if job.grid.y is None else 2
        topk = dataclasses.replace(job.spectrum.topk, k=ndim, bottom=0, basis=max(job.spectrum.topk.basis, ndim + 2))
        first = derived(job, analyses=["topk"], output=path, topk=topk)
        # the eigenvectors become directions: over the directions' parameters, whatever hessian.ignore says
        first = dataclasses.replace(first, hessian=dataclasses.replace(first.hessian, ignore=None))

        def set_up(first: Job = first, index: int = index) -> tuple[At, Any, dict]:
            loaded = load(first, device, cache, given[index] if given else None)
            at = loaded_at(first, loaded, device)
            identity, attrs = inputs_identity(first, loaded, at) if rank == 0 else (None, {})
            return at, identity, attrs

        ranks = Ranks(comm, interrupts, debug)
        try:
            at, identity, attrs = ranks.run(set_up)
        except Halt as halt:
            return _report(halt.verdict, ranks, None)
        if rank == 0:
            print(f"llmpi: {job.name}: directions.kind hessian: the top {ndim} eigenvector(s) first -> {path}")
        code = compute(
            comm, first, at, device, restart=restart, interrupts=interrupts, attrs=attrs, identity=identity, debug=debug
        )
        if code != EXIT_OK:
            return code
        jobs[index] = dataclasses.replace(job, directions=dataclasses.replace(job.directions, spectrum=path))
    return EXIT_OK


def check_job(job: Job) -> Job:
    """What the spectrum needs of a job beyond what the loader checks."""
    from ..job.errors import JobError

    if job.runtime.precision == "bf16":
        raise JobError(
            "the spectrum needs runtime.precision fp32 or tf32: bfloat16 loses the Hessian's small eigenvalues "
            "(--set runtime.precision=fp32)"
        )
    return job


def loaded_at(job: Job, loaded: Any, device: torch.device) -> At:
    """The network and the first split's selected samples (``spectrum.images`` of them) on ``device``."""
    samples = next(iter(loaded.splits.values()))
    count = len(samples.targets)
    if job.spectrum.images is not None:
        count = min(count, job.spectrum.images)
    images, labels = samples.head(count).to(device)
    model = loaded.model.to(device).eval()
    return At(model, images, labels, loaded.loss)


def derived(job: Job, **spectrum: Any) -> Job:
    """``job`` with its spectrum section changed (``directions.kind: hessian`` computes its eigenvectors so)."""
    return dataclasses.replace(job, spectrum=dataclasses.replace(job.spectrum, **spectrum))
