"""A real SLURM for the tests: munged, slurmctld and slurmd, started from one temporary directory.

    cluster = SlurmCluster.start(Path(tempfile.mkdtemp(dir="/tmp")))   # Unavailable(reason) where it cannot run
    cluster = SlurmCluster.start(root, nodes=2)  # two nodes on this one machine: one slurmd each (slurmd -N)
    job = cluster.sbatch(script, "job.yaml", cwd=tmp_dir)
    cluster.wait(job, lambda j: j["JobState"] == "COMPLETED", timeout=300, what="the sweep to complete")
    cluster.stop()                               # cancels what is left and ends the daemons it started

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (`.ci/run` installs them). Everything the
daemons write (munge key and socket, slurm.conf, state, spool, logs) stays in the directory, and the ports are
picked free, so the machine's own SLURM or munge, if any, is never touched.

Several nodes: Debian's slurmd (22.05, built without --enable-multiple-slurmd) still runs one daemon per node
definition on one host when each node has its own port, spool directory, pid and log file (``%n`` in their
paths) and the daemon is told its node (``-N n1``): slurmctld sees n1 and n2, srun spreads tasks over both, and
MPI's node split, fed by SLURM's PMI, finds two nodes. Every node describes the whole machine (all its cores).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SBIN = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "srun", "sinfo")
PACKAGES = "slurmctld slurmd slurm-client munge"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

# What differs from SLURM's defaults, and why (the rest is the minimum a single node needs).
CONFIG = """\
ClusterName=llmpitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again: 10 s instead of 120.
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool{per_node}
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd{per_node}.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd{per_node}.log
SlurmctldDebug=debug
SlurmdDebug=info
# No cgroups in a container: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Look at pending jobs (a requeued one whose wait is over) every 2 s, not every 60.
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
JobRequeue=1
# Job ids from a random start, not 1: MPICH names its shared memory after the job and step ids, so two clusters on
# one machine (this session's two, or another test run's) would otherwise hand their ranks each other's segments.
FirstJobId={first_job}
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
# SIGTERM to SIGKILL in 10 s, not 30; no grace beyond the time limit; finished jobs stay visible 10 minutes.
KillWait=10
OverTimeLimit=0
MinJobAge=600
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """SLURM cannot run here; the message says why (the tests skip with it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path.name}: none)"
    return f"--- {path.name}:\n" + "\n".join(text[-lines:])


class SlurmCluster:
    def __init__(self, root: Path, nodes: int = 1) -> None:
        self.root = root
        self.nodes = nodes
        self.conf = root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.jobs: list[int] = []
        # The commands get this config and nothing of a SLURM job the tests themselves might be running in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        self.env = env | {"SLURM_CONF": str(self.conf), "PATH": env.get("PATH", "") + os.pathsep + SBIN}

    # -- life cycle -----------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, root: Path, nodes: int = 1) -> SlurmCluster:
        """Start the daemons in ``root``: a short path whose every parent others may enter (munged insists)."""
        if os.geteuid() != 0:
            raise Unavailable("needs root: slurmd runs the test jobs as root here")
        missing = [
            b for b in DAEMONS + CLIENTS if shutil.which(b, path=os.environ.get("PATH", "") + ":" + SBIN) is None
        ]
        if missing:
            raise Unavailable(f"{', '.join(missing)} not installed (apt-get install {PACKAGES})")
        cluster = cls(root, nodes)
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 (the daemon owns it until stop())
        self.procs[name] = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=self.root
        )
        out.close()

    def _until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise Unavailable(f"{name} exited with {proc.returncode} while {what}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise Unavailable(f"timed out after {timeout:.0f} s {what}\n{self.diagnostics()}")
            time.sleep(0.2)

    def _start(self) -> None:
        root = self.root
        root.chmod(0o755)
        for sub in ("munge", "state", "spool"):
            (root / sub).mkdir(mode=0o755, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = root / "munge" / "munge.socket"
        self._spawn(
            "munged",
            [
                shutil.which("munged", path=SBIN) or "munged",
                "--foreground",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={root / 'munge' / 'munged.pid'}",
                f"--log-file={root / 'munge' / 'munged.log'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
            ],
        )
        self._until(sock.exists, 15, "waiting for munged's socket")

        host = socket.gethostname().split(".")[0]
        probe = subprocess.run(
            [shutil.which("slurmd", path=SBIN) or "slurmd", "-C"], capture_output=True, text=True, timeout=30
        )
        node = next((line for line in probe.stdout.splitlines() if line.startswith("NodeName=")), None)
        if probe.returncode != 0 or node is None:
            raise Unavailable(f"slurmd -C could not describe this node: {probe.stderr.strip() or probe.stdout}")
        if self.nodes == 1:
            names, per_node, lines = [host], "", [f"{node} NodeAddr=127.0.0.1 State=UNKNOWN"]
        else:
            names, per_node = [f"n{k}" for k in range(1, self.nodes + 1)], "-%n"
            hardware = node.split(None, 1)[1]  # CPUs=... RealMemory=..., the same for every node
            lines = [
                f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} {hardware} State=UNKNOWN"
                for n in names
            ]
            for n in names:
                (root / f"spool-{n}").mkdir(mode=0o755, exist_ok=True)
        self.conf.write_text(
            CONFIG.format(
                root=root,
                host=host,
                nodes="\n".join(lines),
                names=",".join(names),
                per_node=per_node,
                first_job=random.randint(1_000, 60_000_000),
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
            )
        )
        self._spawn(
            "slurmctld", [shutil.which("slurmctld", path=SBIN) or "slurmctld", "-D", "-c", "-f", str(self.conf)]
        )
        self._until(lambda: "UP" in self._quiet(["scontrol", "ping"]), 30, "waiting for slurmctld")
        slurmd = shutil.which("slurmd", path=SBIN) or "slurmd"
        for n in names:
            which = [] if self.nodes == 1 else ["-N", n]
            self._spawn("slurmd" if self.nodes == 1 else f"slurmd-{n}", [slurmd, "-D", *which, "-f", str(self.conf)])
        idle = ["idle"] * len(names)
        self._until(lambda: self._quiet(["sinfo", "-N", "-h", "-o", "%T"]).split() == idle, 45, "waiting for the nodes")

    def stop(self) -> None:
        """Cancel every job, wait for them to end, then end the daemons (each by the pid we started)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self._quiet(["squeue", "-h", "-o", "%i"]).split()
            if ids:
                self._quiet(["scancel", *ids])
            deadline = time.monotonic() + 30
            while self._quiet(["squeue", "-h", "-o", "%i"]).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in reversed(list(self.procs)):  # the slurmds, slurmctld, munged
            proc = self.procs[name]
            if proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self.procs.clear()

    # -- commands -------------------------------------------------------------------------------------------------

    def _quiet(self, args: Sequence[str]) -> str:
        try:
            done = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout if done.returncode == 0 else ""

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run a SLURM command; its failure is the test's failure, with SLURM's own message."""
        done = subprocess.run(
            list(args), capture_output=True, text=True, env=self.env | (env or {}), cwd=cwd, timeout=60
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def sbatch(
        self,
        script: Path,
        *args: str,
        cwd: Path,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> int:
        out = self.run("sbatch", "--parsable", *options, str(script), *args, cwd=cwd, env=env)
        job = int(out.strip().split(";")[0])
        self.jobs.append(job)
        return job

    def job(self, job: int) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...) as strings."""
        text = self.run("scontrol", "show", "job", "-o", str(job))
        return dict(re.findall(r"(?:^|\s)([A-Za-z:/]+)=(\S*)", text))

    def wait(self, job: int, ready: Callable[[dict[str, str]], bool], timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job)
            if ready(info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job}: no {what} within {timeout:.0f} s; now {info.get('JobState')} "
                    f"(restarts {info.get('Restarts')}, reason {info.get('Reason')})\n{self.diagnostics()}"
                )
            time.sleep(0.5)

    def diagnostics(self) -> str:
        logs = [self.root / f"{name}.out" for name in self.procs or DAEMONS]
        logs += [
            self.root / "munge" / "munged.log",
            self.root / "slurmctld.log",
            *sorted(self.root.glob("slurmd*.log")),
        ]
        return "\n".join(_tail(p) for p in logs if p.exists())
