"""``GET /journal``: internal apps pull events the way Adobe's Journaling API serves them.

    GET /journal?since=POSITION&limit=N[&filters]
    200 {"events": [{"position": "5d1c09a2.124.9b0c77d1", "event": {...as received...}}, ...],
         "_page": {"last": "5d1c09a2.130.0e4f1a6b", "count": 7}}
        Link: <http://host/journal?since=5d1c09a2.130.0e4f1a6b&limit=N...>; rel="next"
    204 (nothing new)  Retry-After: 5   Link: <...since=POSITION...>; rel="next"
    410 a position this journal cannot continue: expired, another journal's, beyond
        the newest event, or an event this journal does not hold (a restored backup)

Positions name the journal and the event (:mod:`streamd.admin.positions`), so a
client never skips silently. ``since`` is exclusive (absent: from the beginning),
``latest=true`` starts at the newest event (so the first answer is 204 and ``next``
waits for new ones), ``limit`` is 1..1000 (default 100). The filters of ``streamd
journal grep`` are accepted as ``stream``, ``type``, ``activity_type``, ``lead``,
``munchkin``, ``source``, ``from``/``until`` (time), ``clock`` and ``where``;
``seek`` starts at the first event received at a time. Times are of the one grammar
(:func:`streamd.core.parse_when`: ``-PT2H``, ``2h``, ``2026-11-01T08:00Z``) and
``from``/``until`` apply to the receive time unless ``clock=occurred``.
With filters, one request scans at most ``SCAN_WINDOW`` positions: when none
of them matched, the answer is 200 with no events and a ``next`` past them,
so a rare filter never makes one request read the whole journal.

Reads run in worker threads (``trio.to_thread``, bounded by a limiter) on
their own read-only connection: the event loop never waits for SQLite.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from functools import partial
from urllib.parse import urlencode

import orjson
import trio

from streamd.admin.app import Request, Response, Route
from streamd.admin.positions import Position, encode, parse_position, verify
from streamd.clock import utc_now_datetime
from streamd.core.timeparse import TimeError, format_utc, parse_when
from streamd.errors import JournalError, UsageError
from streamd.inspect.filters import DEFAULT_CLOCK, Filters, parse_filters, parse_int
from streamd.inspect.reader import max_seq, open_readonly, pages_between, seq_window
from streamd.journal.schema import journal_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SCAN_WINDOW = 100_000
_FILTER_PARAMS = {
    "stream": "stream",
    "type": "type",
    "activity_type": "activity_type",
    "lead": "lead",
    "munchkin": "munchkin",
    "source": "source",
    "where": "where",
}
_SINGLE = {"since", "latest", "limit", "from", "until", "clock", "seek"}


def journal_routes(
    journal_path: str, *, retry_after: int = 5, limiter: trio.CapacityLimiter | None = None
) -> list[Route]:
    """The pull endpoint's routes, reading ``journal_path``."""
    endpoint = _JournalEndpoint(journal_path, retry_after, limiter or trio.CapacityLimiter(4))
    return [Route("GET", "/journal", endpoint.get)]


class _Page:
    __slots__ = ("body", "last", "link", "scanned_to", "start")

    def __init__(
        self, body: bytes, last: int | None, scanned_to: int, start: int, link: str
    ) -> None:
        self.body, self.last, self.scanned_to, self.start = body, last, scanned_to, start
        self.link = link  # the position the next link starts after


class _JournalEndpoint:
    def __init__(self, path: str, retry_after: int, limiter: trio.CapacityLimiter) -> None:
        self._path = path
        self._retry_after = retry_after
        self._limiter = limiter

    async def get(self, request: Request) -> Response:
        since, latest, limit, filters, kept, seek = _parse(request.query)
        read = partial(self._read, since, latest, limit, filters, seek)
        page = await trio.to_thread.run_sync(read, limiter=self._limiter)
        link = _link(request, page.link, limit, kept)
        if page.last is None and page.scanned_to <= page.start:
            # The end of the journal: wait, then ask again from the same place.
            return Response(
                204, headers=[(b"retry-after", str(self._retry_after).encode()), (b"link", link)]
            )
        return Response(200, body=page.body, headers=[(b"link", link)])

    def _read(
        self,
        since: Position | None,
        latest: bool,
        limit: int,
        filters: Filters,
        seek: str | None = None,
    ) -> _Page:
        conn = open_readonly(self._path, cache_mib=4)
        with closing(conn):
            try:
                jid = journal_id(conn)
                newest = max_seq(conn)
                start = 0
                if seek is not None:
                    # The position just before the first event received at or after it:
                    # bisection gives a lower bound (a minute's margin), a short scan the rest.
                    lower = seq_window(conn, Filters(since=seek, clock="received"))[0]
                    first = conn.execute(
                        "SELECT min(seq) FROM events WHERE seq > ? AND received_at >= ?",
                        (lower, seek),
                    ).fetchone()[0]
                    start = newest if first is None else first - 1
                elif latest:
                    start = newest
                elif since is not None:
                    oldest = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
                    verify(since, jid, newest, oldest, _event_at(conn, since.seq))
                    start = since.seq
                hi = newest if filters.is_empty() else min(newest, start + SCAN_WINDOW)
                rows = [
                    r
                    for page in pages_between(conn, filters, start, hi, limit, limit)
                    for r in page
                ]
                last = rows[-1][0] if rows else None
                # A full page ends at its last event; a short one has seen everything up to hi.
                scanned_to = last if last is not None and len(rows) == limit else max(hi, start)
                if rows and scanned_to == last:
                    at = encode(jid, last, (rows[-1][1], rows[-1][8]))
                else:
                    at = encode(jid, scanned_to, _event_at(conn, scanned_to))
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"cannot read the journal: {exc}") from exc
        events = [
            {"position": encode(jid, r[0], (r[1], r[8])), "event": orjson.Fragment(r[-1])}
            for r in rows
        ]
        page_last = events[-1]["position"] if events else at
        body = orjson.dumps({"events": events, "_page": {"last": page_last, "count": len(rows)}})
        return _Page(body, last, scanned_to, start, at)


def _event_at(conn: sqlite3.Connection, seq: int) -> tuple[str, str] | None:
    """``(event_key, received_at)`` of the event at ``seq``, None when none is there."""
    if seq <= 0:
        return None
    row = conn.execute("SELECT event_key, received_at FROM events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def _parse(
    query: list[tuple[str, str]],
) -> tuple[Position | None, bool, int, Filters, list[tuple[str, str]], str | None]:
    """Validate the query: since, latest, limit, filters; the filter params to keep in links."""
    single: dict[str, str] = {}
    many: dict[str, list[str]] = {}
    kept: list[tuple[str, str]] = []
    for name, value in query:
        if name in _SINGLE:
            if name in single:
                raise UsageError(f"{name} given more than once")
            single[name] = value
            if name in ("from", "until", "clock"):
                kept.append((name, value))
        elif name in _FILTER_PARAMS:
            many.setdefault(name, []).append(value)
            kept.append((name, value))
        else:
            raise UsageError(f"unknown parameter {name[:40]!r}")
    if "since" in single and single.get("latest", "").lower() == "true":
        raise UsageError("since and latest=true cannot be combined")
    if "seek" in single and ("since" in single or single.get("latest", "").lower() == "true"):
        raise UsageError("seek cannot be combined with since or latest=true")
    since = parse_position(single["since"]) if "since" in single else None
    latest = single.get("latest", "false").lower()
    if latest not in ("true", "false"):
        raise UsageError("latest: expected true or false")
    limit = DEFAULT_LIMIT
    if "limit" in single:
        limit = parse_int(single["limit"], "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise UsageError(f"limit: expected 1 to {MAX_LIMIT}")
    try:
        filters = _filters(single, many)
    except UsageError as exc:
        message = str(exc)
        for flag, param in _FLAG_NAMES:
            message = message.replace(flag, param)
        raise UsageError(message) from None
    seek = _seek(single["seek"]) if "seek" in single else None
    return since, latest == "true", limit, filters, kept, seek


def _seek(text: str) -> str:
    """The receive time ``text`` points back to: any time of the one grammar (``-PT2H``,
    ``-P1D``, ``2h``, ``2026-11-01T08:00Z``); raises :class:`UsageError` naming ``seek``."""
    try:
        return format_utc(parse_when(text, utc_now_datetime()))
    except TimeError as exc:
        raise TimeError(f"seek: {exc}") from None


_FLAG_NAMES = (
    ("--since", "from"),
    ("--until", "until"),
    ("--activity-type", "activity_type"),
    ("--stream", "stream"),
    ("--type", "type"),
    ("--lead", "lead"),
    ("--munchkin", "munchkin"),
    ("--source", "source"),
    ("--clock", "clock"),
    ("--where", "where"),
)


def _filters(single: dict[str, str], many: dict[str, list[str]]) -> Filters:
    return parse_filters(
        now=utc_now_datetime(),
        stream=many.get("stream"),
        type=many.get("type"),
        activity_type=many.get("activity_type"),
        lead=many.get("lead"),
        munchkin=many.get("munchkin"),
        source=many.get("source"),
        since=single.get("from"),
        until=single.get("until"),
        clock=single.get("clock", DEFAULT_CLOCK),
        where=many.get("where"),
    )


def _link(request: Request, since: str, limit: int, kept: list[tuple[str, str]]) -> bytes:
    query = urlencode([("since", since), ("limit", str(limit)), *kept])
    return f'<{request.base_url}{request.path}?{query}>; rel="next"'.encode()
