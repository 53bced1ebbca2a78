"""grep / find / show / query / tail on a journal of the contract fixtures, through ``main()``."""

from __future__ import annotations

import hashlib
import json
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamd.cli import main
from streamd.inspect.commands import follow
from streamd.inspect.filters import Filters
from streamd.inspect.output import colour_enabled
from streamd.inspect.reader import open_readonly
from streamd.journal.schema import SCHEMA_VERSION
from tests.conftest import FIXTURES
from tests.journals import FIXTURE_EVENTS, fixture_journal, generated_batches, write_batches

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_journal(tmp_path_factory.mktemp("inspect") / "journal.db")


@pytest.fixture
def run(journal: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str, path: Path | None = None) -> tuple[int, str, str]:
        command, *rest = argv
        status = main(["journal", command, "--journal", str(path or journal), *rest])
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def fixture_events() -> dict[str, Any]:
    """Every event of the fixtures by key, as its JSON (legacy: the activity)."""
    events: dict[str, Any] = {}
    for path in FIXTURES.glob("*.json"):
        doc = json.loads(path.read_bytes())
        for item in doc if isinstance(doc, list) else [doc]:
            for activity in item.get("activities", []):
                events[activity["marketoGUID"]] = activity
            event = item.get("event", {})
            body = event.get("body", event)
            key = item.get("id") or body.get("id") or item.get("eventid") or item.get("event_id")
            if key:
                events[key] = item
    return events


def test_grep_prints_every_event_as_json_lines_verbatim(run: Run) -> None:
    status, out, err = run("grep")
    assert status == 0, err
    records = lines(out)
    assert [r["seq"] for r in records] == list(range(1, FIXTURE_EVENTS + 1))
    known = fixture_events()
    for r in records:
        assert r["event"] == known[r["event_key"]]
    assert records[1]["lead_id"] == 4412 and records[1]["source"] == "marketo-push"
    assert records[1]["received_at"] == "2026-05-01T10:00:00.000Z"
    assert set(records[0]) == {
        "seq", "event_key", "stream", "type", "munchkin_id", "activity_type_id", "lead_id",
        "occurred_at", "received_at", "source", "delivery", "event",
    }  # fmt: skip


def test_grep_table(run: Run) -> None:
    status, out, _ = run("grep", "--format", "table", "--lead", "4412")
    assert status == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["SEQ", "OCCURRED", "(UTC)"]
    assert row.split()[:6] == [
        "2", "2026-04-21", "15:28:41", "activity.standard.changedatavalue", "123-ABC-456", "13",
    ]  # fmt: skip
    assert "\x1b[" not in out  # not a terminal: no colours


@pytest.mark.parametrize(
    ("flags", "seqs"),
    [
        (["--lead", "4412"], [2]),
        (["--activity-type", "Change Data Value", "--lead", "4412", "--stream", "activity"], [2]),
        (["--activity-type", "10,11"], [5, 6, 7]),
        (["--type", "*.openemail"], [5, 6]),
        (["--type", "com.adobe.platform.marketo.activity.standard.visitwebpage"], [1, 8]),
        (["--type", "com.adobe.platform.marketo.audit.*"], [12, 13]),
        (["--stream", "audit,notification"], [12, 13, 14]),
        (["--source", "marketo-push"], [1, 2, 3, 4]),
        (["--munchkin", "284-XYZ-901"], []),
        (["--since", "2026-05-02", "--until", "2026-05-03"], [5, 6, 7, 8, 9, 10, 11, 12, 13]),
        (
            ["--since", "2026-05-02", "--until", "2026-05-03", "--clock", "occurred"],
            [5, 6, 7, 8, 9, 10, 11],
        ),
        (["--since", "2026-05-02T12:00Z", "--clock", "received"], [12, 13, 14]),
        (["--until", "2026-05-02T00:00Z", "--clock", "received"], [1, 2, 3, 4]),
        (["--where", "data.primaryAttributeValue=Spring*"], [5, 6, 7, 8, 9, 10, 11]),
        (["--where", "data.primaryAttributeValue=pricing*"], [1]),  # legacy: top level
        (["--where", "$.data.attributes[0].value=5012", "--lead", "2010"], [6]),
        (["--where", "event.data.eventAction=approve"], [13]),  # the old wrapper
        (["--where", "event.body.data.eventAction=approve"], [12]),
        (["--where", "data.primaryAttributeValue=Spring*", "--activity-type", "11"], [7]),
        (["--limit", "3"], [1, 2, 3]),
    ],
)
def test_filters_combined(run: Run, flags: list[str], seqs: list[int]) -> None:
    status, out, err = run("grep", *flags)
    assert status == 0, err
    assert [r["seq"] for r in lines(out)] == seqs
    status, out, _ = run("find", *flags, "--count")
    assert status == 0
    limit = int(flags[1]) if flags[0] == "--limit" else None
    assert json.loads(out) == {"count": FIXTURE_EVENTS if limit else len(seqs)}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--since", "yesterday"], "--since: 'yesterday' is not a duration or a time"),
        (["--lead", "4412 OR 1=1"], "--lead: '4412 OR 1=1' is not a whole number"),
        (["--where", "data.x'--=1"], '--where: "data.x\'--" is not a field path'),
        (["--where", "nothing"], "--where: 'nothing' is not PATH=VALUE"),
        (["--activity-type", "Open Mail"], "--activity-type: 'Open Mail' is neither an id"),
        (["--stream", "x"], "--stream: 'x' is not one of"),
        (["--since", "1h", "--until", "2h"], "is not before --until"),
    ],
)
def test_hostile_flags_exit_2_with_a_precise_message(
    run: Run, flags: list[str], message: str
) -> None:
    status, out, err = run("grep", *flags)
    assert status == 2
    assert out == ""
    assert err.startswith("streamd: ") and message in err
    assert "Traceback" not in err


def test_a_value_that_looks_like_sql_is_only_a_value(run: Run) -> None:
    status, out, _ = run("grep", "--source", "x' OR '1'='1", "--type", "'; DROP TABLE events;--")
    assert status == 0 and out == ""
    assert run("grep", "--count")[1] == f'{{"count":{FIXTURE_EVENTS}}}\n'


def test_missing_journal_and_foreign_file(run: Run, tmp_path: Path) -> None:
    status, _, err = run("grep", path=tmp_path / "nope.db")
    assert status == 1 and "no journal here" in err
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    status, _, err = run("grep", path=other)
    assert status == 1 and "not a streamd journal" in err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    status, _, err = run("tail", path=garbage)
    assert status == 1 and "journal error" in err and "Traceback" not in err


def test_show_by_seq_and_by_key(run: Run) -> None:
    status, out, _ = run("show", "2", "--format", "table")
    assert status == 0
    assert "event_key         8f1c9a52-3b7e-4c1d-a2f0-000000000102" in out
    assert '"activityType": "Change Data Value"' in out
    assert "message_id      50021" in out and "shape           legacy" in out
    status, out, _ = run("show", "3a1f4e2c-0d41-4b4e-9f7e-5f2d1c000011", "--format", "jsonl")
    record = json.loads(out)
    assert record["seq"] == 7 and record["event"]["data"]["leadId"] == "2011"
    assert record["delivery_row"]["shape"] == "cloudevent"
    assert record["delivery_row"]["accepted"] == 6


def test_show_unknown_and_hostile_ids(run: Run) -> None:
    status, _, err = run("show", "999")
    assert status == 1 and "no event with seq or id '999'" in err
    status, _, err = run("show", "x" * 1000)
    assert status == 2 and "at most 600" in err
    status, _, err = run("show", "a\x00b")
    assert status == 2


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        p = Path(str(path) + suffix)
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("DELETE FROM events", "DELETE events"),
        ("UPDATE events SET lead_id = 1", "UPDATE events"),
        ("INSERT INTO meta VALUES ('x', 'y')", "INSERT meta"),
        ("DROP TABLE events", "DROP: writes the schema"),
        ("CREATE TABLE x (a)", "CREATE: writes the schema"),
        ("CREATE TEMP TABLE x (a)", "CREATE: writes the schema"),
        ("PRAGMA query_only = OFF", "PRAGMA query_only = OFF"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode = DELETE"),
        ("ATTACH 'elsewhere.db' AS x", "ATTACH elsewhere.db"),
        ("VACUUM", ""),
        ("REINDEX", "REINDEX"),
        ("ANALYZE", "(ANALYZE "),
        ("SELECT * FROM pragma_cache_size", "(PRAGMA cache_size)"),
        ("SELECT * FROM pragma_writable_schema", "(PRAGMA writable_schema)"),
    ],
)
def test_query_refuses_writes_and_changes_nothing(
    run: Run, journal: Path, sql: str, refused: str
) -> None:
    before = _digest(journal)
    status, out, err = run("query", sql)
    assert status == 2, err
    assert out == ""
    assert err.startswith("streamd: query refused")
    assert refused in err and "nothing was changed" in err
    assert _digest(journal) == before
    assert not (journal.parent / "elsewhere.db").exists()


def test_query_reads(run: Run) -> None:
    status, out, _ = run("query", "SELECT stream, count(*) AS n FROM events GROUP BY 1 ORDER BY 1")
    assert status == 0
    assert lines(out) == [
        {"stream": "activity", "n": 11},
        {"stream": "audit", "n": 2},
        {"stream": "notification", "n": 1},
    ]
    status, out, _ = run("query", "SELECT json_extract(raw, '$.leadId') AS lead FROM events "
                         "WHERE seq = 2", "--format", "table")  # fmt: skip
    assert out.split() == ["lead", "4412"]
    status, out, _ = run("query", "PRAGMA table_info(events)")
    assert [r["name"] for r in lines(out)][:2] == ["seq", "event_key"]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT name FROM pragma_table_info('events') LIMIT 1", [{"name": "seq"}]),
        (
            "SELECT name FROM pragma_index_list('dead_letters') WHERE origin = 'c'",
            [{"name": "dead_letters_retry"}],
        ),
        ("SELECT * FROM pragma_user_version", [{"user_version": SCHEMA_VERSION}]),
        ("SELECT count(*) AS n FROM pragma_table_list WHERE name = 'events'", [{"n": 1}]),
        ("SELECT * FROM pragma_quick_check", [{"quick_check": "ok"}]),
    ],
)  # fmt: skip
def test_query_reads_the_table_form_of_read_only_pragmas(
    run: Run, journal: Path, sql: str, expected: list[dict[str, Any]]
) -> None:
    # SQLite registers pragma_* tables on first use as an "UPDATE sqlite_master", which
    # the authorizer refused: the documented pragma_table_info('events') never worked.
    before = _digest(journal)
    status, out, err = run("query", sql)
    assert status == 0, err
    assert lines(out) == expected
    assert _digest(journal) == before


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", 'near "SELEC": syntax error'),
        ("SELECT * FROM nope", "no such table: nope"),
        ("SELECT 1; DELETE FROM events", "one statement"),
        ("   ", "the SQL statement is empty"),
        ("SELECT '" + "x" * 100_001 + "'", "longer than"),
    ],
)
def test_bad_sql(run: Run, sql: str, message: str) -> None:
    status, out, err = run("query", sql)
    assert status == 2 and out == ""
    assert message in err


def test_tail(run: Run) -> None:
    status, out, _ = run("tail", "-n", "3")
    assert [r["seq"] for r in lines(out)] == [12, 13, 14]
    status, out, _ = run("tail", "-n", "2", "--stream", "activity")
    assert [r["seq"] for r in lines(out)] == [10, 11]
    status, _, err = run("tail", "-n", "-1")
    assert status == 2 and "--lines" in err


def test_follow_sleeps_with_backoff_and_reads_only_after_a_commit(tmp_path: Path) -> None:
    path = fixture_journal(tmp_path / "journal.db")
    conn = open_readonly(str(path))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    sleeps: list[float] = []
    emitted: list[int] = []
    appended = threading.Event()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 12:  # idle until now: then a commit lands
            write_batches(path, generated_batches(1000, batch=500))
            appended.set()

    def keep_going() -> bool:
        return len(sleeps) < 20

    last = follow(
        str(path), conn, Filters(), FIXTURE_EVENTS,
        lambda rows: emitted.extend(r[0] for r in rows),
        keep_going=keep_going, sleep=sleep,
    )  # fmt: skip
    conn.close()
    assert appended.is_set()
    assert emitted == list(range(FIXTURE_EVENTS + 1, FIXTURE_EVENTS + 1001))
    assert last == FIXTURE_EVENTS + 1000
    # Backoff: 50 ms doubling to at most 1 s while idle, back to 50 ms after new rows.
    assert sleeps[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert max(sleeps) == 1.0 and sleeps[12] == 0.05
    # The database was read only after the commit: no query while idle.
    assert statements and all("FROM events" in s for s in statements)
    assert len(statements) <= 3


def test_tail_follow_in_a_real_process(tmp_path: Path) -> None:
    path = fixture_journal(tmp_path / "journal.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamd", "journal", "tail", "-f", "-n", "1",
         "--journal", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as at a terminal, even if this suite runs where SIGINT is ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    received: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            received.put(line)

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    try:
        assert json.loads(received.get(timeout=20))["seq"] == FIXTURE_EVENTS  # -n 1
        write_batches(path, generated_batches(1000, batch=500))
        got = [json.loads(received.get(timeout=20)) for _ in range(1000)]
        assert [r["seq"] for r in got] == list(range(FIXTURE_EVENTS + 1, FIXTURE_EVENTS + 1001))
        assert [r["source"] for r in got[499:501]] == ["bench-legacy", "bench-io"]
    finally:
        proc.send_signal(signal.SIGINT)  # how a person stops tail -f
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
    pumping.join(timeout=10)
    assert proc.stdout is not None and proc.stderr is not None
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_colours_only_on_a_terminal_without_no_color() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert colour_enabled(Tty(), {})  # type: ignore[arg-type]
    assert not colour_enabled(Tty(), {"NO_COLOR": "1"})  # type: ignore[arg-type]
    assert colour_enabled(Tty(), {"NO_COLOR": ""})  # type: ignore[arg-type]
    assert not colour_enabled(Tty(), {"TERM": "dumb"})  # type: ignore[arg-type]

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert not colour_enabled(Pipe(), {})  # type: ignore[arg-type]


def test_table_colours_and_progress_on_a_terminal() -> None:
    import io

    from streamd.inspect.output import EventTable, Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    row = (7, "k" * 80, "audit", "com.adobe.platform.marketo.audit.user.email", None, None,
           None, None, "2026-05-02T09:15:01.000Z", "adobe-io", 3, "{}")  # fmt: skip
    EventTable(out, colour=True, width=100).row(row)
    header, line = out.getvalue().splitlines()
    assert header.startswith("\x1b[1mSEQ") and "\x1b[35maudit.user.email" in line
    assert line.endswith("…") and "-" in line  # the key is cut to the width; NULLs as '-'
    bar = Terminal()
    progress = Progress(bar, "export", 1000)
    assert progress.active
    progress.update(500, 500)
    progress.finish()
    text = bar.getvalue()
    assert "export [###############...............]  50.0%  500 events" in text
    assert text.endswith("\r\x1b[2K")
    quiet = io.StringIO()
    Progress(quiet, "export", 10).update(5, 5)
    assert quiet.getvalue() == ""  # not a terminal: no bar


def test_a_row_whose_json_does_not_decode_does_not_stop_a_search(
    run: Run, journal: Path, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "broken.db"
    shutil.copyfile(journal, broken)
    conn = sqlite3.connect(broken)
    conn.execute("UPDATE events SET raw = '{not json' WHERE seq = 6")
    conn.commit()
    conn.close()
    status, out, err = run("grep", "--where", "data.primaryAttributeValue=Spring*", path=broken)
    assert status == 0, err
    assert [r["seq"] for r in lines(out)] == [5, 7, 8, 9, 10, 11]
    status, out, _ = run("show", "6", "--format", "table", path=broken)
    assert status == 0 and "(not valid JSON:" in out


def test_show_by_key_without_the_dedup_index_scans(run: Run, tmp_path: Path) -> None:
    path = fixture_journal(tmp_path / "journal.db")
    for leftover in tmp_path.glob("journal.dedup.db*"):
        leftover.unlink()
    status, out, _ = run("show", "key:8f1c9a52-3b7e-4c1d-a2f0-000000000103", path=path)
    assert status == 0 and json.loads(out)["seq"] == 3


def test_query_streams_a_long_table(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    write_batches(path, generated_batches(3000, batch=500))
    status, out, _ = run("query", "SELECT seq FROM events ORDER BY seq", "--format", "table",
                         path=path)  # fmt: skip
    rows = out.splitlines()
    assert status == 0 and rows[0] == "seq" and rows[1:] == [str(i) for i in range(1, 3001)]
