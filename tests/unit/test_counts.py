"""The per-minute counts wait in memory and are written about once a second
(streamd/journal/counts.py): readers add what waits, and a crash loses none of it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from streamd.errors import JournalError
from streamd.inspect.reader import open_readonly
from streamd.journal import Batch, JournalWriter, WriterOptions
from streamd.journal import counts as counting
from streamd.journal.counts import COUNTS_SEQ
from streamd.journal.stats import journal_stats
from tests.journals import generated_batches, generated_journal, rows, submit_and_wait
from tests.unit.test_inspect_stats import rollup_matches_scan
from tests.unit.test_journal import assert_counts_agree

_SCAN_KEYS = (
    "SELECT substr(received_at, 1, 16), source, stream, coalesce(type, ''), "
    "coalesce(munchkin_id, ''), count(*), min(seq), max(seq), min(occurred_at), "
    "max(occurred_at) FROM events WHERE seq <= ? GROUP BY 1, 2, 3, 4, 5"
)


def lag(path: Path, counted: int) -> None:
    """Make ``path``'s counts what a writer leaves when its tally since ``counted`` is
    still in memory: event_counts holds the events up to ``counted`` only."""
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM event_counts")
        conn.execute("INSERT INTO event_counts " + _SCAN_KEYS, (counted,))
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (str(counted), COUNTS_SEQ))


def submit_all(writer: JournalWriter, batches: list[Batch]) -> None:
    for batch in batches:
        submit_and_wait(writer, batch)


def test_commits_leave_the_counts_in_memory_and_stop_writes_them(tmp_path: Path) -> None:
    """What the change is: no event_counts statement in a commit before the interval."""
    path = tmp_path / "journal.db"
    writer = JournalWriter(str(path), WriterOptions(counts_interval=3600), lambda: "")
    writer.start()
    try:
        submit_all(writer, generated_batches(600, batch=20))
        assert rows(path, "SELECT count(*) FROM events") == [(600,)]
        assert rows(path, "SELECT count(*) FROM event_counts") == [(0,)]
        assert rows(path, "SELECT value FROM meta WHERE key = 'counts_seq'") == [("0",)]
    finally:
        writer.close()
    assert rows(path, "SELECT value FROM meta WHERE key = 'counts_seq'") == [("600",)]
    assert_counts_agree(path)


def test_an_idle_writer_writes_its_tally(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    writer = JournalWriter(str(path), WriterOptions(counts_interval=0.2), lambda: "")
    writer.start()
    try:
        submit_all(writer, generated_batches(100, batch=20))
        deadline = time.monotonic() + 10
        while rows(path, "SELECT value FROM meta WHERE key = 'counts_seq'") != [("100",)]:
            assert time.monotonic() < deadline, "the tally was not written while idle"
            time.sleep(0.1)
        assert_counts_agree(path)  # while the writer still runs
    finally:
        writer.close()


def test_a_crash_loses_no_count(tmp_path: Path) -> None:
    """A copy taken while the tally is in memory (what a power cut leaves): the next
    start counts the events past counts_seq before it takes a batch."""
    path, copy = tmp_path / "journal.db", tmp_path / "crashed.db"
    writer = JournalWriter(str(path), WriterOptions(counts_interval=3600), lambda: "")
    writer.start()
    try:
        batches = generated_batches(400, batch=20)
        submit_all(writer, batches[:10])
        # The writer still runs: the tally of these 200 events is in memory only.
        with sqlite3.connect(path) as live, sqlite3.connect(copy) as dest:
            live.backup(dest)
    finally:
        writer.close()
    assert rows(copy, "SELECT count(*) FROM event_counts") == [(0,)]
    restarted = JournalWriter(str(copy), WriterOptions(counts_interval=3600), lambda: "")
    restarted.start()
    try:
        assert rows(copy, "SELECT value FROM meta WHERE key = 'counts_seq'") == [("200",)]
        assert_counts_agree(copy)
        submit_all(restarted, batches[10:])
    finally:
        restarted.close()
    assert_counts_agree(copy)


def test_journal_stats_add_the_events_not_counted_yet(tmp_path: Path) -> None:
    path = generated_journal(tmp_path / "journal.db", 2000, batch=10)
    complete = journal_stats(str(path))
    for counted in (0, 1, 999, 1995):
        lag(path, counted)
        got = journal_stats(str(path))
        for key in ("events", "by_stream", "by_type", "occurred_range"):
            assert got[key] == complete[key], (counted, key)
    assert complete["events"] == 2000


def test_window_counts_add_the_events_not_counted_yet(tmp_path: Path) -> None:
    """``stats`` reads whole minutes from event_counts: with the last minutes still in
    the tally, it must answer as a scan does, for windows of every shape."""
    # 200 deliveries of 10 events, one second apart: 3 minutes and 20 s of receive times.
    path = generated_journal(tmp_path / "journal.db", 2000, batch=10)
    lag(path, 1234)  # the counts stop in the third minute
    conn = open_readonly(str(path))
    try:
        offsets = [None, 0, 60, 61, 119, 120, 125, 180, 199]
        filter_sets: list[dict[str, Any]] = [
            {},
            {"sources": ("bench-io",)},
            {"streams": ("activity",)},
        ]
        assert rollup_matches_scan(conn, offsets, filter_sets) > 100
    finally:
        conn.close()


def test_a_journal_from_before_the_lag_is_counted_up_to_its_last_event(tmp_path: Path) -> None:
    """Migration 0008 on a version-7 journal: its counts were complete, counts_seq says so."""
    path = generated_journal(tmp_path / "journal.db", 500, batch=50)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM migrations WHERE name = '0008_counts_seq'")
        conn.execute("DELETE FROM meta WHERE key = 'counts_seq'")
        conn.execute("PRAGMA user_version = 7")
    assert journal_stats(str(path))["events"] == 500  # read as complete, no row needed
    writer = JournalWriter(str(path), WriterOptions(), lambda: "")
    writer.start()
    writer.close()
    assert rows(path, "SELECT value FROM meta WHERE key = 'counts_seq'") == [("500",)]
    assert_counts_agree(path)


def test_a_tally_at_its_bound_is_written_before_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded memory: a flood of distinct (minute, source, stream, type, munchkin) keys
    writes the tally once it holds MAX_TALLY rows, however long the interval."""
    monkeypatch.setattr(counting, "MAX_TALLY", 5)
    path = tmp_path / "journal.db"
    writer = JournalWriter(str(path), WriterOptions(counts_interval=3600), lambda: "")
    writer.start()
    try:
        batches = generated_batches(200, batch=20)  # dozens of types: > 5 rows a batch
        submit_all(writer, batches[:2])
        # The second commit found more than 5 rows of tally: it wrote them with its own.
        assert rows(path, "SELECT value FROM meta WHERE key = 'counts_seq'") == [("40",)]
        assert_counts_agree(path)
    finally:
        writer.close()


@pytest.mark.parametrize("value", ["abc", "", "12.5", "9" * 30 + "x"])
def test_a_damaged_counts_seq_is_a_clear_error_and_the_next_start_counts_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """The meta row edited into something that is not a seq: ``journal stats`` (and
    ``journal_stats``) say so (exit 1, no traceback) instead of guessing; the writer's next start
    counts every event again, and nothing is counted twice."""
    from streamd.cli import main

    path = generated_journal(tmp_path / "journal.db", 400, batch=20)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'counts_seq'", (value,))
    assert main(["journal", "stats", "--journal", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "counts_seq is" in err and "not a seq" in err, err
    assert "Traceback" not in err + out
    with pytest.raises(JournalError, match="counts_seq is .* not a seq"):
        journal_stats(str(path))
    writer = JournalWriter(str(path), WriterOptions(), lambda: "")
    writer.start()
    writer.close()
    assert rows(path, "SELECT value FROM meta WHERE key = 'counts_seq'") == [("400",)]
    assert_counts_agree(path)
    assert main(["journal", "stats", "--journal", str(path)]) == 0
