"""The main process's side of ``server.workers``: start, feed and supervise workers.

Each worker (:mod:`streamd.service.worker`) inherits the bound listening sockets
and one end of a socketpair. Over it the main process receives decoded batches,
appends each to the one journal (so a group commit spans every worker's batches)
and answers after the commit, or with the refusal that the worker turns into the
same 503 + Retry-After as the in-process app. A worker that dies is started
again (its in-flight requests fail for their senders, who retry; none of them was
acknowledged, since an answer is sent only after COMMIT). Stopping sends every
worker ``Stop``, closes the main process's copies of the listening sockets (so
the kernel stops queueing connections once the workers close theirs), answers
the last batches, and waits for the workers to exit, killing one that overruns
``server.graceful_timeout``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio
from hypercorn.config import Sockets

from streamd.children import describe_exit, environment, python_argv
from streamd.errors import ConfigError, StreamdError
from streamd.ingest import ipc
from streamd.ingest.remote import refusal
from streamd.journal import Journal
from streamd.service.config import Config
from streamd.service.http import NO_CONNECTIONS, ConnectionStatistics
from streamd.service.logs import current_format

log = logging.getLogger("streamd.workers")
_RECV = 256 * 1024
# A worker that keeps dying is restarted no faster than this, doubling up to
# _MAX_BACKOFF; the delay starts over once a worker lived _STABLE seconds.
_MIN_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STABLE = 10.0
# How long a started worker may take to report it is serving (imports, TLS).
READY_TIMEOUT = 60.0
# After Stop, past server.graceful_timeout: what a worker may still take to exit.
_STOP_MARGIN = 5.0

# Called for each POST a worker answered: (source, status, seconds, reason of a 503).
ObserverFn = Callable[[str, int, float, str | None], None]


@dataclass(slots=True, eq=False)
class _Slot:
    """One worker position: the process filling it now and what it last reported."""

    index: int
    pid: int | None = None
    starts: int = 0
    responses: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    connections: ConnectionStatistics = NO_CONNECTIONS
    stream: trio.SocketStream | None = None
    out: bytearray = field(default_factory=bytearray)
    out_ready: trio.Event = field(default_factory=trio.Event)
    serving: bool = False  # the process reported Ready


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """The pool at one moment (metrics, tests)."""

    pids: tuple[int | None, ...]
    restarts: int
    in_flight: int


class WorkerPool:
    """``server.workers`` ingest processes serving ``sockets`` (and ``mtls_sockets``)."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        sockets: Sockets,
        mtls_sockets: Sockets | None = None,
        *,
        backlog: int = 1024,
        observer: ObserverFn | None = None,
    ) -> None:
        """``observer`` is called once per POST a worker answered (as reported)."""
        self.config = config
        self._backlog = backlog
        self._journal = journal
        self._sockets = [*sockets.secure_sockets, *sockets.insecure_sockets]
        self._mtls_sockets = [] if mtls_sockets is None else list(mtls_sockets.secure_sockets)
        self._fds = [s.fileno() for s in self._sockets]
        self._mtls_fds = [s.fileno() for s in self._mtls_sockets]
        self._slots = [_Slot(i) for i in range(config.server.workers)]
        self._stopping = False
        self._stop_event = trio.Event()
        self._observer = observer
        self.restarts = 0
        self._dead_responses: dict[int, int] = {}
        self._dead_connections = NO_CONNECTIONS

    # -- what the rest of the service reads -------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once :meth:`begin_shutdown` was called."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        """POSTs being handled by all workers (as last reported, every 0.25 s)."""
        return sum(slot.in_flight for slot in self._slots)

    @property
    def responses(self) -> dict[int, int]:
        """Answers by status since start, over every worker (dead ones included)."""
        total = dict(self._dead_responses)
        for slot in self._slots:
            for status, n in slot.responses.items():
                total[status] = total.get(status, 0) + n
        return total

    def connection_statistics(self) -> ConnectionStatistics:
        """The workers' connection tables together (as last reported, every 0.25 s;
        the counts of a worker that died are kept)."""
        return ConnectionStatistics.combine(
            [self._dead_connections, *(slot.connections for slot in self._slots)]
        )

    def statistics(self) -> WorkerStatistics:
        """The workers' process ids (None while one is being restarted) and restarts."""
        return WorkerStatistics(
            tuple(slot.pid for slot in self._slots), self.restarts, self.in_flight
        )

    def begin_shutdown(self) -> None:
        """Tell every worker to stop: 503 to new POSTs, finish in-flight, exit."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        for slot in self._slots:
            self._send(slot, ipc.Stop())
        # The workers hold their own copies; ours would keep the kernel accepting
        # connections into a backlog nobody reads once they closed theirs.
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (*self._sockets, *self._mtls_sockets):
            sock.close()

    def reload(self, config: Config) -> None:
        """Send every worker the new configuration (sources, tokens, certificates); a
        worker started later gets it too."""
        self.config = config
        message = ipc.Reload(_encode(config), _level())
        for slot in self._slots:
            self._send(slot, message)

    # -- running ----------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every worker, report once all serve, restart those that die.

        Returns once every worker exited after :meth:`begin_shutdown`. Raises
        :class:`~streamd.errors.ConfigError` when a worker's first start fails.
        """
        if self._stopping:  # a signal came while the service was starting
            task_status.started()
            return
        # Listening before the workers start: connections wait in the backlog meanwhile.
        for sock in (*self._sockets, *self._mtls_sockets):
            sock.listen(self._backlog)
        try:
            async with trio.open_nursery() as nursery:
                for slot in self._slots:
                    await nursery.start(self._keep_running, slot)
                task_status.started()
        finally:
            self._close_sockets()

    async def _keep_running(
        self, slot: _Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        backoff = _MIN_BACKOFF
        first: trio.TaskStatus[None] | None = task_status
        while not self._stopping:
            t0 = trio.current_time()
            try:
                code: int | None = await self._run_once(slot, first)
            except ConfigError as exc:
                if first is not None:
                    raise  # the first start: the service does not start
                log.error("ingest worker %d: %s", slot.index, exc)  # say, out of processes
                code = None
            first = None
            if self._stopping:
                return
            self.restarts += 1
            if trio.current_time() - t0 > _STABLE:
                backoff = _MIN_BACKOFF
            log.error(
                "ingest worker %d (pid %s) exited with %s; starting it again in %g s",
                slot.index,
                slot.pid,
                describe_exit(code),
                backoff,
            )
            slot.pid = None
            with trio.move_on_after(backoff):
                await self._stop_event.wait()
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _run_once(self, slot: _Slot, task_status: trio.TaskStatus[None] | None) -> int:
        """Run one process in ``slot`` until it exits; return its exit status.

        With ``task_status`` (the first start), report once it serves, or raise
        :class:`ConfigError` when it exits before that.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await trio.lowlevel.open_process(
                self.command(theirs.fileno()),
                pass_fds=(theirs.fileno(), *self._fds, *self._mtls_fds),
                stdin=subprocess.DEVNULL,
                env=environment(),
            )
        except OSError as exc:
            ours.close()
            raise ConfigError(f"cannot start an ingest worker: {exc.strerror or exc}") from None
        finally:
            theirs.close()  # the worker has its copy: EOF on ours means it is gone
        slot.pid = process.pid
        slot.starts += 1
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        slot.stream, slot.out, slot.out_ready = stream, bytearray(), trio.Event()
        slot.serving = False
        settled = trio.Event()  # Ready came, or the connection ended first
        self._send(slot, ipc.Hello(_encode(self.config), slot.index, len(self._slots)))
        if self._stopping:
            self._send(slot, ipc.Stop())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, slot, stream)
                nursery.start_soon(self._receiver, slot, stream, nursery, settled)
                nursery.start_soon(self._bound_the_stop, slot, process)
                with trio.move_on_after(READY_TIMEOUT):
                    await settled.wait()
                if not settled.is_set():
                    log.error(
                        "ingest worker %d did not start within %g s", slot.index, READY_TIMEOUT
                    )
                    process.kill()
                elif task_status is not None and slot.serving:
                    task_status.started()
                    task_status = None
                code = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await stream.aclose()
            for status, n in slot.responses.items():
                self._dead_responses[status] = self._dead_responses.get(status, 0) + n
            # Its counters are kept; what was open or idle went with the process.
            gone = slot.connections
            kept = dataclasses.replace(gone, open=0, idle=0, peak=0, limit=0)
            self._dead_connections = ConnectionStatistics.combine([self._dead_connections, kept])
            slot.responses, slot.in_flight, slot.stream = {}, 0, None
            slot.connections = NO_CONNECTIONS
        if task_status is not None:
            raise ConfigError(
                f"ingest worker {slot.index} exited with {describe_exit(code)} before serving "
                "(its log lines above say why)"
            )
        return code

    def command(self, ipc_fd: int) -> list[str]:
        """The argv of one worker process, ``ipc_fd`` its end of the command socket."""
        cmd = [*python_argv("streamd.service.worker"), "--ipc-fd", str(ipc_fd)]
        cmd += ["--listen-fds", ",".join(map(str, self._fds))]
        if self._mtls_fds:
            cmd += ["--mtls-fds", ",".join(map(str, self._mtls_fds))]
        return [*cmd, "--log-level", _level(), "--log-format", current_format()]

    async def _bound_the_stop(self, slot: _Slot, process: trio.Process) -> None:
        await self._stop_event.wait()
        with trio.move_on_after(self.config.server.graceful_timeout + _STOP_MARGIN):
            await process.wait()
        if process.returncode is None:
            log.error("ingest worker %d did not stop in time; killing it", slot.index)
            process.kill()

    def _send(self, slot: _Slot, message: ipc.ToWorker) -> None:
        if slot.stream is None:
            return
        slot.out += ipc.frame(message)
        slot.out_ready.set()

    async def _sender(self, slot: _Slot, stream: trio.SocketStream) -> None:
        try:
            while True:
                await slot.out_ready.wait()
                slot.out_ready = trio.Event()
                data, slot.out = bytes(slot.out), bytearray()
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the worker is gone; the receiver sees EOF

    async def _receiver(
        self, slot: _Slot, stream: trio.SocketStream, nursery: trio.Nursery, settled: trio.Event
    ) -> None:
        reader = ipc.main_reader(self.config.server.max_body_bytes)
        try:
            while True:
                data = await stream.receive_some(_RECV)
                if not data:
                    break
                for message in reader.feed(data):
                    if isinstance(message, ipc.Append):
                        nursery.start_soon(self._append, slot, message)
                    elif isinstance(message, ipc.Observed):
                        self._observed(slot, message)
                    else:
                        slot.serving = True
                        settled.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except ipc.ProtocolError as exc:
            log.error("ingest worker %d sent a bad frame (%s); killing it", slot.index, exc)
            if slot.pid is not None:
                os.kill(slot.pid, signal.SIGKILL)
        settled.set()

    async def _append(self, slot: _Slot, message: ipc.Append) -> None:
        try:
            result = await self._journal.append(message.batch)  # returns only after COMMIT
        except Exception as exc:
            if not isinstance(exc, StreamdError):
                log.exception("unexpected error journaling a batch of ingest worker %d", slot.index)
            self._send(slot, refusal(message.id, exc))
        else:
            answer = ipc.Committed(message.id, result.accepted, result.duplicates, result.delivery)
            self._send(slot, answer)

    def _observed(self, slot: _Slot, message: ipc.Observed) -> None:
        slot.responses = message.responses
        slot.in_flight = message.in_flight
        if message.connections:
            slot.connections = ConnectionStatistics(*message.connections)
        observer = self._observer
        if observer is not None:
            for answer in message.answers:
                observer(*answer)


def _encode(config: Config) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode(config))


def _level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
