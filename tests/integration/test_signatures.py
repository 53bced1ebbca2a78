"""Adobe I/O Events signatures end to end: real keys, a key server on loopback, real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from streamd.auth.adobe import KeyStore, SignatureInvalid, load_public_key, verify_rsa
from tests.conftest import FIXTURES, fixture_bytes

from .conftest import Server, StartServer

CLIENT_ID = "streamd-test-client"  # the fixtures' recipientclientid
PATH1 = "/prod/keys/pub-key-first0001.pem"
PATH2 = "/prod/keys/pub-key-second002.pem"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY1, KEY2, STRANGER = _key(), _key(), _key()


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: rsa.RSAPrivateKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


@dataclass
class KeyServer:
    """Adobe's key host, played on loopback: serves PEMs by path, or fails as told."""

    keys: dict[str, bytes] = field(default_factory=dict)
    fail_with: int | None = None
    hang: bool = False
    requests: list[str] = field(default_factory=list)
    url: str = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.requests.append(scope["path"])
        if self.hang:
            await trio.sleep_forever()
        status, body = 200, self.keys.get(scope["path"], b"")
        if self.fail_with is not None:
            status, body = self.fail_with, b"nope"
        elif not body:
            status = 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def key_server() -> AsyncIterator[KeyServer]:
    server = KeyServer(keys={PATH1: pem(KEY1), PATH2: pem(KEY2)})
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, server, config)
        server.url = binds[0]
        yield server
        nursery.cancel_scope.cancel()


def signed_source(key_host: str, extra: str = "") -> str:
    return f"""
[[sources]]
name = "io"
path = "/io"
auth = "adobe-signature"
[sources.adobe]
client_id = "{CLIENT_ID}"
key_host = "{key_host}"
fetch_timeout = 1.0
{extra}
[[sources]]
name = "events"
path = "/events"
"""


@pytest.fixture
async def signed(start_server: StartServer, key_server: KeyServer) -> Server:
    server: Server = await start_server(signed_source(key_server.url))
    return server


def headers_for(
    body: bytes,
    sig1: rsa.RSAPrivateKey | None = KEY1,
    sig2: rsa.RSAPrivateKey | None = KEY2,
    path1: str = PATH1,
    path2: str = PATH2,
) -> dict[str, str]:
    headers = {"Content-Type": "application/cloudevents-batch+json"}
    if sig1 is not None:
        headers["x-adobe-digital-signature-1"] = sign(sig1, body)
        headers["x-adobe-public-key1-path"] = path1
    if sig2 is not None:
        headers["x-adobe-digital-signature-2"] = sign(sig2, body)
        headers["x-adobe-public-key2-path"] = path2
    return headers


async def post_signed(server: Server, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await server.client.post(server.url + "/io", content=body, headers=headers)


def stored(server: Server) -> int:
    conn = sqlite3.connect(server.journal)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


BODY = fixture_bytes("lads_batch")


# -- the SDK's test vector ---------------------------------------------------------


def test_sdk_vector_verifies_and_one_byte_breaks_it() -> None:
    vector = json.loads((FIXTURES / "signature_vector.json").read_text())
    key = load_public_key(vector["public_key_pem"].encode(), "vector")
    body = vector["body"].encode()
    good = base64.b64decode(vector["valid_signature"])
    assert verify_rsa(key, body, good)
    assert not verify_rsa(key, body[:-1] + b" ", good)  # one byte of the body
    flipped = bytes([good[0] ^ 0x01]) + good[1:]
    assert not verify_rsa(key, body, flipped)  # one bit of the signature
    assert not verify_rsa(key, body, base64.b64decode(vector["invalid_signature"]))


# -- requests signed with test keys ------------------------------------------------


async def test_both_signatures_good(signed: Server, key_server: KeyServer) -> None:
    reply = await post_signed(signed, BODY, headers_for(BODY))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"accepted": 6, "duplicates": 0}
    again = await post_signed(signed, BODY, headers_for(BODY))
    assert again.json() == {"accepted": 0, "duplicates": 6}
    # Keys are cached: one fetch per path however many requests.
    assert sorted(key_server.requests) == [PATH1]  # the first signature verified


async def test_one_good_one_bad_is_enough(signed: Server) -> None:
    reply = await post_signed(signed, BODY, headers_for(BODY, sig1=STRANGER))
    assert reply.status_code == 200, reply.text
    assert stored(signed) == 6


async def test_both_bad_is_401_and_nothing_stored(signed: Server) -> None:
    reply = await post_signed(signed, BODY, headers_for(BODY, sig1=STRANGER, sig2=STRANGER))
    assert reply.status_code == 401
    assert reply.json()["error"] == "no Adobe signature verifies over the body"
    assert stored(signed) == 0


async def test_body_altered_after_signing_is_401(signed: Server) -> None:
    headers = headers_for(BODY)
    altered = BODY.replace(b"Visit Webpage", b"Visit Webpagf", 1)
    assert altered != BODY
    reply = await post_signed(signed, altered, headers)
    assert reply.status_code == 401
    assert stored(signed) == 0


async def test_unknown_key_path_is_401(signed: Server, key_server: KeyServer) -> None:
    unknown = "/prod/keys/pub-key-unknown999.pem"
    reply = await post_signed(signed, BODY, headers_for(BODY, sig2=None, path1=unknown))
    assert reply.status_code == 401
    assert key_server.requests == [unknown]  # asked once, got 404
    assert stored(signed) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "/prod/keys/../../admin.pem",
        "/prod/keys/pub-key-x.pem?redirect=evil",
        "https://evil.example/prod/keys/pub-key-x.pem",
        "//evil.example/prod/keys/pub-key-x.pem",
    ],
)
async def test_malformed_key_path_is_401_without_a_fetch(
    signed: Server, key_server: KeyServer, path: str
) -> None:
    reply = await post_signed(signed, BODY, headers_for(BODY, sig2=None, path1=path))
    assert reply.status_code == 401
    assert "is not an Adobe key path" in reply.json()["error"]
    assert key_server.requests == []


@pytest.mark.parametrize("failure", ["500", "hang", "unreachable"])
async def test_key_host_trouble_is_503_so_adobe_retries(
    start_server: StartServer, key_server: KeyServer, failure: str
) -> None:
    host = key_server.url
    if failure == "500":
        key_server.fail_with = 500
    elif failure == "hang":
        key_server.hang = True  # fetch_timeout is 1 s
    else:
        host = "http://127.0.0.1:9"  # discard port: nothing listens
    server: Server = await start_server(signed_source(host))
    reply = await post_signed(server, BODY, headers_for(BODY))
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "5"
    assert stored(server) == 0


async def test_wrong_recipient_is_403(signed: Server) -> None:
    body = BODY.replace(CLIENT_ID.encode(), b"someone-else")
    reply = await post_signed(signed, body, headers_for(body))
    assert reply.status_code == 403
    assert reply.json()["error"] == "events addressed to another client id ('someone-else')"
    assert stored(signed) == 0


async def test_no_recipient_named_is_accepted_when_signed(signed: Server) -> None:
    body = fixture_bytes("audit_old_wrapper")  # the older wrapper names no recipient
    reply = await post_signed(signed, body, headers_for(body))
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing Adobe signature"),
        ({"x-adobe-digital-signature-1": "AAAA"}, "must come together"),
        (
            {"x-adobe-digital-signature-1": "%%%", "x-adobe-public-key1-path": PATH1},
            "is not base64",
        ),
        (
            {"x-adobe-digital-signature-1": "A" * 4000, "x-adobe-public-key1-path": PATH1},
            "is too long",
        ),
    ],
)
async def test_missing_or_malformed_signature_is_401_before_the_body(
    signed: Server, headers: dict[str, str], message: str
) -> None:
    # A declared 1 GB body that never comes: the answer must not wait for it.
    host, port = signed.url.removeprefix("http://").split(":")
    lines = ["POST /io HTTP/1.1", f"Host: {host}", "Content-Length: 1000000000"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
        await stream.aclose()
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert message.encode() in data


async def test_a_token_does_not_open_a_signed_source(signed: Server) -> None:
    reply = await signed.post(BODY, path="/io")  # Bearer token, no signature
    assert reply.status_code == 401
    assert (await signed.post(BODY)).status_code == 200  # the token source still works


async def test_pinned_keys_need_no_key_host(start_server: StartServer, tmp_path: Path) -> None:
    key_file = tmp_path / "adobe-key1.pem"
    key_file.write_bytes(pem(KEY1))
    extra = f'fetch_keys = false\npinned_keys = {{ "{PATH1}" = "{key_file}" }}\n'
    server: Server = await start_server(signed_source("http://127.0.0.1:9", extra))
    reply = await post_signed(server, BODY, headers_for(BODY, sig2=None))
    assert reply.status_code == 200, reply.text
    other = await post_signed(server, BODY, headers_for(BODY, sig1=KEY2, path1=PATH2, sig2=None))
    assert other.status_code == 401
    assert "key fetching is off" not in other.text  # no detail about why leaks


async def test_legacy_hmac_signature_with_the_client_secret(
    start_server: StartServer, key_server: KeyServer, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("s3cret-of-the-integration\n")
    extra = f'client_secret_file = "{secret_file}"\n'
    server: Server = await start_server(signed_source(key_server.url, extra))
    mac = hmac.new(b"s3cret-of-the-integration", BODY, hashlib.sha256).digest()
    good = {"x-adobe-signature": base64.b64encode(mac).decode()}
    assert (await post_signed(server, BODY, good)).status_code == 200
    bad_mac = hmac.new(b"wrong", BODY, hashlib.sha256).digest()
    bad = {"x-adobe-signature": base64.b64encode(bad_mac).decode()}
    reply = await post_signed(server, BODY, bad)
    assert reply.status_code == 401
    assert reply.json()["error"] == "x-adobe-signature does not match the body"


# -- the key cache -----------------------------------------------------------------


async def test_keys_are_cached_on_disk_for_at_most_the_max_age(
    key_server: KeyServer, tmp_path: Path
) -> None:
    cache = str(tmp_path / "keys")
    first = KeyStore(key_server.url, cache, max_age=3600)
    await first.key(PATH1)
    await first.key(PATH1)
    assert key_server.requests == [PATH1]
    # A new process (a new store) reads the disk cache, not the host...
    second = KeyStore(key_server.url, cache, max_age=3600)
    await second.key(PATH1)
    assert key_server.requests == [PATH1]
    # ...until the cached file is older than max_age: then it is fetched again.
    third = KeyStore(key_server.url, cache, max_age=3600, clock=lambda: time.time() + 3601)
    await third.key(PATH1)
    assert key_server.requests == [PATH1, PATH1]
    # The memory cache expires the same way.
    later = [time.time()]
    fourth = KeyStore(key_server.url, None, max_age=3600, clock=lambda: later[0])
    await fourth.key(PATH2)
    later[0] += 3599
    await fourth.key(PATH2)
    later[0] += 2
    await fourth.key(PATH2)
    assert key_server.requests == [PATH1, PATH1, PATH2, PATH2]


async def test_a_damaged_cache_file_or_a_non_key_is_never_trusted(
    key_server: KeyServer, tmp_path: Path
) -> None:
    key_server.keys[PATH2] = b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"
    store = KeyStore(key_server.url, str(tmp_path / "keys"))
    with pytest.raises(SignatureInvalid, match="not a PEM public key"):
        await store.key(PATH2)
    await store.key(PATH1)
    for cached in (tmp_path / "keys").iterdir():
        cached.write_bytes(b"garbage")
    fresh = KeyStore(key_server.url, str(tmp_path / "keys"))
    await fresh.key(PATH1)  # the damaged file is ignored: fetched again
    assert key_server.requests.count(PATH1) == 2


def test_check_config_names_a_missing_pinned_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamd.cli import main

    config = tmp_path / "streamd.toml"
    missing = tmp_path / "absent.pem"
    config.write_text(
        signed_source("http://127.0.0.1:9", f'pinned_keys = {{ "{PATH1}" = "{missing}" }}\n')
    )
    assert main(["check-config", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: cannot read the pinned Adobe key: No such file or directory" in err
    assert "Traceback" not in err


# -- an ingest worker loads cryptography and httpx when a signature needs them --------


def maps_cryptography(pid: int) -> bool:
    """Whether ``pid`` has cryptography's native library mapped (it is once imported)."""
    with open(f"/proc/{pid}/maps") as f:
        return "cryptography/hazmat/bindings" in f.read()


async def test_a_worker_verifies_with_what_it_imports_at_the_first_signature(
    start_server: StartServer, key_server: KeyServer
) -> None:
    server = await start_server("[server]\nworkers = 1\n" + signed_source(key_server.url))
    workers = server.running.workers
    assert workers is not None
    (pid,) = workers.statistics().pids
    assert pid is not None
    token = await server.post(fixture_bytes("legacy_push"))
    assert token.status_code == 200
    assert not maps_cryptography(pid), "a token source needs no cryptography"
    reply = await post_signed(server, BODY, headers_for(BODY))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"accepted": 6, "duplicates": 0}
    assert key_server.requests == [PATH1]  # the worker fetched the key (httpx)
    bad = await post_signed(server, BODY, headers_for(BODY, sig1=STRANGER, sig2=STRANGER))
    assert bad.status_code == 401
    assert maps_cryptography(pid)
    assert workers.statistics().pids == (pid,)  # the same worker: it did not fail
