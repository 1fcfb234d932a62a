"""An optional speed path never costs a sweep: compiling (and folding) that fails falls back with a clear word where
the job leaves the choice to llmpi, and is one message where the job insists on it.

Compilation fails for real here: Inductor's C++ compiler made unusable for the process (``CXX`` naming a compiler
that does not exist, or one that answers ``--version`` and fails every compile), or a network dynamo refuses (an
operator without a fake kernel, ``tinynet.RefusedNet``). Every run gets an Inductor cache of its own, so nothing
compiled earlier is loaded in place of compiling. ``LLMPI_COMPILE_GUESS_SECONDS=0`` makes ``runtime.compile: auto``
try to compile sweeps this small (it tries only where the sweep is long enough to pay for compiling).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, Fixture, build_once, job_dict, run_cli, write_job
from mpilaunch import env as launch_env
from mpilaunch import mpmd

from llmpi.compute.forward import ForwardPath, PathFailed, failure
from llmpi.file.store import read_run_info, read_surface

pytestmark = pytest.mark.mpi


@pytest.fixture()
def tiny(fixture_data, tmp_path) -> Fixture:
    """tinynet's weights (a random initialisation is as good a θ* as any here), fit for refusednet too. Cheap, and
    no module-wide fixture: these tests are slow, and spread over the xdist workers."""
    import tinynet

    path = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": tinynet.TinyNet().state_dict()}, path)
    return Fixture(fixture_data.root, path, "tinynet")


def sweep_job(fx: Fixture, path, arch: str = "tinynet", **runtime) -> dict:
    """Enough points for ``auto`` to probe (64 images x 210 points), fixed batch and no folding: the fallback
    then runs exactly the eager path, whose bits a run with ``compile: false`` gives too."""
    return job_dict(
        fx,
        path,
        model={"arch": arch, "checkpoint": str(fx.checkpoint)},
        data={"batch_size": 32},
        grid={"x": [-1.0, 1.0, 15], "y": [-1.0, 1.0, 14], "block": 8},
        runtime={"device": "cpu", "threads": 1, "fold": False, **runtime},
    )


# Where the runs whose compiler works keep their Inductor cache, shared by the tests and kept between runs: they
# compile the same graph, and a warm cache saves each of them the cold compilation (tens of seconds on 2 busy cores).
WORKING_CACHE = Path(tempfile.gettempdir()) / f"llmpi-tests-inductor-{os.getuid()}"


def environment(tmp_path, name: str, compiler: str | None = "/nonexistent/g++", guess: str | None = "0") -> dict:
    """tests/ on the path (tinynet), the Inductor cache, and the compiler Inductor is to find. A run whose compiler
    is broken gets a fresh cache, so that compiling really calls that compiler."""
    cache = WORKING_CACHE if compiler is None else tmp_path / f"inductor-{name}"
    extra = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    if compiler is not None:
        extra["CXX"] = compiler
    if guess is not None:
        extra["LLMPI_COMPILE_GUESS_SECONDS"] = guess
    return extra


def run(fx: Fixture, tmp_path, name: str, *args: str, ranks: int = 1, arch: str = "tinynet", env=None, **runtime):
    out = tmp_path / f"{name}.h5"
    job = write_job(tmp_path / f"{name}.yaml", sweep_job(fx, out, arch, **runtime))
    result = run_cli("tinynet", str(job), *args, ranks=ranks, env=env or environment(tmp_path, name), timeout=300)
    return result, out


def said(stderr: str) -> list[str]:
    """What llmpi said on stderr (Open MPI's mpirun adds a banner of its own when a rank exits non-zero)."""
    return [line for line in stderr.splitlines() if line.startswith("llmpi:")]


@pytest.fixture()
def reference(tiny, tmp_path_factory):
    """The surface along the eager path, compiling never tried (made once per test run, for every worker)."""

    def build(d) -> None:
        result, _ = run(tiny, d, "eager", compile=False, env=environment(d, "eager", compiler=None, guess=None))
        assert result.returncode == 0, result.stderr

    return read_surface(build_once(tmp_path_factory, "fallback-reference", build) / "eager.h5")


@pytest.mark.slow  # compiles for real (tens of seconds)
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_default_job_completes_and_says_how_it_fell_back(tiny, reference, tmp_path, ranks):
    result, out = run(tiny, tmp_path, "auto", ranks=ranks)
    assert result.returncode == 0, result.stderr
    (line,) = [s for s in result.stdout.splitlines() if s.startswith("llmpi: compile: failed")]
    assert line.startswith("llmpi: compile: failed (No working C++ compiler found") and line.endswith("running eager")
    setup = read_run_info(out)["setup"]
    assert setup["failed"]["compile"].startswith("No working C++ compiler found in torch._inductor.config.cpp.cxx")
    assert setup["fallback"] == line.removeprefix("llmpi: ") and setup["forward"] == "eager"
    assert setup["compile_guess_seconds"] == 0.0 and setup["compile_probe_seconds"] is None  # guess, and no actual
    assert json.loads(read_surface(out).attrs["computed"])["compile"] is False  # a resume follows what ran
    s = read_surface(out)
    assert s.complete and all(np.array_equal(s.values[k], reference.values[k]) for k in reference.values)


@pytest.mark.slow  # compiles for real (tens of seconds)
@pytest.mark.parametrize("ranks", [1, 2])
def test_compile_true_on_a_machine_without_a_compiler_is_one_message(tiny, tmp_path, ranks):
    result, _ = run(tiny, tmp_path, "forced", ranks=ranks, compile=True)
    assert result.returncode == 2, result.stderr
    assert said(result.stderr) == [
        "llmpi: error: runtime.compile: true, but compiling the compiled forward pass failed here: No working C++ "
        "compiler found in torch._inductor.config.cpp.cxx: (None, '/nonexistent/g++'). Set runtime.compile: auto "
        "(llmpi then runs the fastest path that works here and says which) or false; --debug shows the traceback"
    ]
    debug, _ = run(tiny, tmp_path, "forced", "--debug", compile=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "InvalidCxxCompiler" in debug.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # compiles for real (tens of seconds)
def test_a_compiler_that_fails_to_compile_falls_back_too(tiny, reference, tmp_path):
    broken = tmp_path / "g++"
    broken.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "g++ (broken) 12"; exit 0; }\n'
                      'echo "g++: internal compiler error: Killed (program cc1plus)" >&2\nexit 1\n')  # fmt: skip
    broken.chmod(0o755)
    result, out = run(tiny, tmp_path, "failing", env=environment(tmp_path, "failing", compiler=str(broken)))
    assert result.returncode == 0, result.stderr
    setup = read_run_info(out)["setup"]
    assert setup["failed"] == {"compile": "C++ compile error: g++: internal compiler error: Killed (program cc1plus)"}
    assert np.array_equal(read_surface(out).values["train_loss"], reference.values["train_loss"])


@pytest.mark.slow  # compiles for real (tens of seconds)
def test_a_network_dynamo_refuses_falls_back_under_two_ranks_and_is_a_message_when_forced(tiny, tmp_path):
    """A working compiler, a network it never reaches: an operator without a fake kernel stops dynamo."""
    ok = lambda name: environment(tmp_path, name, compiler=None)
    result, out = run(tiny, tmp_path, "refused", ranks=2, arch="refusednet", env=ok("refused"))
    assert result.returncode == 0, result.stderr
    reason = read_run_info(out)["setup"]["failed"]["compile"]
    assert "no fake impl registered for <CustomOpDef(llmpitests::halve)>" in reason, reason
    assert f"llmpi: compile: failed ({reason}); running eager" in result.stdout
    forced, _ = run(tiny, tmp_path, "refused_forced", arch="refusednet", env=ok("refused_forced"), compile=True)
    assert forced.returncode == 2 and "runtime.compile: true, but compiling the compiled forward pass" in forced.stderr
    assert "no fake impl registered" in forced.stderr and "Traceback" not in forced.stderr


@pytest.mark.slow  # compiles for real (tens of seconds)
def test_a_resumed_file_computed_compiled_is_not_resumed_along_another_path_unasked(tiny, tmp_path):
    """The file records the compiled path; on a machine that cannot compile, the resume says what to do instead of
    changing the last bits of the points still to compute; asked to (compile: false), it resumes and completes."""
    works = environment(tmp_path, "first", compiler=None, guess=None)
    first, out = run(tiny, tmp_path, "resumed", env={**works, "LLMPI_FAULT": "raise:rank=0:after=16"}, compile=True)
    assert first.returncode == 1 and "injected fault" in first.stderr, first.stderr
    assert json.loads(read_surface(out).attrs["computed"])["compile"] is True
    done = int(read_surface(out).done.sum())
    assert 0 < done < 210

    again, _ = run(tiny, tmp_path, "resumed", env=environment(tmp_path, "again"))
    assert again.returncode == 2, again.stderr
    (message,) = said(again.stderr)
    assert message.startswith(f"llmpi: error: {out} was computed along the compiled forward pass")
    assert "No working C++ compiler found" in message and "--set runtime.compile=false" in message
    assert "--restart" in message and int(read_surface(out).done.sum()) == done  # nothing computed, nothing lost

    anyway, _ = run(tiny, tmp_path, "resumed", "--set", "runtime.compile=false", env=environment(tmp_path, "anyway"))
    assert anyway.returncode == 0, anyway.stderr
    assert read_surface(out).complete


@pytest.mark.slow  # compiles for real (tens of seconds)
def test_a_rank_that_cannot_compile_what_rank_0_compiled_stops_the_run_naming_itself(tiny, tmp_path):
    """Rank 0 compiles; rank 1's compiler is missing: the ranks must run one path (the same bits), so the run
    stops before any point with one message naming rank 1 and its host."""
    out = tmp_path / "split.h5"
    job = write_job(tmp_path / "split.yaml", sweep_job(tiny, out, compile=True))
    command = [sys.executable, "-m", "tinynet", str(job)]
    rank0 = environment(tmp_path, "rank0", compiler=None, guess=None)
    rank1 = environment(tmp_path, "rank1", guess=None)
    proc = subprocess.run(
        mpmd([(rank0, command), (rank1, command)]),
        capture_output=True, text=True, timeout=300, env=launch_env(rank0), cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = said(proc.stderr)
    assert line.startswith(f"llmpi: error: rank 1 of 2 on {socket.gethostname()} (pid ")
    assert "compiling the compiled forward pass failed: No working C++ compiler found" in line
    assert "rank 0 compiled it and chose it for every rank" in line and "set runtime.compile: false" in line
    assert int(read_surface(out).done.sum()) == 0


def test_failures_read_in_one_line():
    cxx = RuntimeError("InvalidCxxCompiler: No working C++ compiler found in cpp.cxx: (None, 'g++')\n\nSet X=1")
    assert failure(cxx) == "No working C++ compiler found in cpp.cxx: (None, 'g++')"
    compiled = RuntimeError("CppCompileError: C++ compile error\n\nCommand:\ng++ a.cpp\n\nOutput:\ng++: fatal error\n")
    assert failure(compiled) == "C++ compile error: g++: fatal error"
    assert failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")).startswith("CUDA out")
    assert failure(KeyError()) == "KeyError" and len(failure(RuntimeError("x" * 500))) == 160
    error = PathFailed(ForwardPath(fold=True, compile=True), "compiling", cxx)
    assert str(error) == "compiling the folded+compiled forward pass failed: " + failure(cxx)


def test_the_compile_guess_is_the_environments_where_it_gives_one(monkeypatch):
    from llmpi.compute import runtime
    from llmpi.job.errors import JobError

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    monkeypatch.delenv("LLMPI_COMPILE_GUESS_SECONDS", raising=False)
    assert runtime.compile_guess(torch.device("cpu"), net) > 0
    monkeypatch.setenv("LLMPI_COMPILE_GUESS_SECONDS", "2.5")
    assert runtime.compile_guess(torch.device("cpu"), net) == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("LLMPI_COMPILE_GUESS_SECONDS", bad)
        with pytest.raises(JobError, match=rf"LLMPI_COMPILE_GUESS_SECONDS='{bad}': give seconds, a number >= 0"):
            runtime.compile_guess(torch.device("cpu"), net)
