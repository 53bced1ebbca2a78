"""The emulator over HTTPS: a receiver with a certificate from a private CA."""

from __future__ import annotations

import datetime
import ipaddress
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamd.emit.accounting import Ledger
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.sender import EmitOptions, run_emit


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA); (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamd test receiver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _receiver(request: Request) -> Reply:
    if "challenge" in request.query:
        return Reply(200, request.query["challenge"].encode())
    return Reply(200, b'{"accepted": 20, "duplicates": 0}')


@pytest.mark.parametrize("mode", ["legacy", "io"])
async def test_https_with_a_private_ca(tmp_path: Path, mode: str) -> None:
    cert, key = _certificate(tmp_path)
    async with trio.open_nursery() as nursery:
        serve = partial(serve_handler, certfile=str(cert), keyfile=str(key))
        binds = await nursery.start(serve, _receiver, "127.0.0.1:0")
        url = binds[0].replace("http://", "https://") + "/hook"
        assert url.startswith("https://127.0.0.1:")
        opts = EmitOptions(url=url, mode=mode, count=40, batch=20, unpaced=True, ca_file=cert)  # type: ignore[arg-type]
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert summary["events_acked"] == 40 and summary["outcomes"] == {"200": 2}


async def test_an_untrusted_certificate_is_a_failed_attempt(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    async with trio.open_nursery() as nursery:
        serve = partial(serve_handler, certfile=str(cert), keyfile=str(key))
        binds = await nursery.start(serve, _receiver, "127.0.0.1:0")
        url = binds[0].replace("http://", "https://") + "/hook"
        opts = EmitOptions(url=url, count=20, batch=20, drain=0.3, time_scale=3600.0)
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert summary["events_acked"] == 0 and set(summary["outcomes"]) == {"connection"}
