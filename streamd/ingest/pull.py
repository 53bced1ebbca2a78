"""The Journaling API pull source: events fetched from Adobe's journal, into the same writer.

Why one module of about 600 lines: the session loop (token, page, position, gap,
backoff) is one state machine whose cases (401, 410, 429, a page larger than the
writer takes, a reset by the operator) share its variables; split, each piece
would need all of them. The wire format is in ``core/journaling.py``, the token
in ``auth/ims.py``.

For a VM that cannot take inbound traffic, or to fetch what a push endpoint missed
while it was down. One task per configured ``[[pulls]]`` entry:

- a token from the client-credentials grant (``streamd.auth.ims``), renewed before it
  expires and dropped when the API answers 401;
- ``GET <journal url>`` with ``x-ims-org-id``, ``x-api-key`` and the bearer token; a 200
  page is normalised like a push (same dedup keys, so push and pull of one event are
  journaled once) and handed to the writer with the position of its last event: the
  writer saves that position **in the same transaction** as the events (``Batch.position``),
  so after a crash the pull resumes exactly after the last committed page, and a page
  is never journaled twice nor skipped;
- ``Link: rel="next"`` is followed (only to the configured origin: the bearer token
  never goes elsewhere); the next page is fetched while the current one commits;
- 204: wait ``retry-after`` (seconds or an HTTP date, within ``min_wait``..``max_wait``),
  then reuse the ``next`` link;
- 410 (the position is past Adobe's retention): record a gap in ``pull_gaps`` and restart
  from the oldest available event or from the latest, as configured, in one transaction;
- 429, 5xx, timeouts and network errors: exponential backoff with jitter, ``Retry-After``
  honoured; other answers (400, 403, 404) are configuration problems: logged with the
  answer, retried at the backoff's pace. Every retry waits: the loop never spins.

Each session starts from the position stored in the journal, so any failure (a commit
refused because the journal is full, a page the writer could not take) simply restarts
from what is durable.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from streamd.auth.ims import ClientCredentials, TokenUnavailable
from streamd.core.backoff import backoff_delay
from streamd.core.headers import link, retry_after
from streamd.core.journaling import Page, check_position, decode_page
from streamd.core.timeparse import TimeError, format_seek, parse_when
from streamd.errors import JournalBusy, JournalError, PayloadError, UsageError
from streamd.ingest.lease import LeaseError, LeaseHeld, PgLease
from streamd.journal import Batch, Journal, utc_now

if TYPE_CHECKING:
    import httpx  # imported where it is used (ARCHITECTURE.md, "What a process imports")

T = TypeVar("T")

log = logging.getLogger("streamd.ingest.pull")

MAX_PAGE_BYTES: Final = 64 * 1024 * 1024
_SNIPPET: Final = 300


@dataclass(frozen=True, slots=True)
class PullSettings:
    """One pull source, as configured (``[[pulls]]``)."""

    name: str
    url: str
    org_id: str
    api_key: str  # the client id, sent as x-api-key
    limit: int | None = None
    start: str = "oldest"  # "oldest", "latest" or a seek such as "-PT2H"
    on_expired: str = "oldest"  # after a 410: "oldest" or "latest"
    timeout: float = 30.0
    min_wait: float = 1.0
    max_wait: float = 300.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    verify: ssl.SSLContext | bool = True
    max_page_bytes: int = MAX_PAGE_BYTES


@dataclass(slots=True)
class PullStatistics:
    """What a pull source did (read without a lock by metrics and the admin listener)."""

    state: str = "starting"  # fetching, caught-up, backing-off, standby, stopped
    leading: bool | None = None  # with a lease: whether this receiver holds it
    requests: int = 0
    responses: dict[str, int] = field(default_factory=dict)  # status (or "error") -> count
    pages: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    unkeyed: int = 0
    gaps: int = 0
    failures: int = 0  # consecutive failed attempts (0 after any success)
    last_error: str | None = None
    position: str | None = None
    caught_up_at: float | None = None  # time.time() of the last 204
    last_page_at: float | None = None  # time.time() of the last committed page


class _Retry(Exception):
    """End the session and wait: ``delay`` None means the backoff decides."""

    def __init__(self, reason: str, delay: float | None = None, *, failure: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.failure = failure


@dataclass(slots=True)
class _Fetched:
    """A prefetched answer, decoded already when it is a page (while the last one committed)."""

    response: tuple[int, httpx.Headers, bytes] | None = None
    page: Page | None = None
    error: BaseException | None = None


class PullSource:
    """Pulls one registration's journal until cancelled."""

    def __init__(
        self,
        settings: PullSettings,
        journal: Journal,
        tokens: ClientCredentials,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        lease: PgLease | None = None,
    ) -> None:
        self.settings = settings
        self.lease = lease
        self._pulling: trio.CancelScope | None = None  # while leading
        self.keep_lease = False  # stopped for an operator's reset: keep leading after it
        self.journal = journal
        self.tokens = tokens
        self.stats = PullStatistics()
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret
        self._now = wall_clock
        import httpx  # here, not at the top: a daemon with no pull never loads it

        self._base = httpx.URL(settings.url)

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Pull until cancelled; every failure waits before the next attempt."""
        name = self.settings.name
        log.info("pull %s: starting from %s", name, self.settings.url)
        import httpx

        try:
            async with httpx.AsyncClient(
                timeout=self.settings.timeout,
                verify=self.settings.verify,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
            ) as client:
                if self.lease is None:
                    await self._pull(client)
                else:
                    await self._lead(client, self.lease)
        finally:
            self.stats.state = "stopped"

    async def _pull(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                await self._session(client)
            except _Retry as retry:
                await self._wait_after(retry)

    # -- several receivers, one pull: the lease (lease.py) ------------------------------

    async def _lead(self, client: httpx.AsyncClient, lease: PgLease) -> None:
        """Pull while this receiver holds the lease; stand by while another one does."""
        name, stats = self.settings.name, self.stats
        stats.leading = False
        try:
            while True:
                try:
                    shared = await lease.acquire()
                except LeaseError as exc:
                    if stats.last_error != str(exc):
                        log.warning("pull %s: %s; standing by", name, exc)
                    stats.last_error = str(exc)
                    shared = None
                if shared is None:
                    stats.state = "standby"
                    await trio.sleep(lease.ttl / 3)
                    continue
                try:
                    await self._adopt(*shared)
                except (LeaseError, JournalError) as exc:
                    log.warning("pull %s: cannot start from the lease's position: %s", name, exc)
                    stats.last_error = str(exc)
                    stats.state = "standby"
                    await trio.sleep(lease.ttl / 3)
                    continue
                log.info("pull %s: this receiver holds the lease; pulling", name)
                stats.leading = True
                async with trio.open_nursery() as nursery:
                    self._pulling = nursery.cancel_scope
                    nursery.start_soon(self._keep, lease, nursery.cancel_scope)
                    await self._pull(client)
                self._pulling = None
                stats.leading = False
                log.warning("pull %s: the lease is lost; standing by", name)
        finally:
            stats.leading = False
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    if not self.keep_lease:  # else restarted at once: it takes it back
                        await lease.release()
                except LeaseError as exc:
                    log.warning("pull %s: could not hand the lease over: %s", name, exc)
                await lease.aclose()

    async def _keep(self, lease: PgLease, pulling: trio.CancelScope) -> None:
        """Renew every ttl/3; stop pulling when the lease is gone or, unreachable, could
        be (before it expires: two receivers never pull at once beyond a page)."""
        renewed = trio.current_time()
        while True:
            await trio.sleep(lease.ttl / 3)
            try:
                if await lease.renew():
                    renewed = trio.current_time()
                    continue
                reason = "another receiver holds it"
            except LeaseError as exc:
                if trio.current_time() - renewed < lease.ttl * 2 / 3:
                    continue  # one more try before it could expire
                reason = str(exc)
            log.warning("pull %s: stopping: the lease cannot be kept (%s)", self.settings.name,
                        reason)  # fmt: skip
            self.stats.last_error = f"lease: {reason}"
            pulling.cancel()
            return

    async def _adopt(self, position: str | None, restart: str | None) -> None:
        """Start from the position the last leader saved (none yet: from our own)."""
        if position is None and restart is None:
            return
        if position is not None:
            try:
                check_position(position, "the lease's position")
            except PayloadError as exc:
                raise LeaseError(f"{exc} (the lease table's row is damaged)") from None
        name, now = self.settings.name, utc_now()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO pull_positions (source, position, restart, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
                "position = excluded.position, restart = excluded.restart, "
                "updated_at = excluded.updated_at",
                (name, position, restart, now),
            )

        await self.journal.control(write)

    async def _wait_after(self, retry: _Retry) -> None:
        s, stats = self.settings, self.stats
        if retry.failure:
            stats.failures += 1
            stats.last_error = retry.reason
            backoff = backoff_delay(
                stats.failures, base=s.backoff_base, cap=s.backoff_cap, jitter=0.5, rng=self._rng
            )
            delay = backoff if retry.delay is None else max(retry.delay, backoff)
            delay = min(delay, max(s.backoff_cap, s.max_wait))
            stats.state = "backing-off"
            log.warning(
                "pull %s: %s; attempt %d failed, next in %.1f s",
                s.name, retry.reason, stats.failures, delay,
            )  # fmt: skip
        else:
            delay = retry.delay or 0.0
        await trio.sleep(delay)

    async def _session(self, client: httpx.AsyncClient) -> None:
        """From the durable position on, until something makes us wait (raises _Retry)."""
        position, restart = await self._load()
        self.stats.position = position
        url = self._start_url(position, restart)
        response = await self._get(client, url)
        decoded: Page | None = None
        while True:
            status, headers, body = response
            if status == 200:
                page = decoded or self._decode(body)
                decoded = None
                if not page.records:
                    # A 200 without events: wait as for a 204, never spin.
                    url = self._next(headers, url, position)
                    self._caught_up()
                    await trio.sleep(self._server_wait(headers))
                    response = await self._get(client, url)
                    continue
                assert page.last is not None
                url = self._next(headers, url, page.last)
                # Fetch the next page while this one commits: the commit is awaited
                # before the next page is handed to the writer, so positions stay in order.
                fetched = _Fetched()
                refused: _Retry | None = None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._prefetch, client, url, fetched)
                    try:
                        await self._commit(page)
                    except _Retry as exc:  # raised outside: a nursery would wrap it
                        refused = exc
                        nursery.cancel_scope.cancel()
                if refused is not None:
                    raise refused
                position = page.last
                if fetched.error is not None:
                    raise fetched.error
                assert fetched.response is not None
                response, decoded = fetched.response, fetched.page
            elif status == 204:
                url = self._next(headers, url, position)
                self._caught_up()
                await trio.sleep(self._server_wait(headers))
                response = await self._get(client, url)
            elif status == 410:
                await self._gap(position, body)
                position = None
                url = self._start_url(None, self.settings.on_expired)
                response = await self._get(client, url)
            else:
                raise self._refusal(status, headers, body)

    # -- one request ------------------------------------------------------------------

    async def _get(
        self, client: httpx.AsyncClient, url: httpx.URL
    ) -> tuple[int, httpx.Headers, bytes]:
        """One GET; 401 drops the token and tries once more with a fresh one."""
        for attempt in (1, 2):
            try:
                token = await self.tokens.token()
            except TokenUnavailable as exc:
                raise _Retry(f"no access token: {exc}") from None
            status, headers, body = await self._request(client, url, token)
            if status != 401:
                return status, headers, body
            self.tokens.invalidate(token)
            if attempt == 2:
                raise _Retry("the journal refused a fresh access token (401)" + _snippet(body))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(
        self, client: httpx.AsyncClient, url: httpx.URL, token: str
    ) -> tuple[int, httpx.Headers, bytes]:
        s = self.settings
        headers = {
            "authorization": f"Bearer {token}",
            "x-api-key": s.api_key,
            "x-ims-org-id": s.org_id,
            "accept": "application/json",
        }
        self.stats.requests += 1
        if self.stats.state != "backing-off":
            self.stats.state = "fetching"
        import httpx

        try:
            async with client.stream("GET", url, headers=headers) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > s.max_page_bytes:
                    raise _Retry(self._too_large())
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > s.max_page_bytes:
                        raise _Retry(self._too_large())
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            self._count("error")
            raise _Retry(f"GET {_show(url)}: {type(exc).__name__}: {exc}") from None
        self._count(str(response.status_code))
        return response.status_code, response.headers, b"".join(chunks)

    async def _prefetch(self, client: httpx.AsyncClient, url: httpx.URL, into: _Fetched) -> None:
        import httpx

        try:
            into.response = await self._get(client, url)
            if into.response[0] == 200:
                # Decoding here overlaps the writer's commit of the page before.
                into.page = self._decode(into.response[2])
        except (_Retry, httpx.HTTPError) as exc:
            into.error = exc

    def _too_large(self) -> str:
        self._count("too-large")
        return (
            f"a journal page larger than {self.settings.max_page_bytes:,} bytes; "
            "set a smaller limit for this pull source"
        )

    def _count(self, status: str) -> None:
        self.stats.responses[status] = self.stats.responses.get(status, 0) + 1

    # -- what the answers mean --------------------------------------------------------

    def _decode(self, body: bytes) -> Page:
        try:
            page = decode_page(body)
        except PayloadError as exc:
            # Nothing of the page is journaled and the position stays: retried, and
            # visible (logs, metrics, last_error) until the journal serves a sane page.
            raise _Retry(f"unusable journal page: {exc}") from None
        if page.unkeyed:
            log.warning(
                "pull %s: %d event(s) without a usable id, journaled under their position "
                "(stream 'other'), first at %s",
                self.settings.name, len(page.unkeyed), page.unkeyed[0],
            )  # fmt: skip
        return page

    async def _commit(self, page: Page) -> None:
        """Journal a page, its position saved in the transaction of its last event.

        A page larger than the writer admits in one batch (the queue bound holds for
        every batch) goes in as several, in order, and only the last one carries the
        position: a failure between them resumes from the page before, and what went
        in already comes back as duplicates. Raises :class:`_Retry` when refused.
        """
        s, stats = self.settings, self.stats
        records, size = page.records, self.journal.max_batch_events
        received_at = utc_now()
        events = accepted = duplicates = 0
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            last = start + size >= len(records)
            batch = Batch(
                source=s.name,
                received_at=received_at,
                shape="journal",
                events=chunk,
                message_id=page.last,
                position=page.last if last else None,
                page_tally=(events, accepted),
            )
            try:
                result = await self.journal.append(batch)
            except JournalBusy as exc:
                reason = f"the journal cannot take the page now: {exc}"
                raise _Retry(reason, exc.retry_after) from None
            except JournalError as exc:
                raise _Retry(f"the journal refused the page: {exc}") from None
            events += len(chunk)
            accepted += result.accepted
            duplicates += result.duplicates
        if self.lease is not None:
            await self._share(page.last)
        stats.pages += 1
        stats.events += events
        stats.accepted += accepted
        stats.duplicates += duplicates
        stats.unkeyed += len(page.unkeyed)
        stats.position = page.last
        stats.last_page_at = self._now()
        if stats.failures:
            log.info("pull %s: pulling again after %d failure(s)", s.name, stats.failures)
        stats.failures = 0
        stats.last_error = None

    async def _share(self, position: str | None) -> None:
        """Tell the next leader where this page ended (only while the lease is ours)."""
        assert self.lease is not None
        assert position is not None
        try:
            kept = await self.lease.save(position)
        except LeaseError as exc:
            raise _Retry(f"{exc} (the page is journaled; its position is not shared)") from None
        if not kept and self._pulling is not None:
            self.stats.last_error = "lease: another receiver holds it"
            self._pulling.cancel()  # stop now, before the next page
            await trio.lowlevel.checkpoint()

    def _caught_up(self) -> None:
        stats = self.stats
        if stats.state != "caught-up":
            log.info(
                "pull %s: caught up at position %s (%d events pulled so far)",
                self.settings.name, stats.position, stats.events,
            )  # fmt: skip
        stats.state = "caught-up"
        stats.caught_up_at = self._now()
        stats.failures = 0
        stats.last_error = None

    def _server_wait(self, headers: httpx.Headers) -> float:
        s = self.settings
        wait = retry_after(headers.get("retry-after"), self._now())
        return min(max(wait if wait is not None else s.min_wait, s.min_wait), s.max_wait)

    def _refusal(self, status: int, headers: httpx.Headers, body: bytes) -> _Retry:
        s = self.settings
        wait = retry_after(headers.get("retry-after"), self._now())
        if wait is not None:
            wait = min(wait, s.max_wait)
        if status == 429 or status >= 500:
            return _Retry(f"the journal answered {status}" + _snippet(body), wait)
        hint = {
            400: " (a position the journal does not know? see docs/pulls.md)",
            403: " (check org_id and client_id, and the credential's access to this journal)",
            404: " (check the journal URL)",
        }.get(status, "")
        return _Retry(f"the journal answered {status}{hint}" + _snippet(body), wait)

    # -- positions --------------------------------------------------------------------

    def _start_url(self, position: str | None, restart: str | None) -> httpx.URL:
        s = self.settings
        params: dict[str, str] = {}
        if position is not None:
            params["since"] = position
        else:
            mode = restart or s.start
            if mode == "latest":
                params["latest"] = "true"
            elif mode != "oldest":
                # Any time of the one grammar, sent in the form Adobe documents (-PT26H30M).
                now = datetime.fromtimestamp(self._now(), UTC)
                params["seek"] = format_seek(now - parse_when(mode, now))
        if s.limit is not None:
            params["limit"] = str(s.limit)
        return self._base.copy_merge_params(params)

    def _next(self, headers: httpx.Headers, current: httpx.URL, position: str | None) -> httpx.URL:
        """The ``next`` link, when it stays on the journal's origin; else ``since=position``."""
        target = link(headers.get("link"), "next")
        if target:
            import httpx

            try:
                url = current.join(target)
            except httpx.InvalidURL:
                url = None
            if url is not None and "since" in url.params and not url.params["since"]:
                url = None  # "since=" names no position: not a link to follow
            if url is not None and _origin(url) == _origin(self._base):
                if self.settings.limit is not None and "limit" not in url.params:
                    url = url.copy_merge_params({"limit": str(self.settings.limit)})
                return url
            log.warning(
                "pull %s: not following a next link to another origin (%s); "
                "continuing from the position instead",
                self.settings.name, target[:200],
            )  # fmt: skip
        if position is None:
            return current
        return self._start_url(position, None)

    async def _load(self) -> tuple[str | None, str | None]:
        name = self.settings.name

        def read(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
            row = conn.execute(
                "SELECT position, restart FROM pull_positions WHERE source = ?", (name,)
            ).fetchone()
            return (None, None) if row is None else (row[0], row[1])

        try:
            stored = await self.journal.control(read)
        except JournalError as exc:
            raise _Retry(f"cannot read the stored position: {exc}") from None
        position, restart = stored
        if position is not None:
            try:
                check_position(position, "the stored position")
            except PayloadError as exc:
                raise _Retry(f"{exc} (pull_positions of {name!r} is damaged)") from None
        return position, restart

    async def _gap(self, position: str | None, body: bytes) -> None:
        s = self.settings
        if position is None:
            raise _Retry("the journal answered 410 without a position to be past" + _snippet(body))
        detected = utc_now()
        detail = body[:_SNIPPET].decode("utf-8", "replace") or None

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO pull_gaps (source, lost_after, restarted_from, detected_at, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                (s.name, position, s.on_expired, detected, detail),
            )
            conn.execute(
                "INSERT INTO pull_positions (source, position, restart, updated_at) "
                "VALUES (?, NULL, ?, ?) ON CONFLICT (source) DO UPDATE SET "
                "position = NULL, restart = excluded.restart, updated_at = excluded.updated_at",
                (s.name, s.on_expired, detected),
            )

        try:
            await self.journal.control(record)
        except JournalError as exc:
            raise _Retry(f"cannot record the gap after a 410: {exc}") from None
        self.stats.gaps += 1
        self.stats.position = None
        log.warning(
            "pull %s: position %s is past the journal's retention (410); restarting from the "
            "%s available event. Events between were not pulled (unless they were pushed); "
            "the gap is recorded (streamd journal stats)",
            s.name, position, s.on_expired,
        )  # fmt: skip


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _show(url: httpx.URL) -> str:
    return str(url.copy_with(query=None))


def _snippet(body: bytes) -> str:
    text = body[:_SNIPPET].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def valid_start(text: str) -> bool:
    """Is ``text`` a usable ``start``: oldest, latest, or a time (``-PT2H``, ``30d``,
    ``2026-11-01``: :func:`streamd.core.parse_when`)?"""
    if text in ("oldest", "latest"):
        return True
    try:
        parse_when(text, datetime.now(UTC))
    except TimeError:
        return False
    return True


@dataclass(slots=True)
class _Running:
    identity: object  # what decides whether a reload restarts it
    source: PullSource
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)  # set once its task ended


class Pulls:
    """The running pull sources; a reload restarts those whose configuration changed."""

    def __init__(self) -> None:
        self.running: dict[str, _Running] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the pull tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def apply(self, wanted: list[tuple[object, PullSource]]) -> list[str]:
        """Start, restart or stop pull sources to match ``wanted`` (identity, source);
        return what changed, for the log."""
        assert self._nursery is not None, "run() first"
        changes: list[str] = []
        names = {source.settings.name for _, source in wanted}
        for name in list(self.running):
            if name not in names:
                self.running.pop(name).scope.cancel()
                changes.append(f"pull {name} stopped")
        for identity, source in wanted:
            name = source.settings.name
            current = self.running.get(name)
            if current is not None and current.identity == identity:
                continue
            if current is not None:
                current.scope.cancel()
            self._start(identity, source)
            changes.append(f"pull {name} {'restarted' if current else 'started'}")
        return changes

    def _start(self, identity: object, source: PullSource) -> None:
        assert self._nursery is not None, "run() first"
        running = _Running(identity, source)
        self.running[source.settings.name] = running
        self._nursery.start_soon(_run_in, running)

    async def reset(
        self, name: str, clear: Callable[[sqlite3.Connection], T], restart: str = "oldest"
    ) -> T:
        """Start pull ``name`` over while streamd runs: ``clear`` (the operation that
        clears its position, ``streamd.ops.ResetPull``) runs once the pull stopped.

        Its session is stopped first; ``clear`` then runs in the writer's next
        transaction, which comes after any page that session had handed to the writer,
        so no late page can put an old position back; then the pull starts again (also
        when the write failed: it then resumes from its position). With a lease, the
        shared position is cleared too (``restart`` recorded for whoever leads next),
        and only by the receiver that holds the lease or while it is free: another
        leader would overwrite it with its next page, so that is refused (LeaseHeld),
        nothing changed. The leader keeps its lease across the restart, so the reset
        cannot pass to another receiver half done. Returns what ``clear`` returned.
        Raises :class:`UsageError` (no such pull), :class:`LeaseHeld`,
        :class:`LeaseError` (the lease's database) and :class:`JournalError` (the
        journal refused the write).
        """
        current = self.running.get(name)
        if current is None:
            names = ", ".join(sorted(self.running)) or "none configured"
            raise UsageError(f"no pull named {name[:64]!r} runs here (pulls: {names})")
        source = current.source
        if source.lease is not None:
            # Checked (and done) before stopping anything; done again once stopped, since
            # the running session may save one more page meanwhile.
            _refuse_held(name, await source.lease.reset(restart))
        source.keep_lease = True
        current.scope.cancel()
        with trio.CancelScope(shield=True):  # never leave it stopped halfway
            await current.finished.wait()
            try:
                if source.lease is not None:
                    _refuse_held(name, await source.lease.reset(restart))
                result = await source.journal.control(clear)
            finally:
                source.keep_lease = False
                if self.running.get(name) is current:  # not replaced by a reload meanwhile
                    with contextlib.suppress(RuntimeError):  # the nursery closed: stopping
                        self._start(current.identity, source)
        source.stats.position = None
        log.warning("pull %s: position cleared by the operator; starting again", name)
        return result


def _refuse_held(name: str, holder: str | None) -> None:
    if holder is not None:
        raise LeaseHeld(
            f"pull {name[:64]!r}: receiver {holder[:64]!r} holds its lease and would "
            "overwrite the shared position with its next page; reset it on that receiver"
        )


async def _run_in(running: _Running) -> None:
    try:
        with running.scope:
            await running.source.run()
    finally:
        running.finished.set()
