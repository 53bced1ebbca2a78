"""Which requests of a source must carry its credential, per auth mode: the table in
docs/http-api.md ("Which requests need the credential"), row by row, over real HTTP.

The GET challenge needs none; the validationUrl POST needs the same credential as a
delivery (the contract does not say whether Adobe signs it, so a signed source keeps
refusing an unsigned one: 401); a delivery needs it. The ``client-cert`` rows are in
test_client_cert.py (they need the mTLS listener).
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import fixture_bytes
from tests.integration import test_signatures
from tests.integration.test_oauth_issuer import SECRET, get_token, oauth_toml
from tests.integration.test_signatures import KeyServer, headers_for, signed_source

from .conftest import Server, StartServer

DELIVERY = fixture_bytes("lads_single")
VALIDATION = fixture_bytes("challenge_post")
key_server = test_signatures.key_server  # the fixture: Adobe's key host on loopback
TOKEN_MODE, OAUTH_MODE, SIGNED_MODE = "token", "oauth", "adobe-signature"


async def credential(server: Server, mode: str, body: bytes) -> dict[str, str]:
    """The headers that carry ``mode``'s credential for a request with ``body``."""
    if mode == TOKEN_MODE:
        return server.auth()
    if mode == OAUTH_MODE:
        reply = await get_token(server, client_id="marketo", client_secret=SECRET)
        return {"Authorization": f"Bearer {reply.json()['access_token']}"}
    return headers_for(body)


def stored(server: Server, source: str) -> int:
    conn = sqlite3.connect(server.journal)
    try:
        row = conn.execute("SELECT count(*) FROM events WHERE source = ?", (source,))
        return int(row.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("mode", [TOKEN_MODE, OAUTH_MODE, SIGNED_MODE])
async def test_which_requests_need_the_credential(
    start_server: StartServer,
    key_server: KeyServer,
    mode: str,
) -> None:
    # One source of each mode: "events" (token), "legacy" (oauth), "io" (signed).
    server: Server = await start_server(
        oauth_toml().replace('[[sources]]\nname = "events"\npath = "/events"\n', "")
        + signed_source(key_server.url)
    )
    path = {TOKEN_MODE: "/events", OAUTH_MODE: "/legacy", SIGNED_MODE: "/io"}[mode]
    source = path.lstrip("/")
    url = server.url + path
    json = {"Content-Type": "application/json"}
    client = server.client

    # GET ?challenge=: no credential, in every mode.
    reply = await client.get(url + "?challenge=8ec8d794")
    assert (reply.status_code, reply.text) == (200, "8ec8d794")

    # POST {"validationUrl": ...}: the credential of a delivery, in every mode.
    reply = await client.post(url, content=VALIDATION, headers=json)
    assert reply.status_code == 401, reply.text
    if mode == SIGNED_MODE:
        assert reply.json() == {"error": "missing Adobe signature (x-adobe-digital-signature-1/-2)"}
    else:
        assert reply.json() == {"error": "missing credentials"}
    reply = await client.post(
        url, content=VALIDATION, headers={**json, **await credential(server, mode, VALIDATION)}
    )
    assert reply.json() == {"accepted": 0, "duplicates": 0, "validation": "logged"}

    # POST a delivery: the credential.
    reply = await client.post(url, content=DELIVERY, headers=json)
    assert reply.status_code == 401, reply.text
    reply = await client.post(
        url, content=DELIVERY, headers={**json, **await credential(server, mode, DELIVERY)}
    )
    assert reply.json() == {"accepted": 1, "duplicates": 0}
    assert stored(server, source) == 1  # the delivery; the validationUrl never
