"""Client certificates as a source's credential (``auth = "client-cert"``).

The mTLS listener (``server.mtls_listen``) has verified the certificate during the
handshake: signed by ``server.mtls_client_ca``, within its validity, and the client
holds its key; a client without such a certificate never gets a request through. What
is left to decide here is which of those certificates a source takes: any, or those
pinned by subject, by subject common name and/or by SHA-256 fingerprint. Every kind of
pin that is configured must match; within one kind, any item may.

The certificate reaches the app in the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``, PEM, the client's own first),
which streamd's HTTP edge fills in (hypercorn does not).
"""

from __future__ import annotations

import functools
import hashlib
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# cryptography is imported where it is used: a daemon or an ingest worker with no mTLS
# client ever loads it (ARCHITECTURE.md, "What a process imports").
if TYPE_CHECKING:
    from cryptography import x509

NO_CERTIFICATE = "this source requires a client certificate: use the mTLS listener"
# "AB:CD:...", "abcd..." or "sha256 Fingerprint=AB:..." as openssl prints it.
_FINGERPRINT = re.compile(r"(?:sha256 fingerprint=)?([0-9a-f]{2}(?::?[0-9a-f]{2}){31})", re.I)


def parse_fingerprint(text: str) -> bytes:
    """The 32 bytes of a SHA-256 fingerprint written in hex (colons between the pairs of
    digits allowed, any case). Raises ``ValueError`` with the expected form."""
    match = _FINGERPRINT.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text[:120]!r} is not a SHA-256 fingerprint: 64 hex digits, colons between "
            "pairs allowed, as 'openssl x509 -noout -fingerprint -sha256' prints it"
        )
    return bytes.fromhex(match.group(1).replace(":", ""))


def parse_subject(text: str) -> x509.Name:
    """A distinguished name written as RFC 4514 says (most specific first), as
    ``openssl x509 -noout -subject -nameopt RFC2253`` prints it. Raises ``ValueError``."""
    from cryptography import x509

    problem = ""
    try:
        name = x509.Name.from_rfc4514_string(text.strip())
    except ValueError as exc:
        name, problem = x509.Name([]), f": {exc}" if str(exc) else ""
    if not name.rdns:
        raise ValueError(
            f"{text[:120]!r} is not a distinguished name (RFC 4514, e.g. "
            f"'CN=client.example.com,O=Example Inc.,C=US'){problem}"
        )
    return name


def show_fingerprint(digest: bytes) -> str:
    """``AB:CD:...``, as openssl prints a fingerprint."""
    return ":".join(f"{b:02X}" for b in digest)


@dataclass(frozen=True, slots=True)
class _Identity:
    fingerprint: bytes
    subject: x509.Name
    common_names: tuple[str, ...]
    shown: str  # the subject as RFC 4514 writes it, for messages


@functools.lru_cache(maxsize=64)  # a sender presents the same certificate every time
def _identify(pem: str) -> _Identity:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    der = ssl.PEM_cert_to_DER_cert(pem)
    cert = x509.load_der_x509_certificate(der)
    names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    shown = cert.subject.rfc4514_string()[:300]
    return _Identity(hashlib.sha256(der).digest(), cert.subject, names, shown)


# IANA's numbers of the TLS versions Python names (the ASGI TLS extension's tls_version).
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(peer_der: bytes | None, version: str | None) -> dict[str, Any]:
    """The ASGI TLS extension (``scope["extensions"]["tls"]``) of a connection whose
    client presented ``peer_der`` (a verified certificate, DER; None: none) over TLS
    ``version`` (``ssl.SSLObject.version()``). Python gives only the client's own
    certificate, not its chain, and no cipher suite number."""
    chain = [] if peer_der is None else [ssl.DER_cert_to_PEM_cert(peer_der)]
    name = None
    if peer_der is not None:
        from cryptography import x509

        name = x509.load_der_x509_certificate(peer_der).subject.rfc4514_string()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that failed verification never gets here
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
    }


def peer_certificate(scope: Mapping[str, Any]) -> str | None:
    """The client's certificate (PEM) from the request's ASGI TLS extension, or None
    (plain HTTP, or a TLS listener that asked for none)."""
    tls = (scope.get("extensions") or {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not chain:
        return None
    first = next(iter(chain))
    return first if isinstance(first, str) else None


@dataclass(frozen=True, slots=True)
class ClientCertCheck:
    """Which verified client certificates an ``auth = "client-cert"`` source accepts
    (every set is empty: any the mTLS listener's CA signed)."""

    subjects: frozenset[x509.Name] = frozenset()
    common_names: frozenset[str] = frozenset()
    fingerprints: frozenset[bytes] = frozenset()

    @classmethod
    def from_config(
        cls, subjects: Iterable[str], common_names: Iterable[str], fingerprints: Iterable[str]
    ) -> ClientCertCheck:
        """Build from the configuration's lists. Raises ``ValueError`` on a malformed
        subject or fingerprint (the configuration checks name the key first)."""
        return cls(
            frozenset(parse_subject(s) for s in subjects),
            frozenset(common_names),
            frozenset(parse_fingerprint(f) for f in fingerprints),
        )

    @property
    def pinned(self) -> bool:
        """Whether any pin narrows what the CA signed."""
        return bool(self.subjects or self.common_names or self.fingerprints)

    def problem(self, pem: str | None) -> tuple[int, str] | None:
        """The status and message for a request with client certificate ``pem`` (None:
        it brought none), or None when the certificate is accepted: 401 without one, 403
        for one that no pin of a configured kind matches."""
        if pem is None:
            return 401, NO_CERTIFICATE
        if not self.pinned:
            return None
        try:
            who = _identify(pem)
        except ValueError:  # the handshake verified it, so this would be our own bug
            return 403, "the client certificate cannot be read"
        if self.fingerprints and who.fingerprint not in self.fingerprints:
            return 403, (
                f"client certificate {who.shown!r} (SHA-256 "
                f"{show_fingerprint(who.fingerprint)}) is not pinned by this source's "
                "client_cert.sha256_fingerprints"
            )
        if self.subjects and who.subject not in self.subjects:
            return 403, (
                f"client certificate subject {who.shown!r} is not one of this source's "
                "client_cert.subjects"
            )
        if self.common_names and not self.common_names.intersection(who.common_names):
            names = ", ".join(repr(n[:100]) for n in who.common_names) or "none"
            return 403, (
                f"client certificate common name ({names}) is not one of this source's "
                "client_cert.common_names"
            )
        return None
