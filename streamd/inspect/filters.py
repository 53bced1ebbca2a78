"""Event filters shared by every inspection command and the pull endpoint.

Parsing is pure (text in, :class:`Filters` out, :class:`UsageError` with a
precise message otherwise); :meth:`Filters.where` turns them into one SQL
``WHERE`` clause whose values are all bound parameters. Nothing a user types
is ever spliced into SQL text: JSON paths are validated against a strict
grammar *and* bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from streamd.clock import utc_now_datetime
from streamd.core.timeparse import TimeError, format_utc, parse_when
from streamd.errors import UsageError

STREAMS = ("activity", "audit", "notification", "other")
# What --since/--until (and the admin endpoint's from/until) apply to unless --clock says
# otherwise: when streamd received the event. That is what "the last 2 hours" means to an
# operator, and it is what the journal can window cheaply (received_at grows with seq,
# so a window is a bisection of the primary key; occurred_at has no index). Events that
# arrive late (a pull of last week, Marketo's retries) are found by when they came.
DEFAULT_CLOCK = "received"
CLOCKS = ("received", "occurred")
ACTIVITY_PREFIX = "com.adobe.platform.marketo.activity."
_STREAM_OF_PREFIX = (
    (ACTIVITY_PREFIX, "activity"),
    ("com.adobe.platform.marketo.audit.", "audit"),
    ("com.adobe.platform.marketo.notification.", "notification"),
)

# CONTRACT.md §4: the standard activity types the I/O stream lists (100000+ are custom).
ACTIVITY_TYPES: dict[int, str] = {
    1: "Visit Webpage",
    2: "Fill Out Form",
    3: "Click Link",
    6: "Send Email",
    7: "Email Delivered",
    8: "Email Bounced",
    9: "Unsubscribe Email",
    10: "Open Email",
    11: "Click Email",
    12: "New Lead",
    13: "Change Data Value",
    19: "Sync Lead to SFDC",
    21: "Convert Lead",
    22: "Change Score",
    23: "Change Owner",
    24: "Add To List",
    25: "Remove from List",
    26: "SFDC Activity",
    27: "Email Bounced Soft",
    32: "Merge Leads",
    34: "Add to Opportunity",
    35: "Remove from Opportunity",
    36: "Update Opportunity",
    37: "Delete Lead",
    38: "Send Alert",
    39: "Send Sales Email",
    40: "Open Sales Email",
    41: "Click Sales Email",
    45: "Receive Sales Email",
    46: "Interesting Moment",
    47: "Request Campaign",
    48: "Sales Email Bounced",
    100: "Change Lead Partition",
    101: "Change Revenue Stage",
    102: "Change Revenue Stage Manually",
    104: "Change Status In Progression",
    106: "Enrich with Data.com",
    108: "Change Segment",
    110: "Call Webhook",
    111: "Send Forward to Friend Email",
    112: "Receive Forward to Friend Email",
    113: "Add To Nurture",
    114: "Change Nurture Track",
    115: "Change Nurture Cadence",
    123: "Change Program Member Data",
    131: "Fill Out Facebook Lead Ads Form",
    132: "Click RTP Call to Action",
    133: "Click Predictive Content",
    145: "Push Lead to Marketo",
    300: "Sync Lead to Microsoft",
    400: "Share Content",
    401: "Vote in Poll",
    402: "Sign Up for Referral Offer",
    403: "Achieve Goal In Referral",
    405: "Click Shared Link",
    406: "Win Sweepstakes",
    407: "Enter Sweepstakes",
    408: "Disqualify Sweepstakes",
    409: "Earn Entry In Social App",
    410: "Refer to Social App",
}


def _squash(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).lower()


_TYPE_BY_NAME = {_squash(name): type_id for type_id, name in ACTIVITY_TYPES.items()}

_PATH_KEY = r"(?:[A-Za-z_$][A-Za-z0-9_$-]*|\"[^\"\\\x00-\x1f]{1,100}\")"
_JSON_PATH = re.compile(rf"\$(?:\.{_PATH_KEY}|\[\d{{1,6}}\])*")
_DOTTED = re.compile(rf"{_PATH_KEY}(?:\.{_PATH_KEY}|\[\d{{1,6}}\])*")
MAX_TEXT = 512
MAX_VALUES = 100
MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class FieldMatch:
    """``--where PATH=GLOB``: a JSON path inside ``raw`` and a glob its value must match."""

    path: str  # a JSON path, e.g. $.data.primaryAttributeValue
    legacy_path: (
        str | None
    )  # the same field at the top of a legacy activity ($.primaryAttributeValue)
    glob: str


@dataclass(frozen=True, slots=True)
class Filters:
    """What to select. Within one field the values are alternatives (OR); fields combine (AND)."""

    streams: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # exact names or globs
    activity_type_ids: tuple[int, ...] = ()
    lead_ids: tuple[int, ...] = ()
    munchkin_ids: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    since: str | None = None  # journal time text, inclusive
    until: str | None = None  # journal time text, exclusive
    clock: str = "received"  # which column since/until apply to: received_at or occurred_at
    where: tuple[FieldMatch, ...] = field(default_factory=tuple)

    def is_empty(self) -> bool:
        """True when nothing is filtered (every event matches)."""
        return self == Filters(clock=self.clock)

    def stream_type_sql(self) -> tuple[str, list[object]]:
        """The stream and type conditions alone (``1`` and no parameters when neither is
        filtered), on columns named ``stream`` and ``type``: the events', or the type
        index's list of names (reader.py)."""
        parts: list[str] = []
        params: list[object] = []
        streams = self.streams
        if self.types and not streams:
            # A type names its stream: the name list is then searched by its key's prefix.
            streams = _streams_of(self.types)
        if streams:
            parts.append(f"stream IN ({', '.join('?' * len(streams))})")
            params.extend(streams)
        if self.types:
            alternatives = []
            for pattern in self.types:
                alternatives.append("type GLOB ?" if _is_glob(pattern) else "type = ?")
                params.append(pattern)
            parts.append("(" + " OR ".join(alternatives) + ")")
        return (" AND ".join(parts) or "1"), params

    def where_sql(self) -> tuple[str, list[object]]:
        """One SQL condition (``1`` when empty) and its parameters, in order."""
        parts: list[str] = []
        params: list[object] = []

        def any_of(column: str, values: tuple[object, ...]) -> None:
            if values:
                parts.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)

        kind, kind_params = self.stream_type_sql()
        if kind_params:
            parts.append(kind)
            params.extend(kind_params)
        any_of("activity_type_id", self.activity_type_ids)
        any_of("lead_id", self.lead_ids)
        any_of("munchkin_id", self.munchkin_ids)
        any_of("source", self.sources)
        column = "received_at" if self.clock == "received" else "occurred_at"
        if self.since is not None:
            parts.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            parts.append(f"{column} < ?")
            params.append(self.until)
        for match in self.where:
            # json_valid first: one undecodable row must not end the whole search.
            if match.legacy_path is None:
                parts.append("(json_valid(raw) AND json_extract(raw, ?) GLOB ?)")
                params.extend((match.path, match.glob))
            else:
                parts.append(
                    "(json_valid(raw) AND (json_extract(raw, ?) GLOB ? OR "
                    "(json_type(raw, '$.marketoGUID') IS NOT NULL "
                    "AND json_extract(raw, ?) GLOB ?)))"
                )
                params.extend((match.path, match.glob, match.legacy_path, match.glob))
        return (" AND ".join(parts) or "1"), params


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _streams_of(patterns: tuple[str, ...]) -> tuple[str, ...]:
    found: set[str] = set()
    for pattern in patterns:
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        stream = next((s for p, s in _STREAM_OF_PREFIX if literal.startswith(p)), None)
        if stream is None:
            if _is_glob(pattern):
                return STREAMS  # could be any stream
            stream = "other"  # streamd's own rule (stream_of): no known prefix
        found.add(stream)
    return tuple(sorted(found))


# -- parsing -----------------------------------------------------------------


def _text(value: str, what: str) -> str:
    if not value or len(value) > MAX_TEXT:
        raise UsageError(f"{what}: expected 1 to {MAX_TEXT} characters")
    if not value.isprintable():
        raise UsageError(f"{what}: {value[:40]!r} has control characters")
    return value


def _many(values: list[str] | None, what: str) -> list[str]:
    values = values or []
    if len(values) > MAX_VALUES:
        raise UsageError(f"{what}: at most {MAX_VALUES} values")
    # "a,b" and repeating the flag both give alternatives.
    out = [v.strip() for value in values for v in value.split(",")]
    if len(out) > MAX_VALUES:
        raise UsageError(f"{what}: at most {MAX_VALUES} values")
    return out


def parse_int(value: str, what: str) -> int:
    """A non-negative 64-bit integer; :class:`UsageError` otherwise."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_INT:
        raise UsageError(f"{what}: {value[:40]!r} is not a whole number from 0 to {MAX_INT}")
    return int(text)


def parse_activity_type(value: str) -> int:
    """An activity type id (``13``) or its name (``"Change Data Value"``, ``changedatavalue``)."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        return parse_int(text, "--activity-type")
    type_id = _TYPE_BY_NAME.get(_squash(text))
    if type_id is None:
        raise UsageError(
            f"--activity-type: {value[:60]!r} is neither an id nor a known activity type name "
            "(e.g. 13 or 'Change Data Value'; custom activities by id, 100000+)"
        )
    return type_id


def parse_time(text: str, now: datetime, what: str) -> str:
    """A point in time in the journal's text form, by the one grammar (:func:`parse_when`).

    Raises :class:`TimeError` (a :class:`UsageError`) whose message starts with ``what``.
    """
    try:
        return format_utc(parse_when(text, now))
    except TimeError as exc:
        raise TimeError(f"{what}: {exc}") from None


def parse_where(text: str) -> FieldMatch:
    """``PATH=GLOB``; PATH dotted (``data.leadId``) or a JSON path (``$.data.attributes[0].value``).

    A dotted path that starts with ``data.`` also matches the field at the top of a
    legacy activity (the legacy push stores the activity itself, without ``data``).
    """
    path, sep, glob = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise UsageError(
            f"--where: {text[:60]!r} is not PATH=VALUE (e.g. 'data.primaryAttributeValue=Spring*')"
        )
    if len(path) > 256 or len(glob) > MAX_TEXT:
        raise UsageError("--where: path or value too long")
    if not glob.isprintable():
        raise UsageError("--where: the value has control characters")
    legacy: str | None = None
    if path.startswith("$"):
        if not _JSON_PATH.fullmatch(path) or path == "$":
            raise UsageError(
                f"--where: {path[:60]!r} is not a JSON path of the form "
                '$.key.key[0] (keys: letters, digits, _ - $; or "quoted")'
            )
        json_path = path
    else:
        if not _DOTTED.fullmatch(path):
            raise UsageError(
                f"--where: {path[:60]!r} is not a field path such as data.primaryAttributeValue "
                "or data.attributes[0].value"
            )
        json_path = "$." + path
        if path.startswith("data.") or path.startswith("data["):
            legacy = "$" + ("." + path[5:] if path.startswith("data.") else path[4:])
    return FieldMatch(path=json_path, legacy_path=legacy, glob=glob)


def parse_filters(
    *,
    now: datetime | None = None,
    stream: list[str] | None = None,
    type: list[str] | None = None,
    activity_type: list[str] | None = None,
    lead: list[str] | None = None,
    munchkin: list[str] | None = None,
    source: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    clock: str = DEFAULT_CLOCK,
    where: list[str] | None = None,
) -> Filters:
    """Build :class:`Filters` from the flags' text; :class:`UsageError` names the flag."""
    now = now or utc_now_datetime()
    streams = _many(stream, "--stream")
    for s in streams:
        if s not in STREAMS:
            raise UsageError(f"--stream: {s[:40]!r} is not one of {', '.join(STREAMS)}")
    if clock not in CLOCKS:
        raise UsageError(f"--clock: {clock[:40]!r} is not received or occurred")
    start = parse_time(since, now, "--since") if since is not None else None
    end = parse_time(until, now, "--until") if until is not None else None
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--since {since} is not before --until {until}: the window is empty")
    wheres = where or []
    if len(wheres) > 20:
        raise UsageError("--where: at most 20 field matches")
    return Filters(
        streams=tuple(streams),
        types=tuple(_text(t, "--type") for t in _many(type, "--type")),
        activity_type_ids=tuple(
            parse_activity_type(a) for a in _many(activity_type, "--activity-type")
        ),
        lead_ids=tuple(parse_int(v, "--lead") for v in _many(lead, "--lead")),
        munchkin_ids=tuple(_text(m, "--munchkin") for m in _many(munchkin, "--munchkin")),
        sources=tuple(_text(s, "--source") for s in _many(source, "--source")),
        since=start,
        until=end,
        clock=clock,
        where=tuple(parse_where(w) for w in wheres),
    )
