"""The emulator over real loopback HTTP: streamd in-process, a token endpoint, a receiver
that checks signatures with keys fetched from the emulator's key server, the challenge."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from streamd.emit.accounting import Ledger
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.errors import EmitError
from streamd.emit.http import Connection, Target
from streamd.emit.sender import EmitOptions, OAuthSettings, run_emit
from streamd.emit.verify import verify

from .conftest import TOKEN, Server

Handler = Callable[[Request], Awaitable[Reply]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> str:
    binds: list[str] = await nursery.start(serve_handler, handler, "127.0.0.1:0")
    return binds[0]


async def test_legacy_with_token_and_duplicates_passes_verify(
    server: Server, tmp_path: Path
) -> None:
    acked = tmp_path / "acked"
    opts = EmitOptions(
        url=server.url + "/events",
        token=TOKEN,
        count=1500,
        parallel=2,
        unpaced=True,
        duplicates=0.5,
        acked_file=acked,
    )
    summary = await run_emit(opts)
    assert summary["events_acked"] == 1500 and summary["events_given_up"] == 0
    assert summary["duplicate_events_sent"] == summary["receiver_reported_duplicates"] > 0
    verdict = await trio.to_thread.run_sync(verify, server.journal, acked)
    assert verdict.ok and verdict.acked == 1500 and verdict.journal_events == 1500


async def test_oauth_token_is_fetched_from_the_identity_provider(
    server: Server, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    async def idp(request: Request) -> Reply:
        form = dict(parse_qsl(request.body.decode()))
        seen.append(form)
        if form.get("client_secret") != "s3cret-s3cret-s3cret":
            return Reply(401, b'{"error":"invalid_client"}')
        return Reply(200, orjson.dumps({"access_token": TOKEN, "expires_in": 3600}))

    async with trio.open_nursery() as nursery:
        idp_url = await _serve(nursery, idp) + "/oauth/token"
        acked = tmp_path / "acked"
        oauth = OAuthSettings(idp_url, "marketo-client", "s3cret-s3cret-s3cret")
        opts = EmitOptions(
            url=server.url + "/events", oauth=oauth, count=600, unpaced=True, acked_file=acked
        )
        summary = await run_emit(opts)
        nursery.cancel_scope.cancel()
    assert summary["events_acked"] == 600 and summary["token_fetches"] == 1
    assert seen == [
        {
            "grant_type": "client_credentials",
            "client_id": "marketo-client",
            "client_secret": "s3cret-s3cret-s3cret",
        }
    ]
    assert (await trio.to_thread.run_sync(verify, server.journal, acked)).ok


async def test_a_refusing_identity_provider_is_a_failed_attempt_retried_later(
    server: Server,
) -> None:
    calls = 0

    async def idp(request: Request) -> Reply:
        nonlocal calls
        calls += 1
        if calls == 1:
            return Reply(500, b"down")
        return Reply(200, orjson.dumps({"access_token": TOKEN}))

    async with trio.open_nursery() as nursery:
        idp_url = await _serve(nursery, idp)
        oauth = OAuthSettings(idp_url, "c", "secret-secret-secret")
        opts = EmitOptions(
            url=server.url + "/events", oauth=oauth, count=100, batch=100, time_scale=3600.0
        )
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert summary["outcomes"] == {"200": 1, "token": 1}
    assert summary["events_acked"] == 100 and summary["retries"] == 1


async def test_io_deliveries_carry_the_adobe_headers(tmp_path: Path) -> None:
    received: list[Request] = []

    async def receiver(request: Request) -> Reply:
        if "challenge" in request.query:
            return Reply(200, request.query["challenge"].encode())
        received.append(request)
        return Reply(200, b"{}")

    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, receiver) + "/hook"
        opts = EmitOptions(
            url=url,
            mode="io",
            shape="mixed",
            count=60,
            unpaced=True,
            key_server="127.0.0.1:0",
            acked_file=tmp_path / "acked",
        )
        summary = await run_emit(opts)
        nursery.cancel_scope.cancel()
    assert len(received) == 3 and summary["events_acked"] == 60
    paths = {
        received[0].headers["x-adobe-public-key1-path"],
        received[0].headers["x-adobe-public-key2-path"],
    }
    assert all(p.startswith("/prod/keys/pub-key-") and p.endswith(".pem") for p in paths)
    for request in received:
        h = request.headers
        assert h["x-adobe-event-id"] and h["x-adobe-delivery-id"] and h["x-request-id"]
        assert "x-adobe-retry-count" not in h
        assert h["x-adobe-provider"] == "marketo"
        assert h["content-type"] == "application/json"
        assert h["x-adobe-digital-signature-1"] != h["x-adobe-digital-signature-2"]


async def test_signatures_are_checked_against_keys_fetched_during_the_run(tmp_path: Path) -> None:
    """The receiver fetches each key path from the key server, as a real one would."""
    verified: list[bool] = []
    key_base: list[str] = []

    async def fetch_key(path: str) -> Any:
        conn = Connection(Target.parse(key_base[0]))
        try:
            resp = await conn.request("GET", path, [("Connection", "close")])
        finally:
            await conn.aclose()
        assert resp.status == 200, resp
        return serialization.load_pem_public_key(resp.body)

    async def receiver(request: Request) -> Reply:
        if "challenge" in request.query:
            return Reply(200, orjson.dumps({"challenge": request.query["challenge"]}))
        h = request.headers
        ok = []
        for n in (1, 2):
            key = await fetch_key(h[f"x-adobe-public-key{n}-path"])
            signature = base64.b64decode(h[f"x-adobe-digital-signature-{n}"])
            try:
                key.verify(signature, request.body, padding.PKCS1v15(), hashes.SHA256())
                ok.append(True)
            except InvalidSignature:
                ok.append(False)
            tampered = request.body.replace(b"}", b" }", 1)
            with pytest.raises(InvalidSignature):
                key.verify(signature, tampered, padding.PKCS1v15(), hashes.SHA256())
        verified.append(all(ok))
        return Reply(200, b"{}")

    import logging

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "public keys served at" in record.getMessage():
                key_base.append(str(record.args[0]))  # type: ignore[index]

    grab = _Grab()
    log = logging.getLogger("streamd.emit")
    log.addHandler(grab)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, receiver)
            opts = EmitOptions(url=url, mode="io", count=40, unpaced=True, batch=20)
            summary = await run_emit(opts)
            nursery.cancel_scope.cancel()
    finally:
        log.removeHandler(grab)
        log.setLevel(old_level)
    assert verified == [True, True] and summary["events_acked"] == 40


async def test_a_failed_challenge_stops_the_run_before_any_delivery() -> None:
    posts = 0

    async def receiver(request: Request) -> Reply:
        nonlocal posts
        if request.method == "POST":
            posts += 1
        return Reply(401, b'{"error":"missing credentials"}')

    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, receiver)
        opts = EmitOptions(url=url + "/x", mode="io", count=20, sign=False)
        with pytest.raises(EmitError, match="challenge GET .* answered 401"):
            await run_emit(opts)
        nursery.cancel_scope.cancel()
    assert posts == 0


async def test_io_against_streamd_with_query_token_passes_verify(
    server: Server, tmp_path: Path
) -> None:
    acked = tmp_path / "acked"
    opts = EmitOptions(
        url=f"{server.url}/events?access_token={TOKEN}",
        mode="io",
        shape="mixed",
        count=400,
        parallel=2,
        inflight=2,
        unpaced=True,
        duplicates=0.3,
        acked_file=acked,
    )
    summary = await run_emit(opts)
    assert summary["events_acked"] == 400 and summary["events_unresolved"] == 0
    assert "access_token" not in summary["target"]
    verdict = await trio.to_thread.run_sync(verify, server.journal, acked)
    assert verdict.ok and verdict.journal_events == 400


async def test_the_deprecated_hmac_signature_is_over_the_exact_body() -> None:
    import hashlib
    import hmac

    received: list[Request] = []

    async def receiver(request: Request) -> Reply:
        received.append(request)
        return Reply(200, b"{}")

    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, receiver)
        opts = EmitOptions(
            url=url,
            mode="io",
            count=40,
            sign=False,
            challenge=False,
            unpaced=True,
            hmac_secret="client-secret-0123456789",
        )
        await run_emit(opts)
        nursery.cancel_scope.cancel()
    assert len(received) == 2
    for request in received:
        mac = hmac.new(b"client-secret-0123456789", request.body, hashlib.sha256).digest()
        assert request.headers["x-adobe-signature"] == base64.b64encode(mac).decode()
        assert "x-adobe-digital-signature-1" not in request.headers
