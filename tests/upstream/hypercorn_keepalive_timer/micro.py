"""The keep-alive timer's cost per request, alone: hypercorn 0.18's ``TrioSingleTask``
(``restart`` when the connection goes idle, ``stop`` when a request arrives: a task
started with ``nursery.start`` and cancelled, per request) against moving one cancel
scope's deadline.

    python micro.py [--n 20000] [--repeat 5]

Each iteration is one request's worth (idle, then busy) plus one scheduler checkpoint,
so that the cancelled task's unwinding is counted where it happens. Prints one JSON line:
the best of ``--repeat`` runs, in microseconds per request, for each.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import trio
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import TrioSingleTask


async def _idle_timeout() -> None:  # what TCPServer._idle_timeout does while it waits
    with trio.move_on_after(5.0):
        await trio.Event().wait()


async def released(n: int) -> float:
    task = TrioSingleTask()
    async with TaskGroup() as group:  # hypercorn's, as TCPServer.run() opens it
        t0 = time.perf_counter()
        for _ in range(n):
            await task.restart(group, _idle_timeout)  # the answer is sent: idle
            await task.stop()  # the next request's headers are in: busy
            await trio.lowlevel.checkpoint()
        t1 = time.perf_counter()
    return (t1 - t0) / n


async def deadline(n: int) -> float:
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            with scope:
                await trio.Event().wait()

        nursery.start_soon(waiter)
        await trio.lowlevel.checkpoint()
        t0 = time.perf_counter()
        for _ in range(n):
            scope.deadline = trio.current_time() + 5.0  # idle
            scope.deadline = math.inf  # busy
            await trio.lowlevel.checkpoint()
        t1 = time.perf_counter()
        nursery.cancel_scope.cancel()
    return (t1 - t0) / n


async def checkpoint_only(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await trio.lowlevel.checkpoint()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    out = {}
    for fn in (released, deadline, checkpoint_only):
        out[fn.__name__ + "_us"] = round(1e6 * min(trio.run(fn, a.n) for _ in range(a.repeat)), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
