"""Times in text: the senders' timestamps, and the durations operators type.

Marketo and Adobe I/O Events do not always send RFC 3339: a space instead of
``T``, no zone (``2024-07-11 13:20:42.755``), one-digit offset hours
(``-5:00``), 1 to 9 fractional digits. The journal stores a normalised UTC
form for querying; the original text always stays in the raw JSON.

The one grammar for every time an operator gives (``journal grep/export/stats
--since/--until``, the admin ``GET /journal`` ``from``/``until``/``seek``,
``pulls[].start``) is :func:`parse_when`: a duration back from ``now`` (``90s``,
``15m``, ``2h``, ``30d``, ``1w``, ``1h30m``; or ISO 8601: ``PT2H``, ``-P1D``, both
meaning that long ago) or an ISO 8601 time (a date alone is midnight UTC, no zone
is UTC). The caller passes ``now``: this module never reads a clock.

ISO 8601 durations (``-PT2H``, ``-P1DT30M``) are also the Journaling API's own
``seek``: :func:`parse_seek` reads one, :func:`format_seek` writes the form Adobe
documents.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone

from streamd.errors import UsageError

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


class TimeError(UsageError, ValueError):
    """Raised when text is not a time or duration of the accepted forms (HTTP 400, exit 2)."""


# Weeks, days, hours, minutes, seconds (a fraction on the seconds only). Years and
# months are refused: their length depends on the calendar.
_ISO_DURATION = re.compile(
    r"(?P<sign>[-+])?P(?:(?P<w>\d{1,7})W)?(?:(?P<d>\d{1,7})D)?"
    r"(?:T(?:(?P<h>\d{1,9})H)?(?:(?P<m>\d{1,9})M)?(?:(?P<s>\d{1,10})(?:[.,](?P<f>\d{1,6}))?S)?)?"
)


def parse_iso_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration (``PT2H``, ``-P1DT30M``, ``P1W``, ``PT1.5S``), signed.

    Returns ``None`` for text that is not one (no designator, a bare ``T``, years or
    months, too many digits); never raises.
    """
    m = _ISO_DURATION.fullmatch(text)
    if m is None or text.endswith("T") or not any(m.group("w", "d", "h", "m", "s")):
        return None
    w, d, h, mi, s = (int(g or 0) for g in m.group("w", "d", "h", "m", "s"))
    micro = int((m["f"] or "0").ljust(6, "0"))
    # The digit limits keep every value far inside timedelta's range (no OverflowError).
    value = timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s, microseconds=micro)
    return -value if m["sign"] == "-" else value


def parse_seek(text: str) -> timedelta:
    """How far back the Journaling API's ``seek`` points: a negative ISO 8601 duration.

    ``-PT2H`` → 2 hours; ``-P1DT30M``, ``-PT90S``, ``-PT1.5S``, ``-PT0S`` likewise.
    Raises :class:`TimeError` for anything else (no ``-``, no designator, junk).
    """
    value = parse_iso_duration(text) if text.startswith("-") else None
    if value is None:
        raise TimeError(
            f"{text[:40]!r} is not a negative ISO 8601 duration such as -PT2H, -PT30M or -P1D"
        )
    return -value


def format_seek(back: timedelta) -> str:
    """``back`` (not negative) as a ``seek`` of hours, minutes and seconds: ``-PT26H30M``.

    Only the designators Adobe's Journaling API documents (``-PT2H``): a day is 24 hours.
    """
    total = max(back, timedelta(0))
    seconds = total.days * 86_400 + total.seconds
    hours, rest = divmod(seconds, 3600)
    minutes, whole = divmod(rest, 60)
    parts = [f"{hours}H" if hours else "", f"{minutes}M" if minutes else ""]
    if whole or total.microseconds or not (hours or minutes):
        fraction = f".{total.microseconds:06d}".rstrip("0") if total.microseconds else ""
        parts.append(f"{whole}{fraction}S")
    return "-PT" + "".join(parts)


WHEN_FORMS = (
    "a duration back from now (90s, 15m, 2h, 30d, 1w, 1h30m; ISO 8601: PT2H, -P1D) "
    "or an ISO 8601 time (2026-11-01, 2026-11-01T08:00Z; no zone means UTC)"
)
_SHORT_DURATION = re.compile(
    r"(?:(\d{1,7})w)?(?:(\d{1,7})d)?(?:(\d{1,7})h)?(?:(\d{1,7})m)?(?:(\d{1,9})s)?"
)
MAX_WHEN_TEXT = 64


def parse_duration(text: str) -> timedelta:
    """A short duration: ``90s``, ``15m``, ``2h``, ``30d``, ``1w``, or several (``1h30m``).

    Raises :class:`TimeError` for anything else (an ISO 8601 duration included: see
    :func:`parse_when`).
    """
    match = _SHORT_DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        raise TimeError(f"{text[:40]!r} is not a duration or a time: expected {WHEN_FORMS}")
    w, d, h, m, s = (int(g or 0) for g in match.groups())
    return timedelta(weeks=w, days=d, hours=h, minutes=m, seconds=s)


def parse_when(text: str, now: datetime) -> datetime:
    """The point in time ``text`` names, as an aware UTC datetime; ``now`` is aware.

    A duration (``2h``, ``30d``, ``15m``, ``90s``, ``1h30m``, ``PT2H``, ``-P1D``) counts
    back from ``now``: an ISO 8601 duration means that long ago whatever its sign.
    An ISO 8601 time is taken as it is (``2026-11-01`` is midnight UTC; no zone means
    UTC; ``Z`` and offsets as written). Raises :class:`TimeError` (a ``ValueError``
    and a ``UsageError``) with a one-line message naming the accepted forms.
    """
    value = text.strip()
    if not value or len(value) > MAX_WHEN_TEXT:
        raise TimeError(f"expected {WHEN_FORMS}")
    if value[0].isdigit() and len(value) >= 8 and value[4:5] == "-":
        parsed = parse_timestamp(value)
        if parsed is None:
            raise TimeError(f"{value!r} is not a valid time: expected {WHEN_FORMS}")
        return parsed
    if value.lstrip("+-")[:1] == "P":
        back = parse_iso_duration(value)
        if back is None:
            raise TimeError(f"{value!r} is not a duration or a time: expected {WHEN_FORMS}")
        back = abs(back)
    else:
        back = parse_duration(value)
    try:
        return (now - back).astimezone(UTC)
    except OverflowError:
        raise TimeError(f"{value!r} reaches before year 1") from None
