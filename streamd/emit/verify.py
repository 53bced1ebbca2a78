"""``streamd emit verify``: is every acknowledged id in the journal exactly once?

The acked file is the emulator's (one event id per line). The journal is opened
read-only (``mode=ro``): verifying never writes, and works while streamd runs.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from streamd.emit.errors import UsageError
from streamd.journal.schema import sqlite_uri

_ID: Final = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces: any sane key
_SHOW: Final = 10


@dataclass(slots=True)
class Verdict:
    """The outcome: ids checked, which are missing, which are journaled more than once."""

    acked: int = 0
    missing: list[str] = field(default_factory=list)
    repeated: dict[str, int] = field(default_factory=dict)
    journal_events: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.repeated

    def report(self) -> str:
        """One line per finding, for people."""
        lines = list(self.warnings)
        if self.ok:
            lines.append(
                f"ok: all {self.acked} acknowledged ids are in the journal exactly once "
                f"({self.journal_events} events in the journal)"
            )
            return "\n".join(lines) + "\n"
        if self.missing:
            lines.append(
                f"MISSING: {len(self.missing)} of {self.acked} acknowledged ids are not in the "
                "journal, e.g. " + ", ".join(self.missing[:_SHOW])
            )
        if self.repeated:
            sample = list(self.repeated.items())[:_SHOW]
            lines.append(
                f"DUPLICATED: {len(self.repeated)} acknowledged ids are journaled more than "
                "once, e.g. " + ", ".join(f"{k} x{n}" for k, n in sample)
            )
        return "\n".join(lines) + "\n"


def read_acked(path: Path, verdict: Verdict) -> set[str]:
    """The ids of an acked file; raises :class:`UsageError` naming the file and line.

    An unterminated last line (the emulator was killed while writing it) is skipped
    with a warning: its request was acknowledged, but the line may be cut short.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--acked {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--acked {path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"--acked {path}: cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        bad = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"--acked {path}: line {bad}: not an event id (non-ASCII bytes)") from None
    lines = text.split("\n")
    if lines[-1]:
        verdict.warnings.append(
            f"warning: {path}: the last line is not terminated (the emulator was stopped "
            f"while writing it?); skipped: {lines[-1][:60]!r}"
        )
    ids: set[str] = set()
    for number, line in enumerate(lines[:-1], 1):
        if not _ID.fullmatch(line):
            shown = line[:60] + ("..." if len(line) > 60 else "")
            raise UsageError(f"--acked {path}: line {number}: not an event id: {shown!r}")
        ids.add(line)
    verdict.acked = len(ids)
    return ids


def verify(journal: Path, acked: Path) -> Verdict:
    """Check ``journal`` against the ids in ``acked``.

    Raises :class:`UsageError` when either file is missing, unreadable or not what it
    should be (an acked file with a garbled line, a file that is not a streamd journal).
    """
    verdict = Verdict()
    ids = read_acked(acked, verdict)
    if not journal.exists():
        raise UsageError(f"--journal {journal}: no such file")
    if journal.is_dir():
        raise UsageError(f"--journal {journal}: is a directory (the file is journal.db in it)")
    if not os.access(journal, os.R_OK):
        raise UsageError(f"--journal {journal}: not readable")
    counts: dict[str, int] = {}
    try:
        conn = sqlite3.connect(sqlite_uri(str(journal)), uri=True)
    except sqlite3.Error as exc:
        raise UsageError(f"--journal {journal}: cannot open: {exc}") from exc
    try:
        has_events = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()
        if not has_events:
            raise UsageError(f"--journal {journal}: not a streamd journal (no events table)")
        for (key,) in conn.execute("SELECT event_key FROM events"):
            verdict.journal_events += 1
            if key in ids:
                counts[key] = counts.get(key, 0) + 1
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"--journal {journal}: not a readable SQLite journal: {exc}") from exc
    finally:
        conn.close()
    verdict.missing = sorted(ids - counts.keys())
    verdict.repeated = {k: n for k, n in sorted(counts.items()) if n > 1}
    return verdict
