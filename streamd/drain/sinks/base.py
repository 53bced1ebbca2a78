"""The one small protocol every sink implements, and what a delivery looks like."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec
import orjson
import trio

from streamd.drain.policy import Kind


class DrainEvent(msgspec.Struct, frozen=True, gc=False):
    """One journaled event as the drain reads it.

    A msgspec Struct, not a frozen dataclass: the reader makes one per event per sink,
    and a frozen dataclass took 0.85 µs to construct against 0.05 µs (``timeit``).
    ``gc=False``: it holds only scalars, so it can never be part of a cycle.
    """

    seq: int
    key: str
    stream: str
    type: str | None
    munchkin_id: str | None
    activity_type_id: int | None
    source: str
    occurred_at: str | None
    received_at: str
    raw: str
    lead_id: int | None = None
    line: bytes = b""  # the envelope (UTF-8), when the reader had SQLite build it (store.py)


@dataclass(frozen=True, slots=True)
class Result:
    """How one delivery attempt ended; ``response`` is kept with dead letters.

    A confirmed batch may name events the destination refused for good and the rest
    not (``rejected``: (seq, reason) each): those become dead letters, the others are
    confirmed. ``present``: how many of the confirmed events the destination already
    held (a redelivery it dropped by event key); None where it cannot tell.
    """

    kind: Kind
    reason: str = ""
    response: str | None = None
    retry_after: float | None = None
    rejected: tuple[tuple[int, str], ...] = ()
    present: int | None = None


CONFIRMED = Result(Kind.CONFIRMED)


def confirmed(*, present: int | None = None, rejected: Sequence[tuple[int, str]] = ()) -> Result:
    """Delivered; ``present`` of them were there already; ``rejected`` refused for good."""
    return Result(Kind.CONFIRMED, present=present, rejected=tuple(rejected))


def transient(reason: str, response: str | None = None, retry_after: float | None = None) -> Result:
    """A failure worth retrying."""
    return Result(Kind.TRANSIENT, reason, response, retry_after)


def permanent(reason: str, response: str | None = None) -> Result:
    """A failure that retrying cannot fix: the batch goes to the dead letters."""
    return Result(Kind.PERMANENT, reason, response)


class Sink(Protocol):
    """A destination. ``deliver`` returns a :class:`Result` for destination problems and
    raises only for bugs; the engine bounds each call with the sink's timeout (so
    ``deliver`` must be cancellable) and retries, pauses or dead-letters."""

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        """Deliver a batch (in journal order) and say how it went.

        ``delivery_id`` names this batch's delivery: the same for every attempt of
        it (a receiver may drop a repeat), new for an operator's replay or retry.
        """
        ...

    async def aclose(self) -> None:
        """Release what the sink holds (connections, open files)."""
        ...


@runtime_checkable
class ProcessRestarts(Protocol):
    """A sink whose client runs in a process of its own, started again when one ends
    (kafka). The engine keeps the counts across the sink's runners (``SinkStatus``)."""

    @property
    def restarts_by_reason(self) -> Mapping[str, int]:
        """Processes started after the first, by how the one before ended (every
        reason the sink knows, 0 included)."""
        ...


def envelope(event: DrainEvent) -> bytes:
    """The JSON object every sink delivers for an event: the journal's columns and,
    under ``event``, the event's JSON as received (never re-encoded).

    Always one line: a line break in JSON text can only be insignificant
    whitespace (inside strings it must be escaped), so each becomes a space.
    """
    if event.line:
        return event.line
    raw = event.raw
    if "\n" in raw or "\r" in raw:
        raw = raw.replace("\r", " ").replace("\n", " ")
    return orjson.dumps(
        {
            "id": event.key,
            "seq": event.seq,
            "stream": event.stream,
            "type": event.type,
            "source": event.source,
            "munchkin_id": event.munchkin_id,
            "activity_type_id": event.activity_type_id,
            "lead_id": event.lead_id,
            "occurred_at": event.occurred_at,
            "received_at": event.received_at,
            "event": orjson.Fragment(raw),
        }
    )


def json_lines(events: Sequence[DrainEvent]) -> bytes:
    """The batch as JSON Lines (one envelope per line)."""
    if all(event.line for event in events):
        return b"\n".join(event.line for event in events) + b"\n"
    return b"".join(envelope(event) + b"\n" for event in events)


def json_array(events: Sequence[DrainEvent]) -> bytes:
    """The batch's envelopes as a JSON array."""
    if all(event.line for event in events):
        return b"[" + b",".join(event.line for event in events) + b"]"
    return b"[" + b",".join(envelope(event) for event in events) + b"]"


def _seq(event: DrainEvent) -> int:
    return event.seq


class _Waiting:
    __slots__ = ("done", "events", "result")

    def __init__(self, events: Sequence[DrainEvent]) -> None:
        self.events = events
        self.done = trio.Event()
        self.result: Result | None = None


class GroupWriter:
    """Group commit for sinks whose cost is per write (an fsync, a transaction): batches
    that arrive while a write is under way share the next one, and all of them get its
    result. ``write`` is called with the events of every batch in the group, in journal
    order (batches from several workers can arrive in any order)."""

    def __init__(self, write: Callable[[Sequence[DrainEvent]], Awaitable[Result]]) -> None:
        self._write = write
        self._waiting: list[_Waiting] = []
        self._writing = False

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        mine = _Waiting(events)
        self._waiting.append(mine)
        if self._writing:
            await mine.done.wait()
            assert mine.result is not None
            return mine.result
        self._writing = True
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                with trio.CancelScope(shield=True):  # its thread runs to the end anyway
                    events = sorted((e for w in group for e in w.events), key=_seq)
                    result = await self._write(events)
                for w in group:
                    w.result = result
                    w.done.set()
        finally:
            self._writing = False
            for w in self._waiting:  # the writer was cancelled: the others retry
                w.result = Result(Kind.TRANSIENT, "the group's write was cancelled")
                w.done.set()
            self._waiting = []
        assert mine.result is not None
        return mine.result
