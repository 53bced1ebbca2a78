"""The power-cut simulator's rebuilder: the data directory as a power cut would leave it.

The shim (``powercut/shim.c``, loaded into a real ``streamd serve`` with ``LD_PRELOAD``)
records one ordered log of every write, size change, sync and namespace change under
the data directory, and every ``HTTP/1.1 200`` the process sends. This module reads
that log and, for a cut point *c* (the first *c* records happened, none after), builds
the files a power cut at *c* would leave, under one of two models:

- ``dropped``: every operation not covered by a completed ``fsync``/``fdatasync`` of
  its file is lost. A sync covers the operations on its file logged before the sync
  *started*, and counts from the record of its *return*. Creations, renames and
  unlinks are namespace operations of their directory: durable only once an fsync of
  the directory (started after them) returned; POSIX promises no more. A
  ``sync_file_range`` is recorded but is never a durability point.
- ``torn``: as ``dropped`` for what was synced; each unsynced write or size change is
  kept with a probability drawn per cut, and a kept write may be torn (only a prefix
  of it, ending on a 512-byte sector boundary, reaches the disk). Unsynced namespace
  operations of a directory survive as a random prefix (file systems journal their
  metadata in order).

``*-shm`` files are never rebuilt: SQLite's WAL index is written through ``mmap``
(invisible to the shim) and SQLite rebuilds it from the WAL when the first connection
opens the database, so after a cut it is as if absent.

Then :func:`check_cut` opens the rebuilt directory the way a restarted streamd does
(``JournalWriter``: open, migrations, the dedup index brought up to date or rebuilt),
runs ``PRAGMA integrity_check`` and streamd's ``journal verify``, and checks the
promise: every event whose batch's 200 was sent before the cut is present, none is
stored twice, each batch is all there or not at all, and the derived index agrees.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import struct
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Literal

from streamd.core.normalise import key_hash
from streamd.core.timeparse import format_utc
from streamd.errors import JournalError
from streamd.inspect.verify import verify_journal
from streamd.journal.dedup import dedup_path
from streamd.journal.writer import JournalWriter, WriterOptions

SHIM_SOURCE = Path(__file__).with_name("powercut") / "shim.c"
SECTOR = 512
TORN_CHANCE = 0.25  # of a kept unsynced write, in the torn model
Model = Literal["dropped", "torn"]
MODELS: tuple[Model, ...] = ("dropped", "torn")

_HEADER = struct.Struct("<IIIIQQQQQQ")  # struct rec in shim.c: 64 bytes


class Kind(IntEnum):
    """Record kinds (``enum kind`` in shim.c)."""

    WRITE = 1
    TRUNC = 2
    SYNC = 3
    RANGE = 4
    SYNCALL = 5
    CREATE = 6
    RENAME = 7
    UNLINK = 8
    HTTP200 = 9
    ALLOC = 10
    START = 11


@dataclass(frozen=True, slots=True)
class Record:
    """One logged operation. ``ino`` is the peer port for an HTTP 200."""

    kind: Kind
    pid: int
    tid: int
    seq: int
    ino: int
    offset: int
    aux: int
    payload: bytes


def build_shim(workdir: Path) -> Path | None:
    """Compile the shim with the machine's gcc into ``workdir``; None without gcc.

    Raises :class:`AssertionError` (with gcc's output) when it does not compile.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    out = workdir / "powercut-shim.so"
    done = subprocess.run(
        [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(out),
         str(SHIM_SOURCE), "-ldl", "-lpthread"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"the shim does not compile:\n{done.stderr}"
    return out


def read_log(path: Path) -> list[Record]:
    """Every record of the shim's log, in order (one process: ``seq`` is the index).

    Raises :class:`AssertionError` for a truncated log or one written by two processes.
    """
    data = path.read_bytes()
    records: list[Record] = []
    at = 0
    while at < len(data):
        assert at + _HEADER.size <= len(data), f"{path}: truncated record header at {at}"
        kind, pid, tid, _, seq, ino, offset, length, aux, _ = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        assert at + length <= len(data), f"{path}: truncated record payload at {at}"
        records.append(Record(Kind(kind), pid, tid, seq, ino, offset, aux, data[at : at + length]))
        at += length
    assert records and records[0].kind is Kind.START, f"{path}: no START record"
    pids = {r.pid for r in records}
    assert len(pids) == 1, f"{path}: written by several processes {sorted(pids)}"
    assert all(r.seq == i for i, r in enumerate(records)), f"{path}: sequence has gaps"
    return records


# -- the storage model ------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Node:
    """One inode: a file's bytes as of its last completed sync, and what came after."""

    directory: bool
    durable: bytearray = field(default_factory=bytearray)
    # (seq, kind, offset or size, data or length); kind WRITE, TRUNC or ALLOC
    pending: list[tuple[int, Kind, int, bytes | int]] = field(default_factory=list)


# A namespace operation of a directory: (seq, kind, path, new path, node).
_NsOp = tuple[int, Kind, str, str, _Node | None]


def _apply(content: bytearray, kind: Kind, at: int, what: bytes | int) -> None:
    if kind is Kind.WRITE:
        assert isinstance(what, bytes)
        if len(content) < at:
            content.extend(bytes(at - len(content)))
        content[at : at + len(what)] = what
    elif kind is Kind.TRUNC:
        if at < len(content):
            del content[at:]
        else:
            content.extend(bytes(at - len(content)))
    else:  # ALLOC: the size grows to cover the range; the bytes read as zeros
        assert isinstance(what, int)
        if len(content) < at + what:
            content.extend(bytes(at + what - len(content)))


def _apply_ns(names: dict[str, _Node], op: _NsOp) -> None:
    _, kind, path, new, node = op
    if kind is Kind.CREATE:
        assert node is not None
        names[path] = node
    elif kind is Kind.RENAME:
        moved = names.pop(path, None)
        if moved is not None:
            names[new] = moved
    else:
        names.pop(path, None)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


@dataclass
class Stats:
    """What the rebuilds did, summed over the cuts of one model."""

    unsynced_ops: int = 0
    kept: int = 0
    torn: int = 0


class Storage:
    """The data directory's durable state, advanced record by record (cuts in order)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = records
        self._at = 0
        start = records[0]
        self.root = start.payload.decode()
        self._root_node = _Node(directory=True)
        self._inodes: dict[int, _Node] = {start.ino: self._root_node}
        self._dirs: dict[int, str] = {start.ino: self.root}  # directory inode -> path
        self._durable: dict[str, _Node] = {}  # path -> node, as the disk has it
        self._ns_pending: dict[str, list[_NsOp]] = {self.root: []}  # by directory
        self.acks: list[int] = []  # indices of the HTTP 200 records seen so far
        self.range_syncs = 0

    def advance(self, cut: int) -> None:
        """Apply records up to (not including) index ``cut``."""
        assert cut >= self._at, "cuts must come in order"
        for record in self._records[self._at : cut]:
            self._step(record)
        self._at = cut

    def _step(self, r: Record) -> None:
        kind = r.kind
        if kind in (Kind.WRITE, Kind.TRUNC, Kind.ALLOC):
            node = self._inodes[r.ino]
            what: bytes | int = r.payload if kind is Kind.WRITE else r.aux
            node.pending.append((r.seq, kind, r.offset, what))
        elif kind is Kind.SYNC:
            if r.ino in self._dirs and self._inodes[r.ino].directory:
                self._cover_names(self._dirs[r.ino], r.aux)
            else:
                self._cover(self._inodes[r.ino], r.aux)
        elif kind is Kind.SYNCALL:
            for node in set(self._inodes.values()):
                self._cover(node, r.aux)
            for directory in list(self._ns_pending):
                self._cover_names(directory, r.aux)
        elif kind is Kind.CREATE:
            path = r.payload.decode()
            node = _Node(directory=r.aux == 1)
            self._inodes[r.ino] = node  # a new inode, even if its number was used before
            if node.directory:
                self._dirs[r.ino] = path
                self._ns_pending.setdefault(path, [])
            self._ns_pending[_parent(path)].append((r.seq, kind, path, "", node))
        elif kind is Kind.RENAME:
            old, new = r.payload[: r.aux].decode(), r.payload[r.aux :].decode()
            assert _parent(old) == _parent(new), f"rename across directories: {old} -> {new}"
            self._ns_pending[_parent(old)].append((r.seq, kind, old, new, None))
        elif kind is Kind.UNLINK:
            path = r.payload.decode()
            self._ns_pending[_parent(path)].append((r.seq, kind, path, "", None))
        elif kind is Kind.HTTP200:
            self.acks.append(r.seq)
        elif kind is Kind.RANGE:
            self.range_syncs += 1  # never a durability point
        elif kind is not Kind.START:
            raise AssertionError(f"unexpected record {r}")

    @staticmethod
    def _cover(node: _Node, started: int) -> None:
        done = 0
        for seq, kind, at, what in node.pending:
            if seq >= started:
                break
            _apply(node.durable, kind, at, what)
            done += 1
        del node.pending[:done]

    def _cover_names(self, directory: str, started: int) -> None:
        pending = self._ns_pending[directory]
        done = 0
        for op in pending:
            if op[0] >= started:
                break
            _apply_ns(self._durable, op)
            done += 1
        del pending[:done]

    def materialize(self, dest: Path, model: Model, rng: random.Random, stats: Stats) -> None:
        """Write the files a power cut at the current point leaves, under ``model``."""
        names = dict(self._durable)
        keep = rng.random()  # this cut's chance that an unsynced operation reached the disk
        for pending in self._ns_pending.values():
            stats.unsynced_ops += len(pending)
            if model == "torn" and pending:
                survivors = rng.randrange(len(pending) + 1)
                stats.kept += survivors
                for op in pending[:survivors]:
                    _apply_ns(names, op)
        dest.mkdir(parents=True)
        for path in sorted(names):
            node = names[path]
            assert path.startswith(self.root + "/"), path
            target = dest / path[len(self.root) + 1 :]
            if node.directory:
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.name.endswith("-shm"):
                continue  # rebuilt by SQLite from the WAL (module docstring)
            content = bytearray(node.durable)
            stats.unsynced_ops += len(node.pending)
            if model == "torn":
                for _, kind, at, what in node.pending:
                    if rng.random() >= keep:
                        continue
                    stats.kept += 1
                    if kind is Kind.WRITE and rng.random() < TORN_CHANCE:
                        assert isinstance(what, bytes)
                        what = _torn(at, what, rng)
                        stats.torn += 1
                    _apply(content, kind, at, what)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def _torn(at: int, data: bytes, rng: random.Random) -> bytes:
    """A prefix of ``data`` (written at ``at``) ending on a sector boundary inside it."""
    first = (at // SECTOR + 1) * SECTOR
    bounds = range(first, at + len(data), SECTOR)
    if not bounds:
        return data  # within one sector: a sector is written whole or not at all
    return data[: rng.choice(bounds) - at]


def choose_cuts(records: Sequence[Record], count: int, rng: random.Random) -> list[int]:
    """``count`` cut points: a third right after a 200 was sent (the newest ack must
    already be durable), a third just before a sync returns (written, not yet synced),
    the rest anywhere; always the end (after the graceful stop)."""
    after_ack = [i + 1 for i, r in enumerate(records) if r.kind is Kind.HTTP200]
    before_sync = [i for i, r in enumerate(records) if r.kind in (Kind.SYNC, Kind.SYNCALL)]
    chosen = {len(records)}
    for pool in (after_ack, before_sync):
        chosen.update(rng.sample(pool, min(len(pool), count // 3)))
    everywhere = range(1, len(records) + 1)
    while len(chosen) < min(count, len(records)):
        chosen.add(rng.choice(everywhere))
    return sorted(chosen)


# -- the checks -------------------------------------------------------------------


@dataclass
class CutResult:
    """What one rebuilt directory showed. Every list empty: the promise held."""

    cut: int
    model: Model
    acked_events: int
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)  # journal.db or streamd's restart
    index: list[str] = field(default_factory=list)  # the derived index disagrees
    atomic: list[str] = field(default_factory=list)  # a batch partly journaled
    dedup_damaged: bool = False  # the derived file as left (streamd rebuilds it)


def _now() -> str:
    return format_utc(datetime.now(UTC))


def check_cut(
    data_dir: Path,
    cut: int,
    model: Model,
    acked: set[str],
    batches: Iterable[Sequence[str]],
    *,
    cli: Sequence[str] = (),
) -> CutResult:
    """Restart streamd's journal on a rebuilt directory and check the promise.

    ``cli``: the ``streamd`` command, to run ``streamd journal verify`` as an operator
    would, besides the same check in-process (which every cut gets).
    """
    result = CutResult(cut, model, len(acked))
    journal = data_dir / "journal.db"
    index = Path(dedup_path(str(journal)))
    if journal.exists():
        result.integrity += _integrity(journal)
    if index.exists():
        damaged = _integrity(index)
        result.dedup_damaged = bool(damaged)
        if not damaged and journal.exists() and not result.integrity:
            result.index += _index_not_ahead(journal, index)
    # What a restarted streamd does first: open, migrate, bring the index up to date.
    writer = JournalWriter(str(journal), WriterOptions(min_free_disk_bytes=0), _now)
    try:
        writer.start()
    except JournalError as exc:
        result.integrity.append(f"streamd cannot open the journal: {exc}")
        return result
    writer.close()
    report = verify_journal(str(journal))
    for check in report.checks:
        result.integrity += [f"verify {check.name}: {p}" for p in check.problems]
    if cli:
        done = subprocess.run(
            [*cli, "journal", "verify", "--data-dir", str(data_dir), "--format", "jsonl"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            result.integrity.append(f"streamd journal verify: {done.stdout}{done.stderr}")
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        keys = Counter(
            dict(conn.execute("SELECT event_key, count(*) FROM events GROUP BY event_key"))
        )
    result.lost = sorted(acked - keys.keys())
    result.twice = sorted(k for k, n in keys.items() if n > 1)
    sent: set[str] = set()
    for batch in batches:
        present = sum(1 for key in batch if key in keys)
        if present not in (0, len(batch)):
            result.atomic.append(f"{present} of {len(batch)} events of batch {batch[0]}")
        sent.update(batch)
    unknown = keys.keys() - sent
    if unknown:
        result.integrity.append(f"{len(unknown)} events never sent, e.g. {min(unknown)}")
    result.index += _index_agrees(journal, index)
    return result


def _integrity(path: Path) -> list[str]:
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return [f"{path.name}: {exc}"]
    return [] if rows == [("ok",)] else [f"{path.name}: {row[0]}" for row in rows[:5]]


def _index_not_ahead(journal: Path, index: Path) -> list[str]:
    """The index as the cut left it holds no key, lead or coverage past the journal:
    such an entry would make a re-sent event look like a duplicate and lose it."""
    problems = []
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        conn.execute("ATTACH DATABASE ? AS dedup", (str(index),))
        tables = {r[0] for r in conn.execute("SELECT name FROM dedup.sqlite_master")}
        if "dedup_state" not in tables:
            return []  # created, not yet initialised
        newest = conn.execute("SELECT coalesce(max(seq), 0) FROM main.events").fetchone()[0]
        for what, sql in (
            ("covered_seq", "SELECT coalesce(max(covered_seq), 0) FROM dedup.dedup_state"),
            ("a key's seq", "SELECT coalesce(max(seq), 0) FROM dedup.dedup"),
            ("an overflow key's seq", "SELECT coalesce(max(seq), 0) FROM dedup.dedup_overflow"),
            ("lead covered_seq", "SELECT coalesce(max(covered_seq), 0) FROM dedup.lead_state"),
            ("a lead's seq", "SELECT coalesce(max(seq), 0) FROM dedup.lead_index"),
            ("type covered_seq", "SELECT coalesce(max(covered_seq), 0) FROM dedup.type_state"),
            (
                "a type entry's seq",
                "SELECT coalesce(max(j.value), 0) FROM dedup.type_index AS t, "
                "json_each(t.seqs) AS j",
            ),
        ):
            if sql.split("FROM dedup.", 1)[1].split()[0] not in tables:
                continue  # the schema is created a table at a time: cut before this one
            value = conn.execute(sql).fetchone()[0]
            if value > newest:
                problems.append(f"index ahead: {what} {value} > newest event {newest}")
        rows = conn.execute(
            "SELECT d.key_hash, e.event_key FROM dedup.dedup AS d JOIN main.events AS e "
            "ON e.seq = d.seq"
        ).fetchall()
    wrong = [key for h, key in rows if key_hash(key) != h]
    if wrong:
        problems.append(f"index ahead: {len(wrong)} keys point at another event, e.g. {wrong[0]}")
    return problems


def _index_agrees(journal: Path, index: Path) -> list[str]:
    """After the restart: every event indexed under its own key, coverage complete."""
    problems = []
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        conn.execute("ATTACH DATABASE ? AS dedup", (str(index),))
        newest = conn.execute("SELECT coalesce(max(seq), 0) FROM main.events").fetchone()[0]
        covered = conn.execute("SELECT covered_seq FROM dedup.dedup_state").fetchone()[0]
        leads = conn.execute("SELECT covered_seq FROM dedup.lead_state").fetchone()[0]
        types = conn.execute("SELECT covered_seq FROM dedup.type_state").fetchone()[0]
        if covered != newest or leads != newest or types != newest:
            problems.append(
                f"index covers {covered} (leads {leads}, types {types}), the journal {newest}"
            )
        owners = dict(conn.execute("SELECT key_hash, seq FROM dedup.dedup"))
        overflow = dict(conn.execute("SELECT event_key, seq FROM dedup.dedup_overflow"))
        events = conn.execute("SELECT seq, event_key, lead_id FROM main.events").fetchall()
        lead_rows = conn.execute("SELECT count(*) FROM dedup.lead_index").fetchone()[0]
        type_rows = conn.execute(
            "SELECT count(*), count(DISTINCT j.value) FROM dedup.type_index AS t, "
            "json_each(t.seqs) AS j"
        ).fetchone()
    by_seq = {seq: key for seq, key, _ in events}
    missing = [
        key
        for seq, key, _ in events
        if owners.get(key_hash(key)) != seq
        and overflow.get(key) != seq
        and by_seq.get(owners.get(key_hash(key), -1)) != key
    ]
    if missing:
        problems.append(f"{len(missing)} events not in the index, e.g. {missing[0]}")
    stray = [seq for seq in owners.values() if seq not in by_seq]
    if stray:
        problems.append(f"{len(stray)} index entries for no event, e.g. seq {stray[0]}")
    with_lead = sum(1 for _, _, lead in events if lead is not None)
    if lead_rows != with_lead:
        problems.append(f"lead index has {lead_rows} entries, the journal {with_lead} leads")
    if type_rows != (len(events), len(events)):
        problems.append(f"type index has {type_rows} entries (all, seqs), the journal {newest}")
    return problems


# -- the run over many cuts -------------------------------------------------------


@dataclass
class Figures:
    """The outcome of one model over every cut point."""

    model: Model
    cuts: int = 0
    acked_events: int = 0  # the largest acknowledged set at a cut (the newest cut's)
    acked_checked: int = 0  # acknowledged events checked, summed over the cuts
    lost_events: int = 0
    cuts_with_loss: int = 0
    stored_twice: int = 0
    integrity_failures: int = 0
    index_failures: int = 0
    atomic_failures: int = 0
    dedup_damaged: int = 0
    cli_runs: int = 0  # cuts also checked with the streamd journal verify command
    stats: Stats = field(default_factory=Stats)
    examples: list[str] = field(default_factory=list)

    def add(self, result: CutResult) -> None:
        self.cuts += 1
        self.acked_events = max(self.acked_events, result.acked_events)
        self.acked_checked += result.acked_events
        self.lost_events += len(result.lost)
        self.cuts_with_loss += bool(result.lost)
        self.stored_twice += len(result.twice)
        self.integrity_failures += bool(result.integrity)
        self.index_failures += bool(result.index)
        self.atomic_failures += bool(result.atomic)
        self.dedup_damaged += result.dedup_damaged
        for name in ("lost", "twice", "integrity", "index", "atomic"):
            problems: list[str] = getattr(result, name)
            if problems and len(self.examples) < 10:
                self.examples.append(f"cut {result.cut} ({self.model}) {name}: {problems[:3]}")

    def line(self) -> str:
        return (
            f"{self.model}: {self.cuts} cuts, acked events up to {self.acked_events} "
            f"({self.acked_checked} checked), lost {self.lost_events} "
            f"(at {self.cuts_with_loss} cuts), stored twice {self.stored_twice}, "
            f"integrity failures {self.integrity_failures}, index failures "
            f"{self.index_failures}, partial batches {self.atomic_failures}, derived index "
            f"damaged as left {self.dedup_damaged}, `streamd journal verify` runs "
            f"{self.cli_runs}; unsynced ops {self.stats.unsynced_ops}, "
            f"kept {self.stats.kept}, torn {self.stats.torn}"
        )


def simulate(
    records: Sequence[Record],
    acked_by_record: Mapping[int, Sequence[str]],
    batches: Sequence[Sequence[str]],
    cuts: Sequence[int],
    models: Sequence[Model],
    seed: int,
    workdir: Path,
    *,
    cli: Sequence[str] = (),
    cli_every: int = 50,
) -> dict[Model, Figures]:
    """Rebuild and check every cut under every model; ``acked_by_record`` maps the index
    of each HTTP 200 record to the keys of the batch it acknowledged. ``streamd journal
    verify`` (``cli``) also runs at every ``cli_every``-th cut and at the last."""
    storage = Storage(records)
    figures = {model: Figures(model) for model in models}
    acked: set[str] = set()
    counted = 0  # 200 records whose batches are in ``acked``
    for number, cut in enumerate(cuts):
        storage.advance(cut)
        run_cli = cli if number % cli_every == 0 or number == len(cuts) - 1 else ()
        for index in storage.acks[counted:]:
            acked.update(acked_by_record[index])
        counted = len(storage.acks)
        for model in models:
            rng = random.Random(f"{seed}:{cut}:{model}")
            dest = workdir / f"cut-{cut}-{model}"
            storage.materialize(dest, model, rng, figures[model].stats)
            result = check_cut(dest, cut, model, set(acked), batches, cli=run_cli)
            figures[model].add(result)
            figures[model].cli_runs += bool(run_cli)
            shutil.rmtree(dest)
    return figures
