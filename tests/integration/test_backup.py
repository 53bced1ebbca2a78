"""journal backup while a real server ingests over HTTP: the copy verifies and loses no ack."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
import trio

from streamd.cli import main
from streamd.emit.generate import event_ids, iter_batches
from streamd.inspect.verify import verify_journal
from streamd.journal import JournalWriter, WriterOptions
from tests.integration.conftest import StartServer
from tests.journals import fixture_journal


def keys_in(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT event_key FROM events")}
    finally:
        conn.close()


async def test_backup_during_concurrent_ingest_restores_every_acknowledged_event(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    acknowledged: list[str] = []
    stop = trio.Event()
    posted = 0

    async def ingest(worker: int) -> None:
        nonlocal posted
        for body in iter_batches("legacy", 200, seed=11, worker=worker):
            if stop.is_set():
                return
            reply = await server.post(body)
            assert reply.status_code == 200, reply.text
            acknowledged.extend(event_ids("legacy", body))  # only after the 200
            posted += 1

    dest = tmp_path / "backup.db"
    async with trio.open_nursery() as nursery:
        for worker in range(3):
            nursery.start_soon(ingest, worker)
        await server.wait_for(lambda: posted >= 15, "some batches acknowledged")
        before = list(acknowledged)  # every event acknowledged before the backup began
        status = await trio.to_thread.run_sync(
            main, ["journal", "backup", "--data-dir", str(server.data_dir), str(dest)]
        )
        during = posted
        await server.wait_for(lambda: posted >= during + 5, "ingest went on after the backup")
        stop.set()
    assert status == 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".backup.db.*"))

    # Restore: the backup becomes the journal of a fresh data directory; the writer
    # opens it as serve would (migrations, a dedup index rebuilt from it).
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    restored = restored_dir / "journal.db"
    shutil.copyfile(dest, restored)
    writer = JournalWriter(str(restored), WriterOptions(), lambda: "")
    writer.start()
    writer.close()
    report = verify_journal(str(restored))
    assert report.healthy, report.as_dict()
    keys = keys_in(restored)
    missing = set(before) - keys
    assert not missing, f"{len(missing)} acknowledged events are not in the backup"
    assert len(keys) >= len(before) and report.events_checked == len(keys)
    # The copy is a snapshot of one commit, not of the moment it ended.
    assert len(keys) < len(keys_in(server.journal))


def test_backup_refuses_to_overwrite_and_bad_destinations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = fixture_journal(tmp_path / "journal.db")
    existing = tmp_path / "existing.db"
    existing.write_text("precious")
    cases = [
        (str(existing), "exists; choose a new name"),
        (str(tmp_path / "no" / "such" / "dir.db"), "does not exist"),
        (str(journal), "that is the journal itself"),
    ]
    for dest, message in cases:
        status = main(["journal", "backup", "--journal", str(journal), dest])
        err = capsys.readouterr().err
        assert status == 2 and message in err, err
    assert existing.read_text() == "precious"
    # A directory gets a time-stamped file.
    folder = tmp_path / "backups"
    folder.mkdir()
    assert main(["journal", "backup", "--journal", str(journal), str(folder)]) == 0
    (made,) = folder.iterdir()
    assert made.name.startswith("journal-") and made.suffix == ".db"
    assert verify_journal(str(made)).healthy
    conn = sqlite3.connect(made)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


def test_a_copy_that_does_not_verify_is_not_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = fixture_journal(tmp_path / "journal.db")
    conn = sqlite3.connect(journal)
    conn.execute("UPDATE events SET raw = 'not json' WHERE seq = 3")
    conn.commit()
    conn.close()
    dest = tmp_path / "copy.db"
    status = main(["journal", "backup", "--journal", str(journal), str(dest)])
    err = capsys.readouterr().err
    assert status == 1
    assert "seq 3: raw JSON does not decode" in err
    assert "the copy did not verify; nothing was kept" in err
    assert not dest.exists() and not list(tmp_path.glob(".copy.db*"))


async def test_the_read_commands_on_a_live_journal_during_ingest(
    start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify, stats, grep and export read a journal that is being written, over HTTP."""
    server = await start_server()
    stop = trio.Event()
    acknowledged = 0

    async def ingest() -> None:
        nonlocal acknowledged
        for body in iter_batches("io", 20, seed=12, worker=1):
            if stop.is_set():
                return
            reply = await server.post(body)
            assert reply.status_code == 200, reply.text
            acknowledged += 20

    data = str(server.data_dir)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ingest)
        await server.wait_for(lambda: acknowledged >= 400, "some batches acknowledged")
        for argv in (
            ["journal", "verify", "--data-dir", data, "--format", "jsonl"],
            ["journal", "stats", "--data-dir", data],
            ["journal", "grep", "--data-dir", data, "--stream", "activity", "--count"],
            ["journal", "export", "--data-dir", data, "--limit", "300"],
        ):
            seen = acknowledged
            status = await trio.to_thread.run_sync(main, argv)
            out = capsys.readouterr().out
            assert status == 0, (argv, out)
            if argv[1] == "verify":
                assert '"healthy":true' in out
            elif argv[1] == "stats":
                assert json_events(out) >= seen
            elif argv[1] == "grep":
                assert int(out.split(":")[1].rstrip("}\n")) >= seen
            else:
                assert len(out.splitlines()) == 300
        stop.set()
    assert acknowledged > 400  # ingest went on while they read


def json_events(out: str) -> int:
    import json

    value = json.loads(out)["events"]
    assert isinstance(value, int)
    return value
