"""A generated Adobe Journaling API (CONTRACT.md §2), for pull-source tests and rehearsals.

``GET /journal`` pages through a deterministic journal: event ``i`` is a pure function of
``(seed, i)``, so the journal costs no memory however long it grows.

- ``200``: ``{"events": [{"position", "event"}], "_page": {"last", "count"}}`` and
  ``Link: <...?since=LAST>; rel="next"`` (``since`` is exclusive);
- ``204`` at the end, with ``retry-after`` and ``next``/``validate`` links;
- ``410`` for a position past retention (the first ``expired`` positions);
- ``400`` for a malformed or unknown position, a bad ``limit``, ``seek`` with ``since``;
- parameters ``since``, ``latest=true``, ``seek=-PT2H``, ``limit=N`` (1-1000, default 100).

With ``rate`` > 0 the journal grows while the server runs, so a consumer that caught up
(204) sees new events later. ``token``, ``api_key`` and ``org_id``, when given, are
required as ``Authorization: Bearer``, ``x-api-key`` and ``x-ims-org-id`` (401, 403).

With ``client_secret`` it is also the IMS token endpoint: ``POST /ims/token/v3`` with the
client-credentials grant (form ``grant_type``, ``client_id`` = ``api_key``,
``client_secret``, ``scope``) answers ``{"access_token", "token_type", "expires_in"}``;
the journal then takes any such token until it expires (``token_lifetime`` seconds).
``fail_next`` makes the next journal requests answer an error (429, 5xx...), for
backoff tests.

In a test (trio)::

    api = JournalApi(seed=1, initial=500, expired=10, retry_after=1, api_key="client")
    binds = await nursery.start(serve_handler, api.handle, "127.0.0.1:0")
    url = binds[0] + PATH
"""

from __future__ import annotations

import hmac
import math
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
import trio

from streamd.core.timeparse import parse_seek
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.generate import MAX_SEED, MAX_WORKERS, EventStream

PATH: Final = "/journal"
IMS_PATH: Final = "/ims/token/v3"
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_POSITION: Final = re.compile(r"p([0-9]{12})")
_JSON: Final = [("content-type", "application/json")]


def position(index: int) -> str:
    """The opaque position text of event ``index``."""
    return f"p{index:012d}"


class JournalApi:
    """The journal and its HTTP handler.

    ``clock`` returns seconds (``time.monotonic`` by default); event ``i < initial``
    happened ``initial - i`` seconds before the server started, later ones at
    ``start + (i - initial) / rate``.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        initial: int = 1000,
        rate: float = 0.0,
        expired: int = 0,
        retry_after: int = 10,
        token: str | None = None,
        api_key: str | None = None,
        org_id: str | None = None,
        client_secret: str | None = None,
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED})")
        if initial < 0 or expired < 0 or rate < 0 or retry_after < 0:
            raise ValueError("initial, expired, rate and retry_after must not be negative")
        self.seed, self.initial, self.rate = seed, initial, rate
        self.expired, self.retry_after, self.token = expired, retry_after, token
        self.api_key, self.org_id = api_key, org_id
        self.clock = clock
        self.started = clock()
        self.requests = 0
        self.client_secret, self.token_lifetime = client_secret, token_lifetime
        self.issued: dict[str, float] = {}  # token -> expiry (clock)
        self.token_requests = 0
        self.failures: list[tuple[int, str | None]] = []  # injected answers, in order
        self.statuses: dict[int, int] = {}

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``count`` journal requests ``status`` (with ``retry-after``)."""
        self.failures.extend([(status, retry_after)] * count)

    def _authorised(self, given: str) -> bool:
        if self.token is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        expiry = self.issued.get(given)
        return expiry is not None and self.clock() < expiry

    def _issue(self, request: Request) -> Reply:
        self.token_requests += 1
        if request.method != "POST":
            return Reply(405, b'{"error":"POST only"}', [*_JSON, ("allow", "POST")])
        form = dict(parse_qsl(request.body.decode("latin-1"), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type")
        if not form.get("scope"):
            return _oauth_error(400, "invalid_scope")
        secret = form.get("client_secret", "")
        assert self.client_secret is not None
        if form.get("client_id") != self.api_key or not hmac.compare_digest(
            secret.encode(), self.client_secret.encode()
        ):
            return _oauth_error(401, "invalid_client")
        token = secrets.token_urlsafe(24)
        if len(self.issued) > 10_000:
            self.issued.clear()
        self.issued[token] = self.clock() + self.token_lifetime
        body = {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}
        return Reply(200, orjson.dumps(body), list(_JSON))

    def available(self) -> int:
        """Events in the journal now."""
        grown = math.floor((self.clock() - self.started) * self.rate) if self.rate else 0
        return self.initial + grown

    def event(self, index: int) -> dict[str, Any]:
        """Event ``index``: a CloudEvent with an ``id`` (activity, audit or notification)."""
        stream = EventStream(self.seed, MAX_WORKERS - 1)
        stream.rng.seed(f"streamd-journal:{self.seed}:{index}")
        stream.counter = index
        kind = stream.rng.random()
        if kind < 0.7:
            event = stream.activity_event()
        elif kind < 0.85:
            event = stream.audit_cloudevent()
        else:
            event = stream.notification_cloudevent()
        return {"id": stream.next_id(), **event}

    def _seek(self, text: str) -> int:
        try:
            back = parse_seek(text).total_seconds()
        except ValueError:
            raise ValueError(f"seek must look like -PT2H, -PT30M or -PT90S, got {text!r}") from None
        now = self.clock()
        # Event i happened at started - (initial - i), or started + (i - initial) / rate.
        target = now - back
        if target <= self.started:
            index = math.ceil(self.initial - (self.started - target))
        else:
            index = self.initial + math.ceil((target - self.started) * self.rate)
        return min(max(index, self.expired), self.available())

    def _start(self, request: Request) -> int:
        q = request.query
        if "since" in q:
            if "seek" in q or "latest" in q:
                raise ValueError("since cannot be combined with seek or latest")
            match = _POSITION.fullmatch(q["since"])
            if not match:
                raise ValueError(f"malformed position {q['since'][:40]!r}")
            index = int(match.group(1))
            if index < self.expired:
                raise LookupError(index)
            if index >= self.available():
                raise ValueError(f"unknown position {q['since']!r}")
            return index + 1
        if q.get("latest") == "true":
            return self.available()
        if "seek" in q:
            return self._seek(q["seek"])
        return self.expired

    def _link(self, since: str, limit: int | None, rel: str) -> str:
        # An empty journal has no position yet: its next link starts from the oldest.
        params = [f"since={since}"] if since else []
        if limit is not None:
            params.append(f"limit={limit}")
        query = "?" + "&".join(params) if params else ""
        return f'<{PATH}{query}>; rel="{rel}"'

    async def handle(self, request: Request) -> Reply:
        """Answer one request."""
        if request.path.rstrip("/") == IMS_PATH and self.client_secret is not None:
            return self._issue(request)
        self.requests += 1
        reply = self._answer(request)
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        return reply

    def _answer(self, request: Request) -> Reply:
        if request.path.rstrip("/") != PATH:
            return _error(404, "no journal here")
        if request.method != "GET":
            return Reply(405, b'{"error":"GET only"}', [*_JSON, ("allow", "GET")])
        if self.token is not None or self.client_secret is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not self._authorised(given):
                return _error(401, "missing, wrong or expired bearer token")
        for header, wanted in (("x-api-key", self.api_key), ("x-ims-org-id", self.org_id)):
            if wanted is not None and request.headers.get(header) != wanted:
                return _error(403, f"missing or wrong {header}")
        if self.failures:
            status, wait = self.failures.pop(0)
            extra = [("retry-after", wait)] if wait is not None else []
            return Reply(status, orjson.dumps({"error": "injected"}), [*_JSON, *extra])
        limit: int | None = None
        if "limit" in request.query:
            text = request.query["limit"]
            if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
                return _error(400, f"limit must be an integer 1-{MAX_LIMIT}, got {text[:20]!r}")
            limit = int(text)
        try:
            start = self._start(request)
        except LookupError:
            return _error(410, "position is older than the retention; restart from the oldest")
        except ValueError as exc:
            return _error(400, str(exc))
        end = min(self.available(), start + (limit or DEFAULT_LIMIT))
        if start >= end:
            last = position(start - 1) if start > 0 else ""
            links = [self._link(last, limit, "next"), self._link(last, limit, "validate")]
            return Reply(
                204, b"", [("retry-after", str(self.retry_after)), ("link", ", ".join(links))]
            )
        events = [{"position": position(i), "event": self.event(i)} for i in range(start, end)]
        last = position(end - 1)
        body = orjson.dumps({"events": events, "_page": {"last": last, "count": len(events)}})
        return Reply(200, body, [*_JSON, ("link", self._link(last, limit, "next"))])


def _error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": message}), list(_JSON))


def _oauth_error(status: int, code: str) -> Reply:
    return Reply(status, orjson.dumps({"error": code}), list(_JSON))


async def _serve(api: JournalApi, listen: str) -> None:
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_handler, api.handle, listen)
        for bind in binds:
            print(f"streamd emit: journal ready: {bind}{PATH}", flush=True)
            if api.client_secret is not None:
                print(f"streamd emit: token endpoint ready: {bind}{IMS_PATH}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def serve_journal_api(api: JournalApi, listen: str) -> int:
    """Serve ``api`` on ``listen`` until SIGINT/SIGTERM; the exit status."""
    try:
        trio.run(partial(_serve, api, listen))
    except OSError as exc:
        print(f"streamd emit: cannot listen on {listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
