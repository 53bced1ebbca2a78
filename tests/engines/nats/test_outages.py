"""The cluster loses nodes while the drain delivers: nothing lost, nothing twice."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from streamd.drain import Kind, open_drain
from streamd.drain.sinks.nats import NatsSink
from streamd.journal import Journal
from tests.drain.conftest import append, spec, wait_until
from tests.engines._nats import NatsCluster

from .test_sink import FAST_RETRY, event, messages, settings


async def test_one_node_of_three_killed_mid_stream(
    cluster: NatsCluster, stream_name: str, journal: Journal
) -> None:
    s = settings(cluster, stream_name, timeout=5.0)
    keys = [f"k{i:05d}" for i in range(3000)]
    async with open_drain(
        journal,
        [spec("nats", NatsSink(s), full_events=True, batch_size=100, workers=4,
              retry=FAST_RETRY, timeout=6.0)],
    ) as d:  # fmt: skip
        await append(journal, keys[:1000])
        await wait_until(lambda: d.statistics()[0].cursor >= 500, "a first part", timeout=30)
        # The stream's leader (the worst node to lose), while batches are in flight.
        leader = await trio.to_thread.run_sync(cluster.stream_leader, stream_name)
        cluster.kill_node(leader)
        for start in range(1000, 3000, 250):  # ingest goes on: the journal takes it
            await append(journal, keys[start : start + 250])
        await wait_until(lambda: d.statistics()[0].cursor == 3000, "everything", timeout=60)
    stored = Counter(m.headers["Nats-Msg-Id"] for m in await messages(cluster, stream_name))
    assert stored == Counter(keys)  # each key once
    cluster.start_node(leader)
    await trio.to_thread.run_sync(cluster.wait_ready)
    # the restarted node catches up and serves reads again
    assert await messages(cluster, stream_name) != []


@pytest.mark.parametrize(
    "outage", [3.0, pytest.param(60.0, marks=pytest.mark.slow)], ids=["3s", "60s"]
)
async def test_all_nodes_down_is_transient_then_everything_arrives(
    cluster: NatsCluster, stream_name: str, journal: Journal, outage: float
) -> None:
    s = settings(cluster, stream_name, timeout=2.0)
    probe = NatsSink(s)
    async with open_drain(
        journal,
        [spec("nats", NatsSink(s), full_events=True, batch_size=50, retry=FAST_RETRY,
              timeout=2.5)],
    ) as d:  # fmt: skip
        await append(journal, [f"a{i}" for i in range(200)])
        await wait_until(lambda: d.statistics()[0].cursor == 200, "before", timeout=30)
        assert (await probe.deliver([event(1, "a0")])).present == 1
        for node in range(cluster.nodes):
            cluster.kill_node(node)
        try:
            await append(journal, [f"b{i}" for i in range(300)])
            down = await probe.deliver([event(1, "b0")])
            assert down.kind is Kind.TRANSIENT, down
            with trio.move_on_after(outage):
                await trio.sleep_forever()  # the outage itself: no condition to wait for
            status = d.statistics()[0]
            assert status.cursor == 200  # nothing confirmed while down
            assert status.failed_attempts > 0 and status.last_error  # transient, retried
        finally:
            for node in range(cluster.nodes):
                cluster.start_node(node)
        await trio.to_thread.run_sync(cluster.wait_ready)
        await wait_until(lambda: d.statistics()[0].cursor == 500, "after", timeout=60)
    await probe.aclose()
    stored = Counter(m.headers["Nats-Msg-Id"] for m in await messages(cluster, stream_name))
    assert stored == Counter([f"a{i}" for i in range(200)] + [f"b{i}" for i in range(300)])
