"""Shared fixtures: a CIFAR-format dataset written in the release's pickle format, a small trained checkpoint,
job files, and a runner for the real command lines (under mpirun, with a time limit so a deadlock fails).

The suite runs in parallel under pytest-xdist (``make test``: ``pytest -n 3``); see "Running in parallel" below
for how tests are grouped and ordered, and for the rules a new test follows to stay fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from mpilaunch import REPO, mpirun  # every launcher detail is in tests/mpilaunch.py
from mpilaunch import env as launch_env

# -- Running in parallel ----------------------------------------------------------------------------------------
#
# `make test` runs `pytest -n 3` (pytest-xdist). Most tests spend their time in subprocesses
# (3 MPI ranks, SLURM jobs, Chromium) or waiting for them, so three workers keep the 2 cores busy while one of
# them waits. What makes that safe and fast, and what a new test must follow:
#
# * A test that uses a module-scoped fixture runs on the same worker as every other test of its module that does,
#   in one work unit, so the fixture is built once. Tests that use none are spread one by one over the workers.
#   Nothing to mark by hand. The real-SLURM tests (marker ``slurm``) form one unit: one cluster per run. A test
#   that needs some other one-per-run resource (a fixed port, a device) says so with
#   ``@pytest.mark.xdist_group("name")``: tests of one name form one unit, run one after another on one worker.
# * Expensive inputs shared by many modules are session fixtures built ONCE for the whole run, not once per
#   worker: ``build_once`` below (``fixture_data``, ``other_minimisers``, the fault tests' reference run, the
#   bad-input catalogue's valid surface). Reuse them; a new expensive session fixture uses ``build_once`` too.
#   Whatever a test gets from them is read-only (copy a file before changing it).
# * Under xdist the waiting units start first (real SLURM, then Chromium), then the long ones (marker ``slow``),
#   the other grouped units, single tests that start mpirun, and in-process tests last, so that waits overlap the
#   CPU-bound work and the run ends on short tests. Mark a test that takes more than a few seconds ``slow``.
# * Anything a test writes goes under tmp_path; ports are picked free; no test may assume it has the machine to
#   itself: a time limit in an assertion needs a wide margin (tests run 3 at a time on 2 cores).


def _under_xdist() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


UNITS = "LLMPI_TEST_UNITS"  # where the workers tell the controller which tests form one work unit


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "dist", "no") in ("load", "loadgroup") and not _under_xdist():
        # The controller of `pytest -n N`: it schedules, but only the workers collect (and see fixtures and marks),
        # so they write the work units to a file it reads (xdist's own --dist loadgroup cannot be used: it renames
        # node ids through an attribute pytest 9.2 no longer reads, so the groups silently fell apart).
        folder = Path(tempfile.mkdtemp(prefix="llmpi-units-"))
        os.environ[UNITS] = str(folder / "units.json")  # the workers, started later, inherit it
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    if _under_xdist():
        # In-process torch work on one thread per worker: three workers with two OpenMP threads each on 2 cores
        # spin-wait for each other.
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`pytest -n N`: xdist's scope scheduler with our work units as scopes, handed out in collection order."""
    if config.option.dist not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:
                self.units = json.loads(Path(os.environ[UNITS]).read_text())
            return self.units.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems gives the units
    return UnitScheduling(config, log)


def _module_resources(item: pytest.Item) -> list[str]:
    """The fixtures ``item`` uses (through its arguments, usefixtures and their fixtures, not autouse ones) that
    are built once per module: module, class or package scope."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    todo = list(info.argnames) + [n for m in item.iter_markers("usefixtures") for n in m.args]
    seen: set[str] = set()
    found = []
    while todo:
        name = todo.pop()
        if name in seen or name not in info.name2fixturedefs:
            continue
        seen.add(name)
        fixturedef = info.name2fixturedefs[name][-1]
        if fixturedef.scope in ("module", "class", "package"):
            found.append(name)
        todo.extend(fixturedef.argnames)
    return found


def _unit(item: pytest.Item) -> str:
    """The work unit of a test: the tests of one unit run one after another on one xdist worker."""
    group = item.get_closest_marker("xdist_group")
    if group is not None:
        return "group " + str(group.args[0] if group.args else group.kwargs.get("name", "default"))
    if item.get_closest_marker("slurm"):
        return "slurm"  # one SLURM cluster per run (test_slurm's session fixture)
    if _module_resources(item):
        return item.nodeid.split("::")[0]  # the module's tests that share its module-scoped fixtures
    return item.nodeid


def _unit_rank(items: list[pytest.Item]) -> int:
    """Which work units xdist hands out first: those that mostly wait, so that their waits overlap the rest, then
    the long ones, so that the run ends on short tests that fill the gaps (no core idle behind one long test)."""
    marks = {m.name for item in items for m in item.iter_markers()}
    if "slurm" in marks:
        return 0
    if "browser" in marks:
        return 1
    if "slow" in marks:
        return 2
    if len(items) > 1:
        return 3
    return 4 if "mpi" in marks else 5


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _under_xdist():
        return  # a plain run keeps the file order (module fixtures are set up once per module)
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_unit(item), []).append(item)
    ordered = sorted(units.values(), key=lambda unit: (_unit_rank(unit), -len(unit)))  # stable: file order within
    items[:] = [item for unit in ordered for item in unit]
    if UNITS in os.environ:  # every worker collects the same tests: each writes the same file, atomically
        path = Path(os.environ[UNITS])
        text = json.dumps({item.nodeid: name for name, unit in units.items() for item in unit})
        part = path.with_name(f"{path.name}.{os.getpid()}")
        part.write_text(text)
        part.replace(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that ``build(folder)`` fills once per test run, shared by every xdist worker (the first to get
    here builds it under a lock while the others wait; a failed build is retried by the next, and fails it too).

    It lives in the run's base temporary folder (the parent of the workers' own), so it never outlives the run
    and never goes stale. Treat what is in it as read-only."""
    root = tmp_path_factory.getbasetemp()
    if _under_xdist():
        root = root.parent
    target = root / f"shared-{name}"
    with _locked(root / f"shared-{name}.lock"):
        if not target.is_dir():
            work = root / f"shared-{name}.building"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            build(work)
            work.rename(target)
    return target


@dataclass
class Fixture:
    root: Path  # holds cifar-10-batches-py/
    checkpoint: Path
    arch: str


def cifar_like(n_train: int, n_test: int, seed: int) -> tuple[dict, dict]:
    """Small CIFAR-format splits cut from the synthetic set (learnable, so the checkpoint is a real minimiser)."""
    from llmpi.compute.data import synthetic_images

    images, labels = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        im, lab = synthetic_images(split, seed=seed)
        images[split], labels[split] = im[:n], lab[:n]
    return images, labels


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> Fixture:
    """A CIFAR-10-format folder (500 train, 100 test images) and a resnet8 trained on it for two epochs (built
    once per run, shared by the xdist workers)."""
    base = build_once(tmp_path_factory, "fixture", train_fixture)
    return Fixture(base, base / "resnet8.pt", "resnet8")


def train_fixture(base: Path) -> None:
    import torch

    from llmpi import models
    from llmpi.compute import data

    images, labels = cifar_like(500, 100, seed=7)
    data.write_cifar10_batches(base, images, labels)
    torch.manual_seed(0)
    model = models.build("resnet8")
    x = data.normalize(images["train"])
    y = torch.as_tensor(labels["train"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(2):
        for s in range(0, len(y), 50):
            loss = torch.nn.functional.cross_entropy(model(x[s : s + 50]), y[s : s + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save({"state_dict": model.state_dict(), "epoch": 2, "acc": 0.0, "arch": "resnet8"}, base / "resnet8.pt")


def job_dict(fx: Fixture, output: Path, **sections) -> dict:
    """A small sweep job on the fixture; keyword sections update the defaults (``grid={'x': [...]}``)."""
    job = {
        "name": "fixture",
        "model": {"arch": fx.arch, "checkpoint": str(fx.checkpoint)},
        "data": {"dataset": "cifar10", "root": str(fx.root), "split": "train", "subset": 64, "seed": 0},
        "directions": {"kind": "random", "seed": 3, "norm": "filter", "ignore": "biasbn", "type": "weights"},
        "grid": {"x": [-1.0, 1.0, 5], "y": [-1.0, 1.0, 4], "block": 2},
        "output": str(output),
        "runtime": {"device": "cpu", "threads": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_cli(
    module: str,
    *args: str,
    ranks: int | None = None,
    timeout: float = 180,
    env: dict | None = None,
    cwd=None,
    cores: int | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` (under ``mpirun -n ranks`` if given); a hang past ``timeout`` fails the test.

    ``cores``: let it see (and use) only that many of this machine's cores, for a program that sizes its thread
    pool to the cores it sees: the parallel tests share the cores, and two OpenMP threads that spin-wait for each
    other while other tests hold the cores cost twice the CPU time (the bench: 38 s instead of 18, measured)."""
    cmd = [sys.executable, "-m", module, *args]
    if ranks is not None:
        cmd = [*mpirun(ranks), *cmd]
    if cores is not None and shutil.which("taskset"):  # util-linux; without it the program sees every core
        cmd = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:cores])), *cmd]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=launch_env(env), cwd=cwd or REPO
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s (deadlock?)\n{e.stdout}\n{e.stderr}")


def brute_force(
    fx: Fixture,
    directions: list[dict[str, np.ndarray]],
    point: tuple[float, ...],
    subset: int = 64,
    seed: int = 0,
    split: str = "train",
) -> tuple[float, float]:
    """The loss at a point, computed the obvious way, independently of llmpi.compute.evaluate: perturb a state_dict by
    hand in float64, load it, and average the per-image cross-entropy of one big batch in float64."""
    import torch

    from llmpi import models
    from llmpi.compute import data
    from llmpi.space import checkpoint

    state = checkpoint.read_state_dict(fx.checkpoint)
    perturbed = {}
    for name, value in state.items():
        if value.is_floating_point():
            v = value.double()
            for c, d in zip(point, directions):
                if name in d:
                    v = v + c * torch.as_tensor(d[name]).double()
            perturbed[name] = v.float()
        else:
            perturbed[name] = value
    model = models.build(fx.arch)
    model.load_state_dict(perturbed)
    model.eval()
    images, labels = data.load_cifar10(fx.root, split, download=False)
    index = np.random.default_rng(seed).permutation(len(labels))[:subset]
    mean = np.array([125.3, 123.0, 113.9]) / 255
    std = np.array([63.0, 62.1, 66.7]) / 255
    x = ((images[index] / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32)).double()
    y = torch.as_tensor(labels[index])
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="mean").item()
    acc = 100.0 * (logits.argmax(1) == y).double().mean().item()
    return loss, acc


@pytest.fixture(scope="session")
def other_minimisers(fixture_data, tmp_path_factory) -> list[Path]:
    """Two more minimisers trained on from the fixture's (other learning rates and orders: other weights and other
    BatchNorm statistics), for interpolations and planes (built once per run, shared by the xdist workers)."""
    import torch

    from llmpi.compute import data
    from llmpi.space import checkpoint

    def train(folder: Path) -> None:
        images, labels = data.load_cifar10(fixture_data.root, "train", download=False)
        x, y = data.normalize(images[:200]), torch.as_tensor(labels[:200])
        for i, (lr, seed) in enumerate([(0.05, 1), (0.02, 2)], start=2):
            torch.manual_seed(seed)
            model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint).train()
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            for s in torch.randperm(200).split(40):
                loss = torch.nn.functional.cross_entropy(model(x[s]), y[s])
                opt.zero_grad()
                loss.backward()
                opt.step()
            torch.save({"state_dict": model.state_dict()}, folder / f"model{i}.pt")

    folder = build_once(tmp_path_factory, "others", train)
    return [folder / "model2.pt", folder / "model3.pt"]


def run_script(script: Path, *args: str, ranks: int | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """An SPMD script of tests/ (``spmd_surface.py``, ``spmd_spectrum.py``) in one process, or under mpirun with
    ``ranks`` ranks; a time limit turns a deadlock into a failure."""
    cmd = [sys.executable, str(script), *args]
    if ranks is not None:
        cmd = [*mpirun(ranks), *cmd]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch_env(), cwd=REPO)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s (deadlock?)\n{e.stdout}\n{e.stderr}")


def rank_rows(out: str) -> dict[int, dict]:
    """Each rank's JSON object ``{"rank": r, ...}`` printed by such a script (ranks print at once: lines may run
    together), by rank."""
    decoder, found = json.JSONDecoder(), {}
    for start in (m.start() for m in re.finditer(r'\{"rank": ', out)):
        row, _ = decoder.raw_decode(out, start)
        found[row["rank"]] = row
    return found
