"""Admission: the in-flight slots each party may hold, the memory bodies may take, and
reading a body that must arrive in time.

A request takes a slot only after every check that needs no body (the ingest app does
those). A party — a source, or the embedded issuer's ``/oauth/token`` — holds at most
its share of ``server.max_in_flight``, so one source's slow or hostile clients cannot
take another's. The bodies being received hold at most ``max_buffered_bytes`` together.
A body must arrive within ``body_timeout`` and, after ``body_grace``, keep up with
``min_body_rate``: a slow or stalled client holds its slot no longer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from streamd.errors import JournalBusy, StreamdError

Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

TOKEN_PARTY = "/oauth/token"  # noqa: S105 - the embedded issuer's share of the slots


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one app (``[server]``; a worker process gets its part of the
    shared ones)."""

    max_body_bytes: int = 8 << 20
    max_in_flight: int = 256
    max_events: int = 10_000  # per request
    max_buffered_bytes: int = 256 << 20  # bodies being read or decoded, together
    body_timeout: float = 30.0  # the whole body must arrive within this...
    min_body_rate: int = 4096  # ...and, after body_grace, at least this many bytes/s
    body_grace: float = 5.0


class Disconnected(StreamdError):
    """Raised when the client went away before its body arrived; nothing to answer."""


class SlowBody(StreamdError):
    """Raised when a body arrives too slowly (503 + Retry-After, and the connection closes)."""

    status_hint = 503
    reason = "slow_body"


class SlotsFull(JournalBusy):
    """Raised when a party's share of the in-flight slots is taken (503, Retry-After: 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1, reason="in_flight")


class BufferFull(JournalBusy):
    """Raised when the bodies in progress hold ``max_buffered_bytes`` (503, Retry-After: 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1, reason="buffer_full")


def share_out(total: int, wanted: Mapping[str, int]) -> dict[str, int]:
    """Each party's share of ``total`` slots: what it asked for (non-zero), the rest
    split equally among the others (at least 1 each; config validation makes it add up)."""
    fixed = {name: n for name, n in wanted.items() if n}
    others = [name for name, n in wanted.items() if not n]
    left = max(total - sum(fixed.values()), 0)
    shares = dict(fixed)
    for index, name in enumerate(others):
        part, extra = divmod(left, len(others))
        shares[name] = max(1, part + (1 if index < extra else 0))
    return shares


class Slots:
    """The in-flight slots of one app, shared out per party, and the body budget."""

    def __init__(self, limits: Limits, on_release: Callable[[], None]) -> None:
        self.limits = limits
        self._on_release = on_release  # called after each release (the app's idle check)
        self._busy: dict[str, int] = {}  # party -> slots held
        self._shares: dict[str, int] = {}
        self.in_flight = 0
        self.buffered = 0  # bytes of bodies held by requests in progress

    def share_out(self, wanted: Mapping[str, int]) -> None:
        """Set each party's share (``wanted``: what it asked for, 0 for an equal part)."""
        self._shares = share_out(self.limits.max_in_flight, wanted)

    def shares(self) -> dict[str, int]:
        """Each party's share of ``max_in_flight`` now."""
        return dict(self._shares)

    def held(self, party: str) -> int:
        """Slots ``party`` holds now."""
        return self._busy.get(party, 0)

    def take(self, party: str, declared: int) -> Slot:
        """One of ``party``'s slots and ``declared`` bytes of the body budget, held for a
        request (``with``); :meth:`Slot.reserve` takes more as a body of undeclared length
        grows.

        Raises :class:`SlotsFull` when the party's share is taken, and :class:`BufferFull`
        when the bodies being read already hold ``max_buffered_bytes``.
        """
        held = self._busy.get(party, 0)
        share = self._shares.get(party, 1)
        if held >= share:
            raise SlotsFull(
                f"too many requests in flight for {party} ({share} of server.max_in_flight)"
            )
        slot = Slot(self, party)
        slot.reserve(declared)
        self._busy[party] = held + 1
        self.in_flight += 1
        return slot

    def _release(self, slot: Slot) -> None:
        self.buffered -= slot.reserved
        self._busy[slot.party] -= 1
        self.in_flight -= 1
        self._on_release()


class Slot:
    """One request's in-flight slot and its part of the body budget (``with``: released
    on exit, whatever happened)."""

    __slots__ = ("_slots", "party", "reserved")

    def __init__(self, slots: Slots, party: str) -> None:
        self._slots = slots
        self.party = party
        self.reserved = 0

    def reserve(self, total: int) -> None:
        """Hold ``total`` bytes of the budget in all; :class:`BufferFull` past it."""
        more = total - self.reserved
        if more <= 0:
            return
        slots = self._slots
        if slots.buffered + more > slots.limits.max_buffered_bytes:
            raise BufferFull(
                "the bodies being received already hold server.max_buffered_mib; retry"
            )
        slots.buffered += more
        self.reserved = total

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self._slots._release(self)


async def read_body(
    receive: Receive, limit: int, started: float, limits: Limits, slot: Slot
) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` (nothing buffered past it).

    The body must arrive within ``limits.body_timeout`` of the request's start and,
    after ``body_grace``, at ``min_body_rate`` on average (:class:`SlowBody`). Each part
    is reserved from the body budget (:class:`BufferFull`). Raises :class:`Disconnected`
    when the client went away first.
    """
    deadline = started + limits.body_timeout
    rate, grace = limits.min_body_rate, limits.body_grace
    chunks: list[bytes] = []
    size = 0
    while True:
        # What has arrived already is taken without a deadline: a trio cancel scope with
        # one costs 10-16 µs, most of a small body's own handling.
        message = receive_now(receive)
        if message is None:
            # By when, at the minimum rate, more than ``size`` bytes are due.
            due = min(deadline, started + grace + size / rate) if rate else deadline
            with trio.move_on_at(due):
                message = await receive()
            if message is None:
                raise _slow(limits, size, trio.current_time() >= deadline)
        elif trio.current_time() >= deadline:
            raise _slow(limits, size, True)
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        slot.reserve(size)
        if not message.get("more_body", False):
            return b"".join(chunks) + chunk if chunks else chunk
        chunks.append(chunk)


def _slow(limits: Limits, size: int, past_deadline: bool) -> SlowBody:
    if past_deadline:
        return SlowBody(
            f"the body did not arrive within {limits.body_timeout:g} s ({size} bytes in); retry"
        )
    return SlowBody(
        f"the body arrived slower than {limits.min_body_rate} bytes/s after "
        f"{limits.body_grace:g} s ({size} bytes in); retry"
    )


def receive_now(receive: Receive) -> Message | None:
    """The next ASGI message if it has arrived already, else None (then ``await``).

    hypercorn's ``receive`` is a trio memory channel's ``receive``, and the edge's
    inline one (streamd/service/inline.py) an inbox's: the object's ``receive_nowait``
    takes a queued message without a checkpoint. Any other ``receive`` (or an empty,
    closed channel) gives None.
    """
    nowait = getattr(getattr(receive, "__self__", None), "receive_nowait", None)
    if nowait is None:
        return None
    try:
        message: Message = nowait()
    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
        return None
    return message
