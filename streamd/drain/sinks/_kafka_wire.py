"""The wire between a kafka sink and its producer process (:mod:`~streamd.drain.sinks.kafka_child`).

The frames of :mod:`streamd.ingest.ipc` (a 4-byte length and a msgspec msgpack message,
bounded): ONE frame per batch each way. The sink sends the batch's messages
(:class:`Produce`); the producer process answers once every message has its delivery
report (:class:`Done`: no failures, or each failed message's error), or at once when it
cannot make a producer (:class:`Unusable`).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from streamd.ingest.ipc import FrameReader, ProtocolError

__all__ = ["Done", "Failure", "FrameReader", "Hello", "Produce", "ProtocolError", "Stale",
           "Unusable", "child_reader", "frame", "sink_reader"]  # fmt: skip


# One event: (seq, key, stream, type, munchkin_id, source, occurred_at, received_at,
# lead_id, line, activity_type_id, raw). ``raw`` is left empty when ``line`` (the
# envelope, which holds it) is there: a third fewer bytes to copy on each side.
Event = tuple[int, str, str, str | None, str | None, str, str | None, str, int | None, bytes,
              int | None, str]  # fmt: skip


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """sink → producer process, first frame: librdkafka's configuration (with the
    password, never on the command line), the sink's name (for logs), and what makes
    a message of an event: the topic template, the key (``event`` or ``lead``) and the
    ``streamd-instance`` header."""

    config: dict[str, Any]
    sink: str
    topic: str
    key: str
    instance: str


class Produce(msgspec.Struct, tag="produce", array_like=True):
    """sink → producer process: produce these events, one message each; answer with the
    same ``id``.

    ``generation`` names the producer to use: a new one replaces the current producer
    (after a timeout or a fatal error the sink asks for a fresh one). The events go as
    tuples of their fields (:data:`Event`); the topic, key, headers and value are made
    in the producer process.
    """

    id: int
    generation: int
    events: list[Event]


class Stale(msgspec.Struct, tag="stale", array_like=True):
    """sink → producer process: the pool's timeout cancelled a batch of the producer
    ``generation``; it is retired now (its queue purged: those batches are sent again)."""

    generation: int


# (the event's seq, or None when it cannot be told; librdkafka's error code, name and
# text; fatal for the producer; retriable)
Failure = tuple[int | None, int, str, str, bool, bool]


class Done(msgspec.Struct, tag="done", array_like=True):
    """producer process → sink: every message of batch ``id`` has its report.

    ``failures``: the messages that failed. ``fatal``: the producer had a fatal error
    (it is replaced at the next batch). ``last_error``: its last client-level error.
    """

    id: int
    failures: list[Failure]
    fatal: bool
    last_error: str


class Unusable(msgspec.Struct, tag="unusable", array_like=True):
    """producer process → sink: no producer could be made for batch ``id``."""

    id: int
    code: int
    name: str
    text: str


ToChild = Hello | Produce | Stale
ToSink = Done | Unusable

# A batch's frame holds its envelopes: batch_size of them, each at most a POST body.
CHILD_FRAME_LIMIT = 1024 * 1024 * 1024
# The answers: a failure each at most (librdkafka's error texts are short).
SINK_FRAME_LIMIT = 64 * 1024 * 1024

_ENCODER = msgspec.msgpack.Encoder()
_HEADER = struct.Struct(">I")
_TO_CHILD = msgspec.msgpack.Decoder(ToChild)
_TO_SINK = msgspec.msgpack.Decoder(ToSink)


def frame(message: Any) -> bytearray:
    """One message as a frame, the ingest IPC's: a 4-byte big-endian length and msgpack.
    Encoded in place behind the length (a batch's frame is not copied to prepend it)."""
    buffer = bytearray(_HEADER.size)
    _ENCODER.encode_into(message, buffer, _HEADER.size)
    _HEADER.pack_into(buffer, 0, len(buffer) - _HEADER.size)
    return buffer


def child_reader() -> FrameReader:
    """A reader of what the sink sends its producer process."""
    return FrameReader(_TO_CHILD, CHILD_FRAME_LIMIT)


def sink_reader() -> FrameReader:
    """A reader of what the producer process sends the sink."""
    return FrameReader(_TO_SINK, SINK_FRAME_LIMIT)
