"""The ``postgres`` sink's table: its documented layout, created or migrated when
streamd may, else checked, with the exact reason when it does not fit.

Every function here runs in the sink's worker thread on its connection (blocking).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

# (name, type created, types accepted in a table streamd did not create). Nullable
# where a receiver may have nothing to write (an audit event has no lead id).
COLUMNS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("event_key", "text", frozenset({"text", "character varying"})),
    ("stream", "text", frozenset({"text", "character varying"})),
    ("type", "text", frozenset({"text", "character varying"})),
    ("source", "text", frozenset({"text", "character varying"})),
    ("munchkin_id", "text", frozenset({"text", "character varying"})),
    ("activity_type_id", "integer", frozenset({"integer", "bigint", "numeric"})),
    ("lead_id", "bigint", frozenset({"bigint", "numeric"})),
    ("occurred_at", "timestamptz", frozenset({"timestamp with time zone"})),
    ("received_at", "timestamptz", frozenset({"timestamp with time zone"})),
    # json keeps the text exactly as received (and takes \u0000); jsonb is smaller to
    # query and the default.
    ("event", "jsonb", frozenset({"jsonb", "json"})),
    ("instance", "text", frozenset({"text", "character varying"})),
    ("seq", "bigint", frozenset({"bigint", "numeric"})),
)
WRITTEN = tuple(name for name, _, _ in COLUMNS)

_CREATE = """CREATE TABLE {table} (
    event_key        text        PRIMARY KEY,
    stream           text        NOT NULL,
    type             text,
    source           text        NOT NULL,
    munchkin_id      text,
    activity_type_id integer,
    lead_id          bigint,
    occurred_at      timestamptz,
    received_at      timestamptz NOT NULL,
    event            jsonb       NOT NULL,
    instance         text        NOT NULL,
    seq              bigint      NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now()
)"""


class TableUnfit(Exception):
    """Raised when the table does not have the layout and streamd may not (or cannot)
    make it so; the message names what is missing."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What the writer needs to know of a checked table."""

    name: sql.Composable  # quoted, schema-qualified when configured so
    event_type: str  # "jsonb" or "json": the cast of the copied text


@dataclass(frozen=True, slots=True)
class _Found:
    exists: bool
    schema_exists: bool
    kind: str  # pg_class.relkind
    columns: dict[str, tuple[str, bool]]  # name -> (format_type, NOT NULL without default)
    unique_key: bool


def identifier(table: str) -> sql.Identifier:
    """``schema.table`` or ``table`` as a quoted SQL name (the config allows no quotes)."""
    return sql.Identifier(*table.split("."))


def _inspect(conn: psycopg.Connection[tuple[object, ...]], table: str) -> _Found:
    name = identifier(table).as_string(conn)
    schema = table.split(".")[0] if "." in table else None
    row = conn.execute(
        "SELECT c.oid, c.relkind::text, "
        "  (%s::text IS NULL OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)) "
        "FROM (SELECT to_regclass(%s) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid",
        (schema, schema, name),
    ).fetchone()
    assert row is not None
    oid, kind, schema_exists = row
    if oid is None:
        return _Found(False, bool(schema_exists), "", {}, False)
    columns = {
        str(attname): (str(typ), bool(required))
        for attname, typ, required in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), "
            "  attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = '' "
            "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        )
    }
    # ON CONFLICT (event_key) needs a unique index on exactly that column, whole-table.
    unique = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
        "  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "  WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 "
        "  AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'event_key')",
        (oid,),
    ).fetchone()
    return _Found(True, True, str(kind), columns, bool(unique and unique[0]))


def _problems(table: str, found: _Found) -> list[str]:
    if not found.schema_exists:
        return [f"schema {table.split('.')[0]} does not exist"]
    if not found.exists:
        return [f"table {table} does not exist"]
    if found.kind not in ("r", "p"):
        return [f"{table} is not a table (relkind {found.kind!r})"]
    problems = []
    missing = [name for name in WRITTEN if name not in found.columns]
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    for name, _, accepted in COLUMNS:
        typ = found.columns.get(name, (None, False))[0]
        if typ is not None and typ.split("(")[0] not in accepted:
            wanted = " or ".join(sorted(accepted))
            problems.append(f"column {name} is {typ} (needs {wanted})")
    for name, (_, required) in sorted(found.columns.items()):
        if required and name not in WRITTEN:
            problems.append(f"column {name} is NOT NULL without a default (streamd never sets it)")
    if "event_key" in found.columns and not found.unique_key:
        problems.append("no unique index or constraint on (event_key) alone")
    return problems


def _migrate(conn: psycopg.Connection[tuple[object, ...]], table: str, found: _Found) -> None:
    """Create what is missing: schema, table, columns, the unique index. Never changes
    an existing column (a wrong type stays a problem to report)."""
    name = identifier(table)
    if not found.schema_exists:
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.split(".")[0]))
        )
    if not found.exists:
        conn.execute(sql.SQL(_CREATE).format(table=name))
        return
    for column, typ, _ in COLUMNS:
        if column not in found.columns:
            # Nullable: rows already there have no value for it.
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} " + typ).format(
                    name, sql.Identifier(column)
                )
            )
    if "inserted_at" not in found.columns:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS inserted_at timestamptz DEFAULT now()"
            ).format(name)
        )
    if not found.unique_key:
        index = sql.Identifier(f"{table.split('.')[-1][:50]}_event_key_key")
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (event_key)").format(index, name)
        )


def ensure(conn: psycopg.Connection[tuple[object, ...]], table: str, *, manage: bool) -> Shape:
    """Make sure ``table`` fits (creating or migrating it when ``manage``) and commit.

    Raises :class:`TableUnfit` with every problem found, psycopg errors as they come.
    """
    found = _inspect(conn, table)
    problems = _problems(table, found)
    if problems and manage:
        # Receivers starting together must not race their CREATE TABLEs (a unique
        # violation in pg_type): one at a time, and each looks again under the lock.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"streamd table {table}",))
        found = _inspect(conn, table)
        if _problems(table, found):
            _migrate(conn, table, found)
            found = _inspect(conn, table)
        problems = _problems(table, found)
    if problems:
        conn.rollback()
        verb = "does not fit" if manage else "does not fit (manage_table = false)"
        raise TableUnfit(f"table {table} {verb}: " + "; ".join(problems))
    conn.commit()
    event_type = found.columns["event"][0]
    return Shape(identifier(table), "json" if event_type == "json" else "jsonb")
