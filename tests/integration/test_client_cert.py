"""``auth = "client-cert"``: the verified client certificate is a source's credential,
optionally pinned by subject, common name or SHA-256 fingerprint. Real TLS over
loopback, certificates made in the test (trustme), the real daemon in process and in a
worker process."""

from __future__ import annotations

import datetime
import hashlib
import sqlite3
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from cryptography import x509

from streamd.cli import main
from streamd.service import serve
from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, make_config
from tests.integration.test_tls import server_files, tls_toml

BODY = fixture_bytes("lads_single")


@dataclass
class Certs:
    """The server's CA, the client CA streamd trusts, and client certificates."""

    server_ca: trustme.CA
    client_ca_file: Path
    adobe: trustme.LeafCert  # the one the pins name
    sibling: trustme.LeafCert  # the same CA, another subject
    expired: trustme.LeafCert  # the same CA, no longer valid
    stranger: trustme.LeafCert  # another CA

    def client(self, cert: trustme.LeafCert | None) -> httpx.AsyncClient:
        context = ssl.create_default_context()
        self.server_ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return httpx.AsyncClient(verify=context, timeout=10)


def subject_of(cert: trustme.LeafCert) -> str:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).subject.rfc4514_string()


def fingerprint_of(cert: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    client_ca = trustme.CA()
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca_file.write_bytes(client_ca.cert_pem.bytes())
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    return Certs(
        server_ca=trustme.CA(),
        client_ca_file=client_ca_file,
        adobe=client_ca.issue_cert(
            "adobe@example.com", common_name="events.adobe.example", organization_name="Adobe"
        ),
        sibling=client_ca.issue_cert(
            "other@example.com", common_name="other.example", organization_name="Other"
        ),
        expired=client_ca.issue_cert(
            "adobe@example.com",
            common_name="events.adobe.example",
            organization_name="Adobe",
            not_before=long_ago,
            not_after=long_ago + datetime.timedelta(days=30),
        ),
        stranger=trustme.CA().issue_cert(
            "adobe@example.com", common_name="events.adobe.example", organization_name="Adobe"
        ),
    )


def sources_toml(certs: Certs) -> str:
    """One source per kind of pin (and one without), and a token source beside them."""
    return f"""
[[sources]]
name = "any"
path = "/any"
auth = "client-cert"

[[sources]]
name = "by-fingerprint"
path = "/by-fingerprint"
auth = "client-cert"
[sources.client_cert]
sha256_fingerprints = ["{fingerprint_of(certs.adobe).lower().replace(":", "")}"]

[[sources]]
name = "by-subject"
path = "/by-subject"
auth = "client-cert"
[sources.client_cert]
subjects = ["{subject_of(certs.adobe)}"]

[[sources]]
name = "by-name"
path = "/by-name"
auth = "client-cert"
[sources.client_cert]
common_names = ["events.adobe.example"]

[[sources]]
name = "events"
path = "/events"
"""


@dataclass
class Daemon:
    mtls: str  # https://127.0.0.1:PORT of the mTLS listener
    plain_tls: str  # the ingest listener (TLS, no client certificate asked)
    journal: Path

    def count(self, source: str) -> int:
        conn = sqlite3.connect(self.journal)
        try:
            row = conn.execute("SELECT count(*) FROM events WHERE source = ?", (source,))
            return int(row.fetchone()[0])
        finally:
            conn.close()


@pytest.fixture(params=[0, 1], ids=["in-process", "worker"])
async def daemon(
    request: pytest.FixtureRequest, tmp_path: Path, data_dir: Path, certs: Certs
) -> AsyncIterator[Daemon]:
    certfile, keyfile = server_files(certs.server_ca, tmp_path)
    extra = (
        f"workers = {request.param}\n"
        f'mtls_listen = ["127.0.0.1:0"]\nmtls_client_ca = "{certs.client_ca_file}"\n'
        + sources_toml(certs)
    )
    config = make_config(data_dir, tls_toml(certfile, keyfile, extra))
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, config)
        port = next(iter(running.app.mtls_ports))
        yield Daemon(f"https://127.0.0.1:{port}", running.binds[0], data_dir / "journal.db")
        nursery.cancel_scope.cancel()


async def test_the_certificate_is_the_credential_and_a_token_is_ignored(
    daemon: Daemon, certs: Certs
) -> None:
    async with certs.client(certs.adobe) as c:
        reply = await c.post(daemon.mtls + "/any", content=BODY)  # no token at all
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"accepted": 1, "duplicates": 0}
        # A token is neither needed nor checked: a wrong one changes nothing.
        wrong = {"Authorization": "Bearer not-a-token"}
        reply = await c.post(daemon.mtls + "/any?access_token=nope", content=BODY, headers=wrong)
        assert reply.json() == {"accepted": 0, "duplicates": 1}
        # The validation POST carries the same credential: answered, never journaled.
        reply = await c.post(daemon.mtls + "/any", content=fixture_bytes("challenge_post"))
        assert reply.json()["validation"] == "logged"
    # A certificate of the same CA, another subject: any source without pins takes it.
    async with certs.client(certs.sibling) as c:
        reply = await c.post(daemon.mtls + "/any", content=BODY)
        assert reply.json() == {"accepted": 0, "duplicates": 1}
    assert daemon.count("any") == 1


async def test_without_a_certificate_a_client_cert_source_answers_nothing_or_401(
    daemon: Daemon, certs: Certs
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # On the listener that asks for no certificate: 401, whatever token it brings.
    async with certs.client(certs.adobe) as c:  # (a certificate nobody asked for)
        reply = await c.post(daemon.plain_tls + "/any", content=BODY, headers=headers)
        assert reply.status_code == 401
        assert reply.json() == {
            "error": "this source requires a client certificate: use the mTLS listener"
        }
        # The challenge GET needs no credential on any listener (it reveals nothing).
        reply = await c.get(daemon.plain_tls + "/any?challenge=abc")
        assert reply.text == "abc"
    # On the mTLS listener no request gets through without a certificate signed by the
    # client CA and valid today: the handshake fails, before any request is read, so
    # there is no HTTP answer at all. (GETs: a POST's body would be left half sent.)
    for cert in (None, certs.stranger, certs.expired):
        async with certs.client(cert) as c:
            with pytest.raises(httpx.HTTPError):
                await c.get(daemon.mtls + "/any?challenge=abc")
    assert daemon.count("any") == 0


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/by-fingerprint", "is not pinned by this source's client_cert.sha256_fingerprints"),
        ("/by-subject", "is not one of this source's client_cert.subjects"),
        ("/by-name", "client certificate common name ('other.example') is not one of"),
    ],
)
async def test_a_pinned_source_takes_the_pinned_certificate_and_refuses_another_with_403(
    daemon: Daemon, certs: Certs, path: str, refusal: str
) -> None:
    async with certs.client(certs.adobe) as c:
        reply = await c.post(daemon.mtls + path, content=BODY)
        assert reply.json() == {"accepted": 1, "duplicates": 0}, reply.text
    async with certs.client(certs.sibling) as c:
        reply = await c.post(daemon.mtls + path, content=BODY)
        assert reply.status_code == 403
        error = reply.json()["error"]
        assert refusal in error
        if path != "/by-name":  # the refused certificate is named: its subject
            assert repr(subject_of(certs.sibling)) in error
        if path == "/by-fingerprint":  # ... and its fingerprint
            assert fingerprint_of(certs.sibling) in error
        # The validation POST is refused alike: the credential is the same.
        reply = await c.post(daemon.mtls + path, content=fixture_bytes("challenge_post"))
        assert reply.status_code == 403
    assert daemon.count(path.lstrip("/")) == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            'auth = "client-cert"',
            'key sources[0].auth: "client-cert" needs server.mtls_listen and server.mtls_client_ca',
        ),
        (
            '[sources.client_cert]\ncommon_names = ["x"]',
            'key sources[0].client_cert: only for auth = "client-cert"',
        ),
    ],
)
def test_config_errors_without_the_mtls_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    path = tmp_path / "streamd.toml"
    path.write_text(f'[[sources]]\nname = "io"\npath = "/io"\n{source}\n')
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            'token_files = ["t"]',
            'key sources[0].token_files: not used by auth = "client-cert"',
        ),
        ("[sources.client_cert]", "key sources[0].client_cert: pins nothing"),
        (
            '[sources.client_cert]\nsha256_fingerprints = ["AB:CD"]',
            "key sources[0].client_cert.sha256_fingerprints[0]: 'AB:CD' is not a SHA-256 "
            "fingerprint: 64 hex digits",
        ),
        (
            '[sources.client_cert]\nsha256_fingerprints = ["' + "g" * 64 + '"]',
            "key sources[0].client_cert.sha256_fingerprints[0]: 'gggg",
        ),
        (
            '[sources.client_cert]\nsubjects = ["CN=a,O=b", "events.adobe.io"]',
            "key sources[0].client_cert.subjects[1]: 'events.adobe.io' is not a "
            "distinguished name (RFC 4514",
        ),
        (
            '[sources.client_cert]\ncommon_names = [" "]',
            "key sources[0].client_cert.common_names[0]: ' ': a common name is one non-empty",
        ),
        (
            '[sources.client_cert]\nsubject = ["CN=a"]',
            "key sources[0].client_cert: object contains unknown field `subject`",
        ),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], certs: Certs, source: str, message: str
) -> None:
    certfile, keyfile = server_files(certs.server_ca, tmp_path)
    extra = f'mtls_listen = ["127.0.0.1:0"]\nmtls_client_ca = "{certs.client_ca_file}"\n'
    path = tmp_path / "streamd.toml"
    path.write_text(
        tls_toml(certfile, keyfile, extra)
        + f'[[sources]]\nname = "io"\npath = "/io"\nauth = "client-cert"\n{source}\n'
    )
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_check_config_reports_what_each_client_cert_source_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], certs: Certs
) -> None:
    certfile, keyfile = server_files(certs.server_ca, tmp_path)
    extra = f'mtls_listen = ["127.0.0.1:0"]\nmtls_client_ca = "{certs.client_ca_file}"\n'
    pins = (
        f'subjects = ["{subject_of(certs.adobe)}"]\n'
        f'sha256_fingerprints = ["{fingerprint_of(certs.adobe)}", '
        f'"sha256 Fingerprint={fingerprint_of(certs.sibling)}"]\n'
    )
    path = tmp_path / "streamd.toml"
    path.write_text(
        tls_toml(certfile, keyfile, extra)
        + sources_toml(certs)
        + f'[[sources]]\nname = "both"\npath = "/both"\nauth = "client-cert"\n'
        f"[sources.client_cert]\n{pins}"
    )
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "sources: any at /any (client certificate: any that server.mtls_client_ca signs), "
        "by-fingerprint at /by-fingerprint (client certificate: pinned by 1 SHA-256 "
        "fingerprint), by-subject at /by-subject (client certificate: pinned by 1 subject), "
        "by-name at /by-name (client certificate: pinned by 1 common name), "
        "events at /events, both at /both (client certificate: pinned by 1 subject, "
        "2 SHA-256 fingerprints);"
    ) in out


async def test_streamd_emit_rehearses_an_mtls_registration(
    daemon: Daemon, certs: Certs, tmp_path: Path
) -> None:
    """``streamd emit --client-cert``: the sender's side of Adobe's mutual TLS."""
    from tests.system._harness import streamd_argv

    server_ca = tmp_path / "server-ca.pem"
    certs.server_ca.cert_pem.write_to_path(str(server_ca))
    files = {}
    for name in ("adobe", "sibling"):
        cert: trustme.LeafCert = getattr(certs, name)
        files[name] = tmp_path / f"{name}.pem"  # certificate and key in one file
        cert.private_key_and_cert_chain_pem.write_to_path(str(files[name]))

    async def emit(cert: Path, count: int) -> tuple[int, str, list[str]]:
        acked = tmp_path / f"acked-{cert.stem}"
        argv = [*streamd_argv(), "emit", "--mode=io", "--no-sign", "--unpaced",
                "--progress=0", f"--count={count}", f"--to={daemon.mtls}/by-fingerprint",
                f"--ca-file={server_ca}", f"--client-cert={cert}", f"--acked={acked}"]  # fmt: skip
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                      check=False)  # fmt: skip
        out = done.stdout.decode() + done.stderr.decode()
        return done.returncode, out, acked.read_text().split() if acked.exists() else []

    status, out, acked = await emit(files["adobe"], 200)
    assert status == 0, out
    assert len(acked) == 200 and daemon.count("by-fingerprint") == 200
    # Another certificate of the same CA, not the pinned one: refused, nothing stored.
    status, out, acked = await emit(files["sibling"], 20)
    assert acked == [] and daemon.count("by-fingerprint") == 200
    assert "403" in out, out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--client-key=KEY"], "--client-key needs --client-cert"),
        (["--client-cert=MISSING"], "not a readable PEM certificate and matching private key"),
        (["--client-cert=CERT_ONLY"], "not a readable PEM certificate and matching private key"),
    ],
)
def test_emit_client_certificate_flags_are_checked(
    tmp_path: Path, certs: Certs, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cert_only = tmp_path / "cert-only.pem"
    certs.adobe.cert_chain_pems[0].write_to_path(str(cert_only))
    key = tmp_path / "key.pem"
    certs.adobe.private_key_pem.write_to_path(str(key))
    names = {"KEY": key, "MISSING": tmp_path / "missing.pem", "CERT_ONLY": cert_only}
    argv = [f.split("=")[0] + "=" + str(names[f.split("=")[1]]) for f in flags]
    status = main(["emit", "--mode=io", "--to=https://127.0.0.1:9/x", "--count=1", *argv])
    assert status == 2
    assert message in capsys.readouterr().err
