"""The file sink on a real file system: JSON Lines, rotation, gzip, a directory that refuses."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import trio
import trio.testing

from streamd.drain import RetrySettings, open_drain
from streamd.drain.sinks.file import FileSettings, FileSink
from streamd.journal import Journal

from .conftest import append, spec, wait_until


def lines(directory: Path) -> list[dict[str, object]]:
    out = []
    for path in sorted(directory.iterdir()):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        out += [json.loads(line) for line in data.splitlines()]
    return out


async def test_json_lines_rotated_by_size_and_gzipped(tmp_path: Path, journal: Journal) -> None:
    keys = [f"f{i:03d}" for i in range(120)]
    await append(journal, keys)
    out = tmp_path / "out"
    sink = FileSink(FileSettings(str(out), "events", max_bytes=4000, gzip=True))
    async with open_drain(journal, [spec("file", sink, workers=1, batch_size=20)]) as drain:
        await wait_until(lambda: drain.statistics()[0].cursor == 120, "all written")
    names = sorted(p.name for p in out.iterdir())
    assert len(names) > 3, names
    assert all(n.startswith("events-") for n in names)
    assert all(n.endswith(".jsonl.gz") for n in names)  # closed at stop: every file gzipped
    got = lines(out)
    assert [e["id"] for e in got] == keys
    first = got[0]
    assert first["seq"] == 1 and first["stream"] == "activity" and first["source"] == "events"
    assert first["event"] == {"id": "f000", "n": 1}  # the JSON as received, nested


async def test_rotation_by_age(tmp_path: Path, journal: Journal) -> None:
    out = tmp_path / "out"
    sink = FileSink(FileSettings(str(out), "t", max_age=0.05))
    async with open_drain(journal, [spec("age", sink, workers=1)]) as drain:
        await append(journal, ["a1"])
        await wait_until(lambda: drain.statistics()[0].cursor == 1, "first")
        await trio.sleep(0.1)
        await append(journal, ["a2"])
        await wait_until(lambda: drain.statistics()[0].cursor == 2, "second")
    assert len(list(out.iterdir())) == 2
    assert [e["id"] for e in lines(out)] == ["a1", "a2"]


async def test_a_directory_that_refuses_writes_pauses_then_resumes(
    tmp_path: Path, journal: Journal
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a regular file where the directory should be\n")
    await append(journal, ["b1", "b2"])
    sink = FileSink(FileSettings(str(blocked / "sub"), "x"))
    retry = RetrySettings(backoff_base=0.01, backoff_cap=0.01, pause_after=2, probe_interval=0.05)
    async with open_drain(journal, [spec("ro", sink, retry=retry)]) as drain:
        await wait_until(lambda: drain.statistics()[0].state == "auto-paused", "paused")
        status = drain.statistics()[0]
        assert status.cursor == 0
        assert status.last_error is not None and "Not a directory" in status.last_error
        blocked.unlink()
        blocked.mkdir()  # the file system accepts writes again
        await wait_until(lambda: drain.statistics()[0].cursor == 2, "resumed by the probe")
        assert drain.statistics()[0].state == "active"
    assert [e["id"] for e in lines(blocked / "sub")] == ["b1", "b2"]


def test_envelope_is_one_line_and_keeps_the_json() -> None:
    from streamd.drain.sinks.base import DrainEvent, envelope

    raw = '{\r\n  "a": "line\\nbreak",\n  "b": [1,\n 2]\n}'
    line = envelope(DrainEvent(1, "k", "other", None, None, None, "s", None, "t", raw))
    assert b"\n" not in line and b"\r" not in line
    assert json.loads(line)["event"] == json.loads(raw)


async def test_the_envelope_sqlite_builds_equals_the_python_one(journal: Journal) -> None:
    from streamd.core import EventRecord, key_hash
    from streamd.drain.sinks.base import envelope
    from streamd.drain.store import open_reader, read_events
    from streamd.journal import Batch, utc_now

    raw = '{\r\n "k": "quote \\" é \\u2028 \\n",\n "n": [1.50, -0, 1e3]\n}'
    odd = EventRecord('id "q" é\t', key_hash('id "q" é\t'), "other", None, None, None, None,
                      None, raw)  # fmt: skip
    await journal.append(Batch("src", utc_now(), "batch", [odd]))
    await append(journal, ["plain"])
    reader = open_reader(journal.path)
    try:
        full = read_events(reader, 0, 10, envelope=False)
        events = read_events(reader, 0, 10, full=False)
        both = read_events(reader, 0, 10)  # every column and the envelope
    finally:
        reader.close()
    assert [e.seq for e in events] == [e.seq for e in full] == [e.seq for e in both]
    for event, whole, each in zip(events, full, both, strict=True):
        assert event.line and not whole.line
        python = envelope(whole)
        assert json.loads(event.line) == json.loads(python)
        assert each.line == event.line and each.key == whole.key and each.raw == whole.raw
        assert b"\n" not in event.line and b"\r" not in event.line
    # The event's JSON is spliced in as stored: number text kept (1.50, -0, 1e3).
    assert b'"n": [1.50, -0, 1e3]' in events[0].line


async def test_group_writer_shares_one_write_among_waiting_batches() -> None:
    from streamd.drain.sinks.base import CONFIRMED, DrainEvent, GroupWriter, Result

    writes: list[list[int]] = []
    gate = trio.Event()

    async def write(events: object) -> Result:
        writes.append([e.seq for e in events])  # type: ignore[attr-defined]
        if len(writes) == 1:
            await gate.wait()  # the first write is slow: others queue behind it
        return CONFIRMED

    group = GroupWriter(write)
    results: list[Result] = []

    async def one(seq: int) -> None:
        ev = DrainEvent(seq, "k", "other", None, None, None, "s", None, "t", "{}")
        results.append(await group.deliver([ev]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 1)
        await wait_until(lambda: len(writes) == 1, "first write started")
        for seq in (2, 3, 4):
            nursery.start_soon(one, seq)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    # One write (one fsync) for the three that waited, in journal order whatever order
    # they arrived in (trio starts tasks in any order).
    assert writes == [[1], [2, 3, 4]]
    assert results == [CONFIRMED] * 4


async def test_reference_reads_carry_no_envelope(journal: Journal) -> None:
    """The sqlite sink's reads: routing columns only, no JSON turned into Python bytes."""
    from streamd.drain.store import open_reader, read_events

    await append(journal, ["r1", "r2", "r3"])
    reader = open_reader(journal.path)
    try:
        refs = read_events(reader, 0, 10, full=False, envelope=False)
        full = read_events(reader, 0, 10, full=False)
    finally:
        reader.close()
    assert [e.seq for e in refs] == [e.seq for e in full] == [1, 2, 3]
    assert all(e.line == b"" and e.raw == "" for e in refs)
    assert all(e.line for e in full)
    assert [(e.stream, e.type, e.source) for e in refs] == [
        (e.stream, e.type, e.source) for e in full
    ]
