"""The wall clock, read in one place: the current time in UTC.

``streamd/core`` never reads a clock (its callers pass ``now`` in); everything above
it that needs "now" for the journal's columns (``received_at``, ``updated_at``,
``failed_at``) or for a relative window (``--since 2h``) asks here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from streamd.core.timeparse import format_utc


def utc_now() -> str:
    """The current time in the journal's text form (``2026-11-01T08:00:00.000Z``)."""
    return format_utc(datetime.now(UTC))


def utc_now_datetime() -> datetime:
    """The current time as an aware UTC datetime (to pass to ``parse_when`` and the like)."""
    return datetime.now(UTC)


__all__ = ["utc_now", "utc_now_datetime"]
