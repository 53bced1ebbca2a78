"""The embedded OAuth issuer: streamd as the identity-provider URL given to Marketo.

Marketo's legacy push can authenticate with OAuth client credentials: it POSTs
``grant_type=client_credentials`` with a client id and secret to an IdP URL,
then sends ``Authorization: Bearer <token>``. ``POST /oauth/token`` on the ingest
listener is that URL. Client secrets are stored only as PBKDF2-SHA256 hashes
(``streamd oauth hash-secret`` makes one); tokens are short-lived, signed with
HMAC-SHA256 by a key streamd generates in the data directory, and checked
without any state. Failed token requests are limited per client address, so a
secret cannot be guessed at network speed.

Token form: ``sdo.<base64url(JSON {"sub", "iat", "exp", "jti"})>.<base64url(MAC)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from streamd.errors import ConfigError
from streamd.fsutil import atomic_write

PBKDF2_ITERATIONS = 200_000
_PREFIX = "sdo."


def hash_secret(secret: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (base64) for the configuration."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return "$".join(("pbkdf2_sha256", str(iterations), _b64(salt), _b64(digest)))


def check_secret(secret: str, stored: str) -> bool:
    """Does ``secret`` match a :func:`hash_secret` line? (constant time)"""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        computed = hashlib.pbkdf2_hmac("sha256", secret.encode(), _unb64(salt), int(iterations))
        return hmac.compare_digest(computed, _unb64(digest))
    except (ValueError, binascii.Error):
        return False


def validate_hash(stored: str, where: str) -> None:
    """Raise :class:`ConfigError` unless ``stored`` is a usable secret hash."""
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != "pbkdf2_sha256" or not parts[1].isdigit():
        raise ConfigError(f"{where}: not a secret hash (make one with: streamd oauth hash-secret)")
    if not 10_000 <= int(parts[1]) <= 10_000_000:
        raise ConfigError(f"{where}: iterations must be 10000 to 10000000")
    try:
        _unb64(parts[2])
        _unb64(parts[3])
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: the salt or hash is not base64") from None


def load_or_create_key(path: str) -> bytes:
    """The token signing key (32 random bytes), created with mode 0600 on first use."""
    try:
        with open(path, "rb") as f:
            key = f.read(1024)
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        try:
            atomic_write(path, key, mode=0o600)
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot create the OAuth signing key: {exc.strerror or exc}"
            ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the OAuth signing key: {exc.strerror}") from None
    if len(key) < 32:
        raise ConfigError(f"{path}: the OAuth signing key is shorter than 32 bytes")
    return key


@dataclass
class Issuer:
    """Issues and checks tokens; counts failed requests per client address."""

    clients: Mapping[str, str]  # client id -> secret hash
    key: bytes
    ttl: int = 3600
    max_failures: int = 5  # per address per window
    window: float = 60.0
    clock: Callable[[], float] = time.time
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def issue(self, client_id: str) -> tuple[str, int]:
        """A token for ``client_id`` and its lifetime in seconds."""
        now = int(self.clock())
        claims = {"sub": client_id, "iat": now, "exp": now + self.ttl, "jti": secrets.token_hex(8)}
        payload = _b64(orjson.dumps(claims))
        mac = _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())
        return f"{_PREFIX}{payload}.{mac}", self.ttl

    def check(self, token: bytes | None) -> str | None:
        """The client id a valid, unexpired token was issued to; None otherwise."""
        if token is None or not token.startswith(b"sdo.") or len(token) > 1024:
            return None
        try:
            payload, mac = token[len(_PREFIX) :].decode("ascii").split(".")
        except (UnicodeDecodeError, ValueError):
            return None
        expected = _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            return None
        try:
            claims = orjson.loads(_unb64(payload))
        except (orjson.JSONDecodeError, ValueError, binascii.Error):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
            return None
        if claims["exp"] <= self.clock() or claims.get("sub") not in self.clients:
            return None  # expired, or a client no longer configured
        return str(claims["sub"])

    def blocked(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        now = self.clock()
        recent = [t for t in self._failures.get(address, []) if now - t < self.window]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        if len(recent) < self.max_failures:
            return 0.0
        return max(1.0, self.window - (now - recent[0]))

    def failed(self, address: str) -> None:
        self._failures.setdefault(address, []).append(self.clock())
        if len(self._failures) > 10_000:  # bounded: forget the oldest addresses
            for stale in list(self._failures)[:1_000]:
                del self._failures[stale]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
