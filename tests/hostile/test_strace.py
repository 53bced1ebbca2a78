"""Every 200 is sent after the fdatasync of the WAL frames holding its batch (strace).

A real ``streamd serve`` (default configuration: ``synchronous = "full"``) runs under
``strace -f``, recording every write, pwrite64, writev, fsync, fdatasync, sendto and
sendmsg with the paths and socket addresses of their descriptors and the first 4096
bytes of their data. Several clients post ~200 distinct batches over kept-alive
connections (``powercut/load.py``). From the trace alone:

- each ``HTTP/1.1 200`` sent on a connection is mapped to its batch (the client's port
  and the rank of the 200 on that connection);
- the batch's WAL frames are found: the first ``pwrite64`` to ``journal.db-wal`` whose
  page holds the batch's first event key (a key is in no page before its own commit);
- the sync of that commit is the first ``fdatasync``/``fsync`` of the WAL that the same
  thread *started* after that write (SQLite writes a transaction's frames, then syncs
  the WAL, in the committing thread);
- that sync must have *returned* (successfully) before the 200 was sent.

Where strace is missing the test skips (``make test`` installs it, as root with apt).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.conftest import scale
from tests.hostile.powercut.load import Batch, acks_by_port, drive
from tests.system._harness import Processes, Server, children, streamd_argv, wait_for

_LINE = re.compile(r"^(\d+) +\d\d:\d\d:\d\d\.\d+ (.*)$")
_CALL = re.compile(r"^(\w+)\((\d+)<(.*?)>(?:\(deleted\))?(?:, |\)| <unfinished)")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>.*= (-?\d+)")
_RESULT = re.compile(r"\) += (-?\d+)(?: [A-Z]\w+ \(.*\))?$")
_PEER = re.compile(r"^TCP:\[[\d.]+:\d+->[\d.]+:(\d+)\]$")
_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4000-8000-[0-9a-f]{12}")
_TRACED = "write,pwrite64,writev,fdatasync,fsync,sendto,sendmsg"


@dataclass
class Call:
    """One traced system call: where it started and returned in the trace (line numbers)."""

    name: str
    tid: int
    path: str  # the descriptor's path, or its socket addresses
    start: int
    end: int = -1
    result: int | None = None
    keys: tuple[str, ...] = ()  # event keys in the data (WAL writes only)
    http200: bool = False


def parse(trace: Path) -> list[Call]:
    """Every completed call of the trace, in the order they started."""
    calls: list[Call] = []
    unfinished: dict[int, Call] = {}
    with open(trace, errors="replace") as lines:
        for number, line in enumerate(lines):
            match = _LINE.match(line.rstrip("\n"))
            if match is None:
                continue  # signals, exits
            tid, rest = int(match.group(1)), match.group(2)
            resumed = _RESUMED.match(rest)
            if resumed is not None:
                call = unfinished.pop(tid)
                assert call.name == resumed.group(1), f"line {number + 1}: {line!r}"
                call.end, call.result = number, int(resumed.group(2))
                continue
            head = _CALL.match(rest)
            if head is None:
                continue
            name, path = head.group(1), head.group(3)
            call = Call(name, tid, path, number)
            if path.endswith("journal.db-wal") and name == "pwrite64":
                call.keys = tuple(_KEY.findall(rest))
            call.http200 = path.startswith("TCP:") and '"HTTP/1.1 200 ' in rest[:200]
            calls.append(call)
            if rest.endswith("<unfinished ...>"):
                unfinished[tid] = call
            else:
                result = _RESULT.search(rest)
                call.end, call.result = number, int(result.group(1)) if result else None
    return [c for c in calls if c.end >= 0]


def late_acks(calls: list[Call], by_port: dict[int, list[Batch]]) -> tuple[int, list[str]]:
    """Check every 200 of the trace; return how many were checked and the violations."""
    first_write: dict[str, Call] = {}
    for page in (c for c in calls if c.keys):
        for key in page.keys:
            first_write.setdefault(key, page)
    syncs: dict[int, list[Call]] = {}  # by thread, in start order
    for c in calls:
        if c.name in ("fdatasync", "fsync") and c.path.endswith("journal.db-wal"):
            assert c.result == 0, f"a WAL sync failed: {c}"
            syncs.setdefault(c.tid, []).append(c)
    rank: dict[int, int] = {}
    checked = 0
    violations = []
    for send in (c for c in calls if c.http200):
        peer = _PEER.match(send.path)
        assert peer is not None, f"a 200 on an unexpected socket {send.path}"
        port = int(peer.group(1))
        batch = by_port[port][rank.get(port, 0)]
        rank[port] = rank.get(port, 0) + 1
        checked += 1
        name = f"batch {batch.client}/{batch.number}: 200 sent at trace line {send.start + 1}"
        write = first_write.get(batch.keys[0])
        if write is None or write.end > send.start:
            violations.append(f"{name}, before any WAL frame held its events")
            continue
        own = syncs.get(write.tid, [])
        after = own[bisect_left([s.start for s in own], write.end) :]
        if not after:
            violations.append(f"{name}; no WAL sync after its frames (line {write.start + 1})")
        elif after[0].end > send.start:
            violations.append(
                f"{name}, but the WAL sync of its frames (line {after[0].start + 1}) returned "
                f"only at line {after[0].end + 1}"
            )
    acked = sum(len(batches) for batches in by_port.values())
    assert checked == acked, f"the trace holds {checked} 200s, the clients saw {acked}"
    return checked, violations


@pytest.fixture
def strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.skip("strace is missing: `make test` installs it (as root, with apt)")
    return found


def trace_streamd(
    processes: Processes,
    strace: str,
    workdir: Path,
    *,
    synchronous: str,
    clients: int,
    batches_per_client: int,
) -> tuple[list[Call], dict[int, list[Batch]], int]:
    """Run streamd under strace with the load; return the calls, the acknowledged batches
    by client port, and the size of the trace in bytes (deleted once read)."""
    data_dir = workdir / "data"
    data_dir.mkdir()
    trace = workdir / "streamd.strace"
    config = workdir / "streamd.toml"
    config.write_text(f'[journal]\nsynchronous = "{synchronous}"\n')
    argv = [
        strace, "-f", "--seccomp-bpf", "-yy", "-tt", "-s", "4096", "-o", str(trace),
        "-e", f"trace={_TRACED}",
        *streamd_argv(), "serve", "--config", str(config), "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--data-dir", str(data_dir),
    ]  # fmt: skip
    spawned = processes.spawn(argv, f"strace-streamd-{synchronous}")
    server = Server(spawned, data_dir)
    port = server.wait_ready(timeout=60)
    logs, _ = drive(
        port,
        server.token(),
        seed=os.getpid(),
        clients=clients,
        batches_per_client=batches_per_client,
        resend_fraction=0.0,  # a re-sent batch writes no new keys: nothing to find
        legacy_size=50,  # the trace holds every page written: keep it small
    )
    # SIGTERM to streamd itself (strace would not pass it on); strace exits with it.
    streamd = wait_for(lambda: children(spawned.pid), timeout=10, what="streamd under strace")
    os.kill(streamd[0], signal.SIGTERM)
    assert spawned.wait(30) == 0, spawned.stderr()[-3000:]
    calls = parse(trace)
    size = trace.stat().st_size
    trace.unlink()  # ~100 MB at 200 batches
    return calls, acks_by_port(logs), size


def test_every_200_follows_the_sync_of_its_wal_frames(
    processes: Processes, strace: str, tmp_path: Path
) -> None:
    calls, by_port, size = trace_streamd(
        processes,
        strace,
        tmp_path,
        synchronous="full",
        clients=4,
        batches_per_client=scale(50, 500),
    )
    checked, violations = late_acks(calls, by_port)
    assert not violations, f"{len(violations)} of {checked} 200s were early:\n" + "\n".join(
        violations[:10]
    )
    wal_syncs = sum(
        1 for c in calls if c.name in ("fdatasync", "fsync") and c.path.endswith("journal.db-wal")
    )
    print(
        f"\nstrace: {checked} 200s, each sent after the fdatasync of its WAL frames returned; "
        f"{sum(1 for c in calls if c.keys)} WAL page writes with events, {wal_syncs} WAL "
        f"syncs, {size / 1e6:.0f} MB of trace"
    )


def test_the_check_sees_an_early_200_at_synchronous_normal(
    processes: Processes, strace: str, tmp_path: Path
) -> None:
    # synchronous=normal answers before the WAL is synced: the same check must say so,
    # or its pass above proves nothing.
    calls, by_port, _ = trace_streamd(
        processes, strace, tmp_path, synchronous="normal", clients=1, batches_per_client=20
    )
    checked, violations = late_acks(calls, by_port)
    assert checked == 20
    assert len(violations) == checked, violations
