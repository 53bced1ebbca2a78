"""OAuth 2.0 client credentials, as the legacy push sender does them (CONTRACT.md §1a).

The customer gives Marketo an identity provider URL, a client id and a secret; Marketo
fetches a token there and sends it as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import urlencode

import orjson
import trio

from streamd.emit.errors import EmitError
from streamd.emit.http import Connection, HttpError, Target

_DEFAULT_LIFETIME: Final = 3600.0
_EARLY: Final = 30.0  # refresh this long before the token expires


class TokenFetchError(EmitError):
    """Raised when the identity provider does not hand out a token."""


class ClientCredentials:
    """Fetches, caches and refreshes a bearer token from an identity provider.

    The request is ``POST <url>`` with the form ``grant_type=client_credentials``,
    ``client_id`` and ``client_secret``; the answer must be JSON with ``access_token``
    (and optionally ``expires_in`` seconds).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = Target.parse(url)
        self._ssl = ssl_context
        self._form = urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            }
        ).encode()
        self._timeout = timeout
        self._token: str | None = None
        self._expires = 0.0
        self._lock = trio.Lock()
        self.fetches = 0

    def invalidate(self) -> None:
        """Forget the cached token (the receiver answered 401): the next call fetches anew."""
        self._token = None

    async def token(self) -> str:
        """A valid token, fetched when none is cached or it is about to expire.

        Raises :class:`TokenFetchError` with the provider's answer when it refuses.
        """
        async with self._lock:
            if self._token is not None and trio.current_time() < self._expires:
                return self._token
            self._token, lifetime = await self._fetch()
            self._expires = trio.current_time() + max(0.0, lifetime - _EARLY)
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        conn = Connection(self.target, ssl_context=self._ssl)
        headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
            ("Connection", "close"),
        ]
        self.fetches += 1
        try:
            with trio.fail_after(self._timeout):
                resp = await conn.request("POST", self.target.path, headers, self._form)
        except trio.TooSlowError as exc:
            raise TokenFetchError(f"identity provider {self.target.origin}: timed out") from exc
        except HttpError as exc:
            raise TokenFetchError(f"identity provider: {exc}") from exc
        finally:
            await conn.aclose()
        if resp.status != 200:
            snippet = resp.body[:200].decode("utf-8", "replace")
            raise TokenFetchError(f"identity provider answered {resp.status}: {snippet!r}")
        try:
            doc = orjson.loads(resp.body)
            token = doc["access_token"]
            lifetime = float(doc.get("expires_in", _DEFAULT_LIFETIME))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TokenFetchError(
                "identity provider's answer has no access_token in a JSON object"
            ) from exc
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise TokenFetchError("identity provider's access_token is not a usable string")
        return token, lifetime
