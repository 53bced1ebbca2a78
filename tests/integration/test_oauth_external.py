"""OAuth tokens from an external identity provider: JWT/JWKS and RFC 7662 introspection,
with the provider played on loopback and keys generated here."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import fixture_bytes

from .conftest import Server, StartServer

ISSUER = "https://idp.example.com/"
AUDIENCE = "streamd-legacy"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_A, KEY_B = _key(), _key()


@dataclass
class Provider:
    """The identity provider: a JWKS document and an introspection endpoint."""

    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwks_gets: int = 0
    introspections: list[dict[str, str]] = field(default_factory=list)
    down: bool = False
    url: str = ""


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            state.jwks_gets += 1
            self._answer(503 if state.down else 200, state.jwks)

        def do_POST(self) -> None:
            form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            auth = self.headers.get("Authorization", "")
            form["_auth"] = base64.b64decode(auth.removeprefix("Basic ")).decode()
            state.introspections.append(form)
            if state.down:
                self._answer(503, {})
                return
            self._answer(200, state.active.get(form["token"], {"active": False}))

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    entry: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    entry.update(kid=kid, use="sig", alg="RS256")
    return entry


def token(key: Any, kid: str | None = "a", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, **claims}
    headers = {"kid": kid} if kid else {}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


async def post(server: Server, bearer: str) -> int:
    reply = await server.client.post(
        server.url + "/legacy",
        content=fixture_bytes("legacy_push"),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    return reply.status_code


def jwt_source(provider: Provider) -> str:
    return (
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\n'
        f'[sources.oauth]\nmode = "jwt"\njwks_url = "{provider.url}/jwks"\n'
        f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\nalgorithms = ["RS256"]\nleeway = 5\n'
    )


async def test_jwts_against_the_jwks(start_server: StartServer, provider: Provider) -> None:
    provider.jwks = {"keys": [jwk(KEY_A, "a")]}
    server: Server = await start_server(jwt_source(provider))
    assert await post(server, token(KEY_A)) == 200
    now = int(time.time())
    public_pem = KEY_A.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    refused = {
        "expired": token(KEY_A, exp=now - 60),
        "not yet valid": token(KEY_A, nbf=now + 600),
        "wrong issuer": token(KEY_A, iss="https://evil.example/"),
        "wrong audience": token(KEY_A, aud="someone-else"),
        "signed by a stranger": token(KEY_B),
        "alg none": jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}, "", "none"),
        "HS256 keyed with the public key": _hs256_with(public_pem, now),
        "garbage": "not.a.jwt",
    }
    for what, bad in refused.items():
        assert await post(server, bad) == 401, what
    # Nothing of the refused requests was journaled.
    assert (await post(server, token(KEY_A))) == 200  # duplicates now, still 200


def _hs256_with(secret: bytes, now: int) -> str:
    # PyJWT refuses a PEM as an HMAC key, which is the point: build the token by hand.
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "a"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


async def test_an_unknown_kid_refetches_the_jwks_once(
    start_server: StartServer, provider: Provider
) -> None:
    provider.jwks = {"keys": [jwk(KEY_A, "a")]}
    server: Server = await start_server(jwt_source(provider))
    assert await post(server, token(KEY_A)) == 200
    fetched = provider.jwks_gets
    provider.jwks = {"keys": [jwk(KEY_A, "a"), jwk(KEY_B, "b")]}  # the IdP rotates keys
    # The refetch interval (60 s) has not passed: an unknown kid is refused without a fetch.
    assert await post(server, token(KEY_B, kid="b")) == 401
    assert provider.jwks_gets == fetched


async def test_rotation_is_picked_up_on_first_sight(
    start_server: StartServer, provider: Provider
) -> None:
    provider.jwks = {"keys": [jwk(KEY_A, "a"), jwk(KEY_B, "b")]}
    server: Server = await start_server(jwt_source(provider))
    assert await post(server, token(KEY_B, kid="b")) == 200  # first use: fetched
    assert await post(server, token(KEY_A, kid="a")) == 200
    assert provider.jwks_gets == 1  # both keys from one fetch


async def test_an_unreachable_jwks_is_503_not_401(
    start_server: StartServer, provider: Provider
) -> None:
    provider.down = True
    server: Server = await start_server(jwt_source(provider))
    reply = await server.client.post(
        server.url + "/legacy",
        content=fixture_bytes("legacy_push"),
        headers={"Authorization": f"Bearer {token(KEY_A)}"},
    )
    assert reply.status_code == 503
    assert reply.headers["retry-after"]


def introspection_source(provider: Provider, secret_file: Path, cache: int = 300) -> str:
    return (
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\n'
        f'[sources.oauth]\nmode = "introspection"\n'
        f'introspection_url = "{provider.url}/introspect"\n'
        f'client_id = "streamd"\nclient_secret_file = "{secret_file}"\ncache_seconds = {cache}\n'
    )


async def test_introspection_without_a_cache_asks_every_time(
    start_server: StartServer, provider: Provider, tmp_path: Path
) -> None:
    # cache_seconds = 0 (the documented minimum) once refused every token: now + 0 was
    # taken for "already expired" (issue 13, case 9).
    secret = tmp_path / "introspection-secret"
    secret.write_text("rs-secret-0123456789\n")
    provider.active["opaque-good"] = {"active": True, "exp": int(time.time()) + 600}
    server: Server = await start_server(introspection_source(provider, secret, cache=0))
    assert [await post(server, "opaque-good") for _ in range(3)] == [200, 200, 200]
    assert await post(server, "opaque-unknown") == 401
    assert [i["token"] for i in provider.introspections] == ["opaque-good"] * 3 + ["opaque-unknown"]
    del provider.active["opaque-good"]  # revoked: with no cache, refused at once
    assert await post(server, "opaque-good") == 401


async def test_introspection_with_a_cache(
    start_server: StartServer, provider: Provider, tmp_path: Path
) -> None:
    secret = tmp_path / "introspection-secret"
    secret.write_text("rs-secret-0123456789\n")
    provider.active["opaque-good"] = {"active": True, "exp": int(time.time()) + 600}
    provider.active["opaque-expired"] = {"active": True, "exp": int(time.time()) - 10}
    server: Server = await start_server(introspection_source(provider, secret))
    assert await post(server, "opaque-good") == 200
    assert await post(server, "opaque-good") == 200
    assert [i["token"] for i in provider.introspections] == ["opaque-good"]  # cached
    assert provider.introspections[0]["_auth"] == "streamd:rs-secret-0123456789"
    assert await post(server, "opaque-unknown") == 401
    assert await post(server, "opaque-expired") == 401
    provider.down = True
    assert await post(server, "opaque-new") == 503  # the provider's fault: retry


@pytest.mark.parametrize(
    ("oauth", "message"),
    [
        ('mode = "jwt"\njwks_url = "ftp://x"\n', "oauth.jwks_url: an http(s) URL is needed"),
        (
            'mode = "jwt"\njwks_url = "https://i/jwks"\nissuer = "i"\naudience = "a"\n'
            'algorithms = ["HS256"]\n',
            "oauth.algorithms: ['HS256']: only asymmetric",
        ),
        (
            'mode = "jwt"\njwks_url = "https://i/jwks"\nissuer = "i"\naudience = "a"\n'
            'algorithms = ["none"]\n',
            "oauth.algorithms: ['none']: only asymmetric",
        ),
        ('mode = "jwt"\njwks_url = "https://i/jwks"\n', "mode jwt needs issuer and audience"),
        ('mode = "introspection"\n', "oauth.introspection_url: an http(s) URL is needed"),
    ],
)
def test_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], oauth: str, message: str
) -> None:
    from streamd.cli import main

    path = tmp_path / "streamd.toml"
    path.write_text(
        '[[sources]]\nname = "l"\npath = "/l"\nauth = "oauth"\n[sources.oauth]\n' + oauth
    )
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
