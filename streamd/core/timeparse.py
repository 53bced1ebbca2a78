"""Lenient parsing of the timestamps the senders actually send.

Marketo and Adobe I/O Events do not always send RFC 3339: a space instead of
``T``, no zone (``2024-07-11 13:20:42.755``), one-digit offset hours
(``-5:00``), 1 to 9 fractional digits. The journal stores a normalised UTC
form for querying; the original text always stays in the raw JSON.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone

_TIMESTAMP = re.compile(
    r"""
    \s*(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
    (?:[Tt\x20]+
        (?P<h>\d{1,2}):(?P<mi>\d{2})
        (?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?
    )?
    \s*(?P<z>[Zz]|UTC|GMT|[+-]\d{1,2}(?::?\d{2})?)?\s*
    """,
    re.VERBOSE,
)


def parse_timestamp(text: str) -> datetime | None:
    """Parse a sender timestamp leniently into an aware UTC datetime.

    A missing zone is taken as UTC (Marketo's zone-less audit times are UTC).
    Returns ``None`` for text that is not a timestamp; never raises.
    """
    if len(text) > 64:
        return None
    try:
        # C-speed for the usual RFC 3339 forms; the regex below takes the odd ones.
        dt = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            return dt.astimezone(UTC)
        except OverflowError:
            return None
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return None
    tz: timezone = UTC
    zone = m["z"]
    if zone and zone[0] in "+-":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        if ":" in zone:
            hours, minutes = zone[1:].split(":")
        elif len(digits) <= 2:
            hours, minutes = digits, "0"
        else:
            hours, minutes = digits[:-2], digits[-2:]
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        if offset >= timedelta(hours=24):
            return None
        tz = timezone(sign * offset)
    frac = m["f"] or "0"
    try:
        dt = datetime(
            int(m["y"]),
            int(m["mo"]),
            int(m["d"]),
            int(m["h"] or 0),
            int(m["mi"] or 0),
            int(m["s"] or 0),
            int(frac[:6].ljust(6, "0")),
            tzinfo=tz,
        )
        return dt.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def format_utc(dt: datetime) -> str:
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC (sorts as text)."""
    dt = dt.astimezone(UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def normalise_timestamp(value: object) -> str | None:
    """Return the normalised UTC text of a sender timestamp, or ``None`` if it is not one."""
    # Longer text is no timestamp, and must not sit in the cache below (a sender's).
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP_TEXT:
        return None
    return _normalise_text(value)


MAX_TIMESTAMP_TEXT = 64


@functools.lru_cache(maxsize=4096)
def _normalise_text(text: str) -> str | None:
    # Cached: a batch's activities share a handful of timestamps (same second),
    # and parsing plus strftime was a tenth of the event loop's time per event.
    dt = parse_timestamp(text)
    return None if dt is None else format_utc(dt)
