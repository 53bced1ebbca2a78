"""Every read-only open of the journal works in a data directory whose name holds URI
characters (space, '#', '?', '%'): one ``sqlite_uri`` builds them all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamd.drain import store
from streamd.emit.verify import verify
from streamd.inspect.backup import backup_journal
from streamd.inspect.filters import Filters
from streamd.inspect.reader import count_events, get_event, open_readonly
from streamd.journal import journal_stats, sqlite_uri
from streamd.journal.dedup import dedup_path
from streamd.ops.discovery import journal_id_of
from tests.journals import FIXTURE_EVENTS, fixture_journal

# '%41' would decode to 'A' if '%' were not escaped; '?' and '#' would end the path.
ODD = "data dir #1 ?x %41"


@pytest.mark.parametrize(
    ("path", "mode", "uri"),
    [
        ("/var/lib/streamd/journal.db", "ro", "file:/var/lib/streamd/journal.db?mode=ro"),
        ("/d/a b/j.db", "ro", "file:/d/a%20b/j.db?mode=ro"),
        ("/d/#1?x%41/j.db", "rwc", "file:/d/%231%3Fx%2541/j.db?mode=rwc"),
        ("/d/é/j.db", "ro", "file:/d/%C3%A9/j.db?mode=ro"),
    ],
)
def test_the_path_is_percent_encoded(path: str, mode: str, uri: str) -> None:
    assert sqlite_uri(path, mode=mode) == uri  # type: ignore[arg-type]


def test_a_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_uri("journal.db") == f"file:{tmp_path}/journal.db?mode=ro"


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("uri") / ODD
    directory.mkdir()
    return fixture_journal(directory / "journal.db")


def test_the_drain_reader_and_stats_open_it(journal: Path) -> None:
    conn = store.open_reader(str(journal))  # journal/schema.py's connect(readonly=True)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == FIXTURE_EVENTS
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM events")
    finally:
        conn.close()
    assert journal_stats(str(journal))["events"] == FIXTURE_EVENTS


def test_the_inspection_reader_and_its_dedup_index_open_it(journal: Path) -> None:
    assert Path(dedup_path(str(journal))).exists()
    conn = open_readonly(str(journal))
    try:
        assert count_events(conn, Filters()) == FIXTURE_EVENTS
        key = conn.execute("SELECT event_key FROM events WHERE seq = 3").fetchone()[0]
        row = get_event(conn, key, dedup_path(str(journal)))
        assert row is not None and row[0] == 3
    finally:
        conn.close()


def test_the_admin_client_reads_the_journal_id(journal: Path) -> None:
    conn = sqlite3.connect(journal)
    try:
        expected = conn.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()[0]
    finally:
        conn.close()
    assert journal_id_of(str(journal)) == expected


def test_the_emulators_verify_opens_it(journal: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(journal)
    try:
        keys = [k for (k,) in conn.execute("SELECT event_key FROM events")]
    finally:
        conn.close()
    acked = tmp_path / "acked.txt"
    acked.write_text("".join(k + "\n" for k in keys))
    verdict = verify(journal, acked)
    assert verdict.ok and verdict.journal_events == FIXTURE_EVENTS


def test_a_backup_into_the_same_directory(journal: Path) -> None:
    newest, report = backup_journal(str(journal), str(journal.parent / "copy #2?.db"))
    assert newest == FIXTURE_EVENTS and report.healthy
    assert (journal.parent / "copy #2?.db").exists()
