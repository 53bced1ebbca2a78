"""At least once through crashes: SIGKILL a real ``streamd serve`` while it drains.

Senders post as fast as they can; three sinks drain at the same time: a ``file``
sink, a ``sqlite`` sink and an ``http`` sink to a receiver in this process (a real
HTTP server on loopback). streamd is killed with SIGKILL at random moments and restarted. At the
end every journaled event must have reached both sinks at least once, and the
events delivered more than once must fit in the in-flight windows of the kills
(``max_in_flight`` per sink per kill). Set ``STREAMD_CRASH_SEED`` to replay the
kill moments.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ._harness import (
    LoadClient,
    Processes,
    check_journal,
    free_port,
    serve,
    stop_gracefully,
    total_acked,
    wait_for,
)
from .test_crash import crash_seed

WINDOW = 1000


class _Collected:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: Counter[str] = Counter()
        self.requests = 0


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, _Collected]]:
    """A threaded HTTP server on loopback that records the event ids it is sent."""
    got = _Collected()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ids = [e["id"] for e in json.loads(body)["events"]]
            with got.lock:
                got.ids.update(ids)
                got.requests += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # streamd killed in the middle of a request: expected here

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def file_ids(directory: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    if not directory.exists():
        return ids
    for path in directory.iterdir():
        for line in path.read_bytes().splitlines():
            ids[json.loads(line)["id"]] += 1  # a torn line would fail here
    return ids


def caught_up(journal: Path) -> bool:
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        cursors = [c for (c,) in conn.execute("SELECT cursor FROM sinks")]
    return len(cursors) == 3 and all(c == last for c in cursors)


@pytest.mark.parametrize(
    "kills",
    [pytest.param(2, id="2-kills"), pytest.param(12, id="12-kills", marks=pytest.mark.slow)],
)
def test_sigkill_while_draining_delivers_every_event_at_least_once(
    tmp_path: Path, processes: Processes, kills: int
) -> None:
    seed = crash_seed()
    print(f"drain crash test: seed={seed} kills={kills} (replay with STREAMD_CRASH_SEED={seed})")
    rng = random.Random(seed)
    port = free_port()
    data_dir = tmp_path / "data"
    with receiver() as (url, got):
        config = tmp_path / "streamd.toml"
        config.write_text(
            f"""
[[sinks]]
name = "files"
kind = "file"
[sinks.file]
directory = "out"
[sinks.pool]
batch_size = 200
max_in_flight = {WINDOW}
linger = 0.05

[[sinks]]
name = "tables"
kind = "sqlite"
[sinks.sqlite]
path = "tables.db"
[sinks.pool]
batch_size = 200
max_in_flight = {WINDOW}
linger = 0.05

[[sinks]]
name = "hook"
kind = "http"
[sinks.http]
url = "{url}"
[sinks.pool]
batch_size = 200
max_in_flight = {WINDOW}
linger = 0.05
"""
        )
        args = ["--config", str(config)]
        server = serve(processes, data_dir, port=port, args=args, name="streamd-0")
        clients = [
            LoadClient.start(
                processes, port=port, token_file=data_dir / "api-token", seed=seed, client=i
            )
            for i in range(2)
        ]
        wait_for(lambda: total_acked(clients), timeout=20, what="a first acknowledged batch")
        for cycle in range(1, kills + 1):
            time.sleep(rng.uniform(0.3, 1.5))
            server.spawned.popen.kill()
            assert server.spawned.wait(10) == -signal.SIGKILL
            server = serve(processes, data_dir, port=port, args=args, name=f"streamd-{cycle}")
        before = total_acked(clients)
        wait_for(lambda: total_acked(clients) > before, timeout=20, what="an ack after restart")
        for client in clients:
            client.stop()
        wait_for(lambda: caught_up(server.journal), timeout=60, what="the sinks caught up")
        stop_gracefully(server)
        delivered_http = Counter(got.ids)

    acked = set().union(*(client.acked_ids() for client in clients))
    keys = check_journal(server.journal, acked)
    delivered_file = file_ids(data_dir / "out")
    for name, delivered in (("file", delivered_file), ("http", delivered_http)):
        missing = [k for k in keys if k not in delivered]
        assert not missing, f"seed={seed}: {len(missing)} events never reached {name}"
        extra = sum(n - 1 for n in delivered.values())
        print(f"drain crash test: {name}: {len(keys)} events, {extra} delivered twice")
        assert extra <= kills * WINDOW, f"seed={seed}: {name}: {extra} duplicates"
        assert set(delivered) <= set(keys), f"seed={seed}: {name} got ids never journaled"
    # The sqlite sink upserts by id: every event exactly once in its tables.
    with contextlib.closing(sqlite3.connect(data_dir / "tables.db")) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = Counter(k for t in tables for (k,) in conn.execute(f"SELECT id FROM [{t}]"))
    assert set(rows) == set(keys) and max(rows.values()) == 1, f"seed={seed}: sqlite tables"
