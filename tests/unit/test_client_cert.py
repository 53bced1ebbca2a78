"""The pins of an ``auth = "client-cert"`` source and the ASGI TLS extension, without a
network: the forms operators copy from openssl, and what each verdict says."""

from __future__ import annotations

import hashlib
import ssl

import pytest
import trustme

from streamd.auth.client_cert import (
    NO_CERTIFICATE,
    ClientCertCheck,
    parse_fingerprint,
    parse_subject,
    peer_certificate,
    tls_extension,
)

CA = trustme.CA()
ADOBE = CA.issue_cert("a@example.com", common_name="events.adobe.example", organization_name="A")
OTHER = CA.issue_cert("b@example.com", common_name="other.example", organization_name="B")


def pem_of(cert: trustme.LeafCert) -> str:
    return cert.cert_chain_pems[0].bytes().decode()


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_of(cert))


DIGEST = hashlib.sha256(der_of(ADOBE)).digest()
COLONS = ":".join(f"{b:02X}" for b in DIGEST)


@pytest.mark.parametrize(
    "text",
    [
        COLONS,
        COLONS.lower(),
        COLONS.replace(":", ""),
        f"sha256 Fingerprint={COLONS}",
        f" {COLONS}\n",
    ],
    ids=["openssl", "lower", "bare", "openssl-prefix", "spaces"],
)
def test_fingerprint_forms_operators_copy(text: str) -> None:
    assert parse_fingerprint(text) == DIGEST


@pytest.mark.parametrize(
    "text",
    ["", "AB:CD", COLONS[:-3], COLONS + ":00", "g" * 64, COLONS.replace(":", "-")],
    # Fixed ids: the certificate is made anew in each process, and pytest-xdist's
    # workers must collect the same test names.
    ids=["empty", "short", "one-byte-short", "one-byte-long", "not-hex", "dashes"],
)
def test_malformed_fingerprints(text: str) -> None:
    with pytest.raises(ValueError, match="is not a SHA-256 fingerprint: 64 hex digits"):
        parse_fingerprint(text)


def test_subjects_compare_as_names_not_as_text() -> None:
    subject = "CN=events.adobe.example,O=A"
    assert parse_subject("cn=events.adobe.example,o=A") == parse_subject(subject)
    assert parse_subject("CN=events.adobe.example,O=a") != parse_subject(subject)
    for bad in ("", "events.adobe.io", "CN="):
        with pytest.raises(ValueError, match="is not a distinguished name"):
            parse_subject(bad)


def _subject(cert: trustme.LeafCert) -> str:
    name = tls_extension(der_of(cert), "TLSv1.3")["client_cert_name"]
    assert isinstance(name, str)
    return name


def test_every_configured_kind_of_pin_must_match() -> None:
    check = ClientCertCheck.from_config([_subject(ADOBE)], [], [COLONS])
    assert check.problem(pem_of(ADOBE)) is None
    status, message = check.problem(pem_of(OTHER)) or (0, "")
    assert status == 403 and "client_cert.sha256_fingerprints" in message
    # The right subject with another certificate (a re-issue) fails the fingerprint pin.
    reissued = CA.issue_cert(
        "a@example.com", common_name="events.adobe.example", organization_name="A"
    )
    assert _subject(reissued) != _subject(ADOBE)  # trustme adds a unique OU
    by_name = ClientCertCheck.from_config([], ["events.adobe.example"], [])
    assert by_name.problem(pem_of(reissued)) is None
    assert ClientCertCheck.from_config([], ["events.adobe.example"], [COLONS]).problem(
        pem_of(reissued)
    ) == (
        403,
        f"client certificate {_subject(reissued)!r} (SHA-256 "
        f"{':'.join(f'{b:02X}' for b in hashlib.sha256(der_of(reissued)).digest())}) "
        "is not pinned by this source's client_cert.sha256_fingerprints",
    )


def test_no_certificate_is_401_and_no_pins_take_any() -> None:
    assert ClientCertCheck().problem(None) == (401, NO_CERTIFICATE)
    assert ClientCertCheck().problem(pem_of(OTHER)) is None
    assert not ClientCertCheck().pinned


def test_the_asgi_tls_extension() -> None:
    tls = tls_extension(der_of(ADOBE), "TLSv1.3")
    assert tls["client_cert_chain"] == [ssl.DER_cert_to_PEM_cert(der_of(ADOBE))]
    assert tls["client_cert_name"].startswith("CN=events.adobe.example,")
    assert tls["tls_version"] == 0x0304 and tls["client_cert_error"] is None
    assert peer_certificate({"extensions": {"tls": tls}}) == tls["client_cert_chain"][0]
    none = tls_extension(None, "TLSv1.2")
    assert none["client_cert_chain"] == [] and none["tls_version"] == 0x0303
    assert peer_certificate({"extensions": {"tls": none}}) is None
    assert peer_certificate({"extensions": {}}) is None
