"""The dedup index: a derived, rebuildable file beside the journal.

Why a separate file (ARCHITECTURE.md, "dedup"): every new event inserts one
random key into the dedup B-tree, and at millions of rows each commit dirties
thousands of its pages. In the journal's own file those pages would go
through the fsynced WAL at every commit. Here they live in ``*.dedup.db``
with small pages and ``synchronous=NORMAL``: no fsync on the ack path.

That is safe because the index is derived from ``events``:
- the writer commits the events first (durably) and the index after, so the
  index never holds a key whose event is not journaled (which would make a
  retried event look like a duplicate and lose it);
- ``dedup_state.covered_seq`` says up to which event the index is complete;
  at start (and after a failed index commit) every event past it is indexed
  again before any batch is accepted;
- an index that is missing, corrupt, or built for another journal is rebuilt.

The index is written by its own thread (:class:`Indexer`), so the writer can
journal the next group while the last group's keys are indexed. Until the
indexer has committed a group's keys they stay in memory (:class:`Pending`)
and every lookup consults them; the writer copies that list *before* its
read of the index begins, so each key is in the copy, in the index snapshot,
or in both.

Keys are 64-bit hashes in a rowid table (8-byte cells); a key whose hash
another key already owns goes to ``dedup_overflow`` by its full text, so a
collision never makes a distinct event look like a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamd.core.normalise import key_hash
from streamd.errors import JournalError
from streamd.threads import Thread

log = logging.getLogger("streamd.journal")

# The writer's lookup of a whole group, one statement and one result row: the hashes go
# in as one JSON array, the owners come back as one JSON array of [hash, seq]. SQLite
# probes the rowid table without the GIL, and the writer takes the GIL back once, not
# once per 500-key "IN (...)" chunk and once per row found (ARCHITECTURE.md, "The
# writer's lookup").
_LOOKUP = (
    "SELECT json_group_array(json_array(d.key_hash, d.seq)) FROM json_each(?) AS j "
    "CROSS JOIN dedup.dedup AS d ON d.key_hash = j.value"
)
_RECONCILE_CHUNK = 20_000
DEDUP_PAGE_SIZE = 1024

LEAD_RUN = 20_000  # lead entries per sorted run of the lead index
TYPE_RUN = 20_000  # type entries (one per event) per run of the type index, at least
MERGE_KEYS = 20_000  # keys the indexer writes in one transaction (one generation: any)
_RUNS_RECONCILE_CHUNK = 50_000  # events read per step (lead, type): bounded memory at start
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dedup.dedup (key_hash INTEGER PRIMARY KEY, seq INTEGER NOT NULL)",
    # The lead index (journal grep --lead, GET /journal?lead=), derived like the keys. Not
    # one B-tree on lead_id (a random key: each insert dirties a random page, which cost a
    # saturated ingest a third of its rate at 2M events), but sorted runs: the indexer
    # collects LEAD_RUN entries, sorts them and appends them as one run, always at the
    # right edge of the tree (run grows). A lookup seeks (run, lead_id) once per run.
    # ARCHITECTURE.md, "The lead index".
    "CREATE TABLE IF NOT EXISTS dedup.lead_index (run INTEGER NOT NULL, "
    "lead_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (run, lead_id, seq)) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dedup.lead_runs (run INTEGER PRIMARY KEY, "
    "first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dedup.dedup_overflow "
    "(event_key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dedup.dedup_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "journal_id TEXT NOT NULL, covered_seq INTEGER NOT NULL)",
    # Every event up to covered_seq has its lead in lead_index (the rest: a scan).
    "CREATE TABLE IF NOT EXISTS dedup.lead_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "covered_seq INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO dedup.lead_state VALUES (1, 0)",
    # The type index (journal grep --stream/--type, GET /journal?type=): every event's
    # (stream, type) as a 64-bit code, in runs like the leads, one row per code and run
    # holding the seqs as a JSON array (a row per event cost the indexer 2.9 µs an event).
    # In journal.db, a B-tree on (stream, type) had each commit rewrite a leaf page per
    # type seen (about sixty for I/O traffic) through the fsynced WAL: a quarter of the
    # writer's CPU on 20-event deliveries. ARCHITECTURE.md, "The type index".
    "CREATE TABLE IF NOT EXISTS dedup.type_index (run INTEGER NOT NULL, "
    "code INTEGER NOT NULL, seqs TEXT NOT NULL, PRIMARY KEY (run, code))",
    "CREATE TABLE IF NOT EXISTS dedup.type_runs (run INTEGER PRIMARY KEY, "
    "first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL)",
    # Every (stream, type) indexed, with its code: a filter (a glob too) is resolved to
    # codes here. A type that is NULL in events is '' here; two names with one code (a
    # 64-bit collision) are both listed and share their entries, which the reader's own
    # filter then tells apart.
    "CREATE TABLE IF NOT EXISTS dedup.type_names (stream TEXT NOT NULL, type TEXT NOT NULL, "
    "code INTEGER NOT NULL, PRIMARY KEY (stream, type)) WITHOUT ROWID",
    # Every event up to covered_seq has its entry in type_index (the rest: a scan).
    "CREATE TABLE IF NOT EXISTS dedup.type_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "covered_seq INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO dedup.type_state VALUES (1, 0)",
    # An early layout of the lead index (one B-tree), never released: gone.
    "DROP TABLE IF EXISTS dedup.leads",
    "DROP TABLE IF EXISTS dedup.leads_state",
)


def type_code(stream: str, event_type: str | None) -> int:
    """The signed 64-bit code of an event's ``(stream, type)`` in the type index."""
    return key_hash(f"{stream}\x1f{'' if event_type is None else event_type}")


def dedup_path(journal_path: str) -> str:
    """``journal.db`` → ``journal.dedup.db`` (same directory)."""
    stem = journal_path[:-3] if journal_path.endswith(".db") else journal_path
    return stem + ".dedup.db"


class DedupIndex:
    """The dedup index, attached as schema ``dedup`` to the writer's connection."""

    def __init__(self, conn: sqlite3.Connection, journal_path: str, cache_mib: int) -> None:
        self._conn = conn
        self.path = dedup_path(journal_path)
        self._cache_mib = cache_mib
        self.covered_seq = 0

    # -- opening -----------------------------------------------------------
    def open(self, journal_id: str) -> int:
        """Attach (creating or rebuilding as needed) and bring the index up to date.

        Returns how many events were indexed again. Raises :class:`JournalError`.
        """
        try:
            self._attach(journal_id)
        except sqlite3.DatabaseError as exc:
            log.warning(
                "dedup index %s is unusable (%s); rebuilding it from the journal", self.path, exc
            )
            self._detach_quietly()
            self._remove_files()
            try:
                self._attach(journal_id)
            except sqlite3.Error as again:
                raise JournalError(
                    f"{self.path}: cannot create the dedup index: {again}"
                ) from again
        done = self.reconcile()
        self.reconcile_leads()
        self.reconcile_types()
        return done

    def _attach(self, journal_id: str) -> None:
        conn = self._conn
        conn.execute("ATTACH DATABASE ? AS dedup", (self.path,))
        # page_size only takes effect on a new file; small pages mean fewer bytes
        # rewritten per random insert.
        conn.execute(f"PRAGMA dedup.page_size = {DEDUP_PAGE_SIZE}")
        mode = conn.execute("PRAGMA dedup.journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.DatabaseError(f"cannot switch the dedup index to WAL (got {mode})")
        # Derived data: rebuilt from the journal after a crash, so no fsync per commit.
        conn.execute("PRAGMA dedup.synchronous = NORMAL")
        conn.execute(f"PRAGMA dedup.cache_size = {-1024 * self._cache_mib}")
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT journal_id, covered_seq FROM dedup.dedup_state").fetchone()
        # An index ahead of the journal (a power cut at synchronous = "normal" synced the
        # index but not the journal's last commits; an older journal restored beside a
        # newer index) would skip the journal's events past its own coverage: rebuilt.
        last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM main.events").fetchone()[0]
        (lead_covered,) = conn.execute("SELECT covered_seq FROM dedup.lead_state").fetchone()
        (type_covered,) = conn.execute("SELECT covered_seq FROM dedup.type_state").fetchone()
        covered = max(int(lead_covered), int(type_covered), 0 if row is None else int(row[1]))
        ahead = row is not None and covered > last_seq
        if row is None or row[0] != journal_id or ahead:
            if ahead:
                log.warning(
                    "dedup index %s covers events up to %d, the journal ends at %d; rebuilding it",
                    self.path,
                    covered,
                    last_seq,
                )
            elif row is not None:
                log.warning("dedup index %s belongs to another journal; rebuilding it", self.path)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM dedup.dedup")
            conn.execute("DELETE FROM dedup.dedup_overflow")
            conn.execute("DELETE FROM dedup.lead_index")
            conn.execute("DELETE FROM dedup.lead_runs")
            conn.execute("UPDATE dedup.lead_state SET covered_seq = 0")
            conn.execute("DELETE FROM dedup.type_index")
            conn.execute("DELETE FROM dedup.type_runs")
            conn.execute("DELETE FROM dedup.type_names")
            conn.execute("UPDATE dedup.type_state SET covered_seq = 0")
            conn.execute("INSERT OR REPLACE INTO dedup.dedup_state VALUES (1, ?, 0)", (journal_id,))
            conn.execute("COMMIT")
            self.covered_seq = 0
        else:
            self.covered_seq = int(row[1])

    def _detach_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._conn.execute("DETACH DATABASE dedup")
        except sqlite3.Error:
            pass

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise JournalError(f"{self.path}{suffix}: cannot remove: {exc.strerror}") from exc

    # -- reading (inside the writer's transaction) -------------------------
    def lookup(self, hashes: list[int]) -> dict[int, int]:
        """Map each known hash to the seq of the event that owns it."""
        if not hashes:
            return {}
        # fetchall, not fetchone: a statement left active would make the writer's next
        # write fail at once with "database is locked" instead of waiting busy_timeout.
        ((found,),) = self._conn.execute(_LOOKUP, (orjson.dumps(hashes),)).fetchall()
        return dict(orjson.loads(found))

    def key_of(self, seq: int) -> str | None:
        """The full key of the event at ``seq`` (to tell a duplicate from a collision)."""
        row = self._conn.execute(
            "SELECT event_key FROM main.events WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else str(row[0])

    def in_overflow(self, key: str) -> bool:
        """True when ``key`` was journaled as a hash collision."""
        row = self._conn.execute(
            "SELECT 1 FROM dedup.dedup_overflow WHERE event_key = ?", (key,)
        ).fetchone()
        return row is not None

    # -- writing (its own transaction, after the events' commit) -----------
    def store(
        self,
        owners: Iterable[tuple[int, int]],
        overflow: Iterable[tuple[str, int]],
        covered_seq: int,
    ) -> None:
        """Index newly committed events and advance ``covered_seq``, atomically.

        Raises ``sqlite3.Error``; the caller then reconciles before the next batch.
        """
        conn = self._conn
        with _immediate(conn):
            insert_pairs(conn, "dedup.dedup", owners)
            conn.executemany("INSERT OR IGNORE INTO dedup.dedup_overflow VALUES (?, ?)", overflow)
            conn.execute("UPDATE dedup.dedup_state SET covered_seq = ?", (covered_seq,))
        self.covered_seq = covered_seq

    def reconcile(self) -> int:
        """Index every journaled event past ``covered_seq``; return how many.

        Raises :class:`JournalError` when the journal or the index cannot be read or written.
        """
        done = 0
        try:
            while True:
                rows = self._conn.execute(
                    "SELECT seq, event_key FROM main.events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self.covered_seq, _RECONCILE_CHUNK),
                ).fetchall()
                if not rows:
                    return done
                hashed = [(seq, key, key_hash(key)) for seq, key in rows]
                known = self.lookup([h for _, _, h in hashed])
                owners: list[tuple[int, int]] = []
                overflow: list[tuple[str, int]] = []
                claimed: dict[int, str] = {}
                for seq, key, h in hashed:
                    owner = known.get(h)
                    if owner == seq:
                        continue  # already indexed
                    if owner is None and h not in claimed:
                        claimed[h] = key
                        owners.append((h, seq))
                    elif claimed.get(h) != key and (owner is None or self.key_of(owner) != key):
                        overflow.append((key, seq))
                self.store(owners, overflow, rows[-1][0])
                done += len(rows)
        except sqlite3.Error as exc:
            raise JournalError(
                f"{self.path}: cannot bring the dedup index up to date: {exc}"
            ) from exc

    def reconcile_leads(self) -> int:
        """Add runs for every journaled event past the lead index's ``covered_seq`` (after
        a crash: the indexer's unflushed entries; an older index file: all); return how
        many events were read. Raises :class:`JournalError`."""

        def write(rows: list[tuple[Any, ...]]) -> None:
            leads = [(lead, seq) for seq, lead in rows if lead is not None]
            for i in range(0, len(leads), LEAD_RUN):
                append_run(self._conn, "dedup.", leads[i : i + LEAD_RUN])

        return self._catch_up("lead", "lead_id", write)

    def reconcile_types(self) -> int:
        """As :meth:`reconcile_leads`, for the type index; return how many events were read.
        Raises :class:`JournalError`."""
        codes: dict[tuple[str, str | None], int] = {}

        def write(rows: list[tuple[Any, ...]]) -> None:
            buckets: dict[int, list[int]] = {}
            names: dict[int, tuple[str, str | None]] = {}  # each code this step uses
            for seq, stream, event_type in rows:
                code = codes.get((stream, event_type))
                if code is None:
                    if len(codes) >= MAX_TYPE_CODES:
                        codes.clear()
                    code = codes[(stream, event_type)] = type_code(stream, event_type)
                seqs = buckets.get(code)
                if seqs is None:
                    buckets[code] = seqs = []
                    names[code] = (stream, event_type)
                seqs.append(seq)
            store_type_names(self._conn, "dedup.", names)
            append_type_run(self._conn, "dedup.", buckets)

        return self._catch_up("type", "stream, type", write)

    def _catch_up(
        self, kind: str, columns: str, write: Callable[[list[tuple[Any, ...]]], None]
    ) -> int:
        """Read the events past ``<kind>_state.covered_seq`` a step at a time (bounded
        memory at start) and ``write`` each step's ``(seq, columns...)`` rows in the
        transaction that moves ``covered_seq`` past them; return how many were read."""
        conn = self._conn
        done = 0
        try:
            state = f"dedup.{kind}_state"
            covered = int(conn.execute(f"SELECT covered_seq FROM {state}").fetchone()[0])  # noqa: S608
            while True:
                rows = conn.execute(
                    f"SELECT seq, {columns} FROM main.events WHERE seq > ? "  # noqa: S608
                    "ORDER BY seq LIMIT ?",
                    (covered, _RUNS_RECONCILE_CHUNK),
                ).fetchall()
                if not rows:
                    return done
                covered = rows[-1][0]
                with _immediate(conn):
                    write(rows)
                    conn.execute(f"UPDATE {state} SET covered_seq = ?", (covered,))  # noqa: S608
                done += len(rows)
        except sqlite3.Error as exc:
            raise JournalError(
                f"{self.path}: cannot bring the {kind} index up to date: {exc}"
            ) from exc


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: committed at the end, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def append_run(conn: sqlite3.Connection, schema: str, leads: list[tuple[int, int]]) -> None:
    """Append ``leads`` ((lead id, seq), any order) as the next sorted run."""
    if not leads:
        return
    runs = f"{schema}lead_runs"
    run = conn.execute(f"SELECT coalesce(max(run), 0) + 1 FROM {runs}").fetchone()[0]  # noqa: S608
    seqs = [seq for _, seq in leads]
    conn.execute(f"INSERT INTO {runs} VALUES (?, ?, ?)", (run, min(seqs), max(seqs)))  # noqa: S608
    insert_pairs(conn, f"{schema}lead_index", sorted(leads), first=run)


def append_type_run(conn: sqlite3.Connection, schema: str, buckets: dict[int, list[int]]) -> None:
    """Append the next run of the type index: for each code, its events' seqs (ascending,
    as the writer committed them) as one JSON array."""
    if not buckets:
        return
    runs = f"{schema}type_runs"
    run = conn.execute(f"SELECT coalesce(max(run), 0) + 1 FROM {runs}").fetchone()[0]  # noqa: S608
    first = min(seqs[0] for seqs in buckets.values())
    last = max(seqs[-1] for seqs in buckets.values())
    conn.execute(f"INSERT INTO {runs} VALUES (?, ?, ?)", (run, first, last))  # noqa: S608
    conn.executemany(
        f"INSERT INTO {schema}type_index VALUES (?, ?, ?)",  # noqa: S608
        [(run, code, orjson.dumps(seqs).decode()) for code, seqs in buckets.items()],
    )


# (stream, type) codes cached, by the writer and at start; a flood of new types only
# costs hashing them again.
MAX_TYPE_CODES = 4096
_MAX_NAMED = 65_536  # codes the indexer remembers having named; past it, it starts over


def store_type_names(
    conn: sqlite3.Connection, schema: str, names: dict[int, tuple[str, str | None]]
) -> None:
    """Record each code's (stream, type) in the type index's name list (a NULL type as
    ''), before any entry with that code is committed: a code without its name could
    not be found by a filter."""
    conn.executemany(
        f"INSERT OR IGNORE INTO {schema}type_names VALUES (?, ?, ?)",  # noqa: S608
        [(stream, event_type or "", code) for code, (stream, event_type) in names.items()],
    )


# One statement per insert, its rows given as a JSON array of [a, b] pairs: SQLite
# parses and inserts them all in one step, without the GIL. An ``executemany`` binds
# each row under the GIL and hands the GIL over around each row's step: with the
# indexer thread doing that for every event, the journal writer and the HTTP side
# waited for the GIL (ARCHITECTURE.md, "The indexer's inserts"). JSON integers keep
# all 64 bits (tests/unit/test_dedup.py checks both ends of the range).
_PAIRS = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
_PAIRS_AFTER = (
    "SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
)


def insert_pairs(
    conn: sqlite3.Connection,
    table: str,
    pairs: Iterable[tuple[int, int]],
    first: int | None = None,
) -> None:
    """``INSERT OR IGNORE`` integer pairs into ``table``, in their order, as one statement.

    With ``first``, each row is ``(first, a, b)`` (a lead run's number and its entries).
    """
    data = orjson.dumps(pairs if isinstance(pairs, list) else list(pairs))
    if first is None:
        conn.execute(f"INSERT OR IGNORE INTO {table} {_PAIRS}", (data,))
    else:
        conn.execute(f"INSERT OR IGNORE INTO {table} {_PAIRS_AFTER}", (first, data))


@dataclass(slots=True)
class Generation:
    """The keys of one committed group, in memory until the indexer has committed them."""

    owners: dict[int, int] = field(default_factory=dict)  # hash -> seq
    # hash -> key, for the group being written only: a claim in it has no committed event
    # to read its key from. Dropped once committed (the writer reads an earlier
    # generation's key from the journal): committed generations hold only integers, no
    # object the garbage collector walks (ARCHITECTURE.md, "Keys indexed in generations").
    keys: dict[int, str] = field(default_factory=dict)
    overflow: dict[str, int] = field(default_factory=dict)  # key -> seq
    leads: list[tuple[int, int]] = field(default_factory=list)  # (lead id, seq)
    types: dict[int, list[int]] = field(default_factory=dict)  # type code -> seqs
    # Every code ``types`` uses -> its (stream, type): the indexer records the names it
    # has not written yet, whatever became of the group that first used a code.
    type_names: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    covered_seq: int = 0


class Pending:
    """Generations committed to the journal but not yet to the index (FIFO, bounded)."""

    def __init__(self, limit: int) -> None:
        """``limit``: generations pending before the writer waits."""
        self._items: list[Generation] = []
        self._cond = threading.Condition()
        self._limit = limit
        self.closed = False

    def snapshot(self) -> list[Generation]:
        """The current generations; take it before the index read begins."""
        with self._cond:
            return list(self._items)

    def push(self, generation: Generation) -> None:
        """Add a generation; waits while ``limit`` are pending (backpressure on the writer).

        Never drops one: once released (stopping) or the indexer has stopped, it just
        appends (the keys stay visible to lookups, and the next start re-indexes them).
        """
        with self._cond:
            while len(self._items) >= self._limit and not self.closed:
                self._cond.wait(0.5)
            self._items.append(generation)
            self._cond.notify_all()

    def oldest(self, stop: threading.Event) -> list[Generation]:
        """The oldest generations (left in place), empty once ``stop`` is set and none remain.

        Every generation pending, oldest first, up to ``MERGE_KEYS`` keys (always at least
        one): the indexer writes them in one transaction. The writer already collects
        keys into generations of up to ``WriterOptions.index_keys``, so nothing waits here
        for more.
        """
        with self._cond:
            while not self._items:
                if stop.is_set():
                    return []
                self._cond.wait(0.2)
            taken = [self._items[0]]
            keys = len(taken[0].owners)
            for generation in self._items[1:]:
                keys += len(generation.owners)
                if keys > MERGE_KEYS:
                    break
                taken.append(generation)
            return taken

    def pop_oldest(self, n: int = 1) -> None:
        """Forget the ``n`` oldest generations: the index now holds them."""
        with self._cond:
            del self._items[:n]
            self._cond.notify_all()

    def release(self) -> None:
        """From now on a push never waits (stopping: the writer must reach its stop, and
        only then is the indexer told to stop)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake the indexer (to notice a stop)."""
        with self._cond:
            self._cond.notify_all()


class Indexer:
    """The thread that writes committed keys into the index, in commit order."""

    def __init__(
        self, index_path: str, pending: Pending, cache_mib: int, stop_grace: float = 10.0
    ) -> None:
        self._path = index_path
        self._pending = pending
        self._cache_mib = cache_mib
        # Once stopping, how long failed writes are tried again before the rest is left
        # to the next start (which indexes it from the journal): another process holding
        # the index file's write lock must not hold a stop for minutes.
        self._stop_grace = stop_grace
        self._stop_by = float("inf")
        self._stop = threading.Event()
        self._thread = Thread(target=self._run, name="journal-indexer", daemon=True)
        # Lead entries of indexed generations not yet in a run (fewer than LEAD_RUN); lost
        # in a crash and rebuilt from the journal at the next start (reconcile_leads).
        self._leads: list[tuple[int, int]] = []
        # The same for the type index: seqs by code (a run at TYPE_RUN of them).
        self._types: dict[int, list[int]] = {}
        self._named: set[int] = set()  # codes whose names this connection has committed
        self._covered = 0  # covered_seq of the last generation indexed
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Index what is pending, then stop (blocking): within about ``stop_grace``
        seconds plus one ``busy_timeout`` when the index cannot be written."""
        self._stop_by = time.monotonic() + self._stop_grace
        self._stop.set()
        self._pending.wake()
        self._thread.join()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
        conn.execute(f"PRAGMA cache_size = {-1024 * self._cache_mib}")
        # The statement journal of each multi-row insert in memory, not in a temporary
        # file: without this every indexer transaction created, wrote (a copy of each
        # index page it changed) and unlinked one (ARCHITECTURE.md, issue 17).
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _flush_runs(self, conn: sqlite3.Connection) -> None:
        """At stop: the collected lead and type entries as last runs (else the next start
        rebuilds them from the journal)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            append_run(conn, "", self._leads)
            conn.execute("UPDATE lead_state SET covered_seq = ?", (self._covered,))
            append_type_run(conn, "", self._types)
            conn.execute("UPDATE type_state SET covered_seq = ?", (self._covered,))
            conn.execute("COMMIT")
            self._leads = []
            self._types = {}
        except sqlite3.Error as exc:
            log.warning(
                "lead and type index: last runs not written (rebuilt at the next start): %s", exc
            )
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        backoff = 0.05
        while True:
            # Every generation pending now (up to MERGE_KEYS keys), in one transaction.
            generations = self._pending.oldest(self._stop)
            if not generations:
                break
            covered = generations[-1].covered_seq
            mark = len(self._leads)
            type_marks = {code: len(seqs) for code, seqs in self._types.items()}
            names: dict[int, tuple[str, str | None]] = {}
            for generation in generations:
                self._leads.extend(generation.leads)
                for code, seqs in generation.types.items():
                    bucket = self._types.get(code)
                    if bucket is None:
                        self._types[code] = list(seqs)
                    else:
                        bucket.extend(seqs)
                for code, name in generation.type_names.items():
                    if code not in self._named:
                        names[code] = name
            flush = len(self._leads) >= LEAD_RUN or self._stop.is_set()
            flush_types = sum(map(len, self._types.values())) >= TYPE_RUN or self._stop.is_set()
            try:
                if conn is None:
                    conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                insert_pairs(
                    conn,
                    "dedup",
                    [pair for g in generations for pair in g.owners.items()],
                )
                overflow = [item for g in generations for item in g.overflow.items()]
                if overflow:
                    conn.executemany("INSERT OR IGNORE INTO dedup_overflow VALUES (?, ?)", overflow)
                if flush:
                    append_run(conn, "", self._leads)
                    conn.execute("UPDATE lead_state SET covered_seq = ?", (covered,))
                if names:  # before (or with) any run holding their codes
                    store_type_names(conn, "", names)
                if flush_types:
                    append_type_run(conn, "", self._types)
                    conn.execute("UPDATE type_state SET covered_seq = ?", (covered,))
                conn.execute("UPDATE dedup_state SET covered_seq = ?", (covered,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                del self._leads[mark:]  # this generation's leads come again with it
                # and its type entries: each code's list back to its length before
                self._types = {
                    code: seqs[: type_marks[code]]
                    for code, seqs in self._types.items()
                    if code in type_marks
                }
                # The generation stays pending (lookups still see it); try again.
                self.failures += 1
                self.last_error = str(exc)
                log.warning("dedup index update failed, retrying: %s", exc)
                if conn is not None:
                    try:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        conn.close()
                        conn = None
                        self._named.clear()
                if self._stop.wait(backoff) and (
                    self.failures > 50 or time.monotonic() >= self._stop_by
                ):
                    # Stopping and still failing: the journal has the events and the
                    # next start re-indexes from covered_seq. Nothing is lost.
                    log.warning(
                        "dedup index: stopping before every key is indexed (the next "
                        "start indexes the rest from the journal): %s",
                        exc,
                    )
                    break
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if flush:
                self._leads = []  # in a run now
            if flush_types:
                self._types = {}
            if len(self._named) + len(names) > _MAX_NAMED:
                self._named.clear()  # a flood of types: names are written again (OR IGNORE)
            self._named.update(names)
            self._covered = covered
            self._pending.pop_oldest(len(generations))
        if conn is not None:
            if self._leads or self._types:
                self._flush_runs(conn)
            conn.close()
        self._pending.closed = True
        self._pending.wake()
