"""The wire between ingest worker processes and the main process (``server.workers``).

Frames are a 4-byte big-endian length and a msgpack message (msgspec, in C on both
sides). A worker sends the batches it decoded (:class:`Append`) and its request
counts; the main process answers each batch once the journal committed it
(:class:`Committed`, ack means durable) or refused it (:class:`Refused`, which the
worker turns into the very 503 the in-process path would have sent). Framing is
sans-IO (:class:`FrameReader` takes bytes, returns messages); the trio side is a
thin loop in :mod:`streamd.ingest.remote` and :mod:`streamd.service.workers`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from streamd.framing import HEADER as _HEADER
from streamd.framing import FrameReader, ProtocolError
from streamd.journal.writer import Batch


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """main → worker, first frame: the configuration (msgpack of ``Config``), the
    worker's number (for logs) and how many there are (``server.max_in_flight`` is
    shared among them)."""

    config: msgspec.Raw
    index: int
    workers: int


class Reload(msgspec.Struct, tag="reload", array_like=True):
    """main → worker: swap in this configuration's sources, tokens and certificates
    (SIGHUP), and log at ``log_level`` (the main process's, after the reload)."""

    config: msgspec.Raw
    log_level: str


class Stop(msgspec.Struct, tag="stop", array_like=True):
    """main → worker: stop gracefully (503 to new POSTs, finish in-flight, exit 0)."""


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """worker → main: serving on the inherited sockets."""

    pid: int


class Append(msgspec.Struct, tag="append", array_like=True):
    """worker → main: journal this batch; answer with the same ``id``."""

    id: int
    batch: Batch


class Committed(msgspec.Struct, tag="committed", array_like=True):
    """main → worker: the batch ``id`` is durably committed."""

    id: int
    accepted: int
    duplicates: int
    delivery: int


class Refused(msgspec.Struct, tag="refused", array_like=True):
    """main → worker: the batch ``id`` was not journaled; answer ``status``."""

    id: int
    status: int
    message: str
    retry_after: int | None
    reason: str


class Observed(msgspec.Struct, tag="observed", array_like=True):
    """worker → main: answered POSTs since the last report, for metrics and stream
    health: ``(source, status, seconds, reason of a 503 or None)`` each."""

    answers: list[tuple[str, int, float, str | None]]
    responses: dict[int, int]  # every answer by status, POSTs or not (IngestApp.responses)
    in_flight: int
    # The worker's connection table (service.http.ConnectionStatistics, as a tuple).
    connections: tuple[int, ...] = ()


ToWorker = Hello | Reload | Stop | Committed | Refused
ToMain = Ready | Append | Observed

_ENCODER = msgspec.msgpack.Encoder()
_TO_WORKER = msgspec.msgpack.Decoder(ToWorker)
_TO_MAIN = msgspec.msgpack.Decoder(ToMain)


def frame(message: Any) -> bytes:
    """One message as a frame (length prefix and msgpack)."""
    body = _ENCODER.encode(message)
    return _HEADER.pack(len(body)) + body


# What a worker accepts from the main process: configurations and small answers.
WORKER_FRAME_LIMIT = 64 * 1024 * 1024


def worker_reader() -> FrameReader:
    """A reader of what the main process sends a worker."""
    return FrameReader(_TO_WORKER, WORKER_FRAME_LIMIT)


def main_reader(max_body_bytes: int) -> FrameReader:
    """A reader of what a worker sends the main process. A batch comes from a body of
    at most ``max_body_bytes``; its frame holds that JSON plus the extracted columns."""
    return FrameReader(_TO_MAIN, 2 * max_body_bytes + 1024 * 1024)


# The framing is streamd.framing's; named here for the worker side's callers.
__all__ = ["FrameReader", "ProtocolError", "frame", "main_reader", "worker_reader"]
