"""A batch that committed is never answered 503: the real server, in one process and with
an ingest worker process (``server.workers = 1``).

The commit that holds the batch is made to outlast the commit budget for real: a control
op, submitted right behind the batch, waits inside the group transaction (after the
batch is written, before COMMIT) past the main process's budget and past the margin a
worker process used to add with its own timer. The answer must then be the commit's:
200, with the batch journaled once.
"""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import fixture_bytes
from tests.integration.conftest import Server, StartServer
from tests.integration.test_ingest import count
from tests.unit.test_journal_outcomes import Gate

BUDGET = 0.5
HOLD = BUDGET + 2.0 + 1.0  # past the budget, and past a worker's old margin of 2 s


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
async def test_a_batch_committed_after_the_budget_is_answered_200(
    start_server: StartServer, workers: int
) -> None:
    server: Server = await start_server(
        f"[server]\nworkers = {workers}\n[journal]\ncommit_budget = {BUDGET}\n"
    )
    journal = server.running.journal
    first, second = Gate(), Gate()
    answers: list[httpx.Response] = []

    async def post() -> None:
        answers.append(await server.post(fixture_bytes("lads_batch")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.control, first.op)
        await first.wait_entered()  # group 1 holds the writer
        nursery.start_soon(post)
        await server.wait_for(lambda: journal.statistics().queued_events == 6, "the batch")
        posted_at = trio.current_time()
        # Right behind the batch: group 2 will write the batch, then hold its COMMIT.
        nursery.start_soon(journal.control, second.op)
        await trio.testing.wait_all_tasks_blocked(0.05)  # ... it is queued behind the batch
        first.opened.set()
        await second.wait_entered()
        with trio.move_on_at(posted_at + HOLD):  # the slow commit lasts HOLD seconds...
            while not answers:  # ... unless the request was answered before it ended
                await trio.sleep(0.02)
        second.opened.set()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 6, "duplicates": 0}
    assert count(server) == 6
    assert (await server.post(fixture_bytes("lads_batch"))).json()["duplicates"] == 6
