"""``GET /journal``: internal apps pull events the way Adobe's Journaling API serves them.

    GET /journal?since=SEQ&limit=N[&filters]
    200 {"events": [{"position": "124", "event": {...as received...}}, ...],
         "_page": {"last": "130", "count": 7}}
        Link: <http://host/journal?since=130&limit=N...>; rel="next"
    204 (nothing new)  Retry-After: 5   Link: <...since=SEQ...>; rel="next"

``since`` is exclusive (absent: from the beginning), ``latest=true`` starts
at the newest event (so the first answer is 204 and ``next`` waits for new
ones), ``limit`` is 1..1000 (default 100). The filters of ``streamd journal
grep`` are accepted as ``stream``, ``type``, ``activity_type``, ``lead``,
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
from streamd.clock import utc_now_datetime
from streamd.core.timeparse import TimeError, format_utc, parse_when
from streamd.errors import JournalError, StreamdError, UsageError
from streamd.inspect.filters import DEFAULT_CLOCK, Filters, parse_filters, parse_int
from streamd.inspect.reader import max_seq, open_readonly, pages_between, seq_window

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


class PositionExpired(StreamdError):
    """The position is older than retention kept: 410, as Adobe's journal answers."""

    status_hint = 410


class _Page:
    __slots__ = ("body", "last", "newest", "scanned_to", "start")

    def __init__(
        self, body: bytes, last: int | None, scanned_to: int, newest: int, start: int
    ) -> None:
        self.body, self.last, self.scanned_to, self.newest = body, last, scanned_to, newest
        self.start = start


class _JournalEndpoint:
    def __init__(self, path: str, retry_after: int, limiter: trio.CapacityLimiter) -> None:
        self._path = path
        self._retry_after = retry_after
        self._limiter = limiter

    async def get(self, request: Request) -> Response:
        since, latest, limit, filters, kept, seek = _parse(request.query)
        read = partial(self._read, since, latest, limit, filters, seek)
        page = await trio.to_thread.run_sync(read, limiter=self._limiter)
        start = page.newest if latest else page.start
        if page.last is None and page.scanned_to <= start:
            # The end of the journal: wait, then ask again from the same place.
            link = _link(request, start, limit, kept)
            return Response(
                204,
                headers=[
                    (b"retry-after", str(self._retry_after).encode()),
                    (b"link", link),
                ],
            )
        return Response(
            200, body=page.body, headers=[(b"link", _link(request, page.scanned_to, limit, kept))]
        )

    def _read(
        self, since: int, latest: bool, limit: int, filters: Filters, seek: str | None = None
    ) -> _Page:
        try:
            conn = open_readonly(self._path, cache_mib=4)
        except JournalError:
            raise
        with closing(conn):
            try:
                newest = max_seq(conn)
                if seek is not None:
                    # The position just before the first event received at or after it:
                    # bisection gives a lower bound (a minute's margin), a short scan the rest.
                    lower = seq_window(conn, Filters(since=seek, clock="received"))[0]
                    first = conn.execute(
                        "SELECT min(seq) FROM events WHERE seq > ? AND received_at >= ?",
                        (lower, seek),
                    ).fetchone()[0]
                    since = newest if first is None else first - 1
                elif not latest and since > 0:
                    oldest = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
                    if oldest is not None and since < oldest - 1:
                        # Retention deleted what came after this position: as Adobe's
                        # journal does for positions past its 7 days, answer 410.
                        raise PositionExpired(
                            f"position {since} is older than the oldest event kept "
                            f"({oldest}, retention); start again from since={oldest - 1} "
                            "or latest=true"
                        )
                lo = newest if latest else since
                hi = newest if filters.is_empty() else min(newest, lo + SCAN_WINDOW)
                rows = [
                    r for page in pages_between(conn, filters, lo, hi, limit, limit) for r in page
                ]
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"cannot read the journal: {exc}") from exc
        events = [{"position": str(r[0]), "event": orjson.Fragment(r[-1])} for r in rows]
        last = rows[-1][0] if rows else None
        # A full page ends at its last event; a short one has seen everything up to hi.
        scanned_to = last if last is not None and len(rows) == limit else max(hi, lo)
        body = orjson.dumps(
            {
                "events": events,
                "_page": {
                    "last": str(last if last is not None else scanned_to),
                    "count": len(rows),
                },
            }
        )
        return _Page(body, last, scanned_to, newest, since)


def _parse(
    query: list[tuple[str, str]],
) -> tuple[int, bool, int, Filters, list[tuple[str, str]], str | None]:
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
    since = parse_int(single["since"], "since") if "since" in single else 0
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


def _link(request: Request, since: int, limit: int, kept: list[tuple[str, str]]) -> bytes:
    query = urlencode([("since", str(since)), ("limit", str(limit)), *kept])
    return f'<{request.base_url}{request.path}?{query}>; rel="next"'.encode()
