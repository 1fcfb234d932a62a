"""Drives llmpi.ranks.protocol with a trivial computation (no torch), for tests/test_protocol.py:

    mpirun -n 3 python tests/protocol_driver.py TASKS [slow_rank] [raise_rank]

Each task's reply is the square of its payload; rank 0 prints the outcome and the committed results as JSON.
"""

import json
import sys
import time

from mpi4py import MPI

from llmpi.ranks import protocol

tasks_n = int(sys.argv[1])
slow_rank = int(sys.argv[2]) if len(sys.argv) > 2 else -1
raise_rank = int(sys.argv[3]) if len(sys.argv) > 3 else -1
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
committed = {}


def compute(payload, check):
    if rank == raise_rank:
        raise ZeroDivisionError("planted")
    if rank == slow_rank:
        for _ in range(200):
            time.sleep(0.05)
            check()
    check()
    return payload * payload


def commit(results):
    for bid, reply in results:
        assert bid not in committed, "a block was committed twice"
        committed[bid] = reply


tasks = [(b, b, 1) for b in range(tasks_n)] if rank == 0 else []
outcome = protocol.run(comm, tasks, compute, commit, protocol.Interrupts())
if rank == 0:
    print(
        json.dumps(
            {
                "state": outcome.state,
                "error": outcome.error,
                "duplicates": outcome.duplicates,
                "committed": committed,
                "stats": outcome.stats,
                "unresponsive": outcome.unresponsive,
                "thread_level": protocol.thread_level(),
            }
        )
    )
