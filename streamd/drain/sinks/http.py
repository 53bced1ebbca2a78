"""The ``http`` sink: POST each batch as JSON, signed the Standard Webhooks way.

Body (``format``, :mod:`streamd.drain.bodies`): ``{"events": [envelope, ...]}`` (each
envelope carries the event id and the event's JSON as received), or what Marketo's
legacy push or Adobe I/O Events would send, so that a receiver written for those (another
streamd included) takes the forward; a batch may then take several requests, and an
event the format cannot carry is dead-lettered with the reason. Headers:
``webhook-id`` (the engine's delivery id, with ``.<first seq>`` per request when a batch
takes several: the same for every attempt of a batch, so a receiver can drop a repeat; new
for an operator's replay or dead-letter retry, so such a receiver does not drop
what was deliberately sent again), ``webhook-timestamp``
(Unix seconds) and, with secrets configured, ``webhook-signature``:
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per secret separated by
spaces (rotation: the receiver accepts any); with an Adobe signing key (cloudevents
formats), ``x-adobe-digital-signature-1`` (RSA PKCS#1 v1.5 SHA-256 over the body, as
Adobe signs) and ``x-adobe-public-key1-path``, so a receiver that checks Adobe's
signatures against a pinned public key takes the forward. Answers: 2xx confirms;
408, 429, 5xx, redirects, timeouts and connection errors are retried
(``Retry-After`` honoured); 410 disables the sink; any other 4xx dead-letters
the batch (of a batch in several requests: that request's events).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from streamd.core.headers import retry_after
from streamd.drain.bodies import Format, Request, build
from streamd.drain.policy import Kind
from streamd.drain.sinks.base import (
    CONFIRMED,
    DrainEvent,
    Result,
    permanent,
    transient,
)
from streamd.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

_MAX_RESPONSE = 2048  # of a failing answer's body, kept as the dead letter's last_response


@dataclass(frozen=True, slots=True)
class HttpSettings:
    url: str
    sink: str
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token: str | None = None
    secrets: Sequence[bytes] = ()
    connections: int = 4
    timeout: float = 20.0
    format: Format = "streamd"
    recipient_client_id: str = ""  # cloudevents: named in events that name no recipient
    adobe_key: RSAPrivateKey | None = None  # signs each body as Adobe does
    adobe_key_path: str = ""  # sent as x-adobe-public-key1-path


def load_signing_key(pem: bytes, where: str) -> RSAPrivateKey:
    """An unencrypted PEM RSA private key; raises :class:`ConfigError` naming ``where``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ConfigError(f"{where}: Adobe signatures need an RSA key of 2048 bits or more")
    return key


def adobe_signature(key: RSAPrivateKey, body: bytes) -> str:
    """The ``x-adobe-digital-signature-*`` value for ``body`` (base64)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def parse_secret(text: str, where: str) -> bytes:
    """``whsec_<base64>`` → the key bytes; raises :class:`ConfigError`."""
    text = text.strip()
    if not text.startswith("whsec_"):
        raise ConfigError(f"{where}: a signing secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(text[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the signing secret is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ConfigError(f"{where}: a signing secret must hold 24 to 64 bytes")
    return key


def sign(secrets: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in secrets
    )


def classify(status: int, body: bytes, header: str | None, now: float) -> Result:
    """Map an HTTP answer to a delivery :class:`Result`."""
    if 200 <= status < 300:
        return CONFIRMED
    text = body[:_MAX_RESPONSE].decode("utf-8", errors="replace")
    reason = f"HTTP {status} from the destination"
    if status == 410:
        return Result(Kind.GONE, reason + " (gone: sink disabled)", text)
    if status in (408, 425, 429) or status >= 500 or 300 <= status < 400:
        return transient(reason, text, retry_after(header, now))
    return permanent(reason, text)


class HttpSink:
    """One connection pool to the destination, shared by the sink's workers."""

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        headers = {"user-agent": "streamd"}  # content-type: per request (the format's)
        headers.update({k.lower(): v for k, v in settings.headers.items()})
        if settings.bearer_token:
            headers["authorization"] = f"Bearer {settings.bearer_token}"
        import httpx  # here, not at the top: a daemon with no HTTP sink never loads it

        limits = httpx.Limits(
            max_connections=settings.connections, max_keepalive_connections=settings.connections
        )
        # The engine bounds every attempt with the sink's timeout; this is only a backstop.
        self._client = httpx.AsyncClient(
            headers=headers,
            limits=limits,
            timeout=httpx.Timeout(settings.timeout + 5.0),
            follow_redirects=False,
        )

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        settings = self.settings
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        bodies = build(settings.format, events, now=now, recipient=settings.recipient_client_id)
        msg_id = delivery_id or f"{settings.sink}-{events[0].seq}-{events[-1].seq}"
        rejected = list(bodies.rejected)
        response: str | None = None
        whole = len(bodies.requests) == 1 and not rejected
        for request in bodies.requests:
            # One webhook-id per request, the same on every attempt of the batch.
            request_id = msg_id if whole else f"{msg_id}.{request.seqs[0]}"
            result = await self._post(request, request_id)
            if result.kind is Kind.CONFIRMED:
                continue
            if result.kind is not Kind.PERMANENT or whole:
                # Retried as a whole: the requests already confirmed go again, and a
                # receiver that deduplicates by event key (streamd does) drops them.
                return result
            rejected += [(seq, result.reason) for seq in request.seqs]
            response = result.response
        if rejected:
            return Result(Kind.CONFIRMED, response=response, rejected=tuple(rejected))
        return CONFIRMED

    async def _post(self, request: Request, msg_id: str) -> Result:
        timestamp = int(time.time())
        body = request.body
        headers = {
            "content-type": request.content_type,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if request.event_id is not None:  # one CloudEvent per request, as Adobe sends it
            headers["x-adobe-event-id"] = request.event_id
            if request.event_type is not None:
                headers["x-adobe-event-code"] = request.event_type
        if self.settings.secrets:
            headers["webhook-signature"] = sign(self.settings.secrets, msg_id, timestamp, body)
        if self.settings.adobe_key is not None:
            # About 1 ms of CPU per request for a 2048-bit key: no thread needed.
            headers["x-adobe-digital-signature-1"] = adobe_signature(self.settings.adobe_key, body)
            headers["x-adobe-public-key1-path"] = self.settings.adobe_key_path
        import httpx

        try:
            async with self._client.stream(
                "POST", self.settings.url, content=body, headers=headers
            ) as response:
                # Keep at most a little of the answer: a hostile receiver cannot fill memory
                # (and the engine's timeout bounds one that never stops sending). Reading
                # to the end keeps the connection reusable.
                answer = b""
                async for chunk in response.aiter_raw():
                    if len(answer) < _MAX_RESPONSE:
                        answer += chunk[: _MAX_RESPONSE - len(answer)]
        except httpx.HTTPError as exc:
            return transient(f"{type(exc).__name__}: {exc or 'no detail'}")
        return classify(
            response.status_code, answer, response.headers.get("retry-after"), time.time()
        )

    async def aclose(self) -> None:
        await self._client.aclose()
