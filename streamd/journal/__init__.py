"""The journal: a write-ahead SQLite file that holds every acknowledged event."""

from typing import TYPE_CHECKING, Any

from streamd.clock import utc_now
from streamd.journal.schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate, sqlite_uri
from streamd.journal.stats import journal_stats
from streamd.journal.writer import (
    AppendResult,
    Batch,
    Job,
    JournalWriter,
    WriterOptions,
    WriterStatistics,
)

if TYPE_CHECKING:
    from streamd.journal.appender import Journal, open_journal

JOURNAL_FILE = "journal.db"
_LAZY = {"Journal", "open_journal"}


def __getattr__(name: str) -> Any:
    # The async face needs trio; readers of the journal (the inspection commands) do not,
    # and importing trio is most of their start-up time.
    if name in _LAZY:
        from streamd.journal import appender

        return getattr(appender, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "JOURNAL_FILE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AppendResult",
    "Batch",
    "Job",
    "Journal",
    "JournalWriter",
    "WriterOptions",
    "WriterStatistics",
    "connect",
    "journal_stats",
    "migrate",
    "open_journal",
    "sqlite_uri",
    "utc_now",
]
