"""The journal: a write-ahead SQLite file that holds every acknowledged event."""

from streamd.journal.appender import Journal, open_journal, utc_now
from streamd.journal.schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate
from streamd.journal.stats import journal_stats
from streamd.journal.writer import (
    AppendResult,
    Batch,
    Job,
    JournalWriter,
    WriterOptions,
    WriterStatistics,
)

JOURNAL_FILE = "journal.db"

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
    "utc_now",
]
