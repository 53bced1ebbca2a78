"""The session's JetStream cluster, and small helpers of the nats sink tests."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.engines._nats import NatsCluster

_names = itertools.count(1)


@pytest.fixture
def cluster(nats_cluster: NatsCluster) -> Iterator[NatsCluster]:
    """The session's cluster, every node running again after the test (a test that
    kills nodes restarts them itself; this is the safety net)."""
    yield nats_cluster
    down = [n for n in range(nats_cluster.nodes) if n not in nats_cluster.running()]
    for node in down:
        nats_cluster.start_node(node)
    if down:
        nats_cluster.wait_ready()


@pytest.fixture
def stream_name() -> str:
    """A stream of the test's own (its subjects under a prefix of its own too)."""
    return f"T{os.getpid()}_{next(_names)}"


from tests.drain.conftest import journal  # noqa: E402, F401  (the drain tests' fixture)
