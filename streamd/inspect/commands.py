"""``streamd journal grep|find|show|query|tail``: one small function per command.

Each takes the parsed arguments and the output streams and returns the exit
status; errors are :class:`StreamdError` subclasses the CLI reports in one
line (``UsageError``: exit 2; ``JournalError``: exit 1).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing, suppress
from typing import IO, Any, TypeVar

import orjson

from streamd.clock import utc_now_datetime
from streamd.errors import JournalError, UsageError
from streamd.inspect.filters import Filters, parse_filters
from streamd.inspect.output import (
    EventTable,
    colour_enabled,
    event_line,
    event_record,
    resolve_format,
    write_table,
)
from streamd.inspect.reader import (
    COLUMNS,
    Row,
    count_events,
    get_event,
    iter_events,
    journal_path,
    last_events,
    max_seq,
    open_readonly,
)

T = TypeVar("T")


def filters_from(args: argparse.Namespace) -> Filters:
    """The filter flags of a command as :class:`Filters` (raises :class:`UsageError`)."""
    return parse_filters(
        now=utc_now_datetime(),
        stream=args.stream,
        type=args.type,
        activity_type=args.activity_type,
        lead=args.lead,
        munchkin=args.munchkin,
        source=args.source,
        since=args.since,
        until=args.until,
        clock=args.clock,
        where=args.where,
    )


def open_from(args: argparse.Namespace, cache_mib: int = 16) -> tuple[str, sqlite3.Connection]:
    """The journal path of ``--data-dir``/``--journal`` and a read-only connection to it."""
    path = journal_path(args.data_dir, args.journal)
    return path, open_readonly(path, cache_mib=cache_mib)


def write_bytes(out: IO[str], data: bytes) -> None:
    """Write encoded text to a text stream, through its binary buffer when it has one."""
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
    else:
        out.write(data.decode())


class EventPrinter:
    """Prints events as a table (terminal) or JSON Lines (pipe), as ``--format`` says."""

    def __init__(self, out: IO[str], fmt: str) -> None:
        self.out = out
        self.format = resolve_format(fmt, out)
        self._table = (
            EventTable(out, colour=colour_enabled(out)) if self.format == "table" else None
        )

    def print(self, rows: Iterable[Row]) -> int:
        """Print ``rows``; return how many."""
        n = 0
        if self._table is not None:
            for row in rows:
                self._table.row(row)
                n += 1
        else:
            chunk: list[bytes] = []
            for row in rows:
                chunk.append(event_line(row))
                n += 1
                if len(chunk) >= 500:
                    write_bytes(self.out, b"".join(chunk))
                    chunk.clear()
            if chunk:
                write_bytes(self.out, b"".join(chunk))
        self.out.flush()
        return n


def _reading(path: str, action: Callable[[], T]) -> T:
    try:
        return action()
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc}") from exc


def cmd_grep(args: argparse.Namespace, out: IO[str]) -> int:
    """Print the events that match the filters (``--count``: how many)."""
    filters = filters_from(args)
    path, conn = open_from(args)
    with closing(conn):
        if args.count:
            n = _reading(path, lambda: count_events(conn, filters))
            if resolve_format(args.format, out) == "table":
                out.write(f"{n}\n")
            else:
                out.write(orjson.dumps({"count": n}).decode() + "\n")
            return 0
        printer = EventPrinter(out, args.format)
        _reading(path, lambda: printer.print(iter_events(conn, filters, limit=args.limit)))
    return 0


def cmd_show(args: argparse.Namespace, out: IO[str]) -> int:
    """Print one event: its columns, its JSON as received, and the delivery that brought it."""
    ident = args.id.strip()
    if not ident or len(ident) > 600 or not ident.isprintable():
        raise UsageError("ID: expected a seq number or an event id (at most 600 characters)")
    path, conn = open_from(args)
    with closing(conn):
        dedup = os.path.join(os.path.dirname(path), "journal.dedup.db")
        row = _reading(path, lambda: get_event(conn, ident, dedup))
        if row is None:
            raise JournalError(f"{path}: no event with seq or id {ident[:80]!r}")
        delivery_cols = [
            "id", "received_at", "source", "shape", "message_id", "adobe_event_id",
            "retry_count", "events", "accepted", "duplicates",
        ]  # fmt: skip
        drow = conn.execute(
            f"SELECT {', '.join(delivery_cols)} FROM deliveries WHERE id = ?", (row[10],)
        ).fetchone()
    delivery = None if drow is None else dict(zip(delivery_cols, drow, strict=True))
    row_t: Row = row
    if resolve_format(args.format, out) == "jsonl":
        doc = {**event_record(row_t), "delivery_row": delivery}
        write_bytes(out, orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
        return 0
    colour = colour_enabled(out)
    bold = (lambda t: f"\x1b[1m{t}\x1b[0m") if colour else (lambda t: t)
    for name, value in zip(COLUMNS[:-1], row_t[:-1], strict=True):
        out.write(f"{bold(name.ljust(17))} {'-' if value is None else value}\n")
    out.write(bold("event (as received)") + "\n")
    try:
        pretty = orjson.dumps(orjson.loads(row_t[-1]), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError as exc:
        pretty = f"{row_t[-1]}\n(not valid JSON: {exc}; run `streamd journal verify`)"
    out.write(pretty + "\n")
    out.write(bold("delivery") + "\n")
    if delivery is None:
        out.write(f"  (no deliveries row {row_t[10]}: run `streamd journal verify`)\n")
    else:
        for name, value in delivery.items():
            out.write(f"  {name.ljust(15)} {'-' if value is None else value}\n")
        out.write(
            "  (later copies of this event were counted as duplicates of their deliveries; "
            "a duplicate is never journaled)\n"
        )
    return 0


# -- query: read-only SQL --------------------------------------------------------------

_READ_PRAGMAS_WITH_ARG = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
     "foreign_key_list", "integrity_check", "quick_check"}
)  # fmt: skip
_READ_PRAGMAS = _READ_PRAGMAS_WITH_ARG | frozenset(
    {"user_version", "schema_version", "page_count", "page_size", "freelist_count",
     "journal_mode", "database_list", "compile_options", "data_version", "application_id",
     "encoding", "function_list", "collation_list", "table_list", "pragma_list"}
)  # fmt: skip
_ALLOWED = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
     sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}
)  # fmt: skip
_ACTION_NAMES = {
    getattr(sqlite3, "SQLITE_" + name): name.replace("_", " ")
    for name in (
        "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE",
        "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "UPDATE", "ATTACH", "DETACH",
        "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE",
    )
}  # fmt: skip
MAX_SQL = 100_000


def read_only_authorizer(denied: list[str]) -> Callable[..., int]:
    """An authorizer that lets a statement read and nothing else; names what it refused."""

    def authorize(
        action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
    ) -> int:
        if action in _ALLOWED:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
            name = arg1.lower()
            allowed = _READ_PRAGMAS_WITH_ARG if arg2 is not None else _READ_PRAGMAS
            if name in allowed:
                return sqlite3.SQLITE_OK
            denied.append(f"PRAGMA {arg1}" + ("" if arg2 is None else f" = {arg2}"))
            return sqlite3.SQLITE_DENY
        what = _ACTION_NAMES.get(action, f"operation {action}")
        denied.append(what + (f" {arg1}" if arg1 else ""))
        return sqlite3.SQLITE_DENY

    return authorize


def _register_pragma_tables(conn: sqlite3.Connection) -> None:
    """Register the read-only PRAGMAs' table-valued forms (``pragma_table_info('events')``)
    before the authorizer is set.

    SQLite creates such a virtual table on its first use in a connection and authorizes
    that as an UPDATE of ``sqlite_master`` (nothing is written: the table lives in memory),
    which the read-only authorizer would refuse. Created here, a query's use of one is
    judged like the PRAGMA statement: by the PRAGMA's name. ``LIMIT 0`` runs nothing.
    """
    for name in sorted(_READ_PRAGMAS):
        with suppress(sqlite3.Error):  # a PRAGMA this SQLite has no table for
            conn.execute(f"SELECT 1 FROM pragma_{name} LIMIT 0").fetchall()


def _cell(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def cmd_query(args: argparse.Namespace, out: IO[str]) -> int:
    """Run one read-only SQL statement; print its rows as a table or JSON Lines."""
    sql = args.sql
    if not sql.strip():
        raise UsageError("query: the SQL statement is empty")
    if len(sql) > MAX_SQL:
        raise UsageError(f"query: the SQL statement is longer than {MAX_SQL} characters")
    path, conn = open_from(args)
    _register_pragma_tables(conn)
    denied: list[str] = []
    conn.set_authorizer(read_only_authorizer(denied))
    with closing(conn):
        try:
            cursor = conn.execute(sql)
            names = [d[0] for d in cursor.description or ()]
            fmt = resolve_format(args.format, out)
            if fmt == "table":
                first = cursor.fetchmany(1000)
                width_rows = [[_cell(v) for v in r] for r in first]
                write_table(out, names, width_rows, colour=colour_enabled(out))
                for r in cursor:
                    out.write("  ".join("" if v is None else str(_cell(v)) for v in r) + "\n")
            else:
                chunk: list[bytes] = []
                for r in cursor:
                    record = {n: _cell(v) for n, v in zip(names, r, strict=True)}
                    chunk.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                    if len(chunk) >= 500:
                        write_bytes(out, b"".join(chunk))
                        chunk.clear()
                write_bytes(out, b"".join(chunk))
        except (sqlite3.Warning, sqlite3.ProgrammingError) as exc:
            raise UsageError(f"query: {exc} (one statement per query)") from None
        except sqlite3.DatabaseError as exc:
            if denied or "not authorized" in str(exc) or "readonly" in str(exc):
                what = f" ({_refused(sql, denied)})"
                raise UsageError(
                    f"query refused{what}: the journal is opened read-only; only SELECT and "
                    "read-only PRAGMAs are allowed, nothing was changed"
                ) from None
            if isinstance(exc, sqlite3.OperationalError) and _is_sql_error(str(exc)):
                raise UsageError(f"query: {exc}") from None
            raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    out.flush()
    return 0


def _refused(sql: str, denied: list[str]) -> str:
    """What was refused, by the operation on a table when there is one."""
    for what in denied:
        if not what.endswith(("sqlite_master", "sqlite_temp_master")):
            return what
    # A PRAGMA's table form that is not a read-only one: its registration was refused.
    for name in re.findall(r"\bpragma_(\w+)", sql, flags=re.IGNORECASE):
        if name.lower() not in _READ_PRAGMAS:
            return f"PRAGMA {name}"
    keyword = sql.split(maxsplit=1)[0].upper()[:20] if sql.split() else "?"
    return f"{keyword}: writes the schema"


def _is_sql_error(message: str) -> bool:
    return any(
        s in message
        for s in ("syntax error", "no such", "incomplete input", "unrecognized token",
                  "ambiguous column", "wrong number of arguments", "misuse", "too many")
    )  # fmt: skip


# -- tail ------------------------------------------------------------------------------

_WAIT_MIN = 0.05
_WAIT_MAX = 1.0
_FORCED_CHECK = 5.0


def _signature(path: str) -> tuple[int, ...]:
    """What changes when a transaction commits: the WAL's size and mtime (and the file's)."""
    sig: list[int] = []
    for suffix in ("-wal", ""):
        try:
            st = os.stat(path + suffix)
            sig += [st.st_ino, st.st_size, st.st_mtime_ns]
        except OSError:
            sig += [0, 0, 0]
    return tuple(sig)


def follow(
    path: str,
    conn: sqlite3.Connection,
    filters: Filters,
    after: int,
    emit: Callable[[list[Row]], None],
    *,
    keep_going: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Emit matching events past ``after`` as they are committed, until ``keep_going()`` is false.

    Does not poll the database: it watches the WAL file (every commit appends
    frames to it, changing its size or mtime) with a backoff sleep from 50 ms
    to 1 s, and reads ``seq > last`` only when the file changed (and at least
    every 5 s, in case a file system keeps coarse times). Returns the last seq seen.
    """
    last = after
    seen = _signature(path)
    wait = _WAIT_MIN
    checked = time.monotonic()
    while keep_going():
        sleep(wait)
        now_sig = _signature(path)
        forced = time.monotonic() - checked >= _FORCED_CHECK
        if now_sig == seen and not forced:
            wait = min(wait * 2, _WAIT_MAX)
            continue
        seen, checked = now_sig, time.monotonic()
        newest = max_seq(conn)
        if newest <= last:
            wait = min(wait * 2, _WAIT_MAX)
            continue
        wait = _WAIT_MIN
        batch: list[Row] = []
        for row in iter_events(conn, filters, after=last, upto=newest):
            batch.append(row)
            if len(batch) >= 1000:
                emit(batch)
                batch = []
        if batch:
            emit(batch)
        last = newest
    return last


def cmd_tail(args: argparse.Namespace, out: IO[str]) -> int:
    """Print the newest matching events; with ``-f``, then follow new ones until interrupted."""
    filters = filters_from(args)
    if not 0 <= args.lines <= 100_000:
        raise UsageError("-n/--lines: expected 0 to 100000")
    path, conn = open_from(args)
    printer = EventPrinter(out, args.format)
    with closing(conn):
        newest = _reading(path, lambda: max_seq(conn))
        rows = _reading(
            path, lambda: last_events(conn, filters, args.lines, newest) if args.lines else []
        )
        printer.print(rows)
        if args.follow:

            def emit(batch: list[Row]) -> None:
                printer.print(batch)

            try:
                _reading(path, lambda: follow(path, conn, filters, newest, emit))
            except KeyboardInterrupt:
                return 0  # Ctrl-C is how tail -f ends
    return 0
