"""The lead index in the derived index file: written after each commit, rebuilt when
missing, filled in for an index file from before it, and used by lead filters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamd.inspect.filters import Filters
from streamd.inspect.reader import count_events, iter_events, lead_index_sql, open_readonly
from streamd.journal.dedup import dedup_path
from tests.journals import generated_batches, generated_journal, rows, write_batches


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated_journal(tmp_path_factory.mktemp("leads") / "journal.db", 4000)


def test_every_new_event_with_a_lead_is_indexed_once(journal: Path) -> None:
    events = rows(str(journal), "SELECT lead_id, seq FROM events WHERE lead_id IS NOT NULL")
    indexed = rows(dedup_path(str(journal)), "SELECT lead_id, seq FROM lead_index")
    assert len(events) > 1000 and sorted(indexed) == sorted(events)
    # Sorted runs, each covering a seq range; the state says every event is covered.
    runs = rows(dedup_path(str(journal)), "SELECT run, first_seq, last_seq FROM lead_runs")
    assert runs and all(first <= last for _, first, last in runs)  # type: ignore[operator]
    assert rows(dedup_path(str(journal)), "SELECT covered_seq FROM lead_state") == rows(
        str(journal), "SELECT max(seq) FROM events"
    )
    # The journal itself no longer carries the index (migration 0005).
    names = {r[0] for r in rows(str(journal), "SELECT name FROM sqlite_master WHERE type='index'")}
    assert "events_lead" not in names


def test_duplicates_add_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    batches = generated_batches(1000)
    write_batches(path, batches)
    write_batches(path, batches)  # every event again: all duplicates
    assert rows(dedup_path(str(path)), "SELECT count(*) FROM lead_index") == rows(
        str(path), "SELECT count(*) FROM events WHERE lead_id IS NOT NULL"
    )


def _lead_with_events(journal: Path) -> int:
    lead = rows(
        str(journal),
        "SELECT lead_id FROM events WHERE lead_id IS NOT NULL GROUP BY lead_id "
        "ORDER BY count(*) DESC LIMIT 1",
    )[0][0]
    assert isinstance(lead, int)
    return lead


def test_lead_filters_answer_the_same_with_and_without_the_index(journal: Path) -> None:
    lead = _lead_with_events(journal)
    filters = Filters(lead_ids=(lead,))
    expected = [r[0] for r in rows(str(journal), "SELECT seq FROM events WHERE lead_id = ?", lead)]
    conn = open_readonly(str(journal))
    try:
        assert lead_index_sql(conn, filters.lead_ids)[0]  # the index is in use
        assert [r[0] for r in iter_events(conn, filters)] == expected
        assert count_events(conn, filters) == len(expected)
        extra, params = lead_index_sql(conn, (lead,))
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE seq > ? AND seq <= ? "
                "AND lead_id = ?" + extra,
                (0, 10**9, lead, *params),
            )
        )
        # The index's candidates drive rowid lookups; no scan of the events.
        assert "SEARCH dedup.lead_index USING PRIMARY KEY (run=? AND lead_id=?)" in plan, plan
        assert "SEARCH events USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert "SCAN events" not in plan, plan
    finally:
        conn.close()


def test_events_not_indexed_yet_are_found_by_the_tail_scan(tmp_path: Path) -> None:
    path = generated_journal(tmp_path / "journal.db", 3000)
    lead = _lead_with_events(path)
    expected = [r[0] for r in rows(str(path), "SELECT seq FROM events WHERE lead_id = ?", lead)]
    cut = expected[len(expected) // 2]
    # As if the indexer had written runs only up to ``cut`` (a crash lost its buffer).
    with sqlite3.connect(dedup_path(str(path))) as index:
        index.execute("DELETE FROM lead_index WHERE seq > ?", (cut,))
        index.execute("UPDATE lead_state SET covered_seq = ?", (cut,))
    conn = open_readonly(str(path))
    try:
        assert [r[0] for r in iter_events(conn, Filters(lead_ids=(lead,)))] == expected
    finally:
        conn.close()


def test_a_missing_or_foreign_index_file_means_a_scan_with_the_same_answer(tmp_path: Path) -> None:
    path = generated_journal(tmp_path / "journal.db", 2000)
    lead = _lead_with_events(path)
    expected = [r[0] for r in rows(str(path), "SELECT seq FROM events WHERE lead_id = ?", lead)]
    with sqlite3.connect(dedup_path(str(path))) as index:
        index.execute("UPDATE dedup_state SET journal_id = 'another journal'")
    conn = open_readonly(str(path))
    try:
        assert lead_index_sql(conn, (lead,)) == ("", [])
        assert [r[0] for r in iter_events(conn, Filters(lead_ids=(lead,)))] == expected
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(dedup_path(str(path)) + suffix).unlink(missing_ok=True)
    conn = open_readonly(str(path))
    try:
        assert [r[0] for r in iter_events(conn, Filters(lead_ids=(lead,)))] == expected
    finally:
        conn.close()
    # The writer's next start rebuilds the whole file, the lead index included.
    write_batches(path, [])
    assert rows(dedup_path(str(path)), "SELECT count(*) FROM lead_index") == rows(
        str(path), "SELECT count(*) FROM events WHERE lead_id IS NOT NULL"
    )


def test_an_index_file_from_before_the_lead_index_is_filled_in(tmp_path: Path) -> None:
    path = generated_journal(tmp_path / "journal.db", 3000)
    with sqlite3.connect(dedup_path(str(path))) as index:
        for table in ("lead_index", "lead_runs", "lead_state"):
            index.execute(f"DROP TABLE {table}")
    conn = open_readonly(str(path))
    try:
        assert lead_index_sql(conn, (1,)) == ("", [])  # not usable: the scan answers
    finally:
        conn.close()
    write_batches(path, [])  # a start: the writer fills it in from the journal
    assert sorted(rows(dedup_path(str(path)), "SELECT lead_id, seq FROM lead_index")) == sorted(
        rows(str(path), "SELECT lead_id, seq FROM events WHERE lead_id IS NOT NULL")
    )


def test_a_crash_loses_only_the_unwritten_run_and_the_next_start_rebuilds_it(
    tmp_path: Path,
) -> None:
    path = generated_journal(tmp_path / "journal.db", 3000)
    cut = 1000
    with sqlite3.connect(dedup_path(str(path))) as index:
        index.execute("DELETE FROM lead_index WHERE seq > ?", (cut,))
        index.execute("UPDATE lead_state SET covered_seq = ?", (cut,))
    write_batches(path, [])
    assert sorted(rows(dedup_path(str(path)), "SELECT lead_id, seq FROM lead_index")) == sorted(
        rows(str(path), "SELECT lead_id, seq FROM events WHERE lead_id IS NOT NULL")
    )


def test_insert_pairs_keeps_every_64_bit_value_and_the_order(tmp_path: Path) -> None:
    """The indexer's one-statement inserts (JSON pairs parsed by SQLite) lose no bit:
    both ends of the signed range, zero and -1 come back as the same integers."""
    from streamd.journal.dedup import insert_pairs

    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE d (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    conn.execute("CREATE TABLE r (run INTEGER, a INTEGER, b INTEGER, PRIMARY KEY (run, a, b))")
    edges = [(-(2**63), 1), (2**63 - 1, 2), (0, 3), (-1, 4), (2**53 + 1, 5)]
    insert_pairs(conn, "d", edges)
    insert_pairs(conn, "d", [(0, 99)])  # OR IGNORE: the first owner stays
    got = conn.execute("SELECT k, typeof(k), v, typeof(v) FROM d ORDER BY v").fetchall()
    assert got == [(k, "integer", v, "integer") for k, v in edges]
    insert_pairs(conn, "r", iter([(5, 10), (7, 11)]), first=3)
    assert conn.execute("SELECT * FROM r ORDER BY rowid").fetchall() == [(3, 5, 10), (3, 7, 11)]
    insert_pairs(conn, "d", [])  # nothing to insert is not an error
    assert conn.execute("SELECT count(*) FROM d").fetchone() == (5,)
