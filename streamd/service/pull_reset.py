"""``streamd journal pull-reset``: start a pull source over, on a stopped daemon's journal.

The saved position is cleared and the restart point set (``oldest`` or ``latest``), as a
410 would; the next start of streamd pulls from there. What it pulls again is
deduplicated against the journal. Refused while a daemon holds the journal.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from streamd.drain import store
from streamd.errors import JournalError, UsageError
from streamd.journal import utc_now


@dataclass(frozen=True, slots=True)
class Reset:
    name: str
    was: str | None  # the position it had
    restart: str


def reset_pull(path: str, name: str, restart: str) -> Reset:
    """Clear pull ``name``'s position; raises :class:`UsageError` (unknown pull, bad
    ``restart``) or :class:`JournalError` (no journal, a daemon holds it)."""
    if restart not in ("oldest", "latest"):
        raise UsageError(f"--from must be oldest or latest, got {restart!r}")
    now = utc_now()
    with store.open_offline(path, now) as conn:
        try:
            with store.transaction(conn):
                row = conn.execute(
                    "SELECT position FROM pull_positions WHERE source = ?", (name,)
                ).fetchone()
                if row is None:
                    known = [r[0] for r in conn.execute("SELECT source FROM pull_positions")]
                    raise UsageError(
                        f"no pull named {name!r} has run on this journal"
                        + (f" (pulls: {', '.join(known)})" if known else "")
                    )
                conn.execute(
                    "UPDATE pull_positions SET position = NULL, restart = ?, updated_at = ? "
                    "WHERE source = ?",
                    (restart, now, name),
                )
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: {exc}") from exc
    return Reset(name, row[0], restart)
