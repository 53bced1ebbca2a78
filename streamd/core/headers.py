"""HTTP header values that several parts read: ``Retry-After`` and ``Link`` (sans-IO)."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 86_400.0
# One link-value of RFC 8288: <target>; params. The target holds no '>'.
_LINK = re.compile(
    r'\s*<([^>]*)>\s*((?:;\s*[^;,=\s]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,\s]*))?\s*)*)'
)
_REL = re.compile(r';\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))', re.IGNORECASE)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), at most a day.

    ``now`` is the current Unix time (for the date form). ``None`` when the header is
    absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), int(MAX_RETRY_AFTER)))
    try:
        seconds = parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def link(value: str | None, rel: str) -> str | None:
    """The target of the first link with relation ``rel`` in a ``Link`` header (RFC 8288).

    ``rel`` may list several space-separated relations (``rel="next validate"``).
    """
    if not value:
        return None
    position = 0
    while position < len(value):
        match = _LINK.match(value, position)
        if match is None:
            return None
        target, params = match.groups()
        for found in _REL.finditer(params):
            names = (found.group(1) or found.group(2) or "").lower().split()
            if rel.lower() in names:
                return target
        position = match.end()
        while position < len(value) and value[position] in " ,":
            position += 1
    return None
