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

A batch's messages are published pipelined (each with its own reply inbox, no wait
between them) and the batch is confirmed only when every message has its PubAck.
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

import orjson

from streamd.drain.policy import Kind
from streamd.drain.sinks._asyncio_thread import AsyncioThread, wait
from streamd.drain.sinks.base import DrainEvent, Result, confirmed, envelope, transient

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
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


def headers_of(event: DrainEvent, instance: str) -> dict[str, str]:
    """The message's headers (nats-py removes line breaks from values)."""
    headers = {
        "Nats-Msg-Id": event.key,
        "Streamd-Stream": event.stream,
        "Streamd-Source": event.source,
        "Streamd-Seq": str(event.seq),
    }
    if event.type is not None:
        headers["Streamd-Type"] = event.type
    if event.munchkin_id is not None:
        headers["Streamd-Munchkin-Id"] = event.munchkin_id
    if instance:
        headers["Streamd-Instance"] = instance
    return headers


def _wire_size(payload: bytes, headers: dict[str, str]) -> int:
    # What the server counts against max_payload: the header block and the payload
    # ("NATS/1.0\r\n", "Key: value\r\n" each, "\r\n"). nats-py checks the payload
    # alone; a message over the limit with its headers makes the server close the
    # connection, which would fail the whole batch again and again.
    size = 12 + len(payload)
    for k, v in headers.items():
        size += len(k) + len(v.encode()) + 4
    return size


@dataclass(frozen=True, slots=True)
class _Ack:
    """A PubAck, or the error the server answered instead."""

    duplicate: bool = False
    error: str | None = None
    error_code: int | None = None
    no_responders: bool = False

    @classmethod
    def of(cls, msg: Msg) -> _Ack:
        status = (msg.headers or {}).get("Status")
        if status:
            # 503: no responders (no stream takes the subject, or JetStream is down)
            text = "no responders" if status == "503" else f"status {status}"
            return cls(error=f"{text} on {msg.subject}", no_responders=status == "503")
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return cls(error=f"not a PubAck: {msg.data[:200]!r}")
        if not isinstance(answer, dict):
            return cls(error=f"not a PubAck: {msg.data[:200]!r}")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                return cls(error=str(error))
            return cls(error=f"{error.get('description')} (code {error.get('code')}, "
                             f"err_code {error.get('err_code')})",
                       error_code=error.get("err_code"))  # fmt: skip
        return cls(duplicate=bool(answer.get("duplicate")))


class _Gone(Exception):
    """The destination can never accept this sink's messages (disable the sink)."""


class _Unavailable(Exception):
    """The destination cannot be reached or answer now (a transient failure)."""


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
        self._covered: dict[str, bool] = {}
        self._last_error = ""
        self._inbox = ""
        self._acks: dict[str, asyncio.Future[_Ack]] = {}
        self._tokens = itertools.count()

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
        import nats.js.errors

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

        rejected: list[tuple[int, str]] = []
        pending: list[tuple[DrainEvent, str, asyncio.Future[_Ack]]] = []
        try:
            for event in events:
                subject = self._render(event)
                if not self._is_covered(subject):
                    return Result(
                        Kind.GONE,
                        f"stream {self.settings.stream} (subjects {self._stream_subjects}) "
                        f"does not take subject {subject!r}",
                    )
                payload = event.line or envelope(event)
                headers = headers_of(event, self.settings.instance)
                size = _wire_size(payload, headers)
                if size > max_payload:
                    why = f"message of {size} bytes > the server's max_payload {max_payload}"
                    rejected.append((event.seq, why))
                    continue
                try:
                    token, future = await self._send(nc, subject, payload, headers)
                except nats.errors.MaxPayloadError:
                    rejected.append(
                        (event.seq, f"larger than the server's max_payload {max_payload}")
                    )
                    continue
                except (nats.errors.Error, OSError) as exc:
                    return transient(f"publishing to {self._where()}: {_text(exc)}")
                pending.append((event, token, future))

            if pending:
                _, late = await asyncio.wait(
                    [f for _, _, f in pending], timeout=max(0.0, deadline - loop.time())
                )
                if late:
                    return transient(
                        f"no PubAck for {len(late)} of {len(pending)} messages from "
                        f"{self._where()} within {self.settings.timeout * 0.9:g} s"
                    )
            present = 0
            for event, _, future in pending:
                ack = future.result()
                if ack.error is None:
                    present += ack.duplicate
                elif ack.error_code == _TOO_LARGE:
                    rejected.append((event.seq, f"refused by stream {self.settings.stream}: "
                                                f"{ack.error}"))  # fmt: skip
                else:
                    if ack.no_responders:
                        self._stream_subjects = None  # check (or create) the stream again
                    return transient(f"publishing to {self._where()}: {ack.error}")
            return confirmed(present=present, rejected=rejected)
        finally:
            for _, _, future in pending:
                future.cancel()  # no-op when done
            self._forget(pending)

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

    async def _send(
        self, nc: Client, subject: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[str, asyncio.Future[_Ack]]:
        """Publish one message with a reply subject of its own under the connection's
        PubAck inbox; the future gets its PubAck (or error) from :meth:`_on_ack`.

        Not nats-py's ``publish_async``: its reply handler raises (instead of setting
        the future) on a JetStream error such as "message size exceeds maximum", so the
        future never completes and the refusal cannot be told from a lost PubAck."""
        token = str(next(self._tokens))
        future: asyncio.Future[_Ack] = asyncio.get_running_loop().create_future()
        self._acks[token] = future
        try:
            await nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
        except BaseException:
            del self._acks[token]
            raise
        return token, future

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return  # a batch that gave up on it (timeout, cancel)
        future.set_result(_Ack.of(msg))

    def _forget(self, pending: Sequence[tuple[DrainEvent, str, asyncio.Future[_Ack]]]) -> None:
        for _, token, _ in pending:
            self._acks.pop(token, None)

    async def _connect(self) -> None:
        import nats

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

        options: dict[str, Any] = {}
        if self.settings.token:
            options["token"] = self.settings.token
        if self.settings.credentials_file:
            options["user_credentials"] = self.settings.credentials_file
        old, self._nc, self._js = self._nc, None, None
        if old is not None:
            await _quietly_close(old)
        # Reconnects forever (the journal buffers); the first connect too: the caller's
        # deadline bounds it and the next delivery starts over.
        nc = await nats.connect(
            servers=list(self.settings.servers),
            name=f"streamd {self.settings.instance} {self.settings.sink}".strip(),
            connect_timeout=min(5.0, self.settings.timeout),
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            **options,
        )
        self._nc = nc
        self._js = nc.jetstream(timeout=min(5.0, self.settings.timeout))
        # Every PubAck of this connection arrives under one wildcard subscription.
        self._acks = {}
        self._inbox = nc.new_inbox() + "."
        await nc.subscribe(self._inbox + "*", cb=self._on_ack)
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
        self._covered = {}

    def _is_covered(self, subject: str) -> bool:
        known = self._covered.get(subject)
        if known is None:
            known = any(covers(p, subject) for p in self._stream_subjects or ())
            if len(self._covered) >= _CACHE_MAX:
                self._covered = {}
            self._covered[subject] = known
        return known

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
