"""The exec sink with real processes and the sqlite sink with a real database file."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from streamd.drain import DrainEvent, Kind, Result, RetrySettings, open_drain
from streamd.drain.sinks.base import permanent
from streamd.drain.sinks.exec import ExecSettings, ExecSink
from streamd.drain.sinks.sqlite import SqliteSettings, SqliteSink
from streamd.journal import Journal, WriterOptions, open_journal
from streamd.ops import RetryDeadLetters, RewindSink
from tests.system._harness import exited

from .conftest import append, spec, wait_until

FAST = RetrySettings(backoff_base=0.01, backoff_cap=0.02, jitter=0.0, pause_after=50)


def dead(journal: Journal) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(journal.path)
    try:
        return conn.execute("SELECT event_key, reason, last_response FROM dead_letters").fetchall()
    finally:
        conn.close()


async def test_exec_gets_json_lines_on_stdin(tmp_path: Path, journal: Journal) -> None:
    await append(journal, ["e1", "e2", "e3"])
    out = tmp_path / "got.jsonl"
    sink = ExecSink(ExecSettings(["sh", "-c", f"cat >> {out}"]))
    async with open_drain(journal, [spec("cmd", sink, batch_size=2, workers=1)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 3, "confirmed")
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["e1", "e2", "e3"]


async def test_a_failing_command_is_retried_then_succeeds(tmp_path: Path, journal: Journal) -> None:
    await append(journal, ["f1"])
    marker = tmp_path / "attempts"
    # Fails twice (exit 3, with a message), then succeeds.
    script = (
        f"echo x >> {marker}; n=$(wc -l < {marker}); "
        'if [ "$n" -lt 3 ]; then echo "database locked" >&2; exit 3; fi; cat > /dev/null'
    )
    sink = ExecSink(ExecSettings(["sh", "-c", script]))
    async with open_drain(journal, [spec("cmd", sink, retry=FAST)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 1, "confirmed on the third try")
        assert d.statistics()[0].last_error == "sh exited with status 3"
    assert marker.read_text().count("x") == 3
    assert dead(journal) == []


async def test_exit_65_dead_letters_with_stderr(journal: Journal) -> None:
    await append(journal, ["bad"])
    sink = ExecSink(ExecSettings(["sh", "-c", "cat > /dev/null; echo 'bad record' >&2; exit 65"]))
    async with open_drain(journal, [spec("cmd", sink)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 1, "dead-lettered")
    assert dead(journal) == [("bad", "sh exited with status 65", "bad record")]


async def test_a_hanging_command_group_is_killed_on_timeout(
    tmp_path: Path, journal: Journal
) -> None:
    await append(journal, ["h1"])
    pidfile = tmp_path / "child.pid"
    # The command starts a grandchild that would outlive a plain kill of the shell.
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    sink = ExecSink(ExecSettings(["sh", "-c", script]))
    retry = RetrySettings(max_attempts=1, pause_after=50)
    async with open_drain(journal, [spec("cmd", sink, retry=retry, timeout=0.5)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 1, "timed out, dead-lettered")
    assert dead(journal)[0][1] == "no answer within 0.5 s"
    child = int(pidfile.read_text())
    await wait_until(lambda: exited(child), "the grandchild killed with its group")


async def test_a_missing_command_is_transient(journal: Journal) -> None:
    await append(journal, ["m1"])
    sink = ExecSink(ExecSettings(["/nonexistent/streamd-test-command"]))
    retry = RetrySettings(backoff_base=0.01, backoff_cap=0.01, pause_after=2, probe_interval=60)
    async with open_drain(journal, [spec("cmd", sink, retry=retry)]) as d:
        await wait_until(lambda: d.statistics()[0].state == "auto-paused", "paused")
        assert "cannot start" in (d.statistics()[0].last_error or "")


async def test_sqlite_tables_per_stream_upserted_by_id(tmp_path: Path, journal: Journal) -> None:
    await append(journal, ["a1", "a2"])
    await append(journal, ["u1"], stream="audit", type="com.adobe.platform.marketo.audit.x")
    target = tmp_path / "analysis.db"
    async with open_drain(
        journal,
        [spec("tables", SqliteSink(SqliteSettings(str(target), "mkto_", ("lead_id", "type"))))],
    ) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 3, "written")
        await d.run(
            RewindSink(sink="tables", from_seq=1)
        )  # everything again: upserts, no duplicates
        await wait_until(lambda: d.statistics()[0].cursor == 3, "rewritten")
    db = sqlite_utils.Database(target)
    assert sorted(db.table_names()) == ["mkto_activity", "mkto_audit"]
    rows = list(db["mkto_activity"].rows)
    assert [r["id"] for r in rows] == ["a1", "a2"]
    assert rows[0]["lead_id"] == 7 and rows[0]["activity_type_id"] == 1
    assert json.loads(rows[0]["event"]) == {"id": "a1", "n": 1}
    assert db.table("mkto_activity").pks == ["id"]
    assert sorted(i.columns[0] for i in db.table("mkto_activity").indexes if i.origin == "c") == [
        "lead_id",
        "type",
    ]
    assert db["mkto_audit"].count == 1


async def test_sqlite_target_that_cannot_be_opened_is_transient(
    tmp_path: Path, journal: Journal
) -> None:
    await append(journal, ["x1"])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = SqliteSink(SqliteSettings(os.path.join(blocker, "t.db")))
    retry = RetrySettings(backoff_base=0.01, backoff_cap=0.01, pause_after=2, probe_interval=0.05)
    async with open_drain(journal, [spec("t", sink, retry=retry)]) as d:
        await wait_until(lambda: d.statistics()[0].state == "auto-paused", "paused")
        blocker.unlink()
        await wait_until(lambda: d.statistics()[0].cursor == 1, "written after the fix")
    assert sqlite_utils.Database(Path(blocker) / "t.db")["activity"].count == 1


async def test_a_flood_on_stderr_is_kept_to_2_kib(journal: Journal) -> None:
    await append(journal, ["flood"])
    script = "cat > /dev/null; head -c 10000000 /dev/zero | tr '\\0' x >&2; exit 65"
    sink = ExecSink(ExecSettings(["sh", "-c", script]))
    async with open_drain(journal, [spec("cmd", sink)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 1, "dead-lettered")
    ((_, reason, response),) = dead(journal)
    assert reason == "sh exited with status 65"
    assert response == "x" * 2048


async def test_stdout_sink_writes_json_lines_and_survives_a_broken_pipe(
    journal: Journal,
) -> None:
    import io

    from streamd.drain.sinks.stdout import StdoutSink

    await append(journal, ["o1", "o2"])
    out = io.BytesIO()
    async with open_drain(journal, [spec("out", StdoutSink(out))]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 2, "written")
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["o1", "o2"]

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: writes fail with EPIPE
    broken = os.fdopen(write_end, "wb")
    try:
        result = await StdoutSink(broken).deliver(
            [DrainEvent(3, "k", "other", None, None, None, "s", None, "t", "{}")]
        )
    finally:
        with contextlib.suppress(OSError):
            broken.close()
    assert result.kind is Kind.TRANSIENT
    assert "cannot write to standard output" in result.reason


async def test_sqlite_rows_copied_from_the_attached_journal(
    tmp_path: Path, journal: Journal
) -> None:
    """As the service runs it: SQLite copies the rows, none goes through Python."""
    await append(journal, ["c1", "c2"])
    await append(journal, ["u1"], stream="audit", type="com.adobe.platform.marketo.audit.x")
    target = tmp_path / "copied.db"
    sink = SqliteSink(SqliteSettings(str(target), journal=journal.path))
    # References only, no envelope: what the service reads for a sqlite sink.
    async with open_drain(journal, [spec("copy", sink, full_events=False, envelopes=False)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 3, "written")
        await d.run(RewindSink(sink="copy", from_seq=1))  # again: upserts, no duplicates
        await wait_until(lambda: d.statistics()[0].cursor == 3, "rewritten")
        # Ingest goes on meanwhile: the attached journal is never write-locked.
        await append(journal, ["c3"])
        await wait_until(lambda: d.statistics()[0].cursor == 4, "the new one")
    db = sqlite_utils.Database(target)
    rows = list(db["activity"].rows)
    assert [r["id"] for r in rows] == ["c1", "c2", "c3"]
    assert rows[0]["lead_id"] == 7 and json.loads(rows[0]["event"]) == {"id": "c1", "n": 1}
    assert [r["id"] for r in db["audit"].rows] == ["u1"]


async def test_sqlite_dead_letters_retried_after_their_events_left_the_journal(
    tmp_path: Path, journal: Journal
) -> None:
    """A dead letter carries its JSON: delivered even when retention deleted the event."""
    await append(journal, ["gone1", "gone2"])
    await append(journal, ["keep"])
    target = tmp_path / "t.db"
    failing = {"on": True}

    class Picky(SqliteSink):
        async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
            if failing["on"]:
                return permanent("refused once")
            return await super().deliver(events)

    sink = Picky(SqliteSettings(str(target), journal=journal.path))
    async with open_drain(journal, [spec("t", sink, full_events=False, batch_size=2)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 3, "all dead-lettered")
    conn = sqlite3.connect(journal.path)
    try:
        conn.execute("DELETE FROM events WHERE seq <= 2")  # as retention would
        conn.commit()
    finally:
        conn.close()
    failing["on"] = False
    async with open_drain(journal, [spec("t", sink, full_events=False)]) as d:
        assert (await d.run(RetryDeadLetters(sink="t", all=True))).count == 3
        await wait_until(lambda: not dead(journal), "delivered and removed")
    ids = sorted(r["id"] for r in sqlite_utils.Database(target)["activity"].rows)
    assert ids == ["gone1", "gone2", "keep"]


async def test_a_data_dir_whose_name_holds_uri_characters(tmp_path: Path) -> None:
    """The drain's read-only connection and the sqlite sink's attached journal both open
    a journal under ``a #1 ?x %41`` ('?' and '#' end a URI path, '%41' decodes to 'A')."""
    directory = tmp_path / "a #1 ?x %41"
    directory.mkdir()
    async with open_journal(str(directory / "journal.db"), WriterOptions()) as journal:
        await append(journal, ["o1", "o2"])
        target = directory / "copied #2.db"
        sink = SqliteSink(SqliteSettings(str(target), journal=journal.path))
        async with open_drain(
            journal, [spec("copy", sink, full_events=False, envelopes=False)]
        ) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 2, "written")
    assert [r["id"] for r in sqlite_utils.Database(target)["activity"].rows] == ["o1", "o2"]
