"""SLURM support: the batch-script renderer (fast, no SLURM) and the scripts run on a real single-node SLURM.

    pytest tests/test_slurm.py                 # everything; the real-SLURM tests skip, saying why, without it
    pytest tests/test_slurm.py -m "not slurm"  # the renderer and the script's shell logic only

The shell logic is run with stand-ins for srun and scontrol that record what they were given. The real-SLURM
tests start munged, slurmctld and slurmd themselves (tests/slurm_cluster.py), submit sweeps with sbatch,
interrupt them the two ways a cluster does (an admin's `scontrol requeue`; the time limit with --signal) and
compare the surfaces bitwise with the same job run directly, uninterrupted, on one rank.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from mpilaunch import SRUN_MPI
from slurm_cluster import FINISHED, SlurmCluster, Unavailable

from llmpi import slurm
from llmpi.job.errors import JobError
from llmpi.slurm import BatchSpec, parse_time, render

REPO = Path(__file__).resolve().parent.parent
CHECKED_IN = REPO / "slurm" / "sweep.sbatch"


# ----------------------------------------------------------------------------------------------------------------
# The renderer.


def directives(script: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first command (it stops reading there)."""
    found = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            found.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    return found


def test_checked_in_script_is_the_rendering_of_the_defaults():
    assert CHECKED_IN.read_text() == render(BatchSpec()), (
        "slurm/sweep.sbatch differs from llmpi.slurm's defaults; regenerate it: "
        "python -m llmpi.slurm -o slurm/sweep.sbatch"
    )
    assert os.access(CHECKED_IN, os.X_OK)


def test_directives_for_a_two_node_gpu_job():
    spec = BatchSpec(nodes=2, gpus_per_node=4, time="4:00:00", partition="gpu", account="proj1", cpus_per_task=8)
    script = render(spec)
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == [
        "#SBATCH --job-name=llmpi-sweep",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=4:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj1",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
    ]
    # steps do not inherit --cpus-per-task from sbatch in SLURM 22.05: the sweep's srun passes it itself
    assert 'srun --mpi=pmi2 --cpus-per-task=8 --kill-on-bad-exit=0 --wait=60 python -m llmpi.sweep "$@" &' in script


def test_cpu_only_job_asks_for_no_gpus_and_its_own_task_count():
    script = render(BatchSpec(gpus_per_node=0, tasks_per_node=3, time="30", signal_lead=600, mpi=None))
    lines = directives(script)
    assert "#SBATCH --ntasks-per-node=3" in lines
    assert not any("gres" in line for line in lines)
    assert "#SBATCH --time=30" in lines and "#SBATCH --signal=B:USR1@600" in lines
    assert "srun --kill-on-bad-exit=0 --wait=60 python -m llmpi.sweep" in script  # mpi=None: the cluster's default


def test_extra_sbatch_options_are_directives():
    script = render(BatchSpec(sbatch_options=("--mem=64G", "--exclusive", "--constraint=a100&ib"), qos="high"))
    lines = directives(script)
    assert "#SBATCH --mem=64G" in lines and "#SBATCH --exclusive" in lines and "#SBATCH --qos=high" in lines
    assert '#SBATCH --constraint="a100&ib"' in lines


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1", 60),
        ("90", 5400),
        ("1:30", 90),
        ("4:00:00", 14400),
        ("1-12", 129600),
        ("1-12:30", 131400),
        ("2-00:00:01", 172801),
    ],
)
def test_time_limits_in_slurms_formats(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "4h", "1:2:3:4", "-5", "0", "0:59", "abc"])
def test_bad_time_limits_are_refused(text):
    with pytest.raises(JobError, match="--time"):
        parse_time(text)


@pytest.mark.parametrize(
    "fields, names",
    [
        ({"time": "2", "signal_lead": 120}, "--signal-lead"),
        ({"gpus_per_node": 0}, "--tasks-per-node"),
        ({"nodes": 0}, "--nodes"),
        ({"setup": ("module load cuda\nrm -rf /",)}, "--setup"),
        ({"python": "py\nthon"}, "--python"),
        ({"sbatch_options": ("mem=4G",)}, "--sbatch"),
        ({"mpi": "pmi2; rm"}, "--mpi"),
        ({"output": 'a"b'}, "--output"),
    ],
)
def test_bad_parameters_are_refused_by_name(fields, names):
    with pytest.raises(JobError, match=re.escape(names)):
        render(BatchSpec(**fields))


def test_several_job_files_make_one_run_of_the_sweep(tmp_path):
    """A script rendered for several jobs runs them as one sweep (one srun, every job file after the module), and
    they are checked as the sweep will: two jobs writing one file are refused before anything is queued."""
    spec = BatchSpec(jobs=("jobs/a.yaml", "jobs/b b.yaml"), overrides=("runtime.device=cuda",))
    text = render(spec)
    sruns = [line for line in text.splitlines() if "-m llmpi.sweep" in line]
    assert len(sruns) == 1 and "-m llmpi.sweep jobs/a.yaml 'jobs/b b.yaml' --set runtime.device=cuda" in sruns[0]
    header = next(line for line in text.splitlines() if "python -m llmpi.slurm" in line)
    assert slurm.spec_from_args(slurm.parser().parse_args(shlex.split(header.lstrip("# "))[3:])) == spec
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nmodel: {{arch: resnet8, checkpoint: m.pt}}\noutput: same.h5\n"
        )
    args = ["a.yaml", "b.yaml", "--chdir", str(tmp_path), "--gpus-per-node", "0", "--tasks-per-node", "2"]
    done = subprocess.run([sys.executable, "-m", "llmpi.slurm", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "both write same.h5" in done.stderr, done.stderr


def test_the_rendering_command_in_the_header_renders_the_same_script():
    spec = BatchSpec(
        jobs=("jobs/my job.yaml",),
        overrides=("output=surfaces/a b.h5", "grid.x=[-1,1,5]"),
        nodes=2,
        gpus_per_node=8,
        time="1-00:00:00",
        signal_lead=300,
        python="/opt/my env/bin/python",
        setup=("module load cuda/12", "source '/opt/my env/bin/activate'"),
        mpi=None,
        output="logs/%x-%j.out",
        sbatch_options=("--mem=64G",),
    )
    header = next(line for line in render(spec).splitlines() if "python -m llmpi.slurm" in line)
    argv = shlex.split(header.lstrip("# "))[3:]
    assert slurm.spec_from_args(slurm.parser().parse_args(argv)) == spec


def test_exit_status_for_resumable_is_the_sweeps():
    from llmpi.job import exits

    assert slurm.EXIT_INTERRUPTED == exits.EXIT_INTERRUPTED == 75


# ----------------------------------------------------------------------------------------------------------------
# The command line.


def write_job(
    directory: Path, name: str = "job.yaml", points: int = 9, checkpoint: str = "model.pt", output: str = "surface.h5"
) -> Path:
    """A small sweep: resnet8 on 64 synthetic images, one point per block, one thread per rank."""
    path = directory / name
    path.write_text(
        "name: slurm-test\n"
        f"model: {{arch: resnet8, checkpoint: '{checkpoint}'}}\n"
        "data: {dataset: synthetic, subset: 64}\n"
        f"grid: {{x: [-1.0, 1.0, {points}], y: [-1.0, 1.0, {points}], block: 1}}\n"
        "runtime: {threads: 1}\n"
        f"output: '{output}'\n"
    )
    return path


def test_cli_help_lists_every_parameter_with_its_default():
    text = slurm.parser().format_help()
    for f in dataclasses.fields(BatchSpec):
        if f.metadata["flag"] != "job":
            assert f.metadata["flag"] in text
    assert "(default 120)" in text and "%x name, %j job id" in text


def test_cli_writes_an_executable_script_for_a_job(tmp_path, capsys):
    write_job(tmp_path)
    out = tmp_path / "job.sbatch"
    code = slurm.main(
        [
            "job.yaml",
            "--chdir",
            str(tmp_path),
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--time",
            "4:00:00",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert os.access(out, os.X_OK)
    script = out.read_text()
    assert "#SBATCH --nodes=2" in directives(script)
    assert 'python -m llmpi.sweep job.yaml "$@" &' in script
    assert "sbatch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra_args, message",
    [
        (["--set", "grid.xx=[0,1,3]"], "did you mean 'x'"),
        (["--nodes", "4", "--gpus-per-node", "8"], "32 ranks"),  # a 3x3 grid has 9 points
        (["--time", "1", "--signal-lead", "60"], "--signal-lead 60"),
    ],
)
def test_cli_refuses_a_bad_job_before_it_queues(tmp_path, capsys, extra_args, message):
    write_job(tmp_path, points=3)
    code = slurm.main(["job.yaml", "--chdir", str(tmp_path), *extra_args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("llmpi: error: ") and message in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------------
# MPICH's stale shared memory. The expected names were observed on this machine: PyPI's MPICH 5.0.2 under
# `srun --mpi=pmi2` created /dev/shm/mpich_shm_a620f805_0 for SLURM job 4, step 0, and mpich_shm_c141a9dc_0
# for job 3, step 0.


def test_mpich_segment_names_follow_the_job_and_step():
    assert slurm.mpich_world_id("4.0") == 0xA620F805
    assert slurm.mpich_world_id("3.0") == 0xC141A9DC


def test_clean_mpi_shm_removes_this_jobs_segments_only(tmp_path):
    for name in ("mpich_shm_a620f805_0", "mpich_shm_a620f805_1", "mpich_shm_c141a9dc_0", "unrelated"):
        (tmp_path / name).write_bytes(b"\0" * 64)
    removed = slurm.clean_mpi_shm({"SLURM_JOB_ID": "4"}, shm_dir=tmp_path)
    assert sorted(p.name for p in removed) == ["mpich_shm_a620f805_0", "mpich_shm_a620f805_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mpich_shm_c141a9dc_0", "unrelated"]
    with pytest.raises(JobError, match="SLURM_JOB_ID"):
        slurm.clean_mpi_shm({}, shm_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The script's shell logic, with srun and scontrol stood in for: each records its arguments, one per line.

FAKE_SRUN = r"""#!/bin/bash
{ echo "srun"; printf '%s\n' "$@"; echo "."; } >> "$CALLS"
for a in "$@"; do [ "$a" = --clean-mpi-shm ] && { sleep "${CLEAN_SECONDS:-0}"; exit 0; }; done
if [ -n "${UNTIL_SIGNALLED:-}" ]; then  # a sweep that runs until SIGUSR1, then exits "interrupted, resumable"
    trap 'echo "sweep got USR1" >> "$CALLS"; exit 75' USR1
    touch "$CALLS.running"
    for i in $(seq 200); do sleep 0.1; done
fi
exit "${SWEEP_EXIT:-0}"
"""
FAKE_SCONTROL = r"""#!/bin/bash
{ echo "scontrol"; printf '%s\n' "$@"; echo "."; } >> "$CALLS"
"""


def stand_ins(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_NUM_NODES": "1",
    }


def calls(tmp_path: Path) -> list[list[str]]:
    """The recorded commands, each [program, arg, arg, ...]."""
    path = tmp_path / "calls"
    text = path.read_text() if path.exists() else ""
    out, current = [], []
    for line in text.splitlines():
        if line == ".":
            out.append(current)
            current = []
        elif line == "sweep got USR1":
            out.append([line])
        else:
            current.append(line)
    return out


def run_script(tmp_path: Path, spec: BatchSpec, *args: str, env: dict[str, str] | None = None) -> int:
    script = tmp_path / "job.sbatch"
    script.write_text(render(spec))
    done = subprocess.run(
        ["bash", str(script), *args], env={**os.environ, **stand_ins(tmp_path), **(env or {})}, timeout=60
    )
    return done.returncode


def sweep_calls(tmp_path: Path) -> list[list[str]]:
    return [c for c in calls(tmp_path) if c[0] == "srun" and "llmpi.sweep" in c]


def test_script_runs_the_sweep_with_its_arguments_quoted(tmp_path):
    spec = BatchSpec(
        jobs=("jobs/my job.yaml",), overrides=("output=surfaces/a b.h5",), python="/opt/my env/bin/python", mpi="pmix"
    )
    assert run_script(tmp_path, spec, "--set", "grid.block=2") == 0
    (sweep,) = sweep_calls(tmp_path)
    assert sweep == [
        "srun",
        "--mpi=pmix",
        "--kill-on-bad-exit=0",
        "--wait=60",
        "/opt/my env/bin/python",
        "-m",
        "llmpi.sweep",
        "jobs/my job.yaml",
        "--set",
        "output=surfaces/a b.h5",
        "--set",
        "grid.block=2",
    ]
    clean = calls(tmp_path)[0]
    assert clean[0] == "srun" and clean[-3:] == ["-m", "llmpi.slurm", "--clean-mpi-shm"]
    assert "--ntasks=1" in clean and "--ntasks-per-node=1" in clean and "/opt/my env/bin/python" in clean
    assert not [c for c in calls(tmp_path) if c[0] == "scontrol"]


def test_two_8_gpu_nodes_get_16_ranks_one_per_gpu_and_a_clean_up_on_each_node(tmp_path):
    """--nodes 2 --gpus-per-node 8: 8 tasks and 8 GPUs per node; the sweep's srun inherits the 16 tasks and leaves
    every task its node's 8 GPUs, among which llmpi.ranks.placement gives node-local rank k GPU k (a warning would say
    if not); the clean-up step runs once on each node."""
    spec = BatchSpec(jobs=("job.yaml",), nodes=2, gpus_per_node=8)
    assert spec.ranks == 16
    lines = directives(render(spec))
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=8" in lines and "#SBATCH --gres=gpu:8" in lines
    assert run_script(tmp_path, spec, env={"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]"}) == 0
    clean, sweep = calls(tmp_path)
    assert "--ntasks=2" in clean and "--ntasks-per-node=1" in clean
    assert not [a for a in sweep if a.startswith(("--ntasks", "--nodes", "--gpus", "--gres", "--gpu-bind"))]


def test_checked_in_script_needs_a_job_file(tmp_path, capfd):
    assert run_script(tmp_path, BatchSpec()) == 2
    assert "usage: sbatch slurm/sweep.sbatch JOB.yaml" in capfd.readouterr().err
    assert calls(tmp_path) == []


@pytest.mark.parametrize("status, restarts, requeued", [(75, "0", True), (75, "19", True), (75, "20", False)])
def test_interrupted_sweep_requeues_the_job_until_the_cap(tmp_path, status, restarts, requeued):
    env = {"SWEEP_EXIT": str(status), "SLURM_RESTART_COUNT": restarts}
    assert run_script(tmp_path, BatchSpec(), "job.yaml", env=env) == status
    requeues = [c for c in calls(tmp_path) if c[0] == "scontrol"]
    assert requeues == ([["scontrol", "requeue", "4242"]] if requeued else [])


@pytest.mark.parametrize("status", [0, 1, 2, 74])  # 74: a failing disk would fail again
def test_complete_failed_or_bad_input_is_not_requeued(tmp_path, status):
    assert run_script(tmp_path, BatchSpec(), "job.yaml", env={"SWEEP_EXIT": str(status)}) == status
    assert [c for c in calls(tmp_path) if c[0] == "scontrol"] == []


def start_script(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    script = tmp_path / "job.sbatch"
    script.write_text(render(BatchSpec()))
    return subprocess.Popen(["bash", str(script), "job.yaml"], env={**os.environ, **stand_ins(tmp_path), **env})


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_usr1_to_the_shell_reaches_the_sweep_and_requeues(tmp_path):
    proc = start_script(tmp_path, {"UNTIL_SIGNALLED": "1"})
    wait_for(tmp_path / "calls.running")
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@lead does
    assert proc.wait(timeout=20) == 75
    assert ["sweep got USR1"] in calls(tmp_path)
    assert calls(tmp_path)[-1] == ["scontrol", "requeue", "4242"]


def test_usr1_before_the_sweep_starts_skips_it_and_requeues(tmp_path):
    proc = start_script(tmp_path, {"CLEAN_SECONDS": "1"})
    wait_for(tmp_path / "calls")  # the clean-up step is running
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 75
    assert sweep_calls(tmp_path) == []
    assert calls(tmp_path)[-1] == ["scontrol", "requeue", "4242"]


# ----------------------------------------------------------------------------------------------------------------
# A real SLURM.


@pytest.fixture(scope="session")
def cluster():
    # Not under pytest's temporary directory: munged refuses a socket below a directory others may not enter.
    root = Path(tempfile.mkdtemp(prefix="llmpi-slurm-", dir="/tmp"))
    try:
        try:
            c = SlurmCluster.start(root)
        except Unavailable as e:
            pytest.skip(f"no SLURM here: {e}")
        try:
            yield c
        finally:
            c.stop()
            for job in c.jobs:  # segments a failed test may have left (the scripts remove them themselves)
                for path in slurm.stale_mpi_segments(str(job), Path("/dev/shm")):
                    path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def two_nodes():
    """Two SLURM nodes, n1 and n2, on this machine (one slurmd each)."""
    root = Path(tempfile.mkdtemp(prefix="llmpi-slurm2-", dir="/tmp"))
    try:
        try:
            c = SlurmCluster.start(root, nodes=2)
        except Unavailable as e:
            pytest.skip(f"no two-node SLURM here: {e}")
        try:
            yield c
        finally:
            c.stop()
            for job in c.jobs:
                for path in slurm.stale_mpi_segments(str(job), Path("/dev/shm")):
                    path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class SweepCase:
    """A 9x9 resnet8 surface on 64 synthetic images, and the same job run directly: the uninterrupted reference."""

    POINTS = 81

    def __init__(self, root: Path) -> None:
        import torch

        from llmpi.models import build

        self.root = root
        torch.manual_seed(0)
        torch.save(build("resnet8").state_dict(), root / "model.pt")  # a random init is as good a θ* as any here
        write_job(root, "reference.yaml", output="reference.h5")
        # One block for the whole grid: on one rank, llmpi.ranks.protocol's blocking sends from rank 0's worker
        # thread to its own coordinator thread (and back) can deadlock when both send at once, which small blocks make
        # likely (reported to the lead). The values do not depend on the block size.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmpi.sweep", "reference.yaml", "--set", f"grid.block={self.POINTS}"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def job(self, directory: Path) -> Path:
        return write_job(directory, checkpoint=str(self.root / "model.pt"))

    def reference(self):
        from llmpi.file.store import read_surface

        if self.proc.returncode is None:
            out, _ = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, out
        return read_surface(self.root / "reference.h5")

    def assert_equal_to_reference(self, path: Path) -> None:
        from llmpi.file.store import read_surface

        got, want = read_surface(path), self.reference()
        assert got.done.all() and want.done.all()
        assert np.array_equal(got.x, want.x) and np.array_equal(got.y, want.y)
        assert sorted(got.values) == sorted(want.values) == ["train_acc", "train_loss"]
        for name in want.values:
            assert np.array_equal(got.values[name], want.values[name]), f"{name} differs from the uninterrupted run"


@pytest.fixture(scope="session")
def sweep_case(tmp_path_factory):
    case = SweepCase(tmp_path_factory.mktemp("case"))
    yield case
    if case.proc.poll() is None:
        case.proc.kill()
        case.proc.wait()


def done_points(path: Path) -> int:
    from llmpi.file.store import read_surface
    from llmpi.job.errors import StoreError

    try:
        return int(read_surface(path).done.sum())
    except (StoreError, OSError, KeyError):  # not created yet, or still being laid out
        return 0


def already_done(log: str) -> list[int]:
    """How many points each run found done when it started, from the sweep's banner."""
    return [int(n) for n in re.findall(r"(\d+) already done", log)]


def venv_env(**extra: str) -> dict[str, str]:
    """The submitter's environment for sbatch: this Python first on PATH, as `python` in the checked-in script."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


@pytest.mark.slurm
def test_checked_in_script_without_a_job_fails_with_usage(cluster, tmp_path):
    log = tmp_path / "slurm.log"
    job = cluster.sbatch(CHECKED_IN, cwd=tmp_path, options=["--gres=none", "--ntasks-per-node=1", f"--output={log}"])
    info = cluster.wait(job, lambda j: j["JobState"] in ("FAILED", "COMPLETED"), 60, "end")
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0"
    assert "usage: sbatch slurm/sweep.sbatch JOB.yaml" in log.read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_checked_in_script_requeued_by_an_admin_resumes_bitwise(cluster, sweep_case, tmp_path):
    """`sbatch slurm/sweep.sbatch job.yaml` (2 ranks, srun --mpi=pmi2), `scontrol requeue` mid-way: it resumes."""
    job_file = sweep_case.job(tmp_path)
    log = tmp_path / "slurm.log"
    job = cluster.sbatch(
        CHECKED_IN,
        str(job_file),
        cwd=tmp_path,
        options=["--gres=none", "--ntasks-per-node=2", f"--output={log}"],  # this node: 2 CPUs, no GPU
        env=venv_env(LLMPI_FAULT="slow:seconds=0.3"),  # slow enough to be caught mid-way
    )
    deadline = time.monotonic() + 180
    while (before := done_points(tmp_path / "surface.h5")) < 6:
        assert time.monotonic() < deadline, f"no progress in 180 s\n{log.read_text()}\n{cluster.diagnostics()}"
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text()
        time.sleep(0.2)
    assert before < SweepCase.POINTS
    cluster.run("scontrol", "requeue", str(job))
    # Held in the queue until the stale segment below is in place: the requeue delay alone (10 s) is not always
    # enough for this test to plant it on a loaded machine, and a run 2 that started first would never meet it.
    cluster.run("scontrol", "hold", str(job))
    cluster.wait(job, lambda j: j["JobState"] == "PENDING" and j["Restarts"] == "1", 60, "return to the queue")
    # What MPICH leaves when srun turns the requeue's SIGTERM into SIGKILL: a segment named after the sweep's step
    # (step 1, after the clean-up step 0). Without the script's clean-up the next run's ranks would hang on it.
    stale = Path("/dev/shm") / f"mpich_shm_{slurm.mpich_world_id(f'{job}.1'):x}_0"
    stale.write_bytes(b"\0" * (2 << 20))
    cluster.run("scontrol", "release", str(job))
    cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")  # or wait for the requeue delay
    info = cluster.wait(job, lambda j: j["JobState"] in FINISHED, 240, "end")
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{text}\n{cluster.diagnostics()}"
    assert info["Restarts"] == "1"
    assert "DUE TO JOB REQUEUE" in text and "run 2" in text
    first, second = already_done(text)
    assert first == 0 and before <= second < SweepCase.POINTS  # resumed from what run 1 had written
    assert f"removed {stale}" in text  # by run 2's clean-up step, before its sweep started
    assert not stale.exists() and slurm.stale_mpi_segments(str(job), Path("/dev/shm")) == []
    sweep_case.assert_equal_to_reference(tmp_path / "surface.h5")


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_completes(cluster, sweep_case, tmp_path):
    """--time=2 with --signal=B:USR1@30: the first run is stopped mid-way, requeues itself, the second completes.

    SLURM checks time limits every 30 s, so the signal comes 60 to 90 s into a run (measured: SLURM 22.05 sends
    it up to one check early) and the limit's SIGTERM at least 30 s after it: time to start (10 to 30 s here),
    compute some points, save them and requeue.
    """
    work = tmp_path / "run dir"  # a space in every path the script and its directives carry
    work.mkdir()
    sweep_case.job(work)
    script, log = work / "sweep.sbatch", work / "slurm log.txt"
    # Slow only in the first run, so that the limit surely falls mid-sweep there and the test ends soon after.
    slow_first_run = 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then export LLMPI_FAULT=slow:seconds=2.5; fi'
    render_cmd = [sys.executable, "-m", "llmpi.slurm", "job.yaml", "--chdir", str(work), "--gpus-per-node", "0"]
    render_cmd += ["--tasks-per-node", "2", "--time", "2", "--signal-lead", "30", "--python", sys.executable]
    render_cmd += ["--setup", slow_first_run, "--output", str(log), "--job-name", "time limit", "-o", str(script)]
    rendered = subprocess.run(render_cmd, timeout=60, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    job = cluster.sbatch(script, cwd=tmp_path)
    info = cluster.wait(job, lambda j: j["JobState"] in FINISHED, 330, "end")
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{text}\n{cluster.diagnostics()}"
    assert int(info["Restarts"]) >= 1
    assert re.search(r"SIGUSR1 at [0-9:]+ \(the time limit is near", text)
    assert "interrupted (SIGUSR1" in text and f"requeueing job {job}" in text
    assert "TIME LIMIT" not in text  # it stopped itself before SLURM had to
    counts = already_done(text)
    assert counts[0] == 0 and 0 < counts[1] < SweepCase.POINTS, text  # the first run's points were kept
    sweep_case.assert_equal_to_reference(work / "surface.h5")


@pytest.mark.slurm
def test_a_script_rendered_for_two_nodes_runs_a_rank_on_each_node(two_nodes, sweep_case, tmp_path):
    """`python -m llmpi.slurm job.yaml --nodes 2 ...` on a two-node SLURM: srun starts one rank per node, MPI's node
    split (fed by SLURM's PMI) finds two nodes, each rank is node-local rank 0 of 1, and the surface is bitwise the
    one-rank run's."""
    sweep_case.job(tmp_path)
    script, log = tmp_path / "two.sbatch", tmp_path / "slurm.log"
    render_cmd = [sys.executable, "-m", "llmpi.slurm", "job.yaml", "--chdir", str(tmp_path), "--nodes", "2"]
    render_cmd += ["--gpus-per-node", "0", "--tasks-per-node", "1", "--time", "10", "--python", sys.executable]
    render_cmd += ["--output", str(log), "-o", str(script)]
    rendered = subprocess.run(render_cmd, timeout=60, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    job = two_nodes.sbatch(script, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})  # this checkout's llmpi
    info = two_nodes.wait(job, lambda j: j["JobState"] in FINISHED, 240, "end")
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{text}\n{two_nodes.diagnostics()}"
    assert "on n[1-2]" in text
    ranks = sorted(line for line in text.splitlines() if line.startswith("llmpi: rank "))
    assert len(ranks) == 2 and all("(local 0 of 1, srun): cpu, 1 thread" in line for line in ranks), text
    sweep_case.assert_equal_to_reference(tmp_path / "surface.h5")


@pytest.mark.slurm
@pytest.mark.mpi
@pytest.mark.skipif(
    BatchSpec().mpi == SRUN_MPI, reason=f"--mpi={SRUN_MPI} is the checked-in script's: the tests above run it"
)
def test_the_sweep_under_srun_with_this_mpis_plugin(cluster, sweep_case, tmp_path):
    """A script rendered with the --mpi plugin of the MPI under test where it is not the checked-in script's (pmix
    for Open MPI 5; make test-openmpi runs this): two ranks on one node, srun's, bitwise the one-rank run."""
    probe = subprocess.run(
        ["srun", f"--mpi={SRUN_MPI}", "-n1", "true"], capture_output=True, text=True, env=cluster.env, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"this SLURM cannot start --mpi={SRUN_MPI} steps: {probe.stderr.strip()[-300:]}")
    sweep_case.job(tmp_path)
    script, log = tmp_path / "plugin.sbatch", tmp_path / "slurm.log"
    render_cmd = [sys.executable, "-m", "llmpi.slurm", "job.yaml", "--chdir", str(tmp_path), "--mpi", SRUN_MPI]
    render_cmd += ["--gpus-per-node", "0", "--tasks-per-node", "2", "--time", "10", "--python", sys.executable]
    render_cmd += ["--output", str(log), "-o", str(script)]
    rendered = subprocess.run(render_cmd, timeout=60, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    job = cluster.sbatch(script, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    info = cluster.wait(job, lambda j: j["JobState"] in FINISHED, 240, "end")
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{text}\n{cluster.diagnostics()}"
    ranks = sorted(line for line in text.splitlines() if line.startswith("llmpi: rank "))
    assert [line.split(" (")[1].split(")")[0] for line in ranks] == ["local 0 of 2, srun", "local 1 of 2, srun"], text
    sweep_case.assert_equal_to_reference(tmp_path / "surface.h5")
