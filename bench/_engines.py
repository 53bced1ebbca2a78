"""The shared engines for ``bench.drain``: started on loopback for a case, stopped after.

The servers are the test suite's (tests/engines/_postgres.py, _kafka.py, _nats.py): the
same packages ``make test`` installs, started the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def engine(kind: str) -> Iterator[dict[str, Any]]:
    """Start what ``kind`` drains into; yield what its sink needs to reach it ({} for
    the kinds that need no server)."""
    if kind == "postgres":
        from tests.engines._postgres import PASSWORD

        with postgres_server() as pg:
            yield {"dsn": pg.create_database("bench"), "password": PASSWORD}
    elif kind == "kafka":
        from tests.engines._kafka import Tansu

        broker = Tansu().start()
        try:
            assert broker.process is not None
            # The broker shares the 2 cores: its CPU is measured beside streamd's.
            yield {"bootstrap": broker.bootstrap, "server_pid": broker.process.pid}
        finally:
            broker.stop()
    elif kind in ("nats", "nats-r3"):
        from tests.engines._nats import NatsCluster

        nodes = 3 if kind == "nats-r3" else 1
        with NatsCluster(nodes) as cluster:
            yield {"servers": cluster.urls, "replicas": nodes}
    else:
        yield {}


# The tests' server is small (32 MiB of shared buffers, 256 MiB of WAL between
# checkpoints); a 300,000-event backlog writes about 1 GiB of table, index and WAL, so
# the benchmark's server is sized like a modest production one. fsync and
# synchronous_commit stay on: a commit is durable before the sink's cursor moves.
_PG_BENCH_CONF = "shared_buffers = 256MB\nmax_wal_size = 2GB\nwal_buffers = 16MB\n"


@contextlib.contextmanager
def postgres_server(extra: str = "") -> Iterator[Any]:
    """A PostgreSQL server for a benchmark case."""
    from tests.engines._postgres import PostgresServer

    pg = PostgresServer()
    pg.init()
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.write(_PG_BENCH_CONF + extra)
    try:
        pg.start()
        yield pg
    finally:
        if pg.running:
            pg.stop("immediate")
        import shutil

        shutil.rmtree(pg.root, ignore_errors=True)


def postgres_with_commit_times() -> contextlib.AbstractContextManager[Any]:
    """A PostgreSQL server that records each transaction's commit time."""
    return postgres_server("track_commit_timestamp = on\n")
