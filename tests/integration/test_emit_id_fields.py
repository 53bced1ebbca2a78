"""Which id fields ``streamd emit`` sends (``--id-fields``), over real loopback HTTP: both
pairs while Adobe sends both (until the end of 2026), only the new pair after; streamd's
signed source takes either, and refuses a foreign recipient in either pair."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

import orjson
import pytest
import trio

from streamd.emit.accounting import Ledger
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.runtime import IdFieldsChoice
from streamd.emit.sender import EmitOptions, run_emit
from tests.system._harness import free_port

from .conftest import StartServer

CLIENT_ID = "interop-client"


@pytest.mark.parametrize(
    ("choice", "today", "fields"),
    [
        ("auto", datetime.date(2026, 12, 31), "both"),
        ("auto", datetime.date(2027, 1, 1), "new"),
        ("both", datetime.date(2027, 6, 1), "both"),  # rehearse today's shape later on
        ("new", datetime.date(2026, 5, 2), "new"),  # rehearse the switch before it
    ],
)
async def test_the_events_carry_the_pairs_of_the_day_or_the_choice(
    choice: IdFieldsChoice, today: datetime.date, fields: str
) -> None:
    received: list[bytes] = []

    async def receiver(request: Request) -> Reply:
        if "challenge" in request.query:
            return Reply(200, request.query["challenge"].encode())
        received.append(request.body)
        return Reply(200, b"{}")

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_handler, receiver, "127.0.0.1:0")
        opts = EmitOptions(
            url=binds[0] + "/hook",
            mode="io",
            shape="mixed",
            count=40,
            unpaced=True,
            sign=False,
            recipient=CLIENT_ID,
            id_fields=choice,
            today=today,
        )
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert summary["events_acked"] == 40 and summary["id_fields"] == fields
    items = [item for body in received for item in orjson.loads(body)]
    assert len(items) == 40
    for item in items:
        assert item["recipientclientid"] == CLIENT_ID and "eventid" in item
        if fields == "both":
            assert item["recipient_client_id"] == CLIENT_ID
            assert item["event_id"] == item["eventid"]
        else:
            assert "recipient_client_id" not in item and "event_id" not in item


def _signed_source(key_port: int) -> str:
    return f"""
[[sources]]
name = "io"
path = "/io"
auth = "adobe-signature"
[sources.adobe]
client_id = "{CLIENT_ID}"
key_host = "http://127.0.0.1:{key_port}"
fetch_timeout = 5.0
"""


@pytest.mark.parametrize("fields", ["both", "new"])
async def test_a_signed_source_takes_either_pair(
    start_server: StartServer, tmp_path: Path, fields: IdFieldsChoice
) -> None:
    key_port = free_port()  # the emulator serves its keys here; streamd fetches them
    server = await start_server(_signed_source(key_port))
    opts = EmitOptions(
        url=server.url + "/io",
        mode="io",
        shape="mixed",
        count=200,
        inflight=2,
        unpaced=True,
        key_server=f"127.0.0.1:{key_port}",
        recipient=CLIENT_ID,
        id_fields=fields,
    )
    summary = await run_emit(opts, ledger=Ledger(None))
    assert summary["events_acked"] == 200 and summary["outcomes"] == {"200": 10}
    conn = sqlite3.connect(server.journal)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 200
    finally:
        conn.close()


@pytest.mark.parametrize("fields", ["both", "new"])
async def test_a_signed_source_refuses_another_recipient_in_either_pair(
    start_server: StartServer, fields: IdFieldsChoice
) -> None:
    key_port = free_port()
    server = await start_server(_signed_source(key_port))
    opts = EmitOptions(
        url=server.url + "/io",
        mode="io",
        count=20,
        unpaced=True,
        key_server=f"127.0.0.1:{key_port}",
        recipient="someone-else",
        id_fields=fields,
    )
    summary = await run_emit(opts, ledger=Ledger(None))
    # 403 is final for Adobe: the batch is dropped, not retried.
    assert summary["outcomes"] == {"403": 1} and summary["events_given_up"] == 20
