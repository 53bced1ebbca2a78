"""The type index in the derived index file: every event's (stream, type) as a code in
sorted runs, written after each commit, rebuilt when missing, filled in for a journal or
an index file from before it, and used by stream and type filters with the same answers
as a scan."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streamd.core import decode_delivery
from streamd.inspect.filters import Filters
from streamd.inspect.reader import (
    count_events,
    iter_events,
    last_events,
    open_readonly,
    type_windows,
)
from streamd.journal import Batch, dedup
from streamd.journal.dedup import dedup_path, type_code
from streamd.journal.schema import SCHEMA_VERSION
from tests.journals import (
    fixture_batches,
    generated_batches,
    generated_journal,
    rows,
    write_batches,
)

RUN = 400  # entries per run in these tests (at least: the indexer merges generations)
GENERATION = 100  # keys the writer collects before the indexer writes them, here
ENTRIES = "SELECT t.code, j.value FROM type_index AS t, json_each(t.seqs) AS j"


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dedup, "TYPE_RUN", RUN)
        path = tmp_path_factory.mktemp("types") / "journal.db"
        write_batches(path, [*fixture_batches(), _untyped()])  # every stream, and no type
        yield generated_journal(path, 4000, GENERATION, batch=100)


def _untyped() -> Batch:
    """Two events without a type (stream "other"): indexed under the name ''."""
    body = b'[{"id": "untyped-1", "specversion": "1.0"}, {"id": "untyped-2", "data": {}}]'
    delivery = decode_delivery(body)
    assert [e.type for e in delivery.events] == [None, None]
    return Batch("adobe-io", "2026-05-04T00:00:00.000Z", delivery.shape, delivery.events)


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "TYPE_RUN", RUN)


def test_every_new_event_is_indexed_once_under_its_code(journal: Path) -> None:
    index = dedup_path(str(journal))
    events = rows(journal, "SELECT stream, type, seq FROM events")
    assert len(events) > 4000
    assert sorted(rows(index, ENTRIES)) == sorted(
        (type_code(s, t), seq)  # type: ignore[arg-type]
        for s, t, seq in events
    )
    names = rows(index, "SELECT stream, type, code FROM type_names")
    assert sorted(names) == sorted(
        {(s, t or "", type_code(s, t)) for s, t, _ in events}  # type: ignore[arg-type]
    )
    assert any(t is None for _, t, _ in events)  # a NULL type is listed as ''
    runs = rows(index, "SELECT run, first_seq, last_seq FROM type_runs ORDER BY run")
    assert len(runs) >= 5
    # Runs follow each other in seq order and never overlap: the reader's windows.
    for (_, _, last), (_, first, _) in itertools.pairwise(runs):
        assert last < first  # type: ignore[operator]
    assert rows(index, "SELECT covered_seq FROM type_state") == rows(
        journal, "SELECT max(seq) FROM events"
    )
    # The journal itself no longer carries the index (migration 0007).
    names_in_journal = {r[0] for r in rows(journal, "SELECT name FROM sqlite_master")}
    assert "events_stream_type" not in names_in_journal


def test_duplicates_add_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    batches = generated_batches(1000)
    write_batches(path, batches)
    write_batches(path, batches)  # every event again: all duplicates
    assert rows(dedup_path(str(path)), f"SELECT count(*) FROM ({ENTRIES})") == rows(
        path, "SELECT count(*) FROM events"
    )


def _rare_type(journal: Path) -> str:
    found = rows(
        journal,
        "SELECT type FROM events WHERE stream = 'activity' GROUP BY type "
        "HAVING count(*) BETWEEN 2 AND 40 ORDER BY count(*) LIMIT 1",
    )
    assert found, "the generated journal has no rare activity type"
    return str(found[0][0])


def _filters(journal: Path) -> list[Filters]:
    rare = _rare_type(journal)
    return [
        Filters(types=(rare,)),
        Filters(types=("com.adobe.platform.marketo.activity.standard.visitwebpage", rare)),
        Filters(types=("*.openemail",)),  # a glob: resolved against the names
        Filters(types=("com.adobe.platform.marketo.activity.*",)),
        Filters(streams=("audit",)),
        Filters(streams=("notification", "audit")),
        Filters(streams=("other",)),  # the untyped events
        Filters(types=("*",)),  # every typed event, none of the untyped
        Filters(streams=("activity",), types=(rare,)),
        Filters(streams=("audit",), types=(rare,)),  # nothing matches both
        Filters(types=("no.such.type",)),
        Filters(types=(rare,), sources=("nowhere",)),  # other filters still apply
    ]


def _scan(journal: Path, filters: Filters) -> list[int]:
    """The answer without any index: the filter's own SQL over every event."""
    condition, params = filters.where_sql()
    return [
        int(r[0])  # type: ignore[call-overload]
        for r in rows(
            journal, f"SELECT seq FROM events NOT INDEXED WHERE {condition} ORDER BY seq", *params
        )
    ]


def test_stream_and_type_filters_answer_as_a_scan_does(journal: Path) -> None:
    conn = open_readonly(str(journal))
    try:
        for filters in _filters(journal):
            expected = _scan(journal, filters)
            assert [r[0] for r in iter_events(conn, filters)] == expected, filters
            assert [r[0] for r in iter_events(conn, filters, page=7)] == expected, filters
            assert [r[0] for r in iter_events(conn, filters, limit=5)] == expected[:5], filters
            assert count_events(conn, filters) == len(expected), filters
            assert [r[0] for r in last_events(conn, filters, 9)] == expected[-9:], filters
            middle = expected[len(expected) // 2] if expected else 100
            assert [r[0] for r in iter_events(conn, filters, after=middle, upto=middle + 900)] == [
                s for s in expected if middle < s <= middle + 900
            ], filters
    finally:
        conn.close()


def test_a_rare_type_reads_only_the_runs_that_hold_it(journal: Path) -> None:
    rare = _rare_type(journal)
    conn = open_readonly(str(journal))
    try:
        newest = int(conn.execute("SELECT max(seq) FROM events").fetchone()[0])
        runs = conn.execute("SELECT count(*) FROM dedup.type_runs").fetchone()[0]
        windows = type_windows(conn, Filters(types=(rare,)), 0, newest)
        holding = rows(
            dedup_path(str(journal)),
            "SELECT count(DISTINCT run) FROM type_index WHERE code = ?",
            type_code("activity", rare),
        )[0][0]
        assert len(windows) == holding < runs  # every window is a run that holds it
        a, b, extra, params = windows[0]
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE seq > ? AND seq <= ? "
                "AND stream = 'activity' AND type = ?" + extra,
                (a, b, rare, *params),
            )
        )
        # The run's entries drive rowid lookups; no scan of the events.
        assert "SEARCH t USING INDEX sqlite_autoindex_type_index_1 (run=? AND code=?)" in plan, plan
        assert "SCAN events" not in plan, plan
        # No stream or type filter: one window, the whole range.
        assert type_windows(conn, Filters(sources=("x",)), 0, newest) == [(0, newest, "", [])]
    finally:
        conn.close()


def test_a_name_sharing_a_code_finds_only_its_own_events(journal: Path, tmp_path: Path) -> None:
    """Two (stream, type) pairs with one 64-bit code share their entries; the reader's own
    filter tells them apart."""
    path = tmp_path / "journal.db"
    for source, target in ((journal, path), (dedup_path(str(journal)), dedup_path(str(path)))):
        for suffix in ("", "-wal"):
            if Path(f"{source}{suffix}").exists():
                shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    rare = _rare_type(journal)
    with sqlite3.connect(dedup_path(str(path))) as index:
        index.execute(
            "INSERT INTO type_names VALUES ('activity', 'com.example.same.code', ?)",
            (type_code("activity", rare),),
        )
    conn = open_readonly(str(path))
    try:
        assert list(iter_events(conn, Filters(types=("com.example.same.code",)))) == []
        assert [r[0] for r in iter_events(conn, Filters(types=(rare,)))] == _scan(
            journal, Filters(types=(rare,))
        )
    finally:
        conn.close()


def test_events_not_indexed_yet_are_found_by_the_tail_scan(
    small_runs: None, tmp_path: Path
) -> None:
    path = generated_journal(tmp_path / "journal.db", 3000, GENERATION, batch=100)
    filters = Filters(types=(_rare_type(path),))
    expected = _scan(path, filters)
    runs = rows(dedup_path(str(path)), "SELECT run, last_seq FROM type_runs ORDER BY run")
    assert len(runs) >= 3
    run, cut = (int(v) for v in runs[len(runs) // 2])  # type: ignore[call-overload]
    # As if the indexer had written runs only up to ``cut`` (a crash lost its buffer).
    with sqlite3.connect(dedup_path(str(path))) as index:
        index.execute("DELETE FROM type_index WHERE run > ?", (run,))
        index.execute("DELETE FROM type_runs WHERE run > ?", (run,))
        index.execute("UPDATE type_state SET covered_seq = ?", (cut,))
    assert any(seq > cut for seq in expected)  # some matches are past the index
    conn = open_readonly(str(path))
    try:
        assert [r[0] for r in iter_events(conn, filters)] == expected
        assert [r[0] for r in last_events(conn, filters, 3)] == expected[-3:]
        assert type_windows(conn, filters, 0, 3000)[-1] == (cut, 3000, "", [])
    finally:
        conn.close()
    # The next start puts the lost entries back, from the journal.
    write_batches(path, [])
    assert sorted(int(r[1]) for r in rows(dedup_path(str(path)), ENTRIES)) == [  # type: ignore[call-overload]
        r[0] for r in rows(path, "SELECT seq FROM events ORDER BY seq")
    ]


def test_a_missing_or_foreign_index_file_means_a_scan_with_the_same_answer(tmp_path: Path) -> None:
    path = generated_journal(tmp_path / "journal.db", 2000)
    filters = Filters(types=(_rare_type(path),))
    expected = _scan(path, filters)
    with sqlite3.connect(dedup_path(str(path))) as index:
        index.execute("UPDATE dedup_state SET journal_id = 'another journal'")
    conn = open_readonly(str(path))
    try:
        assert type_windows(conn, filters, 0, 2000) == [(0, 2000, "", [])]
        assert [r[0] for r in iter_events(conn, filters)] == expected
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(dedup_path(str(path)) + suffix).unlink(missing_ok=True)
    conn = open_readonly(str(path))
    try:
        assert [r[0] for r in iter_events(conn, filters)] == expected
        assert count_events(conn, filters) == len(expected)
    finally:
        conn.close()
    write_batches(path, [])  # the writer's next start rebuilds the file, types included
    assert rows(dedup_path(str(path)), f"SELECT count(*) FROM ({ENTRIES})") == rows(
        path, "SELECT count(*) FROM events"
    )


def test_a_journal_and_index_file_from_before_the_type_index_are_upgraded(tmp_path: Path) -> None:
    """Version 6: the (stream, type) index in journal.db, none in the derived file. The
    first start drops the one (0007) and fills in the other from the journal."""
    path = generated_journal(tmp_path / "journal.db", 3000)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE INDEX events_stream_type ON events(stream, type)")
        conn.execute("DELETE FROM migrations WHERE name >= '0007'")
        conn.execute("DELETE FROM meta WHERE key = 'counts_seq'")
        conn.execute("PRAGMA user_version = 6")
    with sqlite3.connect(dedup_path(str(path))) as index:
        for table in ("type_index", "type_runs", "type_names", "type_state"):
            index.execute(f"DROP TABLE {table}")
    filters = Filters(types=(_rare_type(path),))
    conn = open_readonly(str(path))
    try:
        # An index file without the tables: one window, the scan answers.
        assert type_windows(conn, filters, 0, 3000) == [(0, 3000, "", [])]
        assert [r[0] for r in iter_events(conn, filters)] == _scan(path, filters)
    finally:
        conn.close()
    write_batches(path, [])  # a start: migration 0007, then the type index is filled in
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(path, "SELECT name FROM sqlite_master WHERE name = 'events_stream_type'") == []
    assert sorted(rows(dedup_path(str(path)), ENTRIES)) == sorted(
        (type_code(s, t), seq)  # type: ignore[arg-type]
        for s, t, seq in rows(path, "SELECT stream, type, seq FROM events")
    )
    conn = open_readonly(str(path))
    try:
        assert len(type_windows(conn, filters, 0, 3000)) >= 1
        assert [r[0] for r in iter_events(conn, filters)] == _scan(path, filters)
    finally:
        conn.close()


def test_a_flood_of_distinct_types_keeps_the_caches_bounded_and_every_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A sender inventing a new type per event: the code caches (the writer's, at start)
    and the indexer's memory of written names start over at their bounds (here 8 and
    16), and still every type is named and every event found by its type."""
    monkeypatch.setattr(dedup, "MAX_TYPE_CODES", 8)
    monkeypatch.setattr(dedup, "_MAX_NAMED", 16)
    monkeypatch.setattr(dedup, "TYPE_RUN", 50)
    batches = []
    for b in range(12):
        items = [
            {
                "id": f"flood-{b}-{i}",
                "specversion": "1.0",
                "type": f"com.example.t{(b * 7 + i) % 90}",
            }
            for i in range(20)
        ]
        delivery = decode_delivery(orjson.dumps(items))
        batches.append(
            Batch("adobe-io", f"2026-05-04T00:00:{b:02d}.000Z", "batch", delivery.events)
        )
    path = tmp_path / "journal.db"
    write_batches(path, batches)
    events = rows(path, "SELECT stream, type, seq FROM events")
    assert len(events) == 240 and len({t for _, t, _ in events}) == 90
    index = dedup_path(str(path))
    assert sorted(rows(index, "SELECT stream, type, code FROM type_names")) == sorted(
        {(s, t, type_code(s, t)) for s, t, _ in events}  # type: ignore[arg-type]
    )
    conn = open_readonly(str(path))
    try:
        for event_type in ("com.example.t0", "com.example.t45", "com.example.t89"):
            filters = Filters(types=(event_type,))
            assert [r[0] for r in iter_events(conn, filters)] == _scan(path, filters)
    finally:
        conn.close()


def test_a_damaged_run_is_scanned_and_the_answer_is_the_same(
    small_runs: None, tmp_path: Path
) -> None:
    """The derived file is an input too: a run whose seqs are not a JSON array (truncated,
    or not JSON at all) is read by a scan of its seq range, not through the broken row;
    before, every stream or type filter over it failed with "malformed JSON"."""
    path = generated_journal(tmp_path / "journal.db", 3000, GENERATION, batch=100)
    index = dedup_path(str(path))
    runs = [r[0] for r in rows(index, "SELECT run FROM type_runs ORDER BY run")]
    assert len(runs) >= 3
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE type_index SET seqs = '[1, 2,' WHERE run = ?", (runs[0],))
        conn.execute("UPDATE type_index SET seqs = '{\"not\": 1}' WHERE run = ?", (runs[1],))
    conn = open_readonly(str(path))
    try:
        for filters in (Filters(streams=("activity",)), Filters(types=(_rare_type(path),))):
            expected = _scan(path, filters)
            assert [r[0] for r in iter_events(conn, filters)] == expected, filters
            assert count_events(conn, filters) == len(expected), filters
            assert [r[0] for r in last_events(conn, filters, 5)] == expected[-5:], filters
        windows = type_windows(conn, Filters(streams=("activity",)), 0, 3000)
        assert [w[2] for w in windows[:2]] == ["", ""]  # the damaged runs: scanned
        assert all(w[2] for w in windows[2:-1])  # the others: through the index
    finally:
        conn.close()
