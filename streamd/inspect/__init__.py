"""Local journal inspection: filters, read-only selects, output, and one function per command."""

from streamd.inspect.filters import FieldMatch, Filters, parse_filters
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

__all__ = [
    "COLUMNS",
    "FieldMatch",
    "Filters",
    "Row",
    "count_events",
    "get_event",
    "iter_events",
    "journal_path",
    "last_events",
    "max_seq",
    "open_readonly",
    "parse_filters",
]
