"""The ingest ASGI app: routes, auth, body limits, status-code policy, challenge.

Why one module of about 550 lines: the order of checks below is the module; it is
kept in one place so that no check can be reordered without seeing the others
(admission, the timed body read and the slots are already in ``admission.py``).

Order of checks on a POST (each answers before the next costs anything):
capacity → route → method → shutdown → credentials (before reading the body)
→ media type → declared length → body read with a running limit → decode →
journal. The 200 is sent only after the journal committed the batch.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote_plus

import orjson
import trio

from streamd.asgi import BODY_FOLLOWS, lifespan
from streamd.auth import TokenSet, token_from_request
from streamd.auth.adobe import Presented, SignatureCheck
from streamd.auth.client_cert import ClientCertCheck, peer_certificate
from streamd.auth.external import Introspector, JwtVerifier
from streamd.auth.issuer import Issuer, check_secret
from streamd.core import decode_delivery
from streamd.errors import JournalBusy, JournalClosed, PayloadError, StreamdError
from streamd.ingest.admission import (
    TOKEN_PARTY,
    BufferFull,
    Disconnected,
    Limits,
    Slots,
    SlotsFull,
    SlowBody,
    read_body,
)
from streamd.ingest.validation import Validator
from streamd.journal import AppendResult, Batch, utc_now

log = logging.getLogger("streamd.ingest")

Scope = Mapping[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_TYPES = frozenset(
    {
        b"application/json",
        b"application/cloudevents+json",
        b"application/cloudevents-batch+json",
    }
)
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a secret
_CHALLENGE = re.compile(r"[A-Za-z0-9._~-]{1,256}")
_COMMON_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]

# Called once per answered POST: (source, status, seconds, reason of a 503 or None).
Observer = Callable[[str, int, float, str | None], None]


class Appender(Protocol):
    """What the app needs of a journal: the in-process :class:`~streamd.journal.Journal`,
    or a worker process's :class:`~streamd.ingest.remote.RemoteJournal`."""

    async def append(self, batch: Batch) -> AppendResult:
        """Return once ``batch`` is durably committed; raise a :class:`StreamdError`."""

    def refusal(self) -> JournalBusy | None:
        """Why a batch would be refused now, or None (checked before reading a body)."""


@dataclass(frozen=True, slots=True)
class Source:
    """A configured endpoint at runtime: its name, path and credentials."""

    name: str
    path: str
    tokens: TokenSet | None  # None for a signed source
    query_token: bool = True
    adobe: SignatureCheck | None = None  # set: Adobe signatures instead of tokens
    require_client_cert: bool = False  # only on the mTLS listener (server.mtls_listen)
    validator: Validator | None = None  # set: open allowed validationUrls automatically
    oauth: bool = False  # set: Bearer tokens from the embedded issuer instead of API tokens
    external: JwtVerifier | Introspector | None = None  # set: an external IdP's tokens
    client_cert: ClientCertCheck | None = None  # set: the client certificate is the credential
    max_in_flight: int = 0  # its share of the slots (0: an equal part of what is left)


class IngestApp:
    """The ASGI application that receives deliveries and journals them."""

    # Reads each body to its last message and never waits for ``http.disconnect``:
    # the edge runs it in the connection's task (streamd/asgi.py, RUNS_INLINE).
    streamd_runs_inline = True

    def __init__(
        self,
        sources: list[Source],
        journal: Appender,
        limits: Limits,
        *,
        issuer: Issuer | None = None,
        observer: Observer | None = None,
        mtls_ports: AbstractSet[int] = frozenset(),
    ) -> None:
        """``issuer``: the embedded OAuth issuer (``POST /oauth/token``), when configured;
        ``observer`` is called once per answered POST; ``mtls_ports``: the ports of the
        listener that required a verified client certificate (mTLS)."""
        self._routes = {s.path.rstrip("/") or "/": s for s in sources}
        self._journal = journal
        self.limits = limits
        self._max_body = limits.max_body_bytes
        self._slots = Slots(limits, self._released)
        self._stopping = False
        self._idle = trio.Event()
        self.responses: dict[int, int] = {}
        self._background: trio.Nursery | None = None
        self._issuer = issuer
        self.mtls_ports = frozenset(mtls_ports)
        self._observer = observer
        self._share_out()

    @property
    def issuer(self) -> Issuer | None:
        """The embedded OAuth issuer, when configured (its endpoint has a share of slots)."""
        return self._issuer

    def _share_out(self) -> None:
        wanted = {s.name: s.max_in_flight for s in self._routes.values()}
        if self._issuer is not None:
            wanted[TOKEN_PARTY] = 0
        self._slots.share_out(wanted)

    def shares(self) -> dict[str, int]:
        """Each party's share of ``max_in_flight`` now."""
        return self._slots.shares()

    def held(self, party: str) -> int:
        """The in-flight slots ``party`` (a source's name) holds now."""
        return self._slots.held(party)

    def _released(self) -> None:
        if self._stopping and self._slots.in_flight == 0:
            self._idle.set()

    def sources(self) -> list[Source]:
        """The sources served now."""
        return list(self._routes.values())

    def reconfigure(self, sources: list[Source], issuer: Issuer | None) -> None:
        """Swap in a reload's sources and issuer: requests already routed keep their old
        source; the slots are shared out again."""
        self._routes = {s.path.rstrip("/") or "/": s for s in sources}
        self._issuer = issuer
        self._share_out()
        self._give_nursery()

    async def serve_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Host the background work (the validationUrl GETs of sources that open them)
        until cancelled; before it started, such a URL is logged for the operator."""
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                self._give_nursery()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._background = None
            self._give_nursery()

    def _give_nursery(self) -> None:
        for source in self._routes.values():
            if source.validator is not None:
                source.validator.run_in(self._background)

    def begin_shutdown(self) -> None:
        """From now on, POSTs get 503 + Retry-After (the sender keeps the events)."""
        self._stopping = True
        if self._slots.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once shutdown has begun and no POST is being handled."""
        await self._idle.wait()

    @property
    def stopping(self) -> bool:
        """True once shutdown has begun."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        """POST requests being handled right now."""
        return self._slots.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = trio.current_time()
        if self._issuer is not None and scope["path"] == TOKEN_PATH:
            await self._token(scope, receive, send, self._issuer, started)
            return
        source = self._routes.get(scope["path"].rstrip("/") or "/")
        if source is None:
            await self._error(send, 404, f"no source at {scope['path'][:200]}")
            return
        method = scope["method"]
        if method == "GET":
            await self._challenge(scope, send)
            return
        if method != "POST":
            await self._error(send, 405, f"{method} not allowed", [(b"allow", b"GET, POST")])
            return
        observer = self._observer
        answered = [0]
        if observer is not None:
            inner_send = send

            async def send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    answered[0] = message["status"]
                await inner_send(message)

        reason: str | None = None
        try:
            await self._post(scope, receive, send, source, started)
        except Disconnected:
            log.info("client went away before sending its whole body to %s", source.name)
        except StreamdError as exc:
            reason = exc.reason if exc.status_hint >= 500 else None
            extra = [(b"connection", b"close")] if isinstance(exc, SlowBody) else None
            await self._error(
                send, exc.status_hint, str(exc), extra, retry_after=retry_after_of(exc)
            )
        except Exception:
            # Never a traceback to the sender, never a 4xx for our own fault.
            log.exception("unexpected error on %s %s", method, scope["path"])
            reason = "internal"
            await self._error(send, 503, "internal error; retry later", retry_after=5)
        finally:
            if observer is not None and answered[0]:
                observer(source.name, answered[0], trio.current_time() - started, reason)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, source: Source, started: float
    ) -> None:
        if self._stopping:
            raise JournalClosed("streamd is shutting down")  # 503, Retry-After: 10
        if source.require_client_cert and _local_port(scope) not in self.mtls_ports:
            # The mTLS listener verified the client's certificate during the handshake;
            # any other listener did not ask for one.
            await self._error(
                send, 401, "this source requires a client certificate: use the mTLS listener"
            )
            return
        # Everything that needs no body is checked before a slot is taken: a client
        # without credentials, or with a body it will never send in full, holds none.
        headers = _headers(scope)
        signed: Presented | None = None
        presented: bytes | None = None
        if source.adobe is not None:
            # Present and well-formed before the body is read (SignatureInvalid: 401).
            signed = source.adobe.presented(headers)
        elif source.client_cert is not None:
            # The certificate is the credential: a token the request brings is not read.
            verdict = source.client_cert.problem(peer_certificate(scope))
            if verdict is not None:
                status, message = verdict
                log.warning("refused a client certificate on %s: %s", source.name, message)
                await self._error(send, status, message)
                return
        else:
            presented = token_from_request(
                headers.get(b"authorization"), scope["query_string"], allow_query=source.query_token
            )
            if source.external is None and not self._token_ok(source, presented):
                await self._unauthorized(send, presented)
                return
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media and media not in _JSON_TYPES:
            await self._error(
                send,
                415,
                f"unsupported media type {media.decode('latin-1')[:100]!r}; send application/json",
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await self._error(send, 400, "invalid Content-Length")
                return
            if int(declared) > self._max_body:
                await self._error(send, 413, self._too_large())
                return
        elif source.adobe is not None:
            # Adobe sends Content-Length: a signed source reads no body of unknown size
            # before the signature can be checked.
            await self._error(send, 411, "a signed source needs Content-Length")
            return
        refused = self._journal.refusal()
        if refused is not None:
            # A full queue or a low disk would refuse the batch after it was read and
            # decoded: refuse before, and hold no memory for it.
            raise refused
        with self._slots.take(source.name, int(declared or 0)) as slot:
            # ProviderUnavailable: 503, the sender retries (never a 401 for the IdP's fault)
            if source.external is not None and not await source.external.check(presented):
                await self._unauthorized(send, presented)
                return
            body = await read_body(receive, self._max_body, started, self.limits, slot)
            if body is None:
                await self._error(send, 413, self._too_large())
                return
            await self._journal_body(send, source, headers, signed, body)

    async def _journal_body(
        self,
        send: Send,
        source: Source,
        headers: dict[bytes, bytes],
        signed: Presented | None,
        body: bytes,
    ) -> None:
        if source.adobe is not None and signed is not None:
            await source.adobe.verify(signed, body)  # 401, or 503 when the key host fails
        try:
            delivery = decode_delivery(body, max_events=self.limits.max_events)
        except PayloadError as exc:  # 400, or TooManyEvents: 413
            log.info("rejected a body from source %s: %r", source.name, str(exc))
            await self._error(send, exc.status_hint, str(exc))
            return
        if source.adobe is not None:
            problem = source.adobe.check_recipient(delivery.recipients)
            if problem is not None:
                log.warning("refused a signed delivery on %s: %s", source.name, problem)
                await self._error(send, 403, problem)
                return
        if delivery.shape == "challenge":
            # Never journaled; someone (or streamd, if allowed) must GET it within 5 minutes.
            url = delivery.validation_url or ""
            if source.validator is not None and source.validator.start(source.name, url):
                log.warning("source %s: opening the validationUrl %r", source.name, url)
                await self._json(
                    send, 200, {"accepted": 0, "duplicates": 0, "validation": "opening"}
                )
                return
            log.warning(
                "source %s received an Adobe validationUrl; open it within 5 minutes to "
                "confirm the registration: %r",  # repr: a body cannot forge log lines
                source.name,
                delivery.validation_url,
            )
            await self._json(send, 200, {"accepted": 0, "duplicates": 0, "validation": "logged"})
            return
        batch = Batch(
            source=source.name,
            received_at=utc_now(),
            shape=delivery.shape,
            events=delivery.events,
            message_id=delivery.message_id,
            adobe_event_id=_text_header(headers.get(b"x-adobe-event-id")),
            retry_count=_int_header(headers.get(b"x-adobe-retry-count")),
        )
        result = await self._journal.append(batch)  # returns only after COMMIT
        await self._json(send, 200, {"accepted": result.accepted, "duplicates": result.duplicates})

    def _token_ok(self, source: Source, presented: bytes | None) -> bool:
        if source.oauth:
            return self._issuer is not None and self._issuer.check(presented) is not None
        return source.tokens is not None and source.tokens.check(presented)

    async def _unauthorized(self, send: Send, presented: bytes | None) -> None:
        what = "missing" if presented is None else "invalid"
        await self._error(
            send, 401, f"{what} credentials", [(b"www-authenticate", b'Bearer realm="streamd"')]
        )

    async def _token(
        self, scope: Scope, receive: Receive, send: Send, issuer: Issuer, started: float
    ) -> None:
        """``POST /oauth/token``, client credentials grant (RFC 6749 section 4.4)."""
        try:
            await self._token_request(scope, receive, send, issuer, started)
        except Disconnected:
            log.info("client went away before sending its whole token request")
        except (SlotsFull, BufferFull, SlowBody) as exc:
            extra = [(b"connection", b"close")] if isinstance(exc, SlowBody) else []
            if isinstance(exc, SlotsFull):
                extra.append((b"retry-after", b"1"))
            await self._oauth_error(send, 503, "temporarily_unavailable", str(exc), 5, extra)

    async def _token_request(
        self, scope: Scope, receive: Receive, send: Send, issuer: Issuer, started: float
    ) -> None:
        if scope["method"] != "POST":
            await self._error(send, 405, f"{scope['method']} not allowed", [(b"allow", b"POST")])
            return
        client = scope.get("client") or ("unknown", 0)
        address = str(client[0])
        wait = issuer.blocked(address)
        if wait:
            await self._oauth_error(
                send, 429, "slow_down", "too many failed token requests", int(wait) + 1
            )
            return
        headers = _headers(scope)
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/x-www-form-urlencoded":
            await self._oauth_error(send, 400, "invalid_request", "send a form")
            return
        with self._slots.take(TOKEN_PARTY, 0) as slot:
            body = await read_body(receive, 8192, started, self.limits, slot)
        if body is None:
            await self._oauth_error(send, 413, "invalid_request", "body larger than 8192 bytes")
            return
        try:
            form = dict(parse_qsl(body.decode("utf-8"), max_num_fields=10, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            await self._oauth_error(send, 400, "invalid_request", "not a URL-encoded form")
            return
        if form.get("grant_type") != "client_credentials":
            await self._oauth_error(
                send, 400, "unsupported_grant_type", "only client_credentials is supported"
            )
            return
        client_id, secret = _basic(headers.get(b"authorization"))
        client_id = client_id or form.get("client_id", "")
        secret = secret or form.get("client_secret", "")
        stored = issuer.clients.get(client_id)
        # The hash check costs PBKDF2's iterations: off the event loop.
        ok = stored is not None and await trio.to_thread.run_sync(check_secret, secret, stored)
        if not ok:
            issuer.failed(address)
            log.warning("refused a token request from %s for client %r", address, client_id[:64])
            await self._oauth_error(send, 401, "invalid_client", "unknown client or wrong secret")
            return
        token, ttl = issuer.issue(client_id)
        await self._json(
            send, 200, {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
        )

    async def _oauth_error(
        self,
        send: Send,
        status: int,
        error: str,
        description: str,
        retry_after: int | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = list(extra or [])
        if status == 401:
            headers.append((b"www-authenticate", b'Basic realm="streamd"'))
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await self._json(send, status, {"error": error, "error_description": description}, headers)

    def _too_large(self) -> str:
        return f"body larger than the limit of {self._max_body} bytes"

    async def _challenge(self, scope: Scope, send: Send) -> None:
        try:
            query = parse_qsl(scope["query_string"].decode("latin-1"), max_num_fields=20)
        except ValueError:
            await self._error(send, 400, "too many query parameters")
            return
        values = [v for k, v in query if k == "challenge"]
        if not values:
            await self._error(
                send, 400, "GET is only for the challenge handshake: ?challenge=<value>"
            )
            return
        value = values[0]
        if not _CHALLENGE.fullmatch(value):
            await self._error(send, 400, "challenge must be 1 to 256 URL-safe characters")
            return
        accept = _headers(scope).get(b"accept", b"")
        if b"application/json" in accept and b"text/plain" not in accept:
            await self._json(send, 200, {"challenge": value})
            return
        await self._send(send, 200, value.encode(), b"text/plain; charset=utf-8")

    async def _error(
        self,
        send: Send,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        headers = list(extra or [])
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await self._json(send, status, {"error": message}, headers)

    async def _json(
        self,
        send: Send,
        status: int,
        payload: dict[str, Any],
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await self._send(send, status, orjson.dumps(payload), b"application/json", headers)

    async def _send(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1
        all_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *_COMMON_HEADERS,
            *(headers or []),
        ]
        # Both halves or neither: a cancellation between them (the listener cancelled at
        # shutdown while an answer was being written) left hypercorn answering 500 into
        # a response already under way, an h11 LocalProtocolError that ended the
        # process. Bounded: a client that does not read cannot hold a shutdown. One scope
        # is both (its own deadline still cancels it): half the cost of two per answer.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _SEND_BOUND):
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": all_headers,
                    BODY_FOLLOWS: True,
                }
            )
            await send({"type": "http.response.body", "body": body})


_SEND_BOUND = 5.0  # seconds an answer may take to hand over, whatever is cancelled


def retry_after_of(exc: StreamdError) -> int | None:
    """The ``Retry-After`` seconds the app sends with a refusal (None: no header)."""
    if isinstance(exc, JournalBusy):
        return exc.retry_after
    return 5 if exc.status_hint >= 500 else None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope["headers"]}


def _basic(value: bytes | None) -> tuple[str, str]:
    """(client id, secret) from ``Authorization: Basic``, or empty strings."""
    if not value or value[:6].lower() != b"basic ":
        return "", ""
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "", ""
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)


def _local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and len(server) > 1 and server[1] is not None else None


def _text_header(value: bytes | None) -> str | None:
    return value.decode("latin-1")[:200] if value else None


def _int_header(value: bytes | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 10 else None
