"""Access tokens from Adobe IMS (or any OAuth 2.0 server) by the client-credentials grant.

The pull source presents them to the Journaling API. The token is fetched when first
needed, cached, and renewed before it expires (at 90% of its lifetime, and at least a
minute early); a 401 from the API drops it so the next request fetches a new one.

IMS v3 answers ``expires_in`` in seconds; the older v2 endpoints answered milliseconds.
A value above 30 days is therefore read as milliseconds.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import orjson
import trio

from streamd.errors import StreamdError

# httpx is imported where it is used: a process that never asks IMS for a token never
# loads it (ARCHITECTURE.md, "What a process imports").

log = logging.getLogger("streamd.auth.ims")

_DEFAULT_LIFETIME = 3600.0
_MILLISECONDS_ABOVE = 30 * 86_400.0
_MAX_ANSWER = 64 * 1024


class TokenUnavailable(StreamdError):
    """No token: the identity provider refused, failed or could not be reached.

    ``refused`` is true when it answered a 4xx (wrong client id or secret, unknown scope):
    a configuration problem that retrying soon will not fix.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ClientCredentials:
    """Fetches, caches and renews one client's token. Secrets never reach logs or errors."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        *,
        timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.url = url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        if scope:
            self._form["scope"] = scope
        self._timeout = timeout
        self._verify = verify
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = trio.Lock()
        self.fetches = 0

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: fetch a new one next time (unless already renewed)."""
        if self._token == token:
            self._token = None

    async def token(self) -> str:
        """A token valid for a while yet; raises :class:`TokenUnavailable`."""
        async with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                started = self._clock()
                token, lifetime = await self._fetch()
                self._token = token
                self._renew_at = started + min(lifetime * 0.9, max(0.0, lifetime - 60.0))
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        self.fetches += 1
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._verify) as client:
                response = await client.post(
                    self.url, data=self._form, headers={"accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise TokenUnavailable(
                f"token endpoint {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code != 200:
            detail = _error_detail(response.content)
            raise TokenUnavailable(
                f"token endpoint {self.url} answered {response.status_code}{detail}",
                refused=400 <= response.status_code < 500 and response.status_code != 429,
            )
        return _parse_answer(response.content, self.url)


def _error_detail(body: bytes) -> str:
    """``: error (description)`` from an OAuth error answer, if it is one."""
    try:
        doc = orjson.loads(body[:_MAX_ANSWER])
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(doc, dict):
        return ""
    error, description = doc.get("error"), doc.get("error_description")
    parts = [str(p)[:200] for p in (error, description) if isinstance(p, str) and p]
    return f": {' - '.join(parts)}" if parts else ""


def _parse_answer(body: bytes, url: str) -> tuple[str, float]:
    try:
        doc = orjson.loads(body[:_MAX_ANSWER]) if len(body) <= _MAX_ANSWER else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise TokenUnavailable(f"token endpoint {url}: the answer is not a JSON object")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
        raise TokenUnavailable(f"token endpoint {url}: no usable access_token in the answer")
    expires = doc.get("expires_in", _DEFAULT_LIFETIME)
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        raise TokenUnavailable(f"token endpoint {url}: expires_in is not a positive number")
    lifetime = float(expires)
    if lifetime > _MILLISECONDS_ABOVE:
        lifetime /= 1000.0
    return token, lifetime
