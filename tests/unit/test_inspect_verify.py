"""journal verify: healthy journals pass; each kind of damage fails with a precise report."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamd.cli import main
from tests.journals import fixture_journal, generated_journal


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_journal(tmp_path_factory.mktemp("verify") / "journal.db")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated_journal(tmp_path_factory.mktemp("verify-gen") / "journal.db", 5000, batch=250)


def copy_of(journal: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.db"
    shutil.copyfile(journal, target)  # closed by the writer: everything is in the main file
    return target


def verify(
    capsys: pytest.CaptureFixture[str], path: Path, *flags: str
) -> tuple[int, dict[str, object]]:
    status = main(["journal", "verify", "--journal", str(path), "--format", "jsonl", *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    report: dict[str, object] = json.loads(out)
    return status, report


def problems(report: dict[str, object]) -> dict[str, list[str]]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return {c["name"]: c["problems"] for c in checks if c["problems"]}


def sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("flags", [[], ["--quick"]])
def test_healthy_journals_pass(
    capsys: pytest.CaptureFixture[str], pristine: Path, generated: Path, flags: list[str]
) -> None:
    for path, events in ((pristine, 14), (generated, 5000)):
        status, report = verify(capsys, path, *flags)
        assert status == 0, report
        assert report["healthy"] is True and report["events_checked"] == events
        assert problems(report) == {}


def test_the_text_report(capsys: pytest.CaptureFixture[str], pristine: Path) -> None:
    assert main(["journal", "verify", "--journal", str(pristine), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(": 14 events checked")
    assert "  dedup keys  ok" in out and out.endswith("healthy\n")


Damage = Callable[[Path], None]


def _duplicate_key(path: Path) -> None:
    # What a broken dedup would do: the event of seq 3 journaled again, later.
    sql(
        path,
        "INSERT INTO events SELECT 15, event_key, stream, type, munchkin_id, "
        "activity_type_id, lead_id, occurred_at, received_at, source, 7, raw "
        "FROM events WHERE seq = 3",
    )


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            _duplicate_key,
            {
                "dedup keys": [
                    "event key '8f1c9a52-3b7e-4c1d-a2f0-000000000103' is journaled 2 times "
                    "(seq 3,15)"
                ],
                "deliveries": [
                    "delivery 7: records 0 accepted events, the journal holds 1",
                ],
            },
        ),
        (
            lambda p: sql(p, 'UPDATE events SET raw = \'{"id": "x", broken\' WHERE seq = 5'),
            {"rows": ["seq 5: raw JSON does not decode: "]},
        ),
        (
            lambda p: sql(p, "UPDATE events SET lead_id = 99 WHERE seq = 2"),
            {
                "rows": [
                    "seq 2: the columns disagree with the raw JSON: lead_id is 99, "
                    "the JSON says 4412"
                ]
            },
        ),
        (
            lambda p: sql(p, "UPDATE events SET event_key = 'other' WHERE seq = 12"),
            {
                "rows": [
                    "seq 12: the columns disagree with the raw JSON: event_key is 'other', "
                    "the JSON says 'b5c0e3a4-6a0e-4a8f-9d55-0b7c2f000201'"
                ]
            },
        ),
        (
            lambda p: sql(p, "UPDATE events SET raw = '[1, 2]' WHERE seq = 14"),
            {"rows": ["seq 14: the columns disagree with the raw JSON: as an event: "]},
        ),
        (
            lambda p: sql(p, "DELETE FROM deliveries WHERE id = 2"),
            {"deliveries": ["seq 5: delivery 2 does not exist"]},
        ),
        (
            lambda p: sql(p, "UPDATE deliveries SET accepted = 5 WHERE id = 3"),
            {"deliveries": ["delivery 3: records 5 accepted events, the journal holds 6"]},
        ),
        (
            lambda p: sql(p, "UPDATE migrations SET name = '0001_other' WHERE rowid = 1"),
            {
                "schema": [
                    "migrations recorded ['0001_other', '0002_sinks', '0003_inspect_indexes', "
                    "'0004_pull', '0005_lead_index_derived', '0006_sink_replays', "
                    "'0007_type_index_derived', '0008_counts_seq'], expected "
                    "['0001_initial', '0002_sinks', '0003_inspect_indexes', '0004_pull', "
                    "'0005_lead_index_derived', '0006_sink_replays', '0007_type_index_derived', "
                    "'0008_counts_seq'] for version 8"
                ]
            },
        ),
    ],
)
def test_damage_is_reported_precisely(
    capsys: pytest.CaptureFixture[str],
    pristine: Path,
    tmp_path: Path,
    damage: Damage,
    expected: dict[str, list[str]],
) -> None:
    path = copy_of(pristine, tmp_path)
    damage(path)
    status, report = verify(capsys, path)
    assert status == 1
    assert report["healthy"] is False
    found = problems(report)
    assert set(found) == set(expected), found
    for name, messages in expected.items():
        assert len(found[name]) == len(messages), found[name]
        for got, want in zip(found[name], messages, strict=True):
            assert got.startswith(want), (got, want)


def _flip_a_page(path: Path, btree: str) -> None:
    """Flip the header bytes of one leaf page of ``btree`` (found with SQLite's dbstat)."""
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (page,) = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' LIMIT 1 OFFSET 5",
            (btree,),
        ).fetchone()
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    start = (page - 1) * page_size
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    path.write_bytes(bytes(data))


def test_a_flipped_table_page_is_placed_precisely(
    capsys: pytest.CaptureFixture[str], generated: Path, tmp_path: Path
) -> None:
    path = copy_of(generated, tmp_path)
    _flip_a_page(path, "events")
    status, report = verify(capsys, path)
    assert status == 1 and report["healthy"] is False
    found = problems(report)
    # SQLite cannot finish its own check over a page whose header is garbage; verify
    # names the b-tree, and its scan of events places the page after the last good seq.
    assert found["integrity"] == [
        "integrity_check could not run: database disk image is malformed",
        "table events is damaged: database disk image is malformed",
    ]
    (stopped,) = found["deliveries"]
    assert stopped.startswith("reading events stopped after seq ")
    assert 0 < int(stopped.split()[5].rstrip(":")) < 5000
    status, report = verify(capsys, path, "--quick")
    assert status == 1 and problems(report)["integrity"][0].startswith("quick_check ")


def test_a_flipped_index_page_names_the_index(
    capsys: pytest.CaptureFixture[str], generated: Path, tmp_path: Path
) -> None:
    path = copy_of(generated, tmp_path)
    # journal.db's own indexes are a page or two (the (stream, type) index is in the
    # derived file since 0007): an index an operator added, on a big table, is damaged.
    sql(path, "CREATE INDEX events_by_munchkin ON events(munchkin_id)")
    _flip_a_page(path, "events_by_munchkin")
    status, report = verify(capsys, path)
    assert status == 1
    assert problems(report) == {
        "integrity": [
            "integrity_check could not run: database disk image is malformed",
            "index events_by_munchkin is damaged: database disk image is malformed "
            "(REINDEX events_by_munchkin rebuilds it from the table)",
        ]
    }


def test_not_a_journal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00" * 10 + b"not sqlite at all" * 1000)
    status, report = verify(capsys, garbage)
    assert status == 1 and list(problems(report)) == ["open"]
    status, report = verify(capsys, tmp_path / "absent.db")
    assert status == 1 and "no journal here" in problems(report)["open"][0]


def test_sink_cursors_outside_the_journal_are_reported(
    capsys: pytest.CaptureFixture[str], pristine: Path, tmp_path: Path
) -> None:
    path = copy_of(pristine, tmp_path)
    sql(
        path,
        "INSERT INTO sinks (name, cursor, state, reason, last_error, paused_for_failures, "
        "confirmed, updated_at) VALUES ('ok', 14, 'active', NULL, NULL, 0, 0, 'now')",
        "INSERT INTO sinks (name, cursor, state, reason, last_error, paused_for_failures, "
        "confirmed, updated_at) VALUES ('ahead', 99, 'active', NULL, NULL, 0, 0, 'now')",
        "INSERT INTO dead_letters (sink, seq, event_key, stream, reason, attempts, failed_at, "
        "raw) VALUES ('ok', 500, 'k', 'other', 'x', 1, 'now', '{}')",
    )
    status, report = verify(capsys, path)
    assert status == 1
    assert problems(report) == {
        "sink cursors": [
            "sink 'ahead': cursor 99 is outside 0..14",
            "dead letter 1 of 'ok': seq 500 is outside 1..14",
        ]
    }
    # stats shows each sink's lag
    assert main(["journal", "stats", "--journal", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["cursor"], s["lag_events"]) for s in stats["sinks"]] == [
        ("ahead", 99, 0),
        ("ok", 14, 0),
    ]
    sql(path, "UPDATE sinks SET cursor = 3 WHERE name = 'ok'")
    assert main(["journal", "stats", "--journal", str(path), "--json"]) == 0
    behind = json.loads(capsys.readouterr().out)["sinks"][1]
    assert (behind["lag_events"], behind["lag_seconds"] > 0) == (11, True)


class _CommitsAfterTheLastPage:
    """verify's connection, but when its scan of events reads an empty page (the end),
    another connection commits one more delivery with its events first: a daemon
    writing while verify reads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn, self._path, self.committed = conn, path, False

    def execute(self, statement: str, *args: Any) -> object:
        cursor = self._conn.execute(statement, *args)
        if not statement.startswith("SELECT seq,") or self.committed:
            return cursor
        rows = cursor.fetchall()
        if not rows:
            self.committed = True
            sql(
                self._path,
                "INSERT INTO deliveries SELECT id + 1000000, received_at, source, shape, "
                "message_id, adobe_event_id, retry_count, events, accepted, duplicates "
                "FROM deliveries WHERE id = (SELECT max(id) FROM deliveries)",
                "INSERT INTO events SELECT seq + 1000000, event_key || '-again', stream, type, "
                "munchkin_id, activity_type_id, lead_id, occurred_at, received_at, source, "
                "delivery + 1000000, raw FROM events "
                "WHERE delivery = (SELECT max(delivery) FROM events)",
            )
        return iter(rows)

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


def test_a_delivery_committed_while_verify_reads_is_not_a_problem(
    generated: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamd.inspect import reader
    from streamd.inspect import verify as module

    path = copy_of(generated, tmp_path)
    real = reader.open_readonly
    wrapped: list[_CommitsAfterTheLastPage] = []

    def opening(journal: str, **kwargs: int) -> object:
        wrapped.append(_CommitsAfterTheLastPage(real(journal, **kwargs), path))
        return wrapped[-1]

    monkeypatch.setattr(module, "open_readonly", opening)
    status, report = verify(capsys, path)
    assert wrapped and wrapped[0].committed  # the commit did land during the scan
    assert status == 0 and report["healthy"] is True, problems(report)
    assert report["events_checked"] == 5000  # what was there when verify began
