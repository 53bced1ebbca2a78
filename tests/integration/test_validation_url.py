"""The opt-in automatic GET of an Adobe validationUrl, against an HTTPS host on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trustme
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from streamd.ingest.validation import Validator
from tests.integration.conftest import Server, StartServer


@dataclass
class ValidationHost:
    """Adobe's validation endpoint, played on loopback over HTTPS."""

    paths: list[str] = field(default_factory=list)
    url: str = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.paths.append(scope["path"] + "?" + scope["query_string"].decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def validation_host(tmp_path: Path) -> AsyncIterator[tuple[ValidationHost, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "v.pem", tmp_path / "v.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    host = ValidationHost()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    config.accesslog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, host, config)
        host.url = binds[0]
        yield host, cafile
        nursery.cancel_scope.cancel()


def source_toml(host: str, cafile: Path) -> str:
    return (
        '[[sources]]\nname = "io"\npath = "/io"\nauto_validate = true\n'
        f'validation_hosts = ["{host}"]\nvalidation_ca_file = "{cafile}"\n'
    )


async def test_an_allowed_validation_url_is_opened(
    start_server: StartServer, validation_host: tuple[ValidationHost, Path]
) -> None:
    host, cafile = validation_host
    hostport = host.url.removeprefix("https://")
    server: Server = await start_server(source_toml(hostport, cafile))
    url = f"{host.url}/csm/webhooks/validate?id=42&challenge=abc"
    reply = await server.post(orjson.dumps({"validationUrl": url}), path="/io")
    assert reply.json() == {"accepted": 0, "duplicates": 0, "validation": "opening"}
    await server.wait_for(lambda: bool(host.paths), "the validation GET")
    assert host.paths == ["/csm/webhooks/validate?id=42&challenge=abc"]


@pytest.mark.parametrize(
    "url",
    [
        "http://{host}/csm/webhooks/validate",  # not https
        "https://evil.example/csm/webhooks/validate",  # another host
        "https://user:pw@{host}/x",  # credentials
        "https://{host}.evil.example/x",  # a look-alike host
        "javascript:alert(1)",
        "https://[::1/x",  # not even a URL
    ],
)
async def test_other_urls_are_never_opened(
    start_server: StartServer, validation_host: tuple[ValidationHost, Path], url: str
) -> None:
    host, cafile = validation_host
    hostport = host.url.removeprefix("https://")
    server: Server = await start_server(source_toml(hostport, cafile))
    reply = await server.post(
        orjson.dumps({"validationUrl": url.format(host=hostport)}), path="/io"
    )
    assert reply.json()["validation"] == "logged"
    await trio.sleep(0.2)
    assert host.paths == []


def test_allowed_rules() -> None:
    v = Validator(("csm.adobe.io",))
    assert v.allowed("https://csm.adobe.io/csm/webhooks/validate?id=1") is None
    assert v.allowed("https://CSM.adobe.io/x") is None
    assert (
        v.allowed("https://csm.adobe.io:8443/x")
        == "host 'csm.adobe.io:8443' is not one of validation_hosts"
    )
    assert v.allowed("http://csm.adobe.io/x") == "not https"
    assert v.allowed("https://csm.adobe.io:99999/x") == "not a URL"
