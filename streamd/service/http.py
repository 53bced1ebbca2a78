"""The HTTP edge: hypercorn's protocol code under streamd's own accept loop.

Why one module of about 700 lines: the connection table, the accept loop and the
per-connection wrapper share one invariant (every accepted socket is in the table
until it is closed, and only the table closes idle ones); the framing guard that
shares their wrapper is here for the same reason.

hypercorn's ``worker_serve`` takes every connection trio's ``serve_listeners`` hands
it: no cap, so idle connections can use up the descriptors and the memory, and at
``EMFILE`` it logs a traceback ten times a second. :func:`serve_http` replaces it:

- **a connection cap** (:class:`ConnectionTable`): at the cap the connection idle the
  longest (no request in progress: between requests, or still sending its headers) is
  closed to make room, so a flood of idle connections cannot lock a sender out; only
  when none is idle is the new connection closed at once;
- **out of descriptors** (``EMFILE``/``ENFILE``): an idle connection is closed to give
  one back and accepting pauses briefly, logged once per interval with a count;
- **framing** checked before any app sees a request (:class:`FramingGuard`);
- **hypercorn 0.18's close race**: ``TCPServer._close`` calls ``send_eof`` outside its
  ``send_lock``, so a response being sent at that moment fails with
  ``trio.BusyResourceError`` ("Error in ASGI Framework" and a traceback, which any
  client could trigger); :class:`_Connection` takes the lock;
- **hypercorn 0.18's keep-alive timer** started and cancelled a task per request, the
  largest of its own costs on a small one: ``KeepAliveTimer`` (streamd/service/keepalive.py)
  keeps its meaning with one task per connection.
- **an app marked ``RUNS_INLINE``** (the ingest app) runs in the connection's own task
  when the request's body is already read, instead of a task and a memory channel of
  its own per request (:class:`streamd.service.inline.InlineH11`), and a plain request
  whole in one read is answered without hypercorn's stream
  (:class:`streamd.service.fast.FastH11`).

Everything else (HTTP/1.1 and h2 parsing, keep-alive, the header deadline, which is
hypercorn's ``keep_alive_timeout`` running from accept until the headers are in) is
hypercorn's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import gc
import itertools
import logging
import resource
import select
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from math import inf
from typing import Any

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from streamd.asgi import BODY_FOLLOWS, RUNS_INLINE
from streamd.auth.client_cert import tls_extension
from streamd.errors import ConfigError
from streamd.service import logs  # noqa: F401 - installs the per-request log rate limit
from streamd.service.fast import FastH11
from streamd.service.fast import eligible as fast_eligible
from streamd.service.inline import InlineH11
from streamd.service.keepalive import KeepAliveTimer

# Rate-limited (logs.PER_REQUEST_LOGGERS): a flood of connections must not flood the log.
log = logging.getLogger("streamd.http.edge")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Accepting pauses this long when the process is out of descriptors.
FD_PAUSE = 0.25
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Descriptors kept back from the ingest listeners: the journal, its index and WAL files,
# the sinks' files and connections, the admin listener, pulls, worker pipes, logs.
FD_HEADROOM = 128
ADMIN_MAX_CONNECTIONS = 64
# The automatic cap, whatever the descriptor limit: an idle connection costs about
# 5 KiB (bench/edge.py), so a full house of idle ones stays near 20 MiB.
AUTO_MAX_CONNECTIONS = 4096
# At EMFILE, close up to this many idle connections at once (one at a time, each
# accept would take back the descriptor just freed).
_EMFILE_EVICT = 16
# How many idle connections of each kind eviction looks at for one with nothing to read.
_EVICT_LOOKS = 64
# Idle for less than this (just accepted, or just answered): passed over while an older
# idle one can go. A sender's fresh connection whose request had not arrived yet was
# closed without an answer under a descriptor shortage (the out-of-descriptors test in
# CI, with its client's send delayed on a loaded machine); short, so a flood's fresh
# connections buy little with it.
_FRESH = 0.25
# Give memory back to the OS when the open connections fall to a quarter of a peak of
# at least this many, and again once at most _TRIM_LOW are left (the flood is over).
_TRIM_PEAK = 256
_TRIM_LOW = 8


def max_connections_for(configured: int, nofile: int | None = None) -> int:
    """``server.max_connections``, or when it is 0 the soft ``RLIMIT_NOFILE`` less
    :data:`FD_HEADROOM`, at most :data:`AUTO_MAX_CONNECTIONS` (at least 16)."""
    if configured:
        return configured
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    return max(16, min(nofile - FD_HEADROOM, AUTO_MAX_CONNECTIONS))


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of a :class:`ConnectionTable`."""

    open: int
    idle: int
    peak: int
    limit: int
    accepted: int
    evicted: int  # idle connections closed to make room
    refused: int  # new connections closed at once: the cap was reached, none idle
    fd_pauses: int  # times accepting paused for lack of descriptors

    @classmethod
    def combine(cls, parts: list[ConnectionStatistics]) -> ConnectionStatistics:
        """The sum of several tables' (the ingest worker processes')."""
        return cls(*(sum(column) for column in zip(*parts, strict=True)))

    def __iter__(self) -> Iterator[int]:
        return iter(dataclasses.astuple(self))


NO_CONNECTIONS = ConnectionStatistics(0, 0, 0, 0, 0, 0, 0, 0)


class ConnectionTable:
    """The open connections of one set of listeners, and the cap on them."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        # Idle connections, oldest first (insertion order), each with when it became
        # idle: those that never had a POST accepted, then those that did (a sender's
        # kept-alive connection goes last).
        self._idle: dict[_Connection, float] = {}
        self._proven_idle: dict[_Connection, float] = {}
        self._busy: set[_Connection] = set()
        self._peak = self._accepted = self._evicted = self._refused = self._fd_pauses = 0
        self._trim_peak = 0
        self._flood_ending = False

    def __len__(self) -> int:
        return len(self._idle) + len(self._proven_idle) + len(self._busy)

    def statistics(self) -> ConnectionStatistics:
        """Counts now and since start."""
        return ConnectionStatistics(
            open=len(self),
            idle=len(self._idle) + len(self._proven_idle),
            peak=self._peak,
            limit=self.limit,
            accepted=self._accepted,
            evicted=self._evicted,
            refused=self._refused,
            fd_pauses=self._fd_pauses,
        )

    def admit(self) -> bool:
        """Room for one more connection? Closes the longest-idle one when at the cap;
        False (refuse the new one) when every connection has a request in progress."""
        if len(self) < self.limit:
            return True
        if self.evict_oldest():
            return True
        self._refused += 1
        return False

    def evict_oldest(self) -> bool:
        """Close the connection idle the longest, preferring one that never had a POST
        accepted; False when none is idle.

        A connection with bytes waiting to be read is passed over (among the first
        :data:`_EVICT_LOOKS` of each kind): it was just accepted with a request in it
        that hypercorn has not read yet. Under a descriptor shortage, a sender's fresh
        connection was closed that way without an answer (the out-of-descriptors test,
        once in CI). One idle for less than :data:`_FRESH` goes only when no older one
        with nothing to read is there (its request may be on its way). When every one
        looked at has bytes waiting, the oldest goes."""
        now = self._clock()
        fresh: _Connection | None = None
        for pool in (self._idle, self._proven_idle):
            for conn, since in itertools.islice(pool.items(), _EVICT_LOOKS):
                if conn.readable():
                    continue
                if now - since >= _FRESH:
                    self._evict(conn)
                    return True
                fresh = fresh or conn
        if fresh is not None:
            self._evict(fresh)
            return True
        pool = self._idle or self._proven_idle
        if not pool:
            return False
        self._evict(next(iter(pool)))
        return True

    def _evict(self, conn: _Connection) -> None:
        self._evicted += 1
        self.remove(conn)
        conn.evict()

    def close_idle(self) -> None:
        """Close every idle connection (stopping: only requests in progress remain)."""
        for pool in (self._idle, self._proven_idle):
            for conn in list(pool):
                self.remove(conn)
                conn.evict()

    def out_of_descriptors(self) -> bool:
        """Accept failed for lack of descriptors: close up to 16 idle connections to give
        descriptors back; False when none was idle (then accepting must pause)."""
        freed = 0
        while freed < _EMFILE_EVICT and self.evict_oldest():
            freed += 1
        if not freed:
            self._fd_pauses += 1
        return freed > 0

    def add(self, conn: _Connection) -> None:
        self._idle[conn] = self._clock()
        self._accepted += 1
        self._peak = max(self._peak, len(self))
        self._trim_peak = max(self._trim_peak, len(self))

    def set_idle(self, conn: _Connection, idle: bool) -> None:
        if not idle:
            for pool in (self._idle, self._proven_idle):
                if conn in pool:
                    del pool[conn]
                    self._busy.add(conn)
        elif conn in self._busy:
            self._busy.discard(conn)
            # Now the newest idle one.
            (self._proven_idle if conn.proven else self._idle)[conn] = self._clock()

    def remove(self, conn: _Connection) -> None:
        self._idle.pop(conn, None)
        self._proven_idle.pop(conn, None)
        self._busy.discard(conn)
        left = len(self)
        if self._trim_peak >= _TRIM_PEAK and left <= self._trim_peak // 4:
            # A flood is ending: hand its memory back (see release_memory), at each
            # quarter of the way down and once more when it is over.
            self._trim_peak = left
            self._flood_ending = True
            release_memory()
        elif self._flood_ending and left <= _TRIM_LOW:
            self._flood_ending = False
            release_memory()


def release_memory() -> None:
    """Free what only the cycle collector can (hypercorn's connections hold reference
    cycles), then return freed heap to the operating system (glibc ``malloc_trim``)."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


class _Connection(TCPServer):
    """hypercorn's connection, tracked in a :class:`ConnectionTable`."""

    def __init__(self, table: ConnectionTable, *args: Any) -> None:
        super().__init__(*args)
        self._table = table
        self._evicted = False
        self.proven = False  # a POST on it was answered 2xx (see _Proving)
        self.state[CONNECTION_KEY] = self  # the scope's "state": how _Proving finds it
        self._tls: tuple[bytes | None, dict[str, Any]] | None = None
        self._keep_alive = KeepAliveTimer(self)
        self.idle_task = self._keep_alive  # hypercorn's run() and protocol_send() use it
        self._hold_head = False
        self._held = b""
        # The HTTP/1.1 protocol for a marked app (FastH11 or InlineH11); None: hypercorn's.
        self.inline: type[InlineH11] | None = None

    async def serve(self) -> None:
        try:
            # Until its first bytes arrive a connection costs a task and a socket:
            # hypercorn's machinery (a nursery, h11, timers: about 17 KiB, and reference
            # cycles only the GC frees) is built when there is something to parse. The
            # wait is the header deadline hypercorn would apply (keep_alive_timeout).
            sock = _socket_of(self.stream)
            with trio.move_on_after(self.config.keep_alive_timeout) as first_bytes:
                await trio.lowlevel.wait_readable(sock)
            # Readable with nothing to read: the client closed; nothing to build for it.
            if not first_bytes.cancelled_caught and await sock.recv(1, socket.MSG_PEEK):
                await self.run()
        except (trio.ClosedResourceError, OSError):
            pass  # evicted (closed) while waiting, or gone
        finally:
            self._table.remove(self)
            # hypercorn returns without closing when a TLS handshake fails: close here
            # (a second close is a no-op).
            _socket_of(self.stream).close()

    def readable(self) -> bool:
        """Bytes (or the peer's close) are waiting to be read: not idle after all."""
        try:
            fd = _socket_of(self.stream).fileno()
        except (OSError, AttributeError):
            return False
        if fd < 0:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def tls_extension(self) -> dict[str, Any] | None:
        """The ASGI TLS extension for a request on this connection (None: not TLS).
        Read from the TLS session at each request, built again only when the peer's
        certificate changed (a TLS 1.2 renegotiation)."""
        stream = self.stream
        if not isinstance(stream, trio.SSLStream):
            return None
        der = stream.getpeercert(binary_form=True)
        if self._tls is None or self._tls[0] != der:
            self._tls = (der, tls_extension(der, stream.version()))
        return dict(self._tls[1])

    def evict(self) -> None:
        """Close at once (the connection has no request in progress): the read loop ends
        and hypercorn closes the rest as it does for a client that went away."""
        self._evicted = True
        _socket_of(self.stream).close()

    def body_follows(self) -> None:
        """The next write is a response's head whose body the app sends at once: hold it
        and write both with one ``send_all`` (see :class:`_ConnectionScope`)."""
        self._hold_head = True

    async def send_whole(self, data: bytes) -> None:
        """Write a whole answer at once (:class:`FastH11`): nothing is held for it."""
        self._hold_head = False
        if self._held:
            data, self._held = self._held + data, b""
        await super().protocol_send(RawData(data))

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, RawData):
            if self._hold_head and event.data:
                self._hold_head = False
                self._held = event.data
                return
            if self._held:
                event = RawData(self._held + event.data)
                self._held = b""
            elif not event.data:
                # h11's end of a Content-Length response is b"": hypercorn would take the
                # send lock, a shielded scope and a scheduler pass to write nothing.
                return
        else:
            self._hold_head = False
            if self._held:  # whatever comes next, a held head is written first
                held, self._held = self._held, b""
                await super().protocol_send(RawData(held))
            if isinstance(event, Updated):
                self._table.set_idle(self, event.idle)
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        if self.inline is not None:
            _inline_http11(self.protocol, self, self.inline)
        # hypercorn's loop, with a plain cancel scope around each read where hypercorn
        # enters ``trio.fail_after``, a generator context manager: 2.8% of the event
        # loop's thread on I/O batches (ARCHITECTURE.md, "CPU per small delivery").
        # Same bound: a read waiting longer than ``read_timeout`` ends the connection.
        timeout = self.config.read_timeout or inf
        receive, handle = self.stream.receive_some, self.protocol.handle
        while True:
            scope = trio.CancelScope(deadline=trio.current_time() + timeout)
            try:
                with scope:
                    data = await receive(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if scope.cancelled_caught:
                break  # hypercorn's TooSlowError
            await handle(RawData(bytes(data)))
            if data == b"":
                break
        await handle(Closed())
        self._keep_alive.read_ended()

    async def _close(self) -> None:
        # hypercorn 0.18 sends EOF outside send_lock: a response being written then
        # fails with BusyResourceError. Take the lock (unless this task holds it), never
        # waiting long for a peer that does not read; close in any case.
        lock: trio.Lock = self.send_lock
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1.0):
                held = lock.statistics().owner is trio.lowlevel.current_task()
                async with contextlib.AsyncExitStack() as stack:
                    if not held:
                        await stack.enter_async_context(lock)
                    with contextlib.suppress(
                        trio.BrokenResourceError,
                        trio.BusyResourceError,
                        trio.ClosedResourceError,
                        AttributeError,  # an SSL stream has no send_eof
                        OSError,
                    ):
                        await self.stream.send_eof()
            await self.stream.aclose()


def _inline_http11(wrapper: ProtocolWrapper, conn: _Connection, kind: type[InlineH11]) -> None:
    """A new HTTP/1.1 connection (nothing read yet) gets ``kind``'s protocol instead of
    hypercorn's."""
    if type(wrapper.protocol) is H11Protocol:
        wrapper.protocol = protocol = kind(
            wrapper.app,
            wrapper.config,
            wrapper.context,
            wrapper.task_group,
            wrapper.state,
            wrapper.ssl,
            wrapper.client,
            wrapper.server,
            wrapper.send,
        )
        if isinstance(protocol, FastH11):
            protocol.edge = conn


def _socket_of(stream: Any) -> Any:
    inner = getattr(stream, "transport_stream", stream)  # SSLStream wraps a SocketStream
    return inner.socket


CONNECTION_KEY = "streamd.connection"


class _Proving:
    """Marks a connection whose POST was answered 2xx (credentials checked, batch
    accepted): at the cap, such a sender's kept-alive connection is closed only after
    every idle connection that never got that far."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = scope.get("state", {}).get(CONNECTION_KEY)
        if conn is None or conn.proven or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return

        async def watch(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                conn.proven = True
            await send(message)

        await self.app(scope, receive, watch)


class _ConnectionScope:
    """What a request learns from, and tells, its connection:

    - the ASGI TLS extension (``scope["extensions"]["tls"]``: the client's certificate,
      verified by the handshake) on a TLS connection, which hypercorn leaves out; a
      source whose credential is the client certificate reads it there;
    - on HTTP/1.x, a ``http.response.start`` message carrying ``BODY_FOLLOWS`` (the
      app sends the whole body right after it) makes the connection write the head
      and the body with one ``send_all`` instead of two (one lock, shielded scope,
      ``send`` and scheduler pass fewer per answer).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = scope.get("state", {}).get(CONNECTION_KEY)
        if conn is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = conn.tls_extension()
        if tls is not None:
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": tls}}
        if scope.get("http_version") not in ("1.0", "1.1"):
            await self.app(scope, receive, send)  # h2 writes frames from its own buffer
            return

        async def whole(message: Mapping[str, Any]) -> None:
            if message.get(BODY_FOLLOWS):
                conn.body_follows()
            await send(message)

        await self.app(scope, receive, whole)


class FramingGuard:
    """Refuse, before the app sees it, a request whose framing is ambiguous or not ours:

    - ``Content-Length`` together with ``Transfer-Encoding``: 400 and close (RFC 9112
      §6.1; h11 would take the chunked framing and keep the connection, so a request
      hidden in the body would be served next: request smuggling);
    - a header that must come once (``Authorization``, ``Content-Length``,
      ``Content-Type``, ``Content-Encoding``, the Adobe signature headers) more than
      once: 400 (a proxy reading the first and streamd the last would disagree);
    - an HTTP version other than 1.0, 1.1 or 2: 505;
    - a ``Content-Encoding`` other than ``identity``: 415 (the body is stored as sent;
      decompressing would need its own bounds).

    Every answer here closes the connection.
    """

    _SINGLE = frozenset(
        {
            b"authorization",
            b"content-length",
            b"content-type",
            b"content-encoding",
            b"transfer-encoding",
            b"x-adobe-digital-signature-1",
            b"x-adobe-digital-signature-2",
            b"x-adobe-public-key1-path",
            b"x-adobe-public-key2-path",
            b"x-adobe-signature",
        }
    )
    _VERSIONS = frozenset({"1.0", "1.1", "2"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                status, message = problem
                log.info("refused a request: %s", message)
                await _drain(receive)
                body = orjson.dumps({"error": message})
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @classmethod
    def problem(cls, scope: Scope) -> tuple[int, str] | None:
        """The status and message for a request that must not reach the app, or None."""
        version = scope.get("http_version", "1.1")
        if version not in cls._VERSIONS:
            return 505, f"HTTP/{str(version)[:10]} is not supported; use HTTP/1.1"
        seen: set[bytes] = set()
        for raw_name, value in scope["headers"]:
            name = raw_name.lower()
            if name in cls._SINGLE:
                if name in seen:
                    return 400, f"more than one {name.decode()} header"
                seen.add(name)
                if name == b"content-encoding" and value.strip().lower() != b"identity":
                    shown = value.decode("latin-1")[:40]
                    return 415, f"Content-Encoding {shown!r} is not supported; send the body as is"
        if b"content-length" in seen and b"transfer-encoding" in seen:
            return 400, "Content-Length together with Transfer-Encoding (RFC 9112 section 6.1)"
        return None


def bind_sockets(hconfig: HypercornConfig, where: str) -> Sockets:
    """Bind and listen on ``hconfig.bind`` (``where`` names them for the operator).

    Raises :class:`ConfigError` with the system's reason when an address cannot be
    bound or listened on (in use, not local, a name that does not resolve), having
    closed whatever it opened.
    """
    try:
        sockets = hconfig.create_sockets()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot listen on {where}: {_reason(exc)}") from None
    try:
        # listen() too: with SO_REUSEADDR two sockets may bind one address; the second
        # finds out only here (EADDRINUSE).
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            sock.listen(hconfig.backlog)
    except OSError as exc:
        close_sockets(sockets)
        raise ConfigError(f"cannot listen on {where}: {_reason(exc)}") from None
    return sockets


def close_sockets(sockets: Sockets) -> None:
    """Close listening sockets (start-up failed after they were bound)."""
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# A refused request's body is read (and dropped) up to this much, for at most this long.
_DRAIN_BYTES = 64 * 1024
_DRAIN_SECONDS = 1.0


async def _drain(receive: Receive) -> None:
    """Read a small body before answering: the answer then goes out while h11 waits for
    it (the connection paused), not while it parses whatever the client sent after the
    body, which with ``Connection: close`` ends the connection before the answer's body
    is written; and the peer does not get a reset for bytes left unread. A large or
    slow body is not waited for: the connection closes either way."""
    received = 0
    with trio.move_on_after(_DRAIN_SECONDS):
        while received <= _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def serve_http(
    app: ASGIApp,
    hconfig: HypercornConfig,
    sockets: Sockets,
    table: ConnectionTable,
    *,
    shutdown: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound and listening ``sockets`` until ``shutdown()`` returns,
    then let open requests finish within ``hconfig.graceful_timeout``.

    Reports the listeners' URLs through ``task_status``.
    """
    # An ASGI app, as hypercorn's types say.
    guarded: Any = FramingGuard(_Proving(_ConnectionScope(app)))
    inline: type[InlineH11] | None = None
    if getattr(app, RUNS_INLINE, False) is True:
        # FastH11 unless the configuration asks for what it does not do (once, here).
        inline = FastH11 if fast_eligible(hconfig) else InlineH11
    wrapped = wrap_app(guarded, hconfig.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    ssl_context = hconfig.create_ssl_context()
    listeners: list[trio.SSLListener[trio.SocketStream] | trio.SocketListener] = []
    binds = []
    for sock in sockets.secure_sockets:
        assert ssl_context is not None  # secure sockets exist only with a certificate
        listeners.append(
            trio.SSLListener(
                trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                ssl_context,
                https_compatible=True,
            )
        )
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")

    async with trio.open_nursery() as connections:

        def spawn(stream: Any) -> None:
            state = ConnectionState({})
            conn = _Connection(table, wrapped, hconfig, context, state, stream)
            conn.inline = inline
            table.add(conn)
            connections.start_soon(conn.serve)

        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(_accept, listener, table, spawn)
            task_status.started(binds)
            await shutdown()
            accepting.cancel_scope.cancel()
        # Idle connections close now (those still waiting for their first byte too, which
        # hypercorn does not know yet), busy ones after their answer (hypercorn's rule).
        await context.terminated.set()
        table.close_idle()
        connections.cancel_scope.deadline = trio.current_time() + hconfig.graceful_timeout


async def _accept(
    listener: trio.SSLListener[trio.SocketStream] | trio.SocketListener,
    table: ConnectionTable,
    spawn: Callable[[Any], None],
) -> None:
    async with listener:  # closed when accepting ends (trio.serve_listeners does the same)
        await _accept_until_cancelled(listener, table, spawn)


async def _accept_until_cancelled(
    listener: trio.SSLListener[trio.SocketStream] | trio.SocketListener,
    table: ConnectionTable,
    spawn: Callable[[Any], None],
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
            freed = table.out_of_descriptors()
            log.warning(
                "accept failed (%s): out of file descriptors with %d connections open; %s "
                "(lower server.max_connections or raise LimitNOFILE)",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                len(table),
                "closed idle ones" if freed else f"none idle, pausing {FD_PAUSE:g} s",
            )
            if not freed:
                await trio.sleep(FD_PAUSE)
            continue
        if not table.admit():
            log.warning(
                "refused a connection: %d open, every one with a request in progress "
                "(server.max_connections = %d)",
                len(table),
                table.limit,
            )
            _socket_of(stream).close()
            continue
        spawn(stream)
