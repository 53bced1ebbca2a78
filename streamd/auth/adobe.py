"""Adobe I/O Events signatures: who may put an event into a signed source.

Adobe signs the exact body bytes with RSA PKCS#1 v1.5 / SHA-256 twice
(``x-adobe-digital-signature-1`` and ``-2``, base64), and names the public
keys' paths (``x-adobe-public-key1-path``, ``-2-path``) on its key host. The
request is authentic when either signature verifies. The deprecated
``x-adobe-signature`` is a base64 HMAC-SHA256 of the body keyed with the
client secret; it is accepted only when a secret is configured and no
digital signature is present.

Keys are fetched from the configured key host only after the path passed a
strict pattern (a path is sender-controlled), once per path at a time, and
cached in memory and on disk for at most ``max_age`` (24 h by Adobe's rule).
Pinned keys (config) are never fetched: the air-gapped set-up.

Failure classes map to statuses (CONTRACT.md §3): :class:`SignatureInvalid`
401, :class:`KeyHostUnavailable` 503 (Adobe retries; never a 4xx for our
own trouble).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from streamd.errors import StreamdError
from streamd.fsutil import atomic_write

# cryptography and httpx are imported where they are used: an ingest worker or a daemon
# with no Adobe source never loads them (ARCHITECTURE.md, "What a process imports").
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger("streamd.auth.adobe")

# /prod/keys/pub-key-voy5XEbWmT.pem (and the stage host's /stage/keys/...)
KEY_PATH = re.compile(r"/(?:prod|stage)/keys/pub-key-[A-Za-z0-9_-]{1,128}\.pem")
MAX_KEY_BYTES = 16 * 1024
MAX_SIGNATURE_CHARS = 2048  # base64 of a 8192-bit signature is 1,368
SIGNATURE_HEADERS = (
    (b"x-adobe-digital-signature-1", b"x-adobe-public-key1-path"),
    (b"x-adobe-digital-signature-2", b"x-adobe-public-key2-path"),
)


class SignatureInvalid(StreamdError):
    """Missing, malformed or not verifying: answer 401, store nothing."""

    status_hint = 401


class KeyHostUnavailable(StreamdError):
    """The key host did not answer usably: answer 503 so Adobe retries."""

    status_hint = 503
    reason = "key_host"


@dataclass(frozen=True, slots=True)
class Presented:
    """The signature material of one request, checked for form before the body is read."""

    signatures: tuple[tuple[bytes, str], ...]  # (signature, key path)
    legacy_hmac: bytes | None


def presented(headers: Mapping[bytes, bytes], *, allow_legacy: bool) -> Presented:
    """Pick the signatures and key paths out of the headers.

    Raises :class:`SignatureInvalid` when none is present or one is malformed
    (a bad key path is refused here: nothing is fetched for it).
    """
    signatures = []
    for sig_header, path_header in SIGNATURE_HEADERS:
        sig = headers.get(sig_header)
        path = headers.get(path_header)
        if sig is None and path is None:
            continue
        name = sig_header.decode()
        if sig is None or path is None:
            raise SignatureInvalid(f"{name} and its public key path must come together")
        text = path.decode("latin-1")
        if not KEY_PATH.fullmatch(text):
            raise SignatureInvalid(f"{path_header.decode()} is not an Adobe key path")
        signatures.append((_b64(sig, name), text))
    legacy = None
    raw_legacy = headers.get(b"x-adobe-signature")
    if allow_legacy and raw_legacy is not None and not signatures:
        legacy = _b64(raw_legacy, "x-adobe-signature")
    if not signatures and legacy is None:
        raise SignatureInvalid("missing Adobe signature (x-adobe-digital-signature-1/-2)")
    return Presented(tuple(signatures), legacy)


def _b64(value: bytes, name: str) -> bytes:
    if len(value) > MAX_SIGNATURE_CHARS:
        raise SignatureInvalid(f"{name} is too long")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid(f"{name} is not base64") from None


def verify_rsa(key: rsa.RSAPublicKey, body: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s PKCS#1 v1.5 SHA-256 signature of ``body``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def verify_hmac(secret: bytes, body: bytes, signature: bytes) -> bool:
    """The deprecated ``x-adobe-signature``: HMAC-SHA256 of the body, compared in constant time."""
    return hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest(), signature)


def load_public_key(pem: bytes, where: str) -> rsa.RSAPublicKey:
    """An RSA public key from SPKI PEM; :class:`ValueError` naming ``where`` otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{where}: not an RSA public key")
    if key.key_size < 2048:
        raise ValueError(f"{where}: RSA key of {key.key_size} bits; at least 2048 expected")
    return key


@dataclass(slots=True)
class _Cached:
    key: rsa.RSAPublicKey
    fetched: float  # time.time() of the fetch


@dataclass
class KeyStore:
    """Adobe's public keys by path: pinned, cached (memory, then disk), or fetched."""

    key_host: str
    cache_dir: str | None
    max_age: float = 24 * 3600.0
    fetch: bool = True
    timeout: float = 5.0
    pinned: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    fetches: int = 0
    _memory: dict[str, _Cached] = field(default_factory=dict)
    _locks: dict[str, trio.Lock] = field(default_factory=dict)

    async def key(self, path: str) -> rsa.RSAPublicKey:
        """The key at ``path`` (already checked against :data:`KEY_PATH`).

        Raises :class:`SignatureInvalid` for a key Adobe does not have (404,
        or not a key) and :class:`KeyHostUnavailable` when the host fails.
        """
        pinned = self.pinned.get(path)
        if pinned is not None:
            return pinned
        cached = self._fresh(path)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(path, trio.Lock())
        async with lock:  # one fetch per path at a time; the others wait for it
            cached = self._fresh(path)
            if cached is None:
                cached = await trio.to_thread.run_sync(self._from_disk, path)
            if cached is None:
                cached = await self._fetch(path)
            return cached

    def _fresh(self, path: str) -> rsa.RSAPublicKey | None:
        entry = self._memory.get(path)
        if entry is not None and self.clock() - entry.fetched < self.max_age:
            return entry.key
        return None

    def _disk_path(self, path: str) -> str | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256((self.key_host + path).encode()).hexdigest()[:32]
        return os.path.join(self.cache_dir, f"{digest}.pem")

    def _from_disk(self, path: str) -> rsa.RSAPublicKey | None:
        file = self._disk_path(path)
        if file is None:
            return None
        try:
            fetched = os.stat(file).st_mtime
            if self.clock() - fetched >= self.max_age:
                return None
            with open(file, "rb") as f:
                key = load_public_key(f.read(MAX_KEY_BYTES + 1), file)
        except (OSError, ValueError):
            return None  # missing, stale or damaged: fetch again
        self._memory[path] = _Cached(key, fetched)
        return key

    async def _fetch(self, path: str) -> rsa.RSAPublicKey:
        if not self.fetch:
            raise SignatureInvalid(f"unknown Adobe key {path} (key fetching is off; pin it)")
        url = self.key_host.rstrip("/") + path
        self.fetches += 1
        import httpx

        try:
            # A client per fetch: fetches are rare (a key per path per day), and nothing
            # stays open between them.
            async with (
                httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code in (403, 404, 410):
                    raise SignatureInvalid(f"the key host has no key {path}")
                if response.status_code != 200:
                    raise KeyHostUnavailable(
                        f"key host answered {response.status_code} for {path}; retry later"
                    )
                pem = b""
                async for chunk in response.aiter_bytes():
                    pem += chunk
                    if len(pem) > MAX_KEY_BYTES:
                        raise SignatureInvalid(f"the key at {path} is larger than a key")
        except httpx.HTTPError as exc:
            raise KeyHostUnavailable(f"key host unreachable ({type(exc).__name__})") from None
        try:
            key = load_public_key(pem, url)
        except ValueError as exc:
            raise SignatureInvalid(str(exc)) from None
        now = self.clock()
        self._memory[path] = _Cached(key, now)
        await trio.to_thread.run_sync(self._to_disk, path, pem)
        log.info("fetched Adobe public key %s", path)
        return key

    def _to_disk(self, path: str, pem: bytes) -> None:
        file = self._disk_path(path)
        if file is None:
            return
        try:
            os.makedirs(os.path.dirname(file), mode=0o700, exist_ok=True)
            # Public keys: readable as a plain open() would have made them (0666 - umask).
            atomic_write(file, pem, mode=0o666)
        except OSError as exc:  # the memory cache still works
            log.warning("cannot cache Adobe key %s on disk: %s", path, exc)


@dataclass
class SignatureCheck:
    """A source's whole check: signatures over the body, then the recipient."""

    keys: KeyStore
    client_id: str
    client_secret: bytes | None = None

    def presented(self, headers: Mapping[bytes, bytes]) -> Presented:
        return presented(headers, allow_legacy=self.client_secret is not None)

    async def verify(self, material: Presented, body: bytes) -> None:
        """Raise :class:`SignatureInvalid` unless one signature verifies over ``body``."""
        if material.legacy_hmac is not None:
            assert self.client_secret is not None
            if verify_hmac(self.client_secret, body, material.legacy_hmac):
                return
            raise SignatureInvalid("x-adobe-signature does not match the body")
        unavailable: KeyHostUnavailable | None = None
        for signature, path in material.signatures:
            try:
                key = await self.keys.key(path)
            except KeyHostUnavailable as exc:
                unavailable = exc  # the other signature may still verify
                continue
            except SignatureInvalid:
                continue
            if verify_rsa(key, body, signature):
                return
        if unavailable is not None:
            raise unavailable
        raise SignatureInvalid("no Adobe signature verifies over the body")

    def check_recipient(self, recipients: frozenset[str]) -> str | None:
        """The problem when an item names another registration's client id, else None.

        Items that name no recipient (the older wrapper does not) are accepted:
        the signature already proves Adobe sent them.
        """
        others = sorted(r for r in recipients if r != self.client_id)
        if others:
            return f"events addressed to another client id ({others[0][:100]!r})"
        return None
