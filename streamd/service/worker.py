"""An ingest worker process (``server.workers`` ≥ 1): HTTP in, batches to the main process.

Started by the main process (:mod:`streamd.service.workers`) as
``python -m streamd.service.worker --ipc-fd N --listen-fds A,B [--mtls-fds C]``
with the bound listening sockets and one end of a socketpair inherited. It serves
hypercorn and the ingest app (auth, body limits, decoding) on those sockets and
sends each decoded batch to the main process, which owns the journal writer; a
POST is answered 200 only after the main process reported the commit.

It stops gracefully on :class:`~streamd.ingest.ipc.Stop`, SIGTERM or SIGINT (503
to new POSTs, listeners closed, in-flight requests finish within
``server.graceful_timeout``, exit 0), and at once when the main process goes away
(EOF on the socketpair: its listening sockets must not keep accepting for a daemon
that can no longer journal; exit 3).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Sequence

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from streamd.errors import ConfigError
from streamd.ingest import IngestApp, ipc
from streamd.ingest.remote import RemoteJournal
from streamd.service import gcpolicy
from streamd.service.config import Config
from streamd.service.http import ConnectionTable, max_connections_for, serve_http
from streamd.service.listeners import (
    hypercorn_config,
    mtls_hypercorn_config,
    reload_certificates,
)
from streamd.service.logs import LOG_FORMATS, PER_REQUEST, configure_logging
from streamd.service.sources import build_issuer, ingest_limits, load_sources

log = logging.getLogger("streamd.worker")
# Answered POSTs go to the main process (metrics, stream health) this often, or as
# soon as this many are waiting.
REPORT_INTERVAL = 0.25
REPORT_BATCH = 1000
EXIT_MAIN_GONE = 3
_LEVELS = ("debug", "info", "warning", "error", "critical")


class _Worker:
    """One worker's state: its app, its listeners, what it has to report."""

    def __init__(
        self,
        config: Config,
        hello: ipc.Hello,
        remote: RemoteJournal,
        listen_fds: list[int],
        mtls_fds: list[int],
    ) -> None:
        self.config = config
        self.index = hello.index
        self.remote = remote
        sources, issuer = load_sources(config), build_issuer(config)
        self.hc = hypercorn_config(config)
        self.sockets = _sockets(self.hc, listen_fds)
        self.mtls_hc = mtls_hypercorn_config(config) if config.server.mtls_listen else None
        self.mtls_sockets = None if self.mtls_hc is None else _sockets(self.mtls_hc, mtls_fds)
        mtls_ports = frozenset(
            s.getsockname()[1]
            for s in ([] if self.mtls_sockets is None else self.mtls_sockets.secure_sockets)
        )
        # The bounds of the whole daemon, shared: each worker takes its part, rounded up.
        self.app = IngestApp(
            sources,
            remote,
            ingest_limits(config, hello.workers),
            issuer=issuer,
            observer=self.observe,
            mtls_ports=mtls_ports,
        )
        # Each worker has descriptors of its own; a configured cap is the daemon's, shared.
        configured = config.server.max_connections
        limit = math.ceil(configured / max(hello.workers, 1)) if configured else 0
        self.connections = ConnectionTable(max_connections_for(limit))
        self.stop = trio.Event()
        self.answers: list[tuple[str, int, float, str | None]] = []
        self._reported: tuple[dict[int, int], int, tuple[int, ...]] = ({}, 0, ())
        self._nursery: trio.Nursery | None = None

    def observe(self, source: str, status: int, seconds: float, reason: str | None) -> None:
        self.answers.append((source, status, seconds, reason))
        if len(self.answers) >= REPORT_BATCH:
            self.flush_report()

    def flush_report(self) -> None:
        """Send what was answered since the last report (nothing when nothing changed)."""
        connections = tuple(self.connections.statistics())
        state = (self.app.responses, self.app.in_flight, connections)
        if not self.answers and state == self._reported:
            return
        answers, self.answers = self.answers, []
        self._reported = (dict(state[0]), state[1], connections)
        self.remote.send(ipc.Observed(answers, dict(state[0]), state[1], connections))

    async def report(self) -> None:
        while True:
            await trio.sleep(REPORT_INTERVAL)
            self.flush_report()

    def run_in(self, nursery: trio.Nursery) -> None:
        """Run what control messages start (a reload) as tasks of ``nursery``."""
        self._nursery = nursery

    def on_control(self, message: ipc.ToWorker) -> None:
        if isinstance(message, ipc.Stop):
            self.begin_stop()
        elif isinstance(message, ipc.Reload):
            assert self._nursery is not None, "control messages come once run_in was called"
            self._nursery.start_soon(self.reload, message)
        else:
            raise ipc.ProtocolError(f"unexpected {type(message).__name__} message")

    def begin_stop(self) -> None:
        self.app.begin_shutdown()
        self.stop.set()

    async def reload(self, message: ipc.Reload) -> None:
        """Swap in the new configuration's sources, tokens and certificates. The main
        process validated it; should a file have changed since, the old one stays."""
        try:
            new = msgspec.msgpack.decode(message.config, type=Config)
            sources = await trio.to_thread.run_sync(load_sources, new)
            issuer = await trio.to_thread.run_sync(build_issuer, new)
            if new.server.tls_certfile:
                for hc in (self.hc, self.mtls_hc):
                    if hc is not None:
                        reload_certificates(hc, new)
        except (ConfigError, msgspec.ValidationError) as exc:
            log.error(
                "worker %d: configuration not reloaded, keeping the old one: %s", self.index, exc
            )
            return
        self.app.reconfigure(sources, issuer)
        self.config = new
        if message.log_level in _LEVELS:
            logging.getLogger().setLevel(message.log_level.upper())


async def _hello(
    stream: trio.SocketStream, reader: ipc.FrameReader
) -> tuple[ipc.Hello, list[ipc.ToWorker]] | None:
    """The first frame (and whatever came with it); None when the main process is gone."""
    while True:
        data = await stream.receive_some(256 * 1024)
        if not data:
            return None
        messages = reader.feed(data)
        if messages:
            first, rest = messages[0], messages[1:]
            if not isinstance(first, ipc.Hello):
                raise ipc.ProtocolError(f"expected hello, got {type(first).__name__}")
            return first, rest


def _sockets(hc: HypercornConfig, fds: list[int]) -> Sockets:
    hc.bind = [f"fd://{fd}" for fd in fds]
    return hc.create_sockets()


async def serve_worker(ipc_fd: int, listen_fds: list[int], mtls_fds: list[int]) -> int:
    """Run one worker until it is told to stop (0) or the main process goes away (3)."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=ipc_fd)))
    reader = ipc.worker_reader()
    first = await _hello(stream, reader)
    if first is None:
        return EXIT_MAIN_GONE
    hello, early = first
    config = msgspec.msgpack.decode(hello.config, type=Config)
    remote = RemoteJournal(stream)
    worker = _Worker(config, hello, remote, listen_fds, mtls_fds)
    sockets, mtls_sockets = worker.sockets, worker.mtls_sockets
    main_gone = False
    async with trio.open_nursery() as nursery:
        worker.run_in(nursery)
        await nursery.start(worker.app.serve_background)
        nursery.start_soon(remote.serve_sender)
        nursery.start_soon(_watch_signals, worker)
        for message in early:
            worker.on_control(message)

        async def receive() -> None:
            nonlocal main_gone
            await remote.serve_receiver(reader, worker.on_control)
            # EOF: the main process is gone. Stop accepting now; what is in flight fails.
            main_gone = True
            remote.lost()
            nursery.cancel_scope.cancel()

        async def serve_http() -> None:
            async with trio.open_nursery() as inner:
                if mtls_sockets is not None and worker.mtls_hc is not None:
                    await inner.start(_serve_listener, worker, worker.mtls_hc, mtls_sockets)
                await inner.start(_serve_listener, worker, worker.hc, sockets)
                remote.send(ipc.Ready(os.getpid()))
                await worker.stop.wait()
                await worker.app.wait_idle()
                # Every POST is answered: hypercorn would otherwise wait out the grace
                # for keep-alive connections (as listeners._cancel_when_drained explains).
                inner.cancel_scope.cancel()
            worker.flush_report()
            await remote.flushed()
            nursery.cancel_scope.cancel()

        nursery.start_soon(receive)
        nursery.start_soon(serve_http)
        nursery.start_soon(worker.report)
        nursery.start_soon(PER_REQUEST.serve_flush)
    if main_gone:
        log.error("worker %d: the main process went away; exiting", hello.index)
        return EXIT_MAIN_GONE
    return 0


async def _serve_listener(
    worker: _Worker,
    hc: HypercornConfig,
    sockets: Sockets,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_http(
        worker.app,
        hc,
        sockets,
        worker.connections,
        shutdown=worker.stop.wait,
        task_status=task_status,
    )


async def _watch_signals(worker: _Worker) -> None:
    # SIGTERM/SIGINT reach a worker when the whole process group is signalled (Ctrl-C
    # in a terminal): stop gracefully, as the main process is about to ask. SIGHUP is
    # the main process's to handle: it sends the new configuration.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum != signal.SIGHUP:
                worker.begin_stop()


def _fds(text: str) -> list[int]:
    try:
        fds = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected descriptors like 3,4: {text!r}") from None
    if any(fd < 0 for fd in fds):
        raise argparse.ArgumentTypeError(f"negative descriptor in {text!r}")
    return fds


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (the main process starts it; not for operators)."""
    ap = argparse.ArgumentParser(prog="python -m streamd.service.worker", description=__doc__)
    ap.add_argument("--ipc-fd", type=int, required=True, help="the socketpair end")
    ap.add_argument("--listen-fds", type=_fds, required=True, help="listening sockets")
    ap.add_argument("--mtls-fds", type=_fds, default=[], help="the mTLS listener's sockets")
    ap.add_argument("--log-level", default="info", choices=_LEVELS)
    ap.add_argument("--log-format", default="auto", choices=LOG_FORMATS)
    a = ap.parse_args(argv)
    configure_logging(a.log_level, a.log_format)
    gcpolicy.tune()
    try:
        return trio.run(serve_worker, a.ipc_fd, a.listen_fds, a.mtls_fds)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled above
        return 1


if __name__ == "__main__":
    sys.exit(main())
