"""TLS and mTLS listeners with certificates made in the test (trustme), real handshakes."""

from __future__ import annotations

import os
import signal
import ssl
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from streamd.cli import main
from streamd.service import serve
from streamd.service.config import Config
from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, make_config


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_files(ca: trustme.CA, where: Path, name: str = "server") -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = where / f"{name}.pem", where / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


def tls_toml(certfile: Path, keyfile: Path, extra: str = "") -> str:
    return f'[server]\ntls_certfile = "{certfile}"\ntls_keyfile = "{keyfile}"\n{extra}'


async def test_tls_listener_serves_https_and_refuses_plain_http(
    tmp_path: Path, data_dir: Path, ca: trustme.CA
) -> None:
    certfile, keyfile = server_files(ca, tmp_path)
    config = make_config(data_dir, tls_toml(certfile, keyfile))
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, config)
        url = running.binds[0]
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context, timeout=10) as client:
            reply = await client.post(
                url + "/events",
                content=fixture_bytes("lads_batch"),
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert reply.json() == {"accepted": 6, "duplicates": 0}
        async with httpx.AsyncClient(timeout=10) as client:  # without our CA
            with pytest.raises(httpx.ConnectError):  # our CA is not in the system store
                await client.get(url + "/events?challenge=x")
        async with httpx.AsyncClient(timeout=10) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(url.replace("https", "http") + "/events?challenge=x")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
async def test_mtls_source_needs_a_client_certificate(
    tmp_path: Path, data_dir: Path, ca: trustme.CA, workers: int
) -> None:
    certfile, keyfile = server_files(ca, tmp_path)
    client_ca = trustme.CA()
    (tmp_path / "client-ca.pem").write_bytes(client_ca.cert_pem.bytes())
    good = client_ca.issue_cert("adobe-client@example.com")
    stranger = trustme.CA().issue_cert("someone-else@example.com")
    extra = (
        f"workers = {workers}\n"
        f'mtls_listen = ["127.0.0.1:0"]\nmtls_client_ca = "{tmp_path / "client-ca.pem"}"\n'
        '[[sources]]\nname = "io"\npath = "/io"\nrequire_client_cert = true\n'
        '[[sources]]\nname = "events"\npath = "/events"\n'
    )
    config = make_config(data_dir, tls_toml(certfile, keyfile, extra))
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, config)
        plain_tls = running.binds[0]
        assert len(running.app.mtls_ports) == 1
        port = next(iter(running.app.mtls_ports))
        mtls = f"https://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = fixture_bytes("lads_single")

        def client(cert: trustme.LeafCert | None) -> httpx.AsyncClient:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            if cert is not None:
                cert.configure_cert(context)
            return httpx.AsyncClient(verify=context, timeout=10)

        async with client(good) as c:
            reply = await c.post(mtls + "/io", content=body, headers=headers)
            assert reply.status_code == 200, reply.text
        # (GETs: a failed handshake must not leave a request body half sent.)
        async with client(None) as c:  # no certificate: the handshake fails
            with pytest.raises(httpx.HTTPError):
                await c.get(mtls + "/io?challenge=x")
        async with client(stranger) as c:  # signed by another CA: refused too
            with pytest.raises(httpx.HTTPError):
                await c.get(mtls + "/io?challenge=x")
        async with client(None) as c:  # the source on the plain TLS listener: 401
            reply = await c.post(plain_tls + "/io", content=body, headers=headers)
            assert reply.status_code == 401
            assert "requires a client certificate" in reply.json()["error"]
            assert (await c.post(plain_tls + "/events", content=body, headers=headers)).json()[
                "duplicates"
            ] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
async def test_sighup_loads_a_new_certificate_for_new_connections(
    tmp_path: Path, data_dir: Path, ca: trustme.CA, workers: int
) -> None:
    certfile, keyfile = server_files(ca, tmp_path)
    toml_path = tmp_path / "streamd.toml"
    toml_path.write_text(tls_toml(certfile, keyfile, f"workers = {workers}\n"))
    config = make_config(data_dir, toml_path.read_text())
    new_ca = trustme.CA()

    def reload() -> Config:
        return make_config(data_dir, toml_path.read_text())

    async with trio.open_nursery() as nursery:
        running = await nursery.start(partial(serve, config, reload=reload))
        url = running.binds[0]

        async def trusted_by(authority: trustme.CA) -> bool:
            context = ssl.create_default_context()
            authority.configure_trust(context)
            async with httpx.AsyncClient(verify=context, timeout=10) as c:
                try:
                    await c.get(url + "/events?challenge=ok")
                except httpx.ConnectError:
                    return False
            return True

        assert await trusted_by(ca) and not await trusted_by(new_ca)
        # Rotate: new files under the same names, then SIGHUP.
        server_files(new_ca, tmp_path)
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while not await trusted_by(new_ca):
                await trio.sleep(0.05)
        assert not await trusted_by(ca)
        # A broken file on the next reload keeps the certificate that works.
        certfile.write_text("not a certificate")
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(0.5)
        assert await trusted_by(new_ca)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\ntls_certfile = "x.pem"', "key server.tls_keyfile: TLS needs both"),
        ('[server]\nmtls_listen = ["127.0.0.1:0"]', "key server.mtls_listen: needs server.tls_"),
        ('[server]\nmtls_client_ca = "ca.pem"', "key server.mtls_client_ca: only with"),
        (
            "[[sources]]\nname = 'a'\npath = '/a'\nrequire_client_cert = true",
            "key sources[0].require_client_cert: needs server.mtls_listen",
        ),
    ],
)
def test_tls_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    path = tmp_path / "streamd.toml"
    path.write_text(toml)
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_certificate_is_named_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "streamd.toml"
    path.write_text(tls_toml(tmp_path / "missing.pem", tmp_path / "missing.key"))
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing.pem'}: cannot load the TLS certificate, key or CA" in err
