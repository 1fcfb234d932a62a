"""Which GPU and how many threads each rank takes (llmpi.ranks.placement), for every launch users meet, with the GPUs,
the cores and the launcher's environment faked: one 8-GPU node under mpirun, SLURM's per-task GPUs, more ranks
than GPUs, fewer, several nodes, CPU binding. The real two-node run is in tests/test_cluster.py."""

from __future__ import annotations

import pytest

from llmpi.job.errors import MpiError
from llmpi.ranks import placement
from llmpi.ranks.placement import Seen, bind, look


def uuids(node: str, n: int) -> tuple[str, ...]:
    return tuple(f"GPU-{node}{i:07x}-aaaa-bbbb-cccc-dddddddddddd" for i in range(n))


def node_of(ranks: int, gpus: tuple[str, ...], host: str = "n1", env: dict | None = None, cpus=range(16)):
    """What ``ranks`` ranks started by MPICH's mpirun on one node see (each its own MPI_LOCALRANKID)."""
    return [
        look({"MPI_LOCALRANKID": str(k), **(env or {})}, host, gpus, cpus if not callable(cpus) else cpus(k))
        for k in range(ranks)
    ]


def bind_all(node, threads="auto", use_gpu=True):
    return [bind(node, i, threads, use_gpu) for i in range(len(node))]


def test_mpirun_n_8_on_an_8_gpu_node_gives_local_rank_k_gpu_k():
    gpus = uuids("a", 8)
    bound = bind_all(node_of(8, gpus))
    assert [b.gpu for b in bound] == list(range(8))
    assert [b.gpu_id for b in bound] == list(gpus)
    assert all(b.warnings == () for b in bound)
    assert all(b.threads == 2 for b in bound)  # 16 unbound cores shared by 8 ranks


def test_the_launchers_local_rank_orders_the_ranks_where_it_differs_from_mpis():
    """Open MPI numbered its oversubscribed ranks 0, 2, 1 here: GPU k goes to the launcher's local rank k, the
    number a wrapper script exporting CUDA_VISIBLE_DEVICES=$OMPI_COMM_WORLD_LOCAL_RANK would use."""
    gpus = uuids("a", 3)
    node = [look({"OMPI_COMM_WORLD_LOCAL_RANK": str(k)}, "n1", gpus, range(4)) for k in (0, 2, 1)]
    assert [b.gpu for b in bind_all(node)] == [0, 2, 1]
    # an incomplete or ambiguous launcher numbering falls back to MPI's node order
    node = [look({"OMPI_COMM_WORLD_LOCAL_RANK": "0"}, "n1", gpus, range(4)) for _ in range(3)]
    assert [b.gpu for b in bind_all(node)] == [0, 1, 2]


@pytest.mark.parametrize("renumbered", [False, True])
def test_slurm_gpus_per_task_each_rank_takes_the_one_gpu_it_sees(renumbered):
    """srun --gpus-per-task=1 (or --gpu-bind=single:1, map_gpu:...): CUDA_VISIBLE_DEVICES holds this task's GPU,
    "3" or, where cgroups hide the others, "0" on every rank; torch sees one GPU, index 0, with its own UUID."""
    every = uuids("a", 4)
    node = [
        look(
            {"SLURM_LOCALID": str(k), "SLURM_STEP_ID": "0", "CUDA_VISIBLE_DEVICES": "0" if renumbered else str(k)},
            "n1",
            (every[k],),
            (4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3),  # --cpu-bind=cores: each task its own four cores
        )
        for k in range(4)
    ]
    bound = bind_all(node)
    assert [b.gpu for b in bound] == [0, 0, 0, 0]
    assert [b.gpu_id for b in bound] == list(every)  # four different GPUs, although every index is 0
    assert all(b.warnings == () for b in bound) and all(b.threads == 4 for b in bound)
    assert {b.launcher for b in bound} == {"srun"}


def test_slurm_two_gpus_per_task_ranks_do_not_share():
    every = uuids("a", 4)
    node = [look({"SLURM_LOCALID": str(k), "SLURM_STEP_ID": "0"}, "n1", every[2 * k : 2 * k + 2], ()) for k in (0, 1)]
    bound = bind_all(node)
    assert [b.gpu_id for b in bound] == [every[0], every[2]]
    assert [b.gpu for b in bound] == [0, 0]
    # the other GPU of each task is idle: said once, for the node
    assert len(bound[0].warnings) == 1 and "2 of 4 GPU(s) idle" in bound[0].warnings[0]


def test_more_ranks_than_gpus_share_round_robin_with_a_warning():
    gpus = uuids("a", 2)
    bound = bind_all(node_of(5, gpus))
    assert [b.gpu for b in bound] == [0, 1, 0, 1, 0]
    (warning,) = bound[0].warnings
    assert "5 ranks share 2 GPU(s)" in warning
    assert "local ranks 0, 2, 4" in warning and "local ranks 1, 3" in warning
    assert "mpirun -n" in warning
    assert all(b.warnings == bound[0].warnings for b in bound)  # every rank of the node says the same


def test_more_tasks_than_gpus_under_srun_suggests_srun_options():
    gpus = uuids("a", 1)
    node = [look({"SLURM_LOCALID": str(k), "SLURM_STEP_ID": "0"}, "n1", gpus, range(8)) for k in range(2)]
    (warning,) = bind(node, 0).warnings
    assert "--gpus-per-task=1" in warning


def test_fewer_ranks_than_gpus_leave_the_others_idle_with_a_warning():
    gpus = uuids("a", 8)
    bound = bind_all(node_of(3, gpus))
    assert [b.gpu for b in bound] == [0, 1, 2]
    (warning,) = bound[0].warnings
    assert "5 of 8 GPU(s) idle" in warning and gpus[3][:12] in warning


def test_no_gpu_or_device_cpu_binds_none_and_warns_nothing():
    assert all(b.gpu is None and b.warnings == () for b in bind_all(node_of(3, ())))
    bound = bind_all(node_of(3, uuids("a", 8)), use_gpu=False)  # runtime.device: cpu on a GPU node
    assert all(b.gpu is None and b.gpu_id is None and b.warnings == () for b in bound)


@pytest.mark.parametrize(
    ("masks", "expected"),
    [
        ([range(16)] * 4, [4, 4, 4, 4]),  # unbound (MPICH's mpirun): the machine divided among the node's ranks
        ([range(4 * k, 4 * k + 4) for k in range(4)], [4, 4, 4, 4]),  # srun --cpu-bind / --bind-to core: whole
        ([range(8)] * 4 + [range(8, 16)] * 4, [2] * 8),  # Open MPI --bind-to package, two packages of 8 cores
        ([range(16), range(8)], [8, 4]),  # overlapping masks: each divided among the ranks it overlaps
        ([range(1)] * 3, [1, 1, 1]),  # never fewer than one
    ],
)
def test_auto_threads_divide_each_mask_among_the_ranks_sharing_it(masks, expected):
    node = [look({}, "n1", (), mask) for mask in masks]
    assert [b.threads for b in bind_all(node)] == expected


def test_threads_given_in_the_job_are_used_as_they_are():
    assert [b.threads for b in bind_all(node_of(4, ()), threads=3)] == [3, 3, 3, 3]


def test_several_nodes_each_bind_their_own_ranks():
    """Two 8-GPU nodes, 16 ranks, SLURM's block or cyclic distribution: what MPI's node split hands each rank is
    its node's list; world rank -> node, local rank -> GPU of that node, every GPU used once."""
    for layout in ("block", "cyclic"):
        hosts = [f"n{(r // 8) if layout == 'block' else (r % 2)}" for r in range(16)]
        gpus = {h: uuids(h[-1], 8) for h in set(hosts)}
        world = [look({"SLURM_STEP_ID": "0"}, h, gpus[h], range(32)) for h in hosts]
        nodes = {h: [r for r in range(16) if hosts[r] == h] for h in gpus}  # MPI_Comm_split_type(SHARED)
        used = {}
        for h, members in nodes.items():
            seen = [world[r] for r in members]
            for local, r in enumerate(members):
                b = bind(seen, local)
                assert b.gpu == local and b.host == h and b.warnings == () and b.threads == 4
                used[r] = b.gpu_id
        assert sorted(used.values()) == sorted(g for ids in gpus.values() for g in ids), layout


@pytest.mark.parametrize(
    ("environ", "launcher", "local"),
    [
        ({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}, "Open MPI's mpirun", 3),
        ({"MPI_LOCALRANKID": "2", "PMI_RANK": "5"}, "MPICH's mpirun", 2),
        ({"SLURM_LOCALID": "1", "SLURM_STEP_ID": "4"}, "srun", 1),
        # mpirun inside an allocation: the ranks inherit SLURM_LOCALID=0 from the daemon srun started
        ({"SLURM_LOCALID": "0", "SLURM_STEP_ID": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "5"}, "Open MPI's mpirun", 5),
        ({"SLURM_LOCALID": "0", "MPI_LOCALRANKID": "6"}, "MPICH's mpirun", 6),
        ({"SLURM_LOCALID": "0", "SLURM_JOB_ID": "7"}, "SLURM", 0),  # the batch script's own process
        ({}, "no launcher", None),
        ({"OMPI_COMM_WORLD_LOCAL_RANK": ""}, "no launcher", None),
    ],
)
def test_the_launchers_environment_is_read_in_one_place(environ, launcher, local):
    seen = look({**environ, "CUDA_VISIBLE_DEVICES": "2,3"}, "h", ("GPU-x",), [3, 1])
    assert (seen.launcher, seen.launcher_local_rank) == (launcher, local)
    assert seen.visible == "2,3" and seen.cpus == (1, 3) and seen.gpus == ("GPU-x",)
    assert look({}, "h", (), []).visible is None


def test_the_banner_lines_show_each_ranks_host_gpu_index_and_uuid():
    gpus = uuids("a", 2)
    node = node_of(3, gpus, host="gpu07")
    places = [bind(node, i).place(i, f"cuda:{bind(node, i).gpu}", 8, 100 + i) for i in range(3)]
    lines = placement.describe(list(reversed(places)))
    assert lines == [
        f"llmpi: rank 0 on gpu07 (local 0 of 3, MPICH's mpirun): cuda:0 {gpus[0]}, 8 threads, pid 100",
        f"llmpi: rank 1 on gpu07 (local 1 of 3, MPICH's mpirun): cuda:1 {gpus[1]}, 8 threads, pid 101",
        f"llmpi: rank 2 on gpu07 (local 2 of 3, MPICH's mpirun): cuda:0 {gpus[0]}, 8 threads, pid 102",
    ]
    (warning,) = placement.warnings(places)  # the node's warning once, not once per rank
    assert warning.startswith("gpu07: 3 ranks share 2 GPU(s)")
    cpu = bind(node_of(1, ()), 0).place(0, "cpu", 1, 7)
    assert placement.describe([cpu]) == ["llmpi: rank 0 on n1 (local 0 of 1, MPICH's mpirun): cpu, 1 thread, pid 7"]


def test_a_rank_outside_its_node_is_refused():
    with pytest.raises(ValueError, match="me=3"):
        bind(node_of(2, ()), 3)


def test_seen_is_plain_data_that_mpi_can_pickle():
    import pickle

    seen = node_of(1, uuids("a", 1))[0]
    assert pickle.loads(pickle.dumps(seen)) == seen and isinstance(seen, Seen)


@pytest.mark.parametrize(
    ("environ", "size", "who"),
    [
        ({"SLURM_STEP_ID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}, 1, "srun started 4"),
        ({"OMPI_COMM_WORLD_SIZE": "3"}, 1, "Open MPI's mpirun started 3"),
        ({"PMI_SIZE": "8", "SLURM_STEP_NUM_TASKS": "2"}, 1, "MPICH's mpirun started 8"),  # mpirun inside srun's step
    ],
)
def test_a_launcher_whose_ranks_mpi_does_not_count_is_refused(environ, size, who):
    """Open MPI 5 under srun --mpi=pmi2 (seen on SLURM 22.05): every process is "rank 0 of 1"."""
    message = placement.launch_mismatch(environ, size, "Open MPI v5.0.11")
    assert message is not None and message.startswith(who) and "Open MPI v5.0.11" in message
    assert ("--mpi=pmix" in message) == who.startswith("srun")
    with pytest.raises(MpiError, match="do not belong together"):
        placement.check_launch(environ, size, "x")


@pytest.mark.parametrize(
    ("environ", "size"),
    [
        ({"SLURM_STEP_NUM_TASKS": "4"}, 4),
        ({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}, 1),  # a batch script's own process: no step, no launcher
        ({"OMPI_COMM_WORLD_SIZE": "2", "SLURM_STEP_NUM_TASKS": "1"}, 2),  # mpirun's ranks inherit its daemon's step
        ({}, 1),
    ],
)
def test_a_launcher_and_mpi_that_agree_pass(environ, size):
    assert placement.launch_mismatch(environ, size, "MPICH") is None
    placement.check_launch(environ, size, "MPICH")
