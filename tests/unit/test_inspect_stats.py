"""journal stats over windows, and the received_at bisection behind fast windows."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streamd.cli import main
from streamd.core.timeparse import format_utc
from streamd.inspect.filters import Filters
from streamd.inspect.reader import iter_events, open_readonly, seq_window
from tests.journals import fixture_journal, generated_journal

BASE = datetime(2026, 5, 2, 9, 0, 0, tzinfo=UTC)  # generated_journal's first delivery


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_journal(tmp_path_factory.mktemp("stats") / "journal.db")


def stats(
    capsys: pytest.CaptureFixture[str], journal: Path, *flags: str
) -> tuple[int, dict[str, object] | str]:
    status = main(["journal", "stats", "--journal", str(journal), *flags])
    out, err = capsys.readouterr()
    if status != 0:
        return status, err
    return status, json.loads(out) if "--format" not in flags else out


def test_whole_journal(capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    status, s = stats(capsys, journal, "--json")
    assert status == 0 and isinstance(s, dict)
    assert s["events"] == 14
    assert s["by_stream"] == {"activity": 11, "audit": 2, "notification": 1}
    assert s["by_source"] == {"adobe-io": 10, "marketo-push": 4}
    assert s["by_munchkin"] == {"123-ABC-456": 14}
    assert (s["deliveries"], s["events_received"], s["duplicates"]) == (7, 15, 1)
    assert s["first"] == {
        "seq": 1, "received_at": "2026-05-01T10:00:00.000Z",
        "occurred_at": "2026-04-21T15:28:40.000Z",
    }  # fmt: skip
    assert s["last"] == {
        "seq": 14, "received_at": "2026-05-03T08:00:00.000Z",
        "occurred_at": "2021-05-27T15:22:37.489Z",
    }  # fmt: skip
    by_type = {t["type"]: t["events"] for t in s["by_type"]}  # type: ignore[attr-defined]
    assert by_type["com.adobe.platform.marketo.activity.standard.openemail"] == 2
    assert sum(by_type.values()) == 14
    sizes = s["file_bytes"]
    assert isinstance(sizes, dict) and sizes["journal"] > 0 and "journal-wal" in sizes


def test_a_received_window_with_rate_and_duplicates(
    capsys: pytest.CaptureFixture[str], journal: Path
) -> None:
    status, s = stats(
        capsys, journal, "--since", "2026-05-02T00:00Z", "--until", "2026-05-03T00:00Z", "--json"
    )
    assert status == 0 and isinstance(s, dict)
    assert s["events"] == 9  # lads_single 1, lads_batch 6, two audits
    assert s["deliveries"] == 4 and s["duplicates"] == 0
    assert s["rate"] == {"seconds": 86400.0, "events_per_second": round(9 / 86400, 3)}
    status, s = stats(capsys, journal, "--since", "2026-05-03T00:00Z", "--json")
    assert isinstance(s, dict)
    assert (s["events"], s["deliveries"], s["duplicates"]) == (1, 2, 1)


def test_filters_and_the_occurred_clock(capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    _, s = stats(capsys, journal, "--source", "marketo-push", "--json")
    assert isinstance(s, dict)
    assert s["events"] == 4 and s["deliveries"] == 1 and s["window"]["filtered"]  # type: ignore[index]
    _, s = stats(capsys, journal, "--clock", "occurred", "--until", "2025-01-01", "--json")
    assert isinstance(s, dict)
    assert s["by_stream"] == {"audit": 2, "notification": 1}


def test_summary_on_a_terminal_format(capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    status, out = stats(capsys, journal, "--format", "table")
    assert status == 0 and isinstance(out, str)
    assert "events      14  activity=11  audit=2  notification=1" in out
    assert "duplicates  1 of 15 events received" in out
    assert "marketo-push  4" in out and "123-ABC-456  14" in out
    status, out = stats(capsys, journal, "--format", "jsonl")
    assert isinstance(out, str) and len(out.splitlines()) == 1 and json.loads(out)["events"] == 14


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--since", "24 hours"], "--since: '24 hours' is not a duration"),
        (["--format", "xml"], "invalid choice"),
        (["--clock", "now"], "invalid choice"),
    ],
)
def test_bad_flags(
    capsys: pytest.CaptureFixture[str], journal: Path, flags: list[str], message: str
) -> None:
    try:
        status, err = stats(capsys, journal, *flags)
    except SystemExit as exc:  # argparse's own usage errors
        status, err = int(exc.code or 0), capsys.readouterr().err
    assert status == 2 and message in str(err)


def test_time_windows_match_a_plain_scan(tmp_path: Path) -> None:
    seed = random.randrange(10**6)
    print("seed", seed)
    rng = random.Random(seed)
    path = generated_journal(tmp_path / "journal.db", 6000, batch=100)  # 60 s of deliveries
    conn = open_readonly(str(path))
    raw = sqlite3.connect(path)
    try:
        for _ in range(30):
            a, b = sorted(rng.sample(range(-5, 70), 2))
            since = format_utc(BASE + timedelta(seconds=a))
            until = format_utc(BASE + timedelta(seconds=b))
            f = Filters(since=since, until=until, clock="received")
            expected = [
                r[0]
                for r in raw.execute(
                    "SELECT seq FROM events WHERE received_at >= ? AND received_at < ? "
                    "ORDER BY seq",
                    (since, until),
                )
            ]
            assert [r[0] for r in iter_events(conn, f)] == expected, (since, until)
            lo, hi = seq_window(conn, f)
            assert lo <= (expected[0] - 1 if expected else hi)
            # The occurred clock narrows by the occurred_at index: same answer as a scan.
            f = Filters(since=since, until=until, clock="occurred")
            expected = [
                r[0]
                for r in raw.execute(
                    "SELECT seq FROM events WHERE occurred_at >= ? AND occurred_at < ? "
                    "ORDER BY seq",
                    (since, until),
                )
            ]
            assert [r[0] for r in iter_events(conn, f)] == expected, ("occurred", since, until)
    finally:
        conn.close()
        raw.close()


def test_occurred_windows_without_the_occurred_index(tmp_path: Path) -> None:
    """The schema has no events_occurred index (its ingest cost): windows on the
    occurred clock still answer, by a scan."""
    path = generated_journal(tmp_path / "journal.db", 2000, batch=100)
    conn = sqlite3.connect(path)
    assert conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'events_occurred'"
    ).fetchone() == (0,)
    conn.close()
    reader = open_readonly(str(path))
    statements: list[str] = []
    reader.set_trace_callback(statements.append)
    try:
        since, until = (
            format_utc(BASE + timedelta(seconds=10)),
            format_utc(BASE + timedelta(seconds=40)),
        )
        f = Filters(since=since, until=until, clock="occurred")
        assert seq_window(reader, f) == (0, 2000)  # no narrowing without the index
        assert not any("min(seq)" in s for s in statements)
        got = [r[0] for r in iter_events(reader, f)]
    finally:
        reader.close()
    raw = sqlite3.connect(path)
    try:
        expected = [
            r[0]
            for r in raw.execute(
                "SELECT seq FROM events WHERE occurred_at >= ? AND occurred_at < ? ORDER BY seq",
                (since, until),
            )
        ]
    finally:
        raw.close()
    assert got == expected and got


def rollup_matches_scan(
    conn: sqlite3.Connection, offsets: list[int | None], filter_sets: list[dict[str, Any]]
) -> int:
    """For every window between two of ``offsets`` (seconds after BASE; None: open) and
    each filter set, stats' counts from event_counts equal a scan; returns how many."""
    from streamd.inspect.stats import _rollup_groups, _scan_window

    checked = 0
    for a in offsets:
        for b in offsets:
            if a is not None and b is not None and b <= a:
                continue
            since = None if a is None else format_utc(BASE + timedelta(seconds=a))
            until = None if b is None else format_utc(BASE + timedelta(seconds=b))
            for extra in filter_sets:
                f = Filters(since=since, until=until, clock="received", **extra)
                rolled = _rollup_groups(conn, f)
                assert rolled is not None
                assert rolled == _scan_window(conn, f, since, until), (since, until, extra)
                checked += 1
    return checked


def test_counts_from_event_counts_equal_a_scan_for_any_window(tmp_path: Path) -> None:
    """stats reads whole minutes from event_counts and scans only the edge minutes;
    for windows of every shape and the filters it supports, that equals a full scan."""
    from streamd.inspect.stats import _rollup_groups

    # 200 deliveries of 10 events, one second apart: 3 minutes and 20 s of receive times.
    path = generated_journal(tmp_path / "journal.db", 2000, batch=10)
    conn = open_readonly(str(path))
    try:
        filter_sets: list[dict[str, Any]] = [
            {},
            {"streams": ("activity",)},
            {"types": ("com.adobe.platform.marketo.activity.standard.*",)},
            {"sources": ("bench-io",)},
            {"munchkin_ids": ("123-ABC-456",)},
        ]
        offsets = [None, 0, 1, 59, 60, 61, 119, 125, 199, 250]
        assert rollup_matches_scan(conn, offsets, filter_sets) > 200
        # Filters event_counts has no column for: the scan answers.
        assert _rollup_groups(conn, Filters(lead_ids=(1,), clock="received")) is None
        assert _rollup_groups(conn, Filters(since="2026-01-01", clock="occurred")) is None
    finally:
        conn.close()
