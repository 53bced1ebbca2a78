"""docs/journal.md and ARCHITECTURE.md describe the schema a fresh journal really has.

A journal is created the way streamd creates one (its migrations, then the derived index
file), and every table, column (type, NOT NULL, default, primary key), index and
migration name is compared with the page's tables and with ARCHITECTURE.md's SQL.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamd.journal.dedup import DedupIndex
from streamd.journal.schema import MIGRATIONS, SCHEMA_VERSION, connect, journal_id, migrate
from tests.docs._markdown import REPO

JOURNAL_PAGE = REPO / "docs" / "journal.md"
ARCHITECTURE = REPO / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Table:
    columns: list[tuple[str, str]]  # (name, "TYPE [NOT NULL] [DEFAULT x] [PRIMARY KEY]")
    primary_key: tuple[str, ...]  # several columns: a composite key
    unique: list[tuple[str, ...]]  # UNIQUE constraints
    without_rowid: bool


@dataclass(frozen=True)
class Schema:
    tables: dict[str, Table]
    indexes: dict[str, tuple[str, tuple[str, ...]]]  # name -> (table, columns)


def _read_schema(conn: sqlite3.Connection, db: str) -> Schema:
    tables: dict[str, Table] = {}
    rows = conn.execute(
        f"SELECT name, sql FROM {db}.sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    for name, sql in rows:
        info = conn.execute(f"PRAGMA {db}.table_info({name})").fetchall()
        key = tuple(c[1] for c in sorted((c for c in info if c[5]), key=lambda c: c[5]))
        columns = []
        for _, column, kind, notnull, default, pk in info:
            text = kind
            if pk and len(key) == 1:
                text += " PRIMARY KEY"  # implies NOT NULL in a WITHOUT ROWID table
            elif notnull:
                text += " NOT NULL"
            if default is not None:
                text += f" DEFAULT {default}"
            columns.append((column, text))
        unique = []
        for index in conn.execute(f"PRAGMA {db}.index_list({name})").fetchall():
            if index[3] == "u":  # created by a UNIQUE constraint
                cols = conn.execute(f"PRAGMA {db}.index_info({index[1]})").fetchall()
                unique.append(tuple(c[2] for c in cols))
        tables[name] = Table(columns, key, unique, "WITHOUT ROWID" in sql.upper())
    indexes = {}
    for name, table in conn.execute(
        f"SELECT name, tbl_name FROM {db}.sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall():
        cols = conn.execute(f"PRAGMA {db}.index_info({name})").fetchall()
        indexes[name] = (table, tuple(c[2] for c in cols))
    return Schema(tables, indexes)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Schema, Schema, int]]:
    """The schema of journal.db and of journal.dedup.db, as streamd creates them."""
    path = str(tmp_path_factory.mktemp("schema") / "journal.db")
    with closing(connect(path, synchronous="normal", cache_mib=2)) as conn:
        migrate(conn, path, "2026-01-01T00:00:00.000Z")
        DedupIndex(conn, path, 2).open(journal_id(conn))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        yield _read_schema(conn, "main"), _read_schema(conn, "dedup"), version


# -- docs/journal.md -------------------------------------------------------------------


def _sections(text: str, start: str, end: str | None) -> dict[str, str]:
    """The ``### The `name` table`` sections between two ``## `` headings."""
    body = text[text.index(start) :]
    if end is not None:
        body = body[: body.index(end)]
    parts = re.split(r"^### The `(\w+)` table\n", body, flags=re.MULTILINE)
    return {name: re.split(r"^#{2,3} ", section, flags=re.MULTILINE)[0]
            for name, section in zip(parts[1::2], parts[2::2], strict=True)}  # fmt: skip


def _rows(section: str) -> list[tuple[str, str]]:
    """``| `name` | TYPE | meaning |`` rows of a page table."""
    return re.findall(r"^\| `(\w+)` \| ([A-Z][A-Z0-9 ]*?) \|", section, flags=re.MULTILINE)


def _check_page(sections: dict[str, str], schema: Schema, where: str) -> None:
    assert sorted(sections) == sorted(schema.tables), f"{where}: tables"
    for name, table in schema.tables.items():
        section = sections[name]
        assert _rows(section) == table.columns, f"{where}: the `{name}` table's columns"
        flat = " ".join(section.split())
        if len(table.primary_key) > 1:
            assert f"Primary key `({', '.join(table.primary_key)})`" in flat, name
        for unique in table.unique:
            assert f"unique `({', '.join(unique)})`" in flat, name
        assert ("`WITHOUT ROWID`" in flat) is table.without_rowid, name


def test_the_journal_page_has_every_table_and_column(fresh: tuple[Schema, Schema, int]) -> None:
    journal, dedup, _ = fresh
    text = JOURNAL_PAGE.read_text()
    _check_page(
        _sections(text, "## The schema of `journal.db`", "## The derived index file"),
        journal,
        "journal.db",
    )
    _check_page(
        _sections(text, "## The derived index file", "## Reading it"), dedup, "journal.dedup.db"
    )


def test_the_journal_page_has_every_index(fresh: tuple[Schema, Schema, int]) -> None:
    journal, dedup, _ = fresh
    assert dedup.indexes == {}  # only primary keys there: the page lists none
    text = JOURNAL_PAGE.read_text()
    section = text[text.index("### Indexes") :]
    section = section[: section.index("\n### ")]
    documented = re.findall(r"^\| `(\w+)` \| `(\w+)\(([\w, ]+)\)` \|", section, flags=re.MULTILINE)
    assert {name: (table, tuple(cols.split(", "))) for name, table, cols in documented} == (
        journal.indexes
    )


def test_the_journal_page_names_every_migration(fresh: tuple[Schema, Schema, int]) -> None:
    _, _, version = fresh
    assert version == SCHEMA_VERSION
    text = JOURNAL_PAGE.read_text()
    table = text[text.index("| migration | what it does |") :].split("\n\n")[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    assert documented == [name for name, _ in MIGRATIONS]
    assert f"is at `user_version` {SCHEMA_VERSION}" in " ".join(text.split())


def test_no_page_names_a_dropped_index_as_current() -> None:
    # events_lead was dropped by 0005: only the migrations table may name it.
    text = JOURNAL_PAGE.read_text()
    for line in text.splitlines():
        if "events_lead" in line:
            assert line.startswith(("| `0003_inspect_indexes`", "| `0005_lead_index_derived`"))
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        if page != JOURNAL_PAGE:
            assert "events_lead" not in page.read_text(), page


# -- ARCHITECTURE.md ---------------------------------------------------------------------


def _architecture_sql() -> list[str]:
    blocks = re.findall(r"^```sql\n(.*?)^```", ARCHITECTURE.read_text(), re.MULTILINE | re.DOTALL)
    return [b for b in blocks if "CREATE TABLE" in b]


def _schema_of(sql: str, tmp: Path, name: str) -> Schema:
    with closing(sqlite3.connect(tmp / f"{name}.db")) as conn:
        conn.executescript(sql)
        return _read_schema(conn, "main")


def test_architecture_shows_the_schema_a_journal_has(
    fresh: tuple[Schema, Schema, int], tmp_path: Path
) -> None:
    journal, dedup, _ = fresh
    blocks = _architecture_sql()
    assert len(blocks) == 2, "ARCHITECTURE.md: one SQL block for each file"
    main = next(b for b in blocks if "CREATE TABLE events" in b)
    derived = next(b for b in blocks if "CREATE TABLE dedup " in b)
    assert _schema_of(main, tmp_path, "main") == journal
    assert _schema_of(derived, tmp_path, "derived") == dedup
    names = re.search(r"Schema \(migrations ([^;]*);", ARCHITECTURE.read_text())
    assert names is not None
    assert re.findall(r"`(\w+)`", names.group(1)) == [name for name, _ in MIGRATIONS]
