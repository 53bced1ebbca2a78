"""The edge's bookkeeping without sockets: the connection cap's choices, the share-out of
in-flight slots, framing verdicts, and the rate limit of per-request log lines."""

from __future__ import annotations

import logging
import resource
from typing import Any, cast

import pytest

from streamd.ingest.admission import share_out
from streamd.service.http import (
    AUTO_MAX_CONNECTIONS,
    FD_HEADROOM,
    ConnectionTable,
    FramingGuard,
    max_connections_for,
)
from streamd.service.logs import RateLimitFilter


class FakeConnection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proven = False
        self.evicted = False
        self.waiting = False  # a request in its socket that hypercorn has not read yet

    def readable(self) -> bool:
        return self.waiting

    def evict(self) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


def opened(table: ConnectionTable, *names: str) -> list[Any]:
    conns = [FakeConnection(n) for n in names]
    for conn in conns:
        assert table.admit()
        table.add(cast(Any, conn))
    return conns


def test_at_the_cap_the_longest_idle_connection_makes_room() -> None:
    table = ConnectionTable(3)
    a, b, c = opened(table, "a", "b", "c")
    table.set_idle(a, False)  # a request in progress: never evicted
    table.set_idle(b, False)
    table.set_idle(b, True)  # b idle again: now the newest idle one
    assert table.admit()
    assert (a.evicted, b.evicted, c.evicted) == (False, False, True)
    assert len(table) == 2 and table.statistics().evicted == 1


def test_a_proven_connection_goes_after_every_unproven_one() -> None:
    table = ConnectionTable(3)
    sender, x, y = opened(table, "sender", "x", "y")
    table.set_idle(sender, False)
    sender.proven = True  # its POST was answered 2xx
    table.set_idle(sender, True)  # the oldest idle one by age, but proven
    assert table.admit() and y.evicted is False and x.evicted is True
    table.add(cast(Any, FakeConnection("z")))
    assert table.admit() and y.evicted is True and sender.evicted is False


def test_when_every_connection_is_busy_a_new_one_is_refused() -> None:
    table = ConnectionTable(2)
    for conn in opened(table, "a", "b"):
        table.set_idle(conn, False)
    assert not table.admit()
    stats = table.statistics()
    assert (stats.open, stats.idle, stats.refused, stats.evicted) == (2, 0, 1, 0)


def test_out_of_descriptors_frees_up_to_16_idle_connections() -> None:
    table = ConnectionTable(100)
    conns = opened(table, *[f"c{i}" for i in range(20)])
    assert table.out_of_descriptors()
    assert sum(c.evicted for c in conns) == 16
    assert [c.evicted for c in conns[:16]] == [True] * 16  # the oldest
    for conn in conns[16:]:
        table.set_idle(conn, False)
    assert not table.out_of_descriptors()  # none idle: accepting must pause
    assert table.statistics().fd_pauses == 1


@pytest.mark.parametrize(
    ("configured", "nofile", "expected"),
    [
        (0, 1024, 1024 - FD_HEADROOM),
        (0, 2048, 2048 - FD_HEADROOM),
        (0, 1 << 20, AUTO_MAX_CONNECTIONS),
        (0, 100, 16),
        (0, resource.RLIM_INFINITY, AUTO_MAX_CONNECTIONS),
        (50_000, 1024, 50_000),  # configured: as given
    ],
)
def test_max_connections_for(configured: int, nofile: int, expected: int) -> None:
    assert max_connections_for(configured, nofile) == expected


@pytest.mark.parametrize(
    ("total", "wanted", "expected"),
    [
        (256, {"events": 0}, {"events": 256}),
        (256, {"a": 0, "b": 0}, {"a": 128, "b": 128}),
        (10, {"a": 0, "b": 0, "c": 0}, {"a": 4, "b": 3, "c": 3}),
        (32, {"io": 4, "events": 0}, {"io": 4, "events": 28}),
        (
            32,
            {"io": 4, "events": 0, "/oauth/token": 0},
            {"io": 4, "events": 14, "/oauth/token": 14},
        ),
        (3, {"a": 3, "b": 0}, {"a": 3, "b": 1}),  # never 0 (config validation prevents it)
    ],
)
def test_share_out(total: int, wanted: dict[str, int], expected: dict[str, int]) -> None:
    assert share_out(total, wanted) == expected


def _scope(headers: list[tuple[bytes, bytes]], version: str = "1.1") -> dict[str, Any]:
    return {"type": "http", "http_version": version, "headers": headers}


@pytest.mark.parametrize(
    ("version", "headers", "verdict"),
    [
        ("1.1", [(b"authorization", b"a")], None),
        ("1.0", [], None),
        ("2", [], None),
        ("9.9", [], 505),
        ("2.0", [], 505),
        ("1.1", [(b"Authorization", b"a"), (b"authorization", b"b")], 400),
        ("1.1", [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], 400),
        ("1.1", [(b"transfer-encoding", b"chunked"), (b"Content-Length", b"1")], 400),
        ("1.1", [(b"content-encoding", b"gzip")], 415),
        ("1.1", [(b"content-encoding", b" Identity ")], None),
        ("1.1", [(b"x-adobe-signature", b"a"), (b"x-adobe-signature", b"a")], 400),
        ("1.1", [(b"x-custom", b"a"), (b"x-custom", b"b")], None),  # repeatable headers
    ],
)
def test_framing_verdicts(
    version: str, headers: list[tuple[bytes, bytes]], verdict: int | None
) -> None:
    problem = FramingGuard.problem(_scope(headers, version))
    assert (problem[0] if problem else None) == verdict


def test_per_request_lines_are_limited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limit = RateLimitFilter(interval=10.0, burst=3, clock=lambda: now[0])
    log = logging.getLogger("streamd.test.ratelimit")
    log.addFilter(limit)
    try:
        with caplog.at_level(logging.INFO, logger="streamd.test.ratelimit"):
            for i in range(50):
                log.info("refused a body from %s", f"client-{i}")
            log.warning("another line")  # its own budget
            assert [r.getMessage() for r in caplog.records] == [
                "refused a body from client-0",
                "refused a body from client-1",
                "refused a body from client-2",
                "another line",
            ]
            limit.flush()  # the interval has not ended: nothing yet
            assert len(caplog.records) == 4
            now[0] = 10.5
            limit.flush()
            assert caplog.records[-1].getMessage() == (
                "47 more like this were not logged in 10 s: refused a body from %s"
            )
            assert caplog.records[-1].levelno == logging.INFO
            log.info("refused a body from %s", "client-x")  # a new interval
            assert caplog.records[-1].getMessage() == "refused a body from client-x"
    finally:
        log.removeFilter(limit)


def test_the_count_is_reported_when_the_next_interval_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limit = RateLimitFilter(interval=10.0, burst=1, clock=lambda: now[0])
    log = logging.getLogger("streamd.test.ratelimit2")
    log.addFilter(limit)
    try:
        with caplog.at_level(logging.INFO, logger="streamd.test.ratelimit2"):
            for _ in range(5):
                log.info("dropped a connection")
            now[0] = 12.0
            log.info("dropped a connection")
            messages = [r.getMessage() for r in caplog.records]
            assert messages == [
                "dropped a connection",
                "4 more like this were not logged in 10 s: dropped a connection",
                "dropped a connection",
            ]
    finally:
        log.removeFilter(limit)


def test_stopping_closes_every_idle_connection_and_no_busy_one() -> None:
    table = ConnectionTable(10)
    idle, proven, busy = opened(table, "idle", "proven", "busy")
    table.set_idle(proven, False)
    proven.proven = True
    table.set_idle(proven, True)
    table.set_idle(busy, False)
    table.close_idle()
    assert (idle.evicted, proven.evicted, busy.evicted) == (True, True, False)
    assert len(table) == 1 and table.statistics().evicted == 0  # not to make room


def test_a_connection_with_a_request_waiting_is_not_taken_for_idle() -> None:
    """Under a descriptor shortage a sender's fresh connection, its request not yet
    read, was closed as the longest idle one (the out-of-descriptors test, once)."""
    table = ConnectionTable(limit=3)
    sender, idle1, idle2 = opened(table, "sender", "idle1", "idle2")
    sender.waiting = True
    assert table.evict_oldest()
    assert (sender.evicted, idle1.evicted, idle2.evicted) == (False, True, False)
    idle2.waiting = True
    assert table.evict_oldest()  # every one has bytes waiting: the oldest still goes
    assert sender.evicted and not idle2.evicted


def test_a_connection_idle_only_a_moment_goes_after_older_ones() -> None:
    """A sender's connection just accepted, its request not yet in its socket (its client
    delayed on a loaded machine), was closed for descriptors before older idle ones that
    had nothing to read either (the out-of-descriptors test in CI)."""
    now = [100.0]
    table = ConnectionTable(limit=5, clock=lambda: now[0])
    old, proven = opened(table, "old", "proven")
    table.set_idle(proven, False)
    proven.proven = True
    table.set_idle(proven, True)
    now[0] += 1.0
    sender, flood = opened(table, "sender", "flood")  # both fresh
    table.set_idle(old, False)
    table.set_idle(old, True)  # just answered: fresh again, though the oldest accepted
    now[0] += 0.1
    assert table.evict_oldest()
    assert proven.evicted and not (old.evicted or sender.evicted or flood.evicted)
    assert table.evict_oldest()  # only fresh ones left: the longest idle of them
    assert sender.evicted and not (old.evicted or flood.evicted)
    now[0] += 0.2  # old and flood are no longer fresh (sender was evicted)
    assert table.evict_oldest()
    assert flood.evicted and not old.evicted


def test_a_reset_reports_what_was_suppressed_and_starts_every_budget_afresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A service started in a process that ran one before gets the whole budget.
    limit = RateLimitFilter(interval=10.0, burst=2, clock=lambda: 0.0)
    log = logging.getLogger("streamd.test.ratelimit-reset")
    log.addFilter(limit)
    try:
        with caplog.at_level(logging.INFO, logger="streamd.test.ratelimit-reset"):
            for i in range(5):
                log.info("refused %s", i)
            assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1"]
            limit.reset()  # the interval has not ended: reported anyway
            assert caplog.records[-1].getMessage() == (
                "3 more like this were not logged in 10 s: refused %s"
            )
            log.info("refused %s", "after")
            assert caplog.records[-1].getMessage() == "refused after"
    finally:
        log.removeFilter(limit)
