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
        from tests.engines._postgres import PASSWORD, PostgresServer

        with PostgresServer() as pg:
            yield {"dsn": pg.create_database("bench"), "password": PASSWORD}
    elif kind == "kafka":
        from tests.engines._kafka import Tansu

        broker = Tansu().start()
        try:
            yield {"bootstrap": broker.bootstrap}
        finally:
            broker.stop()
    elif kind in ("nats", "nats-r3"):
        from tests.engines._nats import NatsCluster

        nodes = 3 if kind == "nats-r3" else 1
        with NatsCluster(nodes) as cluster:
            yield {"servers": cluster.urls, "replicas": nodes}
    else:
        yield {}


@contextlib.contextmanager
def postgres_with_commit_times() -> Iterator[Any]:
    """A PostgreSQL server that records each transaction's commit time."""
    from tests.engines._postgres import PostgresServer

    pg = PostgresServer()
    pg.init()
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.write("track_commit_timestamp = on\n")
    try:
        pg.start()
        yield pg
    finally:
        if pg.running:
            pg.stop("immediate")
        import shutil

        shutil.rmtree(pg.root, ignore_errors=True)
