"""The ``nats`` sink's own side of the NATS protocol: the header block of a message,
the PubAcks of a batch (collected by index, decoded together), and the PubAck frames
read off nats-py's parser before its per-message machinery.

nats-py's ``publish`` builds a header dict's bytes, a ``Msg``, a future and an inbox
lookup per message, and its parser matches four regular expressions and runs a task's
callback per message: at 14,000 events/s that was a whole core. The sink writes a
batch's ``HPUB`` frames as one buffer and takes its PubAcks here; the connection
itself (connect, reconnect, INFO, PING, authentication, the JetStream API) stays
nats-py's. What is used of nats-py's internals (``Client._send_command``,
``_flush_pending``, ``_process_msg``, ``_process_headers``, ``Parser.parse``,
``buf``, ``state``, ``needed``) is named where it is used; tests/engines/nats drive
all of it against real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from streamd.drain.sinks.base import DrainEvent

if TYPE_CHECKING:
    from nats.aio.client import Client

LINE_BREAKS = str.maketrans({"\r": " ", "\n": " "})


def header_value(value: str) -> str:
    """A header value as nats-py writes one: trimmed, each CR or LF a space (a value
    can never end the header line)."""
    value = value.strip()
    if "\r" in value or "\n" in value:
        value = value.translate(LINE_BREAKS)
    return value


def route_headers(event: DrainEvent, instance: str) -> str:
    # The headers that depend on the event's routing columns only (cached per route).
    out = [f"Streamd-Stream: {header_value(event.stream)}\r\n"
           f"Streamd-Source: {header_value(event.source)}\r\n"]  # fmt: skip
    if event.type is not None:
        out.append(f"Streamd-Type: {header_value(event.type)}\r\n")
    if event.munchkin_id is not None:
        out.append(f"Streamd-Munchkin-Id: {header_value(event.munchkin_id)}\r\n")
    if instance:
        out.append(f"Streamd-Instance: {header_value(instance)}\r\n")
    out.append("\r\n")
    return "".join(out)


class _ApiError(msgspec.Struct):
    code: int | None = None
    err_code: int | None = None
    description: str | None = None


class _PubAck(msgspec.Struct):
    """A PubAck, or JetStream's error instead (other fields ignored)."""

    error: _ApiError | None = None
    duplicate: bool = False


_PUBACKS = msgspec.json.Decoder(list[_PubAck])


@dataclass(frozen=True, slots=True)
class Ack:
    """A PubAck, or the error the server answered instead."""

    duplicate: bool = False
    error: str | None = None
    error_code: int | None = None
    no_responders: bool = False

    @classmethod
    def of(cls, data: bytes) -> Ack:
        """One PubAck's JSON (the path for answers the batch decoder refused)."""
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            return cls(error=f"not a PubAck: {data[:200]!r}")
        if not isinstance(answer, dict):
            return cls(error=f"not a PubAck: {data[:200]!r}")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                return cls(error=str(error))
            return cls.refused(error.get("description"), error.get("code"),
                               error.get("err_code"))  # fmt: skip
        return cls(duplicate=bool(answer.get("duplicate")))

    @classmethod
    def refused(cls, description: object, code: object, err_code: object) -> Ack:
        return cls(error=f"{description} (code {code}, err_code {err_code})",
                   error_code=err_code if isinstance(err_code, int) else None)  # fmt: skip

    @classmethod
    def status(cls, status: str, subject: str) -> Ack:
        # 503: no responders (no stream takes the subject, or JetStream is down)
        text = "no responders" if status == "503" else f"status {status}"
        return cls(error=f"{text} on {subject}", no_responders=status == "503")


def decode_acks(answers: Sequence[bytes | Ack]) -> list[Ack]:
    """The batch's answers as :class:`Ack` s: the PubAcks' JSON decoded in one call
    (a JSON array of them), one by one only when that call refuses one."""
    raw = [a for a in answers if isinstance(a, bytes)]
    decoded: Iterator[_PubAck] | None = None
    if raw:
        try:
            pubacks = _PUBACKS.decode(b"[" + b",".join(raw) + b"]")
        except msgspec.DecodeError:
            pass
        else:  # one per answer (an answer holding "},{" would make two)
            decoded = iter(pubacks) if len(pubacks) == len(raw) else None
    out = []
    for answer in answers:
        if not isinstance(answer, bytes):
            out.append(answer)
        elif decoded is None:
            out.append(Ack.of(answer))
        else:
            ack = next(decoded)
            if ack.error is None:
                out.append(_DUPLICATE if ack.duplicate else _NEW)
            else:
                e = ack.error
                out.append(Ack.refused(e.description, e.code, e.err_code))
    return out


_NEW = Ack()
_DUPLICATE = Ack(duplicate=True)


class Batch:
    """The answers of one batch's messages, by index (its reply subjects end in
    ``.<batch>.<index>``); ``done`` is set when every message has one."""

    __slots__ = ("answers", "done", "left")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.answers: list[bytes | Ack | None] = [None] * size
        self.left = size
        self.done = done

    def answer(self, index: int, answer: bytes | Ack) -> None:
        if index >= len(self.answers):
            return
        if self.answers[index] is None:
            self.left -= 1
        self.answers[index] = answer
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


_CLIENT_INTERNALS = ("_send_command", "_flush_pending", "_flush_queue", "_process_msg",
                     "_process_headers", "_ps", "_subs", "stats")  # fmt: skip
_PARSER_INTERNALS = ("parse", "buf", "state", "needed")


def missing_internals(nc: Client) -> list[str]:
    """The internals of nats-py this module uses that ``nc`` lacks (another nats-py
    version than the one tested): empty when all are there."""
    missing = [f"Client.{name}" for name in _CLIENT_INTERNALS if not hasattr(nc, name)]
    parser = getattr(nc, "_ps", None)
    missing += [f"Parser.{name}" for name in _PARSER_INTERNALS if not hasattr(parser, name)]
    return missing


async def write_frames(nc: Client, frames: bytes, count: int) -> None:
    """Hand a buffer of whole protocol frames to nats-py's writer, as its ``publish``
    does for one (``_send_command`` flushes at once past its pending-size limit; the
    flusher task writes the rest)."""
    nc.stats["out_msgs"] += count
    nc.stats["out_bytes"] += len(frames)
    await nc._send_command(frames)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def hook_process_msg(
    nc: Client, sid: int, on_msg: Callable[[bytes, bytes, bytes | None], Awaitable[None]]
) -> None:
    """Route the messages of subscription ``sid`` (the PubAck inbox) to ``on_msg``
    straight from nats-py's parser.

    nats-py makes a ``Msg``, puts it on the subscription's queue and runs the callback
    from a task for each message: about half of the sink's time per event went there.
    The subscription keeps its id across reconnects (nats-py subscribes again with it).
    """
    process = nc._process_msg

    async def process_msg(
        sid_: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:  # headers: None when the message has none
        if sid_ == sid:
            await on_msg(subject, data, headers)
        else:
            await process(sid_, subject, reply, data, headers)

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]


_CONTROL_LINE = 1  # nats.protocol.parser.AWAITING_CONTROL_LINE
_MAX_LINE = 4096  # nats.protocol.parser.MAX_CONTROL_LINE_SIZE


class AckReader:
    """Reads this sink's PubAck frames (``MSG <inbox><batch>.<index> <sid> <size>``)
    off the front of nats-py's parser buffer in a tight loop and hands each to
    ``on_ack(tail, data)``; every other frame goes to nats-py's own ``parse``, one
    frame at a time, so the frames after it come back here.

    nats-py's parser matches four regular expressions, fills a dict and awaits a
    coroutine per message; per PubAck this is about a fifth of that. Installed as the
    parser's ``parse`` (nats-py's read loop calls ``self._ps.parse(data)``); the
    parser object and its ``buf`` survive reconnects (``reset`` clears them).
    """

    def __init__(
        self, parser: Any, sid: int, inbox: bytes, on_ack: Callable[[bytes, bytes | Ack], None]
    ) -> None:
        self._parser = parser
        self._parse: Callable[[], Awaitable[None]] = parser.parse
        self._prefix = b"MSG " + inbox
        self._sid = b"%d" % sid
        self._on_ack = on_ack
        parser.parse = self.parse

    async def parse(self, data: bytes = b"") -> None:
        ps = self._parser
        buf: bytearray = ps.buf
        buf.extend(data)
        prefix, skip = self._prefix, len(self._prefix)
        while buf:
            if ps.state != _CONTROL_LINE:
                # nats-py is inside a frame (it has read the control line): that frame,
                # once whole, goes to nats-py alone
                end = ps.needed + 2
                if len(buf) < end:
                    return
            else:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) < _MAX_LINE:
                        return  # the rest of the line comes with the next read
                    end = len(buf)  # nats-py refuses it (a protocol error)
                elif buf.startswith(prefix):
                    fields = bytes(buf[skip:eol]).split(b" ")
                    if len(fields) == 3 and fields[1] == self._sid and fields[2].isdigit():
                        start = eol + 2
                        stop = start + int(fields[2])
                        if len(buf) < stop + 2:
                            return  # the rest of the frame comes with a later read
                        answer = bytes(buf[start:stop])
                        del buf[: stop + 2]
                        self._on_ack(fields[0], answer)
                        continue
                    end = eol + 2
                else:
                    end = eol + 2
            rest = bytes(buf[end:])
            del buf[end:]
            await self._parse()
            if ps.buf is not buf:
                return  # nats-py reset the parser (a protocol error, a reconnect)
            buf.extend(rest)
