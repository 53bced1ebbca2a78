"""Adobe I/O Events signatures: a test key pair, signed bodies, a loopback key server.

Adobe signs each delivery with RSA PKCS#1 v1.5 / SHA-256 over the raw body, twice (two
keys, so one can rotate), sends the signatures base64 in ``x-adobe-digital-signature-1``
and ``-2``, and the paths of the public keys (SPKI PEM) in ``x-adobe-public-key1-path``
and ``-2-path``; a receiver fetches them from ``https://static.adobeioevents.com`` +
path. The emulator generates its own key pair per run and serves the public keys at
those paths on loopback, so a receiver under test fetches them from there instead.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Final

from streamd.emit.asgi import Reply, Request
from streamd.emit.errors import EmitError

KEY_BITS: Final = 2048


@dataclass(frozen=True, slots=True)
class Signatures:
    """The signature headers of one body (the same on every retry of it)."""

    sig1: str
    sig2: str


class Signer:
    """Two freshly generated RSA keys and the paths their public halves are served at.

    Raises :class:`EmitError` when the ``cryptography`` package is not installed
    (``pip install 'streamd[emit]'``).
    """

    def __init__(self) -> None:
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding, rsa
        except ImportError as exc:  # pragma: no cover - the test extra installs it
            raise EmitError(
                "signing needs the 'cryptography' package: pip install 'streamd[emit]' "
                "(or pass --no-sign)"
            ) from exc
        self._padding = padding.PKCS1v15()
        self._hash = hashes.SHA256()
        self._keys = [rsa.generate_private_key(65537, KEY_BITS) for _ in range(2)]
        self.paths = [f"/prod/keys/pub-key-{secrets.token_hex(8)}.pem" for _ in self._keys]
        self.public_pems = {
            path: key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for path, key in zip(self.paths, self._keys, strict=True)
        }

    def sign(self, body: bytes) -> Signatures:
        """Both signatures of ``body`` (base64)."""
        sig1, sig2 = (
            base64.b64encode(key.sign(body, self._padding, self._hash)).decode()
            for key in self._keys
        )
        return Signatures(sig1, sig2)

    def headers(self, signatures: Signatures) -> list[tuple[str, str]]:
        """The signature and key-path headers of a delivery."""
        return [
            ("x-adobe-digital-signature-1", signatures.sig1),
            ("x-adobe-digital-signature-2", signatures.sig2),
            ("x-adobe-public-key1-path", self.paths[0]),
            ("x-adobe-public-key2-path", self.paths[1]),
        ]

    async def serve_key(self, request: Request) -> Reply:
        """The key server's handler: the PEM at a key path, 404 anywhere else."""
        pem = self.public_pems.get(request.path)
        if request.method != "GET" or pem is None:
            return Reply(404, b"no such key\n", [("content-type", "text/plain")])
        return Reply(200, pem, [("content-type", "application/x-pem-file")])
