"""Every operator action as one typed operation on the journal's store.

An operation is a frozen msgspec Struct: the admin API decodes its request body
straight into it (unknown fields and wrong types are a 400 naming the field),
and :meth:`Operation.apply` holds its rules, once. It runs in one of two places,
chosen by :class:`streamd.ops.Operator`: inside the running daemon's journal
writer (``Journal.control``, after the drain or the pulls stopped what the change
touches), or directly on a stopped daemon's journal under the writer lock.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import msgspec

from streamd.core.timeparse import format_utc, parse_timestamp, parse_when
from streamd.drain import store
from streamd.drain.store import SinkRow
from streamd.errors import JournalError, StreamdError, UsageError

T = TypeVar("T")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Stream = Literal["activity", "audit", "notification", "other"]
MAX_IDS = 10_000


class OperationRefused(StreamdError):
    """Raised when an operation's rules refuse it (unknown sink, a disabled sink asked to
    resume, too many events to replay...): the operator's request, not a fault."""

    status_hint = 409


class Count(msgspec.Struct, frozen=True):
    """How many dead letters or events an operation touched."""

    count: int


class PullRestart(msgspec.Struct, frozen=True, rename={"restart": "from"}):
    """A pull source started over: the position it had, where it restarts."""

    name: str
    was: str | None
    restart: str


class Operation(msgspec.Struct, Generic[T], frozen=True, forbid_unknown_fields=True):
    """One operator action. ``route`` is its admin path, ``result`` the type it returns."""

    route: ClassVar[str]
    result: ClassVar[type]
    # What the running daemon stops before applying it (a rewind must not race a
    # cursor save), and whom it wakes after.
    target: ClassVar[Literal["sink", "pull"]] = "sink"
    retires: ClassVar[bool] = False
    rewinds: ClassVar[bool] = False
    resumes: ClassVar[bool] = False
    wakes_letters: ClassVar[bool] = False

    @property
    def name(self) -> str:
        raise NotImplementedError

    def apply(self, conn: sqlite3.Connection, now: str) -> T:
        """Do it on ``conn`` (inside a transaction); raises :class:`OperationRefused`."""
        raise NotImplementedError


def parse_journal_time(text: str) -> datetime:
    """A time in the journal's text form (``utc_now()``) as a datetime."""
    parsed = parse_timestamp(text)
    assert parsed is not None, text
    return parsed


def _sink_row(conn: sqlite3.Connection, name: str) -> SinkRow:
    row = store.load_sinks(conn).get(name)
    if row is None:
        known = ", ".join(store.load_sinks(conn)) or "none"
        raise OperationRefused(f"no sink named {name!r} in the journal (sinks: {known})")
    return row


class _SinkOp(Operation[T], frozen=True, forbid_unknown_fields=True):
    sink: Name = msgspec.field(name="name")  # the admin API's name for it

    @property
    def name(self) -> str:
        return self.sink


class PauseSink(_SinkOp[SinkRow], frozen=True, forbid_unknown_fields=True):
    """Stop delivering to a sink (attempts under way finish) until resumed."""

    route = "/sinks/pause"
    result = SinkRow

    def apply(self, conn: sqlite3.Connection, now: str) -> SinkRow:
        row = _sink_row(conn, self.sink)
        if row.state == "disabled":
            raise OperationRefused(f"sink {self.sink!r} is disabled; nothing to pause")
        return store.set_state(conn, self.sink, "paused", "paused by the operator", now)


class ResumeSink(_SinkOp[SinkRow], frozen=True, forbid_unknown_fields=True):
    """Deliver to a paused sink again (one paused for failures retries at once)."""

    route = "/sinks/resume"
    result = SinkRow
    resumes = True

    def apply(self, conn: sqlite3.Connection, now: str) -> SinkRow:
        if _sink_row(conn, self.sink).state == "disabled":
            raise OperationRefused(f"sink {self.sink!r} is disabled; enable it instead")
        return store.set_state(conn, self.sink, "active", None, now)


class DisableSink(_SinkOp[SinkRow], frozen=True, forbid_unknown_fields=True):
    """Turn a sink off until enabled (retention no longer waits for it)."""

    route = "/sinks/disable"
    result = SinkRow
    retires = True

    def apply(self, conn: sqlite3.Connection, now: str) -> SinkRow:
        _sink_row(conn, self.sink)
        return store.set_state(conn, self.sink, "disabled", "disabled by the operator", now)


class EnableSink(_SinkOp[SinkRow], frozen=True, forbid_unknown_fields=True):
    """Turn a disabled (or paused) sink on again, from its cursor."""

    route = "/sinks/enable"
    result = SinkRow
    resumes = True

    def apply(self, conn: sqlite3.Connection, now: str) -> SinkRow:
        _sink_row(conn, self.sink)
        return store.set_state(conn, self.sink, "active", None, now)


class RewindSink(_SinkOp[SinkRow], frozen=True, forbid_unknown_fields=True):
    """Deliver again from event ``from_seq``, or from the first event received at or
    after ``since`` (the journal's UTC form): the cursor moves back, and what is
    delivered again carries new delivery ids."""

    route = "/sinks/replay"
    result = SinkRow
    retires = True
    rewinds = True
    from_seq: Seq | None = None
    since: Annotated[str, msgspec.Meta(max_length=64)] | None = None

    def apply(self, conn: sqlite3.Connection, now: str) -> SinkRow:
        _sink_row(conn, self.sink)
        if (self.from_seq is None) == (self.since is None):
            raise UsageError("replay: give exactly one of from_seq and since")
        if self.from_seq is not None:
            cursor = self.from_seq - 1
        else:
            assert self.since is not None
            when = format_utc(parse_when(self.since, parse_journal_time(now)))
            cursor = store.seq_before_time(conn, when)
        return store.set_cursor(conn, self.sink, cursor, now)


class ReplayRange(_SinkOp[Count], frozen=True, forbid_unknown_fields=True):
    """Deliver the events ``from_seq..to_seq`` again (optionally only some streams and
    type globs) without moving the cursor: they are queued as dead letters marked for
    retry, which the sink's workers deliver like any batch."""

    route = "/sinks/replay-range"
    result = Count
    wakes_letters = True
    from_seq: Seq = 1
    to_seq: Seq = 1
    streams: Annotated[list[Stream], msgspec.Meta(max_length=4)] = msgspec.field(
        default_factory=list
    )
    types: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=64)
    ] = msgspec.field(default_factory=list)

    def apply(self, conn: sqlite3.Connection, now: str) -> Count:
        _sink_row(conn, self.sink)
        if self.to_seq < self.from_seq:
            raise UsageError("replay: to_seq must be at or above from_seq")
        try:
            n = store.queue_replay(
                conn, self.sink, self.from_seq, self.to_seq, streams=self.streams, types=self.types
            )
        except JournalError as exc:  # too many events: the operator narrows it
            raise OperationRefused(str(exc)) from None
        return Count(n)


class _LettersOp(_SinkOp[Count], frozen=True, forbid_unknown_fields=True):
    sink: Name = msgspec.field(name="sink")
    ids: Annotated[list[Seq], msgspec.Meta(max_length=MAX_IDS)] = msgspec.field(
        default_factory=list
    )
    all: bool = False

    def chosen(self) -> list[int] | None:
        """The ids, or None for all; raises :class:`OperationRefused` for neither/both."""
        if self.all == bool(self.ids):
            raise UsageError("give dead letter ids or all: true")
        return None if self.all else list(self.ids)


class RetryDeadLetters(_LettersOp, frozen=True, forbid_unknown_fields=True):
    """Deliver dead letters again (through the sink's workers, when its state lets it)."""

    route = "/dlq/retry"
    result = Count
    wakes_letters = True

    def apply(self, conn: sqlite3.Connection, now: str) -> Count:
        _sink_row(conn, self.sink)
        return Count(store.mark_retry(conn, self.sink, self.chosen()))


class DropDeadLetters(_LettersOp, frozen=True, forbid_unknown_fields=True):
    """Delete dead letters."""

    route = "/dlq/drop"
    result = Count

    def apply(self, conn: sqlite3.Connection, now: str) -> Count:
        _sink_row(conn, self.sink)
        return Count(store.drop_dead_letters(conn, self.sink, self.chosen()))


class ResetPull(Operation[PullRestart], frozen=True, forbid_unknown_fields=True):
    """Start a pull source over: its saved position is cleared and it restarts from
    ``oldest`` or ``latest`` (what it pulls again is deduplicated)."""

    route = "/pulls/reset"
    result = PullRestart
    target = "pull"
    pull: Name = msgspec.field(name="name")
    restart: Literal["oldest", "latest"] = msgspec.field(default="oldest", name="from")

    @property
    def name(self) -> str:
        return self.pull

    def apply(self, conn: sqlite3.Connection, now: str) -> PullRestart:
        """On a stopped daemon's journal: the pull must have run on it."""
        row = conn.execute(
            "SELECT position FROM pull_positions WHERE source = ?", (self.pull,)
        ).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT source FROM pull_positions")]
            raise OperationRefused(
                f"no pull named {self.pull!r} has run on this journal"
                + (f" (pulls: {', '.join(known)})" if known else "")
            )
        return self.apply_running(conn, now)

    def apply_running(self, conn: sqlite3.Connection, now: str) -> PullRestart:
        """In the daemon, once the running pull stopped (it is configured, so a pull
        that saved no position yet gets its restart point too)."""
        row = conn.execute(
            "SELECT position FROM pull_positions WHERE source = ?", (self.pull,)
        ).fetchone()
        conn.execute(
            "INSERT INTO pull_positions (source, position, restart, updated_at) "
            "VALUES (?, NULL, ?, ?) ON CONFLICT (source) DO UPDATE SET "
            "position = NULL, restart = excluded.restart, updated_at = excluded.updated_at",
            (self.pull, self.restart, now),
        )
        return PullRestart(self.pull, None if row is None else row[0], self.restart)


OPERATIONS: tuple[type[Operation[Any]], ...] = (
    PauseSink,
    ResumeSink,
    DisableSink,
    EnableSink,
    RewindSink,
    ReplayRange,
    RetryDeadLetters,
    DropDeadLetters,
    ResetPull,
)
