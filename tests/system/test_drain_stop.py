"""SIGTERM while a sink has a batch in flight: it finishes within the grace, or is left
unconfirmed for the next start; either way streamd exits 0 in bounded time."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ._harness import Processes, fixture_bytes, post, serve, stop_gracefully, wait_for


@contextlib.contextmanager
def slow_receiver(delay: threading.Event) -> Iterator[tuple[str, list[int]]]:
    """Answers 200 once ``delay`` is set (the test's switch); counts requests."""
    seen: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(1)
            delay.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # streamd gave up on the request: expected

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    finally:
        delay.set()
        server.shutdown()
        server.server_close()


def cursor(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        return int(conn.execute("SELECT cursor FROM sinks WHERE name = 'hook'").fetchone()[0])


@pytest.mark.parametrize("answers", [True, False], ids=["finishes", "hangs"])
def test_sigterm_with_a_batch_in_flight(
    tmp_path: Path, processes: Processes, answers: bool
) -> None:
    release = threading.Event()
    with slow_receiver(release) as (url, seen):
        config = tmp_path / "streamd.toml"
        config.write_text(
            f'[server]\ngraceful_timeout = 2.0\n[[sinks]]\nname = "hook"\nkind = "http"\n'
            f'[sinks.http]\nurl = "{url}"\n[sinks.pool]\nlinger = 0.01\n'
        )
        data_dir = tmp_path / "data"
        server = serve(processes, data_dir, args=["--config", str(config)])
        reply = post(server.port, fixture_bytes("lads_batch.json"), token=server.token())
        assert reply.status == 200
        wait_for(lambda: seen, timeout=10, what="the sink's request at the receiver")
        if answers:
            # The answer comes during the grace: the batch is confirmed before the exit.
            threading.Timer(0.5, release.set).start()
        # A deadline, not a timing figure: without the grace the hanging receiver (30 s)
        # would hold the exit past it.
        stop_gracefully(server, timeout=15)
    assert cursor(server.journal) == (6 if answers else 0)
    assert "Traceback" not in server.spawned.stderr()
