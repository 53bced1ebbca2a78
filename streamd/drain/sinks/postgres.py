"""The ``postgres`` sink: one table that every receiver's events land in once per key.

A delivery is one transaction on one connection: the batches waiting for the
connection (several workers') are ``COPY``-ed into a temporary table, then
``INSERT INTO <table> ... SELECT ... ON CONFLICT (event_key) DO NOTHING``, one
statement per batch so its row count says how many of *its* events were new;
the result goes back only after the ``COMMIT``. Rows are inserted in event-key
order, the same order in every receiver, so two receivers inserting overlapping
batches wait for each other instead of deadlocking.

When that set-based insert fails on the data (SQLSTATE classes 22 and 23: a
``\\u0000`` jsonb refuses, a CHECK constraint an operator added), the group is
written again row by row, each row under a savepoint: the refused events are
dead letters one by one, the others are confirmed. Everything else (connection
lost, failover, shutdown, serialization failure, deadlock, a read-only standby,
authentication, permissions) is transient: the connection is closed and opened
again by the next attempt, while the journal buffers. A table that does not fit
is ``GONE`` (the sink is disabled with the reason). docs/postgres.md has the table.

psycopg's async API needs asyncio; streamd runs on trio, so the sync API runs in
a worker thread, one at a time (a ``CapacityLimiter(1)``): a delivery cancelled by
the runner's timeout abandons its thread, which runs to its end before the next
delivery may use the connection.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streamd.core.timeparse import format_utc, parse_timestamp
from streamd.drain.policy import Kind
from streamd.drain.sinks.base import DrainEvent, Result, confirmed, transient
from streamd.drain.sinks.pg_table import Shape, TableUnfit, ensure


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    dsn: str  # libpq connection string or URI, without the password
    password: str | None = None  # from postgres.password_file
    table: str = "streamd_events"  # may be schema-qualified: "marketing.events"
    manage_table: bool = True  # create or migrate it; False: check it and refuse a wrong one
    instance: str = ""  # this receiver's name, recorded with each row it inserts
    connect_timeout: float = 10.0
    sink: str = ""  # the sink's name, for messages


_INCOMING = "streamd_incoming"
_COPY = (
    f"COPY pg_temp.{_INCOMING} (part, seq, event_key, stream, type, source, munchkin_id, "
    "activity_type_id, lead_id, occurred_at, received_at, event) FROM STDIN"
)
_TARGET = sql.SQL(
    "event_key, stream, type, source, munchkin_id, activity_type_id, lead_id, "
    "occurred_at, received_at, event, instance, seq"
)
_INSERT_SET = sql.SQL(
    "INSERT INTO {table} ({target}) "
    "SELECT event_key, stream, type, source, munchkin_id, activity_type_id, lead_id, "
    "occurred_at, received_at, event::{event_type}, %s, seq "
    "FROM pg_temp." + _INCOMING + " {where}"
    "ORDER BY event_key ON CONFLICT (event_key) DO NOTHING"
)
_INSERT_ROW = sql.SQL(
    "INSERT INTO {table} ({target}) VALUES (%s, %s, %s, %s, %s, %s, %s, "
    "%s::timestamptz, %s::timestamptz, %s::{event_type}, %s, %s) "
    "ON CONFLICT (event_key) DO NOTHING"
)
# The journal's own form (format_utc); anything else is parsed in Python first.
_UTC_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
# Set only when the DSN does not say otherwise: a dead peer (no RST after a failover or
# a partition) is noticed in about 25 s instead of the kernel's two hours, so a thread
# stuck on it ends and frees the connection's limiter.
_DEFAULT_OPTIONS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
_PER_ROW_CLASSES = ("22", "23")  # data exception, integrity constraint violation


class _Waiting:
    __slots__ = ("events", "result")

    def __init__(self, events: Sequence[DrainEvent]) -> None:
        self.events = events
        self.result: Result | None = None


def timestamp(text: str | None) -> str | None:
    """A journal time as text PostgreSQL reads as the same instant (UTC), or None.

    The journal writes ``YYYY-MM-DDTHH:MM:SS.mmmZ``; anything else (an older journal,
    a dead letter's copy) is parsed with the senders' lenient grammar, where no zone
    means UTC, never the server's TimeZone; text that is no time becomes NULL.
    """
    if text is None or _UTC_TEXT.fullmatch(text):
        return text
    when = parse_timestamp(text)
    return None if when is None else format_utc(when)


def _field(value: str | None) -> str:
    # str.replace, not str.translate: translate with a mapping went character by
    # character (1.5 s for 100,000 events against 0.1 s).
    if value is None:
        return "\\N"
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


def _number(value: int | None) -> str:
    return "\\N" if value is None else str(value)


def copy_text(batches: Sequence[Sequence[DrainEvent]]) -> bytes:
    """The batches as COPY text rows, ``part`` numbering the batch of each row."""
    lines = []
    for part, events in enumerate(batches):
        for e in events:
            lines.append(
                f"{part}\t{e.seq}\t{_field(e.key)}\t{_field(e.stream)}\t{_field(e.type)}\t"
                f"{_field(e.source)}\t{_field(e.munchkin_id)}\t{_number(e.activity_type_id)}\t"
                f"{_number(e.lead_id)}\t{_field(timestamp(e.occurred_at))}\t"
                f"{_field(timestamp(e.received_at))}\t{_field(e.raw)}\n"
            )
    return "".join(lines).encode()


def _reason(exc: BaseException) -> str:
    """The server's message and detail (not its context: that quotes the event), or
    libpq's text for a connection that failed."""
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    if state and primary:
        detail = diag.message_detail if diag is not None else None
        text = f"{primary}: {detail}" if detail else primary
        return f"{' '.join(text.split())} (SQLSTATE {state})"
    return " ".join(str(exc).split()) or type(exc).__name__


def _per_row(exc: BaseException) -> bool:
    """An error one event's data can cause, as opposed to the connection or the server."""
    if isinstance(exc, UnicodeError):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_PER_ROW_CLASSES)


class PostgresSink:
    """Inserts batches through one connection, opened lazily by the first delivery."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._shape: Shape | None = None
        self._limiter = trio.CapacityLimiter(1)  # one connection, one thread on it
        self._turn = trio.Lock()
        self._pending: list[_Waiting] = []

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        """Insert the batch (with any others waiting) and say how many were there already.

        Batches that arrive while a transaction is written share the next one (group
        commit): each commit costs a WAL flush on the server.
        """
        if not events:
            return confirmed(present=0)
        mine = _Waiting(events)
        self._pending.append(mine)
        try:
            async with self._turn:
                if mine.result is None:  # no earlier transaction took it
                    await self._write_pending()
        finally:
            if mine in self._pending:  # cancelled while waiting for the turn
                self._pending.remove(mine)
        assert mine.result is not None
        return mine.result

    async def _write_pending(self) -> None:
        group, self._pending = self._pending, []
        try:
            results = await trio.to_thread.run_sync(
                self._write, [w.events for w in group], limiter=self._limiter,
                abandon_on_cancel=True,
            )  # fmt: skip
        except trio.Cancelled:
            # The thread runs on (the limiter holds the connection until it ends); ask
            # the server to stop its statement so that happens soon. Batches of other
            # workers in the group are retried by them (a repeat is present by key).
            self._cancel_statement()
            for w in group:
                w.result = transient("the transaction it shared was cancelled")
            raise
        for w, result in zip(group, results, strict=True):
            w.result = result

    def _cancel_statement(self) -> None:
        conn = self._conn
        if conn is None:
            return
        timeout = self.settings.connect_timeout

        def cancel() -> None:
            # Best effort: the thread ends on its own anyway (keepalives bound it).
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=timeout)

        trio.lowlevel.start_thread_soon(cancel, lambda _: None, name="streamd postgres cancel")

    # --- in the worker thread, one at a time ---

    def _write(self, batches: list[Sequence[DrainEvent]]) -> list[Result]:
        try:
            conn, shape = self._connect()
        except TableUnfit as exc:
            return [Result(Kind.GONE, str(exc))] * len(batches)
        except psycopg.Error as exc:
            return [self._failed(exc, "cannot connect or prepare the table: ")] * len(batches)
        try:
            inserted = self._insert_set(conn, shape, batches)
        except (psycopg.Error, UnicodeError) as exc:
            if not _per_row(exc):
                return [self._failed(exc)] * len(batches)
            try:
                return self._insert_rows(conn, shape, batches)
            except psycopg.Error as exc2:
                return [self._failed(exc2)] * len(batches)
        return [confirmed(present=len(b) - n) for b, n in zip(batches, inserted, strict=True)]

    def _insert_sql(self, shape: Shape, one_part: bool) -> sql.Composed:
        # ORDER BY event_key: every receiver takes the keys' locks in the same order.
        return _INSERT_SET.format(
            table=shape.name,
            target=_TARGET,
            event_type=sql.SQL(shape.event_type),
            where=sql.SQL("" if one_part else "WHERE part = %s "),
        )

    def _insert_set(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        shape: Shape,
        batches: list[Sequence[DrainEvent]],
    ) -> list[int]:
        """COPY, then one INSERT per batch, then COMMIT: how many rows each inserted."""
        data = copy_text(batches)
        inserted = []
        try:
            with conn.cursor() as cur:
                with cur.copy(_COPY) as copy:
                    copy.write(data)
                one = len(batches) == 1
                statement = self._insert_sql(shape, one)
                for part in range(len(batches)):
                    params = (self.settings.instance,) if one else (self.settings.instance, part)
                    cur.execute(statement, params)
                    inserted.append(cur.rowcount)
            conn.commit()  # ack only after COMMIT
        except BaseException:
            self._rollback(conn)
            raise
        return inserted

    def _insert_rows(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        shape: Shape,
        batches: list[Sequence[DrainEvent]],
    ) -> list[Result]:
        """The slow path after a data error: each row under a savepoint, so one refused
        event is a dead letter alone."""
        statement = _INSERT_ROW.format(
            table=shape.name, target=_TARGET, event_type=sql.SQL(shape.event_type)
        )
        results = []
        try:
            with conn.cursor() as cur:
                # A deferred constraint would only fail at COMMIT, for the whole batch
                # again: checked at each row's statement here, it finds the offender.
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                for events in batches:
                    rejected: list[tuple[int, str]] = []
                    inserted = 0
                    for e in sorted(events, key=lambda e: e.key):
                        cur.execute("SAVEPOINT streamd_row")
                        try:
                            cur.execute(statement, self._row(e))
                        except (psycopg.Error, UnicodeError) as exc:
                            if not _per_row(exc):
                                raise
                            cur.execute("ROLLBACK TO SAVEPOINT streamd_row")
                            rejected.append(
                                (e.seq, f"refused by {self.settings.table}: {_reason(exc)}")
                            )
                        else:
                            inserted += cur.rowcount
                            cur.execute("RELEASE SAVEPOINT streamd_row")
                    present = len(events) - len(rejected) - inserted
                    results.append(confirmed(present=present, rejected=rejected))
            conn.commit()  # ack only after COMMIT
        except BaseException:
            self._rollback(conn)
            raise
        return results

    def _row(self, e: DrainEvent) -> tuple[object, ...]:
        return (
            e.key, e.stream, e.type, e.source, e.munchkin_id, e.activity_type_id, e.lead_id,
            timestamp(e.occurred_at), timestamp(e.received_at), e.raw, self.settings.instance,
            e.seq,
        )  # fmt: skip

    def _connect(self) -> tuple[psycopg.Connection[tuple[object, ...]], Shape]:
        conn, shape = self._conn, self._shape
        if conn is not None and shape is not None and not conn.closed and not conn.broken:
            return conn, shape
        self._close()
        conninfo = make_conninfo(self.settings.dsn, **self._options())
        conn = psycopg.connect(conninfo, autocommit=False)
        try:
            shape = ensure(conn, self.settings.table, manage=self.settings.manage_table)
            # ON COMMIT DELETE ROWS: each transaction starts with it empty, a rolled
            # back one leaves nothing behind.
            conn.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} (part integer, "
                "seq bigint, event_key text, stream text, type text, source text, "
                "munchkin_id text, activity_type_id integer, lead_id bigint, "
                "occurred_at timestamptz, received_at timestamptz, event text) "
                "ON COMMIT DELETE ROWS"
            )
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn, self._shape = conn, shape
        return conn, shape

    def _options(self) -> dict[str, str]:
        given = conninfo_to_dict(self.settings.dsn)
        options = {k: v for k, v in _DEFAULT_OPTIONS.items() if k not in given}
        options.setdefault("connect_timeout", str(max(2, math.ceil(self.settings.connect_timeout))))
        if "application_name" not in given:
            options["application_name"] = f"streamd/{self.settings.sink or 'postgres'}"[:63]
        if self.settings.password is not None:
            options["password"] = self.settings.password
        return options

    def _failed(self, exc: BaseException, what: str = "") -> Result:
        """Transient: the connection is closed and the next attempt opens a new one
        (after a failover, libpq's target_session_attrs finds the new primary)."""
        self._close()
        return transient(f"postgres {self.settings.table}: {what}{_reason(exc)}")

    @staticmethod
    def _rollback(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        try:
            if not conn.closed:
                conn.rollback()
        except psycopg.Error:
            conn.close()  # broken: the next attempt connects again

    def _close(self) -> None:
        conn, self._conn, self._shape = self._conn, None, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Close the connection (after a thread still running on it ends)."""
        await trio.to_thread.run_sync(self._close, limiter=self._limiter)
