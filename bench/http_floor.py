"""What each HTTP layer costs per small request: the floor under streamd's edge.

    python -m bench.http_floor [--rounds 3] [--count 10000] [--warmup 1000]
        [--shape io --batch 20 --concurrency 16] [--only raw,h11,...] [--out FILE]

Nine receivers, each a fresh process per round (the order rotating by round), all
reading every body whole and answering 200 with the same 32-byte JSON object:

- ``raw``: trio alone with a minimal HTTP/1.1 reader (the head up to its blank line,
  ``Content-Length``, nothing validated, no limits). Not a usable server: the floor of
  any receiver on trio.
- ``h11``: trio and h11 (each request parsed and validated, each answer serialised by
  h11), no ASGI.
- ``httptools``: trio and httptools (llhttp, the parser uvicorn uses, in C), no ASGI.
- ``httptools-app``: streamd's ``IngestApp`` (as in ``edge-app``) called straight from
  trio and httptools through a minimal ASGI bridge: one task per connection, the app
  run in it, the answer written in one ``send_all``. A sketch of what serving HTTP/1.1
  ingest without hypercorn and h11 would cost, not a server: no limits, no deadlines,
  no framing checks beyond llhttp's.
- ``edge``: streamd's edge (:func:`streamd.service.http.serve_http`: hypercorn with
  streamd's connection, keep-alive timer, one write per answer and framing guard) and
  an ASGI app that discards, marking its answer as the ingest app does.
- ``edge-app``: the edge with streamd's own ``IngestApp`` (token auth, admission,
  ``decode_delivery``, the answer) whose journal answers at once: what the app adds
  before a journal is involved.
- ``httptools-journal`` and ``edge-journal``: the same two with a real journal (a fresh
  ``journal.db`` per run, the daemon's default ``[journal]`` settings: its writer,
  indexer and checkpoint threads, ``synchronous = FULL``): the whole process's CPU per
  request either way, the journal's share included.
- ``hypercorn``: ``bench.baseline_app``, stock hypercorn discarding the bodies (issue
  17's reference).

Per acknowledged request (``bench.loadgen`` in its own process, keep-alive
connections): the receiver's user + system CPU, the load generator's, and requests/s.
One JSON line per run, then the medians per receiver and a markdown table; ``--out``
writes them all as one JSON document. ``--serve NAME`` runs one receiver (what each
run starts).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
import trio

from bench._machine import machine_facts
from bench._server import READY_PREFIX, REPO, ServerProcess, start_baseline
from bench.baseline_app import _BODY, _HEADERS, read_whole
from bench.ingest import Case, run_loadgen, settle

RECEIVERS: Final = (
    "raw",
    "h11",
    "httptools",
    "httptools-app",
    "httptools-journal",
    "edge",
    "edge-app",
    "edge-journal",
    "hypercorn",
)
_JOURNALED: Final = ("httptools-journal", "edge-journal")
TOKEN: Final = "bench"
_RAW_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_BODY), _BODY)
)
_MAX_RECV: Final = 65536


# -- the receivers ---------------------------------------------------------------------


async def _raw_connection(stream: trio.SocketStream) -> None:
    buf = bytearray()
    try:
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                data = await stream.receive_some(_MAX_RECV)
                if not data:
                    return
                buf += data
            head = bytes(buf[:end]).lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            while len(buf) < total:
                data = await stream.receive_some(_MAX_RECV)
                if not data:
                    return
                buf += data
            del buf[:total]
            await stream.send_all(_RAW_ANSWER)
    except (trio.BrokenResourceError, ValueError):
        return


async def _h11_connection(stream: trio.SocketStream) -> None:
    import h11

    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_MAX_RECV))
            elif isinstance(event, h11.EndOfMessage):
                out = conn.send(h11.Response(status_code=200, headers=_HEADERS)) or b""
                out += conn.send(h11.Data(data=_BODY)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
            elif event is h11.PAUSED and conn.our_state is h11.DONE:
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
    except (trio.BrokenResourceError, h11.RemoteProtocolError):
        return


class _Inbox:
    """A request's one body message, taken without a checkpoint (``receive_nowait``, as
    ``streamd.ingest.admission.receive_now`` looks for); after it, nothing comes."""

    def __init__(self, body: bytes) -> None:
        self._messages = [{"type": "http.request", "body": body, "more_body": False}]

    def receive_nowait(self) -> dict[str, Any]:
        if not self._messages:
            raise trio.WouldBlock
        return self._messages.pop()

    async def receive(self) -> dict[str, Any]:
        if self._messages:
            return self._messages.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def _httptools_connection(stream: trio.SocketStream, app: Any = None) -> None:
    """Parse with httptools; answer each request at once (``app`` None) or through
    ``app`` (an ASGI app, called in this task with the whole body)."""
    from wsgiref.handlers import format_date_time

    import httptools

    complete: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []

    class _Request:
        url = b""
        headers: list[tuple[bytes, bytes]] = []
        body: list[bytes] = []

        def on_message_begin(self) -> None:
            self.url, self.headers, self.body = b"", [], []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body = b"".join(self.body)
            complete.append((parser.get_method(), self.url, self.headers, body))

    parser = httptools.HttpRequestParser(_Request())
    peer = stream.socket.getpeername()
    try:
        while True:
            data = await stream.receive_some(_MAX_RECV)
            if not data:
                return
            parser.feed_data(data)
            for method, url, headers, body in complete:
                if app is None:
                    await stream.send_all(_RAW_ANSWER)
                    continue
                target = httptools.parse_url(url)
                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": method.decode("ascii"),
                    "scheme": "http",
                    "path": target.path.decode("ascii"),
                    "raw_path": target.path,
                    "query_string": target.query or b"",
                    "root_path": "",
                    "headers": headers,
                    "client": peer,
                    "server": None,
                    "state": {},
                    "extensions": {},
                }
                sent: list[dict[str, Any]] = []

                async def send(message: dict[str, Any], sent: list[Any] = sent) -> None:
                    sent.append(message)

                await app(scope, _Inbox(body).receive, send)
                start, rest = sent[0], sent[1:]
                head = b"HTTP/1.1 %d \r\n" % start["status"]
                head += b"".join(b"%s: %s\r\n" % pair for pair in start.get("headers", ()))
                head += b"date: %s\r\n\r\n" % format_date_time(None).encode()
                await stream.send_all(head + b"".join(m.get("body", b"") for m in rest))
            complete.clear()
    except (trio.BrokenResourceError, httptools.HttpParserError):
        return


class _Discard:
    """An ASGI app that reads each body whole and answers like ``bench.baseline_app``,
    marked as the ingest app is: its answer whole (``BODY_FOLLOWS``), and run in the
    connection's task (``RUNS_INLINE``)."""

    streamd_runs_inline = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from streamd.asgi import BODY_FOLLOWS, lifespan

        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if not await read_whole(receive):
            return
        start = {"type": "http.response.start", "status": 200, "headers": _HEADERS}
        await send({**start, BODY_FOLLOWS: True})
        await send({"type": "http.response.body", "body": _BODY})


class _Instant:
    """A journal that answers at once: the app's cost without a writer thread."""

    async def append(self, batch: Any) -> Any:
        from streamd.journal import AppendResult

        await trio.lowlevel.checkpoint()
        return AppendResult(len(batch.events), 0, 0)

    def refusal(self) -> None:
        return None


@contextlib.asynccontextmanager
async def _journal(name: str, path: str) -> AsyncIterator[Any]:
    """The journal of receiver ``name``: a real one at ``path`` for the two that journal,
    else one that answers at once."""
    if name not in _JOURNALED:
        yield _Instant()
        return
    from streamd.journal import open_journal
    from streamd.service.config import Config
    from streamd.service.startup import writer_options

    config = Config()
    async with open_journal(
        path, writer_options(config), commit_budget=config.journal.commit_budget
    ) as journal:
        yield journal


async def _serve_edge(name: str, host: str, port: int, journal_path: str) -> None:
    from hypercorn.config import Config as HypercornConfig

    from streamd.auth import TokenSet
    from streamd.ingest import IngestApp, Limits, Source
    from streamd.service.http import ConnectionTable, bind_sockets, serve_http

    hconfig = HypercornConfig()
    hconfig.bind = [f"{host}:{port}"]
    hconfig.accesslog = None
    hconfig.keep_alive_timeout = 30  # streamd's defaults
    hconfig.read_timeout = 30
    sockets = bind_sockets(hconfig, "bench")
    async with _journal(name, journal_path) as journal:
        app: Any = _Discard()
        if name != "edge":
            source = Source("events", "/events", TokenSet([TOKEN]))
            app = IngestApp([source], journal, Limits())
        bound = sockets.insecure_sockets[0].getsockname()
        print(f"{READY_PREFIX}http://{bound[0]}:{bound[1]}", flush=True)
        await serve_http(app, hconfig, sockets, ConnectionTable(4096), shutdown=trio.sleep_forever)


async def _serve_plain(name: str, host: str, port: int, journal_path: str) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    handler: Any = {"raw": _raw_connection, "h11": _h11_connection}.get(name)
    async with _journal(name, journal_path) as journal:
        if name == "httptools":
            handler = _httptools_connection
        elif name.startswith("httptools-"):
            from streamd.auth import TokenSet
            from streamd.ingest import IngestApp, Limits, Source

            app = IngestApp([Source("events", "/events", TokenSet([TOKEN]))], journal, Limits())
            handler = functools.partial(_httptools_connection, app=app)
        print(f"{READY_PREFIX}http://{bound[0]}:{bound[1]}", flush=True)
        await trio.serve_listeners(handler, listeners)


def serve(name: str, listen: str, journal_path: str = "") -> None:
    """Run receiver ``name`` on ``listen`` (``HOST:PORT``) until SIGTERM or SIGINT;
    the two that journal write ``journal_path``."""
    host, _, port = listen.rpartition(":")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if name in _JOURNALED and not journal_path:
        raise SystemExit(f"{name} needs --journal PATH")
    if name.startswith("edge"):
        trio.run(_serve_edge, name, host, int(port), journal_path)
    else:
        trio.run(_serve_plain, name, host, int(port), journal_path)


# -- the measurement -------------------------------------------------------------------


def _start(name: str, logdir: Path) -> ServerProcess:
    if name == "hypercorn":
        return start_baseline(logdir, name)
    cmd = [sys.executable, "-m", "bench.http_floor", "--serve", name, "--listen", "127.0.0.1:0"]
    if name in _JOURNALED:  # a fresh journal each run
        cmd += ["--journal", str(Path(tempfile.mkdtemp(dir=logdir)) / "journal.db")]
    server = ServerProcess(cmd, logdir, name)
    server.wait_ready()
    return server


def _one(name: str, case: Case, a: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    server = _start(name, logdir)
    try:
        url = server.base_url + "/events"
        run_loadgen(url, TOKEN, case, logdir, "--count", str(a.warmup), seed=2)
        cpu0 = server.cpu_s()
        load = run_loadgen(url, TOKEN, case, logdir, "--count", str(a.count))
        settle(server)
        cpu = server.cpu_s() - cpu0
    finally:
        server.stop()
    requests = load["acked_batches"]
    if not requests:
        raise RuntimeError(f"{name}: no request acknowledged ({load.get('errors')})")
    return {
        "name": name,
        "requests": requests,
        "failed": load["failed_batches"],
        "accepted": load["accepted"],  # only those with the app decode: its events
        "server_cpu_s": round(cpu, 3),
        "us_per_request": round(1e6 * cpu / requests, 1),
        "client_us_per_request": round(1e6 * load["client_cpu_s"] / requests, 1),
        "requests_per_s": round(load["batches_per_s"], 1),
    }


def _table(medians: dict[str, dict[str, float]]) -> str:
    rows = [
        "| receiver | server µs per request | requests/s | load generator µs per request |",
        "|---|---|---|---|",
    ]
    for name, m in medians.items():
        rows.append(
            f"| {name} | {m['us_per_request']:,.0f} | {m['requests_per_s']:,.0f} "
            f"| {m['client_us_per_request']:,.0f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_floor", description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=10000, help="requests measured per run")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--shape", choices=("io", "legacy"), default="io")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--only", help="comma-separated receivers (default: all nine)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve", choices=RECEIVERS, help=argparse.SUPPRESS)
    ap.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)
    ap.add_argument("--journal", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve, a.listen, a.journal)
        return 0
    names = list(RECEIVERS)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(RECEIVERS))
        if unknown:
            ap.error(f"unknown receiver(s) {', '.join(unknown)}; known: {', '.join(RECEIVERS)}")
    for flag in ("rounds", "count", "warmup", "batch", "concurrency"):
        if getattr(a, flag) < (0 if flag == "warmup" else 1):
            ap.error(f"--{flag} must be at least {0 if flag == 'warmup' else 1}")
    case = Case("http-floor", "baseline", a.shape, a.batch, a.concurrency, "full")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="http-floor-") as tmp:
        logdir = Path(tmp)
        for round_ in range(a.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                run = {**_one(name, case, a, logdir), "round": round_}
                runs.append(run)
                print(orjson.dumps(run).decode(), flush=True)
    keys = ("us_per_request", "requests_per_s", "client_us_per_request")
    medians = {
        name: {k: statistics.median(r[k] for r in runs if r["name"] == name) for k in keys}
        for name in names
    }
    print(orjson.dumps({"medians": medians}).decode())
    print(_table(medians))
    if a.out:
        settings = {k: getattr(a, k) for k in ("shape", "batch", "concurrency", "count")}
        machine = machine_facts(REPO, Path.cwd(), "bench.http_floor")
        doc = {"machine": machine, "settings": settings, "runs": runs}
        a.out.write_bytes(orjson.dumps({**doc, "medians": medians}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
