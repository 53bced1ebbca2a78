"""Adobe's SDK journaling client (``@adobe/aio-lib-events`` 4.1.0) reads streamd's admin
``GET /journal`` and ``streamd emit --journal-server`` unchanged, and gets every event once.

The client follows ``link.next`` page by page (``getEventsFromJournal``) or polls on its
own (``getEventsObservableFromJournal``: on a 204 it waits the ``retry-after``, then asks
the same ``next`` again). Positions are opaque strings here, as they are to the SDK.
A deliberately broken pager shows the "every event once" check catches a skipped event.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from streamd.emit.journal_api import JournalApi, position
from tests.system._harness import Processes, read_token, serve, streamd_argv, wait_for

from ._sdk import Node, reply, serving

# Under pytest-xdist these tests share one worker: the module's streamd and journal
# server start once, not once per worker.
pytestmark = pytest.mark.xdist_group("interop-journal")

ORG = "interop-org@AdobeOrg"
API_KEY = "interop-api-key"
ADMIN_READY = re.compile(r"^streamd admin ready: (http://127\.0\.0\.1:\d+)\n", re.MULTILINE)
JOURNAL_READY = re.compile(r"journal ready: (http://127\.0\.0\.1:\d+/journal)\n")


def each_once(events: list[dict[str, Any]], expected: list[str]) -> list[str]:
    """What is wrong with the events a client got, against the keys it should have got
    (each exactly once); an empty list when nothing is."""
    got = Counter(e["key"] for e in events)
    problems = []
    missing = [k for k in expected if k not in got]
    if missing:
        problems.append(f"{len(missing)} events missing, e.g. {missing[:3]}")
    twice = [k for k, n in got.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} events more than once, e.g. {twice[:3]}")
    extra = set(got) - set(expected)
    if extra:
        problems.append(f"{len(extra)} unexpected events, e.g. {sorted(extra)[:3]}")
    positions = Counter(e["position"] for e in events)
    if len(positions) != len(events):
        problems.append("a position was delivered twice")
    return problems


def _first_group(pattern: re.Pattern[str], text: Callable[[], str], what: str) -> str:
    """Wait (at most 15 s) for ``pattern`` in ``text()``; its first group."""
    match = wait_for(lambda: pattern.search(text()), timeout=15, what=what)
    assert match is not None
    return match.group(1)


def walk(
    node: Node, url: str, token: str, options: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The SDK's client follows ``next`` from ``url`` until an empty answer (the 204)."""
    data = {"url": url, "token": token, "org": ORG, "api_key": API_KEY, "options": options}
    result: dict[str, Any] = node.run(
        "walk_journal.js", {"mode": "pages", "max_pages": 200, **data, **extra}, timeout=120
    )
    return result


# -- streamd's admin GET /journal ----------------------------------------------------


@dataclass
class Streamd:
    """A running streamd, what was sent to it (the acked ids, in order) and its admin API."""

    processes: Processes
    workdir: Path
    port: int
    admin_url: str
    admin_token: str
    keys: list[str] = field(default_factory=list)
    runs: int = 0

    @property
    def journal_url(self) -> str:
        return self.admin_url + "/journal"

    def emit(self, count: int, *, legacy: bool = False) -> list[str]:
        """Send ``count`` events with ``streamd emit``; their ids, in acknowledged order."""
        self.runs += 1
        acked = self.workdir / f"acked-{self.runs}"
        target = f"http://127.0.0.1:{self.port}/events"
        if legacy:
            how = ["--token-file", str(self.workdir / "data" / "api-token")]
        else:
            token = read_token(self.workdir / "data" / "api-token")
            target += f"?access_token={token}"
            how = ["--mode=io", "--shape=mixed", "--no-sign", "--seed", str(self.runs)]
        argv = [*streamd_argv(), "emit", f"--to={target}", *how]
        argv += [f"--count={count}", "--unpaced", "--progress=0", f"--acked={acked}"]
        emit = self.processes.spawn(argv, f"emit-{self.runs}")
        assert emit.wait(120) == 0, emit.stderr()
        new = acked.read_text().split()
        assert len(new) == count
        self.keys += new
        return new


@pytest.fixture(scope="module")
def streamd(tmp_path_factory: pytest.TempPathFactory, sdk_installed: None) -> Iterator[Streamd]:
    """One streamd for the module (retry-after 1 s), with 2,000 I/O events of every
    wrapper and 500 legacy activities journaled."""
    workdir = tmp_path_factory.mktemp("streamd")
    processes = Processes(workdir / "run")
    try:
        config = workdir / "streamd.toml"
        config.write_text("[admin]\npull_retry_after = 1\n")
        server = serve(processes, workdir / "data", args=["--config", str(config)])
        admin = _first_group(ADMIN_READY, server.spawned.stdout, "the admin listener")
        daemon = Streamd(
            processes, workdir, server.port, admin, read_token(workdir / "data" / "admin-token")
        )
        daemon.emit(2000)
        daemon.emit(500, legacy=True)
        yield daemon
    finally:
        processes.close()


def test_pages_from_the_oldest_to_the_204_hold_every_event_once(
    node: Node, streamd: Streamd
) -> None:
    out = walk(node, streamd.journal_url, streamd.admin_token, {"limit": 100})
    assert out["error"] is None
    assert each_once(out["events"], streamd.keys) == []
    *full, end = out["pages"]
    assert sum(p["count"] for p in full) == len(streamd.keys)
    assert all(p["count"] == 100 for p in full[:-1]) and 0 < full[-1]["count"] <= 100
    # The end: no events, the retry-after (in ms, as the SDK reads it) and a next link.
    assert end["count"] == 0 and end["retry_after"] == 1000 and end["next"]


def test_since_a_position_gives_exactly_what_follows_it(node: Node, streamd: Streamd) -> None:
    everything = walk(node, streamd.journal_url, streamd.admin_token)["events"]
    since = everything[999]["position"]
    out = walk(node, streamd.journal_url, streamd.admin_token, {"since": since})
    assert out["error"] is None and out["events"] == everything[1000:]


def test_seek_starts_at_a_time(node: Node, streamd: Streamd) -> None:
    everything = walk(node, streamd.journal_url, streamd.admin_token, {"seek": "-PT1H"})
    assert each_once(everything["events"], streamd.keys) == []
    # A time after everything journaled so far: wait for the next whole second (the
    # clock, with a deadline), then send more: seek gets exactly those.
    boundary = int(time.time()) + 1
    wait_for(lambda: time.time() >= boundary, timeout=5, what="the next second")
    at = datetime.datetime.fromtimestamp(boundary, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = streamd.emit(60)
    out = walk(node, streamd.journal_url, streamd.admin_token, {"seek": at})
    assert out["error"] is None and each_once(out["events"], later) == []


def test_latest_starts_at_the_end_and_next_brings_the_new_events(
    node: Node, streamd: Streamd
) -> None:
    first = walk(node, streamd.journal_url, streamd.admin_token, {"latest": True})
    assert first["error"] is None and first["events"] == []
    assert first["pages"][0]["retry_after"] == 1000
    new = streamd.emit(30)
    out = walk(node, first["pages"][0]["next"], streamd.admin_token)
    assert out["error"] is None and each_once(out["events"], new) == []


def test_the_observable_waits_out_the_204_and_picks_up_new_events(
    node: Node, streamd: Streamd
) -> None:
    before = len(streamd.keys)
    proc = node.start(
        "walk_journal.js",
        {
            "mode": "observable",
            "url": streamd.journal_url,
            "token": streamd.admin_token,
            "org": ORG,
            "api_key": API_KEY,
            "options": {"limit": 500},
            "expect": before + 40,
            "caught_up_at": before,
            "deadline_ms": 90_000,
        },
    )
    try:
        wait_for(lambda: proc.file("caught-up").exists(), timeout=90, what="the SDK to catch up")
        streamd.emit(40)  # arrives while the observable waits on 204s
        out = proc.result(timeout=100)
    finally:
        proc.kill()
    assert out["error"] is None
    assert each_once(out["events"], streamd.keys) == []


@pytest.mark.parametrize("mode", ["pages", "observable"])
def test_a_wrong_token_is_an_error_the_sdk_reports(node: Node, streamd: Streamd, mode: str) -> None:
    data: dict[str, Any] = {"url": streamd.journal_url, "token": "not-the-admin-token"}
    data |= {"org": ORG, "api_key": API_KEY, "options": None, "mode": mode, "max_pages": 5}
    out = node.run("walk_journal.js", data | {"expect": 1, "deadline_ms": 30_000}, timeout=60)
    assert out["events"] == [] and "failed with 401" in out["error"]


@pytest.mark.parametrize("mode", ["pages", "observable"])
@pytest.mark.parametrize("case", ["another-journal", "beyond-the-newest"])
def test_a_position_this_journal_cannot_continue_is_an_error_the_sdk_reports(
    node: Node, streamd: Streamd, mode: str, case: str
) -> None:
    # A client that kept its position across a journal's replacement or a restore from
    # an older backup: a 410 the SDK surfaces, never a 204 for ever (docs/admin-api.md).
    last = walk(node, streamd.journal_url, streamd.admin_token)["events"][-1]["position"]
    journal, seq, check = last.split(".")
    since = {
        "another-journal": ".".join(("0" * 8 if journal != "0" * 8 else "1" * 8, seq, check)),
        "beyond-the-newest": str(int(seq) + 1000),  # a bare (pre-identity) position
    }[case]
    data: dict[str, Any] = {"url": streamd.journal_url, "token": streamd.admin_token}
    data |= {"org": ORG, "api_key": API_KEY, "options": {"since": since}, "mode": mode}
    out = node.run(
        "walk_journal.js", data | {"max_pages": 5, "expect": 1, "deadline_ms": 30_000},
        timeout=60,
    )  # fmt: skip
    assert out["events"] == [] and "failed with 410" in out["error"]


# -- streamd emit --journal-server ---------------------------------------------------


@pytest.fixture(scope="module")
def journal_server(
    tmp_path_factory: pytest.TempPathFactory, sdk_installed: None
) -> Iterator[tuple[str, str]]:
    """``streamd emit --journal-server``: 2,800 events, the first 5 past retention."""
    workdir = tmp_path_factory.mktemp("journal-server")
    processes = Processes(workdir / "run")
    token_file = workdir / "token"
    token_file.write_text("interop-journal-token-0123456789\n")
    try:
        spawned = processes.spawn(
            [
                *streamd_argv(),
                "emit",
                "--journal-server",
                "--listen=127.0.0.1:0",
                "--journal-events=2800",
                "--journal-expired=5",
                f"--client-id={API_KEY}",
                f"--journal-org-id={ORG}",
                f"--journal-token-file={token_file}",
            ],
            "journal-server",
        )
        url = _first_group(JOURNAL_READY, spawned.stdout, "the journal server")
        yield url, "interop-journal-token-0123456789"
    finally:
        processes.close()


def test_the_emulated_journal_is_read_whole_and_each_event_once(
    node: Node, journal_server: tuple[str, str]
) -> None:
    url, token = journal_server
    expected = [JournalApi(seed=1).event(i)["id"] for i in range(5, 2800)]
    out = walk(node, url, token)
    assert out["error"] is None and each_once(out["events"], expected) == []
    assert out["pages"][-1]["count"] == 0 and out["pages"][-1]["retry_after"] == 10_000
    since = walk(node, url, token, {"since": out["events"][999]["position"]})
    assert since["events"] == out["events"][1000:]
    seek = walk(node, url, token, {"seek": "-PT1H"})  # events 2800 s old and younger
    assert seek["events"] == out["events"]
    latest = walk(node, url, token, {"latest": True})
    assert latest["error"] is None and latest["events"] == []


def test_the_emulated_journal_errors_reach_the_sdk(
    node: Node, journal_server: tuple[str, str]
) -> None:
    url, token = journal_server
    # The emulator's own position text of event 2, which is past its retention.
    expired = walk(node, url, token, {"since": position(2)})
    assert expired["events"] == [] and "failed with 410" in expired["error"]
    wrong = walk(node, url, "not-the-journal-token")
    assert wrong["events"] == [] and "failed with 401" in wrong["error"]


# -- a broken pager: the check catches a skipped event -----------------------------


@dataclass
class Pager:
    """A minimal journal on loopback: ``events`` in pages of ``limit``; with ``skip``,
    each ``next`` link jumps one position too far (a pager bug that loses events)."""

    events: list[dict[str, Any]]
    skip: bool = False

    def __call__(self, req: Any) -> None:
        parts = urlsplit(req.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        start = int(query["since"]) + 1 if "since" in query else 0
        limit = int(query.get("limit", "100"))
        page = self.events[start : start + limit]
        if not page:
            link = f'<{parts.path}?since={start - 1}&limit={limit}>; rel="next"'
            reply(req, 204, b"", [("retry-after", "1"), ("link", link)])
            return
        last = start + len(page) - 1
        since = last + 1 if self.skip else last
        body = {
            "events": [{"position": str(start + i), "event": e} for i, e in enumerate(page)],
            "_page": {"last": str(last), "count": len(page)},
        }
        link = f'<{parts.path}?since={since}&limit={limit}>; rel="next"'
        reply(req, 200, json.dumps(body).encode(), [("link", link)])


@pytest.mark.parametrize("skip", [False, True], ids=["sound-pager", "skipping-pager"])
def test_every_event_once_catches_a_pager_that_skips(node: Node, skip: bool) -> None:
    events = [JournalApi(seed=3).event(i) for i in range(300)]
    expected = [e["id"] for e in events]
    with serving(Pager(events, skip=skip)) as base:
        out = walk(node, base + "/journal", "any-token", {"limit": 100})
    assert out["error"] is None
    problems = each_once(out["events"], expected)
    if not skip:
        assert problems == []
    else:
        # The next links after positions 99 and 199 skipped events 100 and 201.
        assert problems == [f"2 events missing, e.g. {[expected[100], expected[201]]}"]
