"""The ``nats`` sink: events published to a JetStream stream with ``Nats-Msg-Id``.

Each event is one message: the envelope (``event.line``) as payload, the event key as
``Nats-Msg-Id`` (JetStream drops a second message with the same id within the stream's
duplicate window and answers its PubAck with ``duplicate: true``), and headers
``Streamd-Stream``, ``Streamd-Type``, ``Streamd-Munchkin-Id`` (absent when the event
has none), ``Streamd-Source``, ``Streamd-Seq`` (the journal sequence of the receiver
that sent it) and ``Streamd-Instance`` (the receiver's name). The subject comes from
the template in ``settings.subject``; in a placeholder's value, every character a
subject token cannot hold (``.``, ``*``, ``>``, whitespace, control characters)
becomes ``_``, and an empty or missing value is ``_``.

nats-py is asyncio-only and no maintained trio-native NATS client exists, so the
client lives on an asyncio loop in a thread the sink owns (started by the first
delivery, stopped by ``aclose``); trio waits for each batch's coroutine without
blocking (:mod:`streamd.drain.sinks._asyncio_thread`).

A batch's messages go out as one buffer of ``HPUB`` frames written by the sink (each
with a reply subject of its own under one wildcard subscription of the connection), and
the batch is confirmed only when every message has its PubAck; the PubAcks are taken
from nats-py's parser before its per-message machinery (a ``Msg``, a queue, a callback)
and decoded together when the batch has them all. Why, and what it costs:
ARCHITECTURE.md ("Shared engines").
No PubAck in time, no responders, a lost connection, a cluster without a leader:
transient. A message the server refuses for good (larger than the server's
``max_payload`` or the stream's ``max_msg_size``): that event alone is rejected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamd.drain.policy import Kind
from streamd.drain.sinks._asyncio_thread import AsyncioThread, wait
from streamd.drain.sinks._nats_wire import (
    LINE_BREAKS,
    Ack,
    AckReader,
    Batch,
    decode_acks,
    hook_process_msg,
    missing_internals,
    route_headers,
    write_frames,
)
from streamd.drain.sinks.base import DrainEvent, Result, confirmed, envelope, transient

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = logging.getLogger("streamd.drain")

# JetStream's error code for "message size exceeds maximum allowed" (the stream's
# max_msg_size): the one per-message refusal that retrying can never fix.
_TOO_LARGE = 10054
_UNSAFE = re.compile(r"[.*>\s\x00-\x1f\x7f]")
_FIELDS = ("stream", "type", "source", "munchkin_id")
_STREAM_NOT_FOUND = 10059
_CACHE_MAX = 4096  # subjects whose coverage by the stream was checked


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...]
    stream: str = "STREAMD"
    subject: str = "streamd.{stream}.{type}"  # {stream} {type} {source} {munchkin_id}
    manage_stream: bool = True  # create the stream when missing
    duplicate_window: float = 120.0  # seconds; the stream's Nats-Msg-Id memory
    replicas: int = 1
    token: str | None = None
    credentials_file: str | None = None
    instance: str = ""
    timeout: float = 20.0
    sink: str = ""


def subject_token(value: str | None) -> str:
    """A placeholder's value as (part of) one subject token."""
    if not value:
        return "_"
    return _UNSAFE.sub("_", value)


def compile_subject(template: str) -> Callable[[DrainEvent], str]:
    """The function that renders ``template`` for an event (placeholders checked by
    the configuration: ``stream``, ``type``, ``source``, ``munchkin_id``)."""
    parts = [(text, field) for text, field, _, _ in string.Formatter().parse(template)]

    def render(event: DrainEvent) -> str:
        out = []
        for text, field in parts:
            out.append(text)
            if field:
                out.append(subject_token(getattr(event, field)))
        return "".join(out)

    return render


def stream_subjects(template: str) -> list[str]:
    """The subjects of the stream streamd creates for ``template``: its literal tokens
    before the first placeholder, then ``>`` (the template itself when it has none).

    ``>`` rather than one ``*`` per placeholder token: a later template with more
    tokens (``{source}`` added) still lands in the same stream; the literal prefix
    keeps other applications' subjects out (the configuration requires one).
    """
    head = template.split("{", 1)[0]
    if head == template:
        return [template]
    literal = head.split(".")[:-1]  # the token holding the placeholder is not literal
    return [".".join([*literal, ">"])]


def covers(pattern: str, subject: str) -> bool:
    """Whether a stream subject (with ``*`` and ``>`` wildcards) matches ``subject``."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or part not in ("*", have[i]):
            return False
    return len(have) == len(want)


class _Gone(Exception):
    """The destination can never accept this sink's messages (disable the sink)."""


class _Unavailable(Exception):
    """The destination cannot be reached or answer now (a transient failure)."""


@dataclass(frozen=True, slots=True)
class _Route:
    """What a batch needs per routing columns: ``subject`` (None: the stream does not
    take it) and the headers that depend on them."""

    subject: bytes | None
    subject_text: str
    headers: str


class NatsSink:
    """Publishes batches to JetStream through one connection on the sink's own loop."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self._render = compile_subject(settings.subject)
        self._thread: AsyncioThread | None = None
        # Below: used only on the asyncio loop.
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock: asyncio.Lock | None = None
        self._stream_subjects: list[str] | None = None  # None: not checked yet
        self._routes: dict[tuple[str, str | None, str, str | None], _Route] = {}
        self._last_error = ""
        self._inbox = b""
        self._batches: dict[int, Batch] = {}
        self._batch_ids = itertools.count()

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        if self._thread is None:
            self._thread = AsyncioThread(f"nats-{self.settings.sink}")
        return await wait(self._thread.submit(self._publish(events)))

    async def aclose(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            await wait(thread.submit(self._close()))
        finally:
            import trio

            await trio.to_thread.run_sync(thread.stop, 5.0, abandon_on_cancel=True)

    # --- on the asyncio loop -------------------------------------------------------

    async def _publish(self, events: Sequence[DrainEvent]) -> Result:
        import nats.errors

        loop = asyncio.get_running_loop()
        # Our own deadline, inside the runner's (pool.timeout): a batch without all its
        # PubAcks ends as a transient result that says so, not as a bare cancellation.
        deadline = loop.time() + self.settings.timeout * 0.9
        try:
            nc, max_payload = await asyncio.wait_for(
                self._ready(), timeout=max(0.1, deadline - loop.time())
            )
        except _Gone as exc:
            return Result(Kind.GONE, str(exc))
        except _Unavailable as exc:
            return transient(str(exc))
        except TimeoutError:
            if self._nc is not None and self._nc.is_connected:
                return transient(f"stream {self.settings.stream} on {self._where()}: no answer "
                                 "in time (JetStream busy, or without a leader)")  # fmt: skip
            return transient(f"no connection to {self._where()}: {self._last_error or 'timeout'}")

        # Every message of the batch as one buffer of HPUB frames.
        batch_id = next(self._batch_ids)
        reply = b"%b%d." % (self._inbox, batch_id)
        rejected: list[tuple[int, str]] = []
        sent: list[DrainEvent] = []
        frames: list[bytes] = []
        for event in events:
            route = self._routes.get((event.stream, event.type, event.source, event.munchkin_id))
            if route is None:
                route = self._route(event)
            if route.subject is None:
                return Result(
                    Kind.GONE,
                    f"stream {self.settings.stream} (subjects {self._stream_subjects}) "
                    f"does not take subject {route.subject_text!r}",
                )
            key = event.key.strip()
            if "\r" in key or "\n" in key:
                key = key.translate(LINE_BREAKS)
            header = (f"NATS/1.0\r\nNats-Msg-Id: {key}\r\nStreamd-Seq: {event.seq}\r\n"
                      f"{route.headers}").encode()  # fmt: skip
            payload = event.line or envelope(event)
            # What the server counts against max_payload: headers and payload. A
            # message over it would make the server close the connection, failing
            # the whole batch again and again.
            size = len(header) + len(payload)
            if size > max_payload:
                why = f"message of {size} bytes > the server's max_payload {max_payload}"
                rejected.append((event.seq, why))
                continue
            frames.append(b"HPUB %b %b%d %d %d\r\n%b%b\r\n" % (
                route.subject, reply, len(sent), len(header), size, header, payload))  # fmt: skip
            sent.append(event)

        if not sent:
            return confirmed(present=0, rejected=rejected)
        batch = Batch(len(sent), loop.create_future())
        self._batches[batch_id] = batch
        try:
            if not nc.is_connected:
                return transient(f"publishing to {self._where()}: not connected "
                                 f"({self._last_error or 'reconnecting'})")  # fmt: skip
            try:
                await write_frames(nc, b"".join(frames), len(sent))
            except (nats.errors.Error, OSError) as exc:
                return transient(f"publishing to {self._where()}: {_text(exc)}")
            await asyncio.wait([batch.done], timeout=max(0.0, deadline - loop.time()))
            if batch.left:
                return transient(
                    f"no PubAck for {batch.left} of {len(sent)} messages from "
                    f"{self._where()} within {self.settings.timeout * 0.9:g} s"
                )
        finally:
            batch.done.cancel()  # no-op when done
            self._batches.pop(batch_id, None)

        present = 0
        answers = [a for a in batch.answers if a is not None]
        for event, ack in zip(sent, decode_acks(answers), strict=True):
            if ack.error is None:
                present += ack.duplicate
            elif ack.error_code == _TOO_LARGE:
                rejected.append((event.seq, f"refused by stream {self.settings.stream}: "
                                            f"{ack.error}"))  # fmt: skip
            else:
                if ack.no_responders:
                    self._stream_subjects = None  # check (or create) the stream again
                return transient(f"publishing to {self._where()}: {ack.error}")
        rejected.sort()
        return confirmed(present=present, rejected=rejected)

    def _route(self, event: DrainEvent) -> _Route:
        subject = self._render(event)
        covered = any(covers(p, subject) for p in self._stream_subjects or ())
        route = _Route(subject.encode() if covered else None, subject,
                       route_headers(event, self.settings.instance))  # fmt: skip
        if len(self._routes) >= _CACHE_MAX:
            self._routes = {}
        self._routes[(event.stream, event.type, event.source, event.munchkin_id)] = route
        return route

    async def _ready(self) -> tuple[Client, int]:
        """The connection (connecting and checking the stream when needed) and the
        server's max_payload."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._nc is None or self._nc.is_closed or self._js is None:
                await self._connect()
            nc, js = self._nc, self._js
            assert nc is not None
            assert js is not None
            if self._stream_subjects is None:
                await self._check_stream(js)
            return nc, nc.max_payload

    def _on_ack(self, tail: bytes, answer: bytes | Ack) -> None:
        """A message to the PubAck inbox (its JSON, or a status); ``tail``: its subject
        after the inbox, ``<batch>.<index>``."""
        batch_id, _, index = tail.partition(b".")
        try:
            batch = self._batches.get(int(batch_id))
            position = int(index)
        except ValueError:
            return  # not one of ours
        if batch is not None:  # else a batch that gave up on it (timeout, cancel)
            batch.answer(position, answer)

    async def _on_msg(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        """A message to the PubAck inbox that came through nats-py's parser: one with
        headers, such as the status 503 (no responders)."""
        status = None
        if headers and self._nc is not None:
            status = (await self._nc._process_headers(headers) or {}).get("Status")
        tail = subject[len(self._inbox) :]
        if status:
            self._on_ack(tail, Ack.status(status, subject.decode(errors="replace")))
        else:
            self._on_ack(tail, data)

    async def _connect(self) -> None:
        from nats.aio.client import Client

        async def on_error(exc: Exception) -> None:
            text = _text(exc)
            if text != self._last_error:  # once per kind of error, not once per retry
                log.warning("sink %s: nats: %s", self.settings.sink, text)
            self._last_error = text

        async def on_disconnected() -> None:
            if self._nc is None:  # our own close
                return
            log.warning("sink %s: nats: disconnected", self.settings.sink)

        async def on_reconnected() -> None:
            self._last_error = ""
            log.info("sink %s: nats: reconnected to %s", self.settings.sink,
                     self._nc.connected_url.netloc if self._nc and self._nc.connected_url
                     else "?")  # fmt: skip

        # Seconds as floats: nats-py annotates them as int, and waits with asyncio.
        options: dict[str, Any] = {
            "connect_timeout": min(5.0, self.settings.timeout),
            "reconnect_time_wait": 0.5,
        }
        if self.settings.token:
            options["token"] = self.settings.token
        if self.settings.credentials_file:
            options["user_credentials"] = self.settings.credentials_file
        old, self._nc, self._js = self._nc, None, None
        if old is not None:
            await _quietly_close(old)
        # Reconnects forever (the journal buffers); the first connect too: the caller's
        # deadline bounds it and the next delivery starts over. A connect that fails or
        # is cut off by that deadline (a server that accepts and never says INFO) is
        # closed here: nats-py leaves its socket open, one descriptor per delivery
        # attempt until the garbage collector happens to find it.
        nc = Client()
        try:
            await nc.connect(
                servers=list(self.settings.servers),
                name=f"streamd {self.settings.instance} {self.settings.sink}".strip(),
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **options,
            )
        except BaseException:
            await _quietly_close(nc)
            raise
        missing = missing_internals(nc)
        if missing:
            await _quietly_close(nc)
            from nats.aio.client import __version__

            raise _Gone(f"nats-py {__version__} lacks what the sink uses of it "
                        f"({', '.join(missing)}): install the version streamd was "
                        "tested with (docs/nats.md)")  # fmt: skip
        self._nc = nc
        self._js = nc.jetstream(timeout=min(5.0, self.settings.timeout))
        # Every PubAck of this connection arrives under one wildcard subscription,
        # taken off nats-py's parser (AckReader, hook_process_msg): no callback, no queue.
        # A batch still waiting on the old connection times out (its PubAcks are lost).
        self._inbox = (nc.new_inbox() + ".").encode()
        sub = await nc.subscribe(self._inbox.decode() + ">")
        hook_process_msg(nc, sub._id, self._on_msg)
        AckReader(nc._ps, sub._id, self._inbox, self._on_ack)
        self._stream_subjects = None
        self._last_error = ""

    async def _check_stream(self, js: JetStreamContext) -> None:
        """Learn the stream's subjects; create the stream first when allowed and missing.

        Raises :class:`_Gone` when it is missing and may not be created, and
        :class:`_Unavailable` when JetStream cannot answer (no leader, no responders)."""
        import nats.errors
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        s = self.settings
        try:
            try:
                info = await js.stream_info(s.stream)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code not in (_STREAM_NOT_FOUND, None):
                    raise
                if not s.manage_stream:
                    raise _Gone(
                        f"stream {s.stream} does not exist on {self._where()} "
                        "(nats.manage_stream = false: create it, or let streamd)"
                    ) from None
                config = StreamConfig(
                    name=s.stream,
                    subjects=stream_subjects(s.subject),
                    storage=StorageType.FILE,
                    duplicate_window=s.duplicate_window,
                    num_replicas=s.replicas,
                )
                try:
                    info = await js.add_stream(config)
                    log.info("sink %s: created JetStream stream %s (subjects %s, duplicate "
                             "window %g s, %d replicas)", s.sink, s.stream, config.subjects,
                             s.duplicate_window, s.replicas)  # fmt: skip
                except nats.js.errors.BadRequestError:
                    # Another receiver created it meanwhile (with another configuration).
                    info = await js.stream_info(s.stream)
        except (_Gone, _Unavailable):
            raise
        except nats.js.errors.APIError as exc:
            raise _Unavailable(f"stream {s.stream} on {self._where()}: {_text(exc)}") from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise _Unavailable(f"stream {s.stream} on {self._where()}: {_text(exc)}") from None
        window = info.config.duplicate_window or 0.0
        if abs(window - s.duplicate_window) > 0.001:
            log.warning(
                "sink %s: stream %s has a duplicate window of %g s, not nats.duplicate_window "
                "= %g s (left as it is: redeliveries later than %g s are stored again)",
                s.sink, s.stream, window, s.duplicate_window, window,
            )  # fmt: skip
        self._stream_subjects = list(info.config.subjects or [])
        self._routes = {}

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _quietly_close(nc)

    def _where(self) -> str:
        return ", ".join(self.settings.servers)


async def _quietly_close(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.close(), timeout=5.0)
    except Exception as exc:  # closing is best effort (a dead server, a timeout)
        log.debug("nats: closing the connection: %s", _text(exc))


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text and name not in text else (text or name)
