"""OAuth tokens from an external identity provider: JWTs against its JWKS, or opaque
tokens by RFC 7662 introspection.

JWTs: the signature must verify with a key of the provider's JWKS (fetched from
``jwks_url``; an unknown ``kid`` refetches it, at most once per
``jwks_refresh_interval``), the algorithm must be on the allow-list (asymmetric
only: ``none`` and the HS* family are refused, so a token "signed" with the
public key as an HMAC secret never passes), and issuer, audience, expiry and
not-before are checked with a small leeway. PyJWT does the cryptography.

Introspection: the token is POSTed to ``introspection_url`` with the client
credentials streamd was given; ``{"active": true}`` accepts it. Answers are
cached until the token's ``exp`` (at most ``introspection_cache_seconds``), in
a bounded cache, so Marketo's requests do not each cost a round trip.

A provider that cannot be reached makes the request a 503 (the sender retries),
never a 401.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from streamd.errors import StreamdError

# httpx and jwt are imported where they are used: a process with no JWT or introspection
# source never loads them (ARCHITECTURE.md, "What a process imports").

log = logging.getLogger("streamd.auth.external")

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_CACHE_LIMIT = 10_000


class ProviderUnavailable(StreamdError):
    """The identity provider did not answer usably: 503, the sender retries."""

    status_hint = 503
    reason = "identity_provider"


@dataclass
class JwtVerifier:
    """Checks JWTs against a JWKS."""

    jwks_url: str
    issuer: str
    audience: str
    algorithms: Sequence[str] = ("RS256",)
    leeway: float = 30.0
    refresh_interval: float = 60.0
    timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic
    fetches: int = 0
    _keys: dict[str, Any] = field(default_factory=dict)
    _fetched_at: float | None = None
    _lock: trio.Lock = field(default_factory=trio.Lock)

    async def check(self, token: bytes | None) -> bool:
        """True when ``token`` is a valid JWT of this provider for this audience."""
        if not token or len(token) > 8192:
            return False
        text = token.decode("ascii", "replace")
        import jwt

        try:
            header = jwt.get_unverified_header(text)
        except jwt.InvalidTokenError:
            return False
        alg = header.get("alg")
        if alg not in self.algorithms or alg not in ALLOWED_ALGORITHMS:
            return False
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            await self._refresh()  # key rotation: the provider may have a new key
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None and kid is None and len(self._keys) == 1:
                key = next(iter(self._keys.values()))
        if key is None:
            return False
        try:
            jwt.decode(
                text,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError:
            return False
        return True

    async def _refresh(self) -> None:
        async with self._lock:
            now = self.clock()
            if self._fetched_at is not None and now - self._fetched_at < self.refresh_interval:
                return  # fetched recently: an unknown kid is not a reason to hammer the IdP
            self.fetches += 1
            import httpx
            import jwt

            try:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    reply = await client.get(self.jwks_url)
                if reply.status_code != 200:
                    raise ProviderUnavailable(f"JWKS answered {reply.status_code}")
                keys = {}
                for entry in reply.json().get("keys", []):
                    try:
                        jwk = jwt.PyJWK(entry)
                    except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError):
                        continue  # a key of a kind we do not use
                    keys[str(entry.get("kid"))] = jwk.key
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                if not self._keys:
                    raise ProviderUnavailable(
                        f"cannot fetch the JWKS ({type(exc).__name__}); retry later"
                    ) from None
                log.warning("cannot refresh the JWKS (%s); keeping the known keys", exc)
                return
            self._keys = keys
            self._fetched_at = now


@dataclass
class Introspector:
    """Checks opaque tokens with RFC 7662 token introspection, caching answers."""

    url: str
    client_id: str
    client_secret: str
    cache_seconds: float = 300.0
    timeout: float = 5.0
    clock: Callable[[], float] = time.time
    requests: int = 0
    _cache: OrderedDict[bytes, tuple[bool, float]] = field(default_factory=OrderedDict)

    async def check(self, token: bytes | None) -> bool:
        if not token or len(token) > 8192:
            return False
        now = self.clock()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        self.requests += 1
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                reply = await client.post(
                    self.url,
                    data={"token": token.decode("ascii", "replace")},
                    auth=(self.client_id, self.client_secret),
                )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"introspection unreachable ({type(exc).__name__}); retry later"
            ) from None
        if reply.status_code != 200:
            raise ProviderUnavailable(f"introspection answered {reply.status_code}")
        try:
            answer = reply.json()
        except ValueError:
            raise ProviderUnavailable("introspection answered something else than JSON") from None
        active = isinstance(answer, dict) and answer.get("active") is True
        exp = answer.get("exp") if isinstance(answer, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            exp = None
        if active and exp is not None and exp <= now:
            active = False  # already expired
        # Remembered for cache_seconds (a refusal at most 30 s), never past the token's
        # exp; cache_seconds = 0 asks the provider every time.
        until = now + (self.cache_seconds if active else min(self.cache_seconds, 30))
        if active and exp is not None:
            until = min(until, float(exp))
        if until > now:
            self._cache[token] = (active, until)
            self._cache.move_to_end(token)
            while len(self._cache) > _CACHE_LIMIT:
                self._cache.popitem(last=False)
        return active
