"""Operating the sinks of a running daemon: the admin routes, and the CLI that uses them."""

from __future__ import annotations

import json
from functools import partial

import pytest
import trio

from streamd.cli import main
from tests.conftest import fixture_bytes
from tests.integration.conftest import Server, StartServer
from tests.integration.test_admin import admin_auth, admin_url

SINKS = """
[[sinks]]
name = "out"
kind = "file"
[sinks.file]
directory = "out"
"""


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # In a thread: the CLI's HTTP call must not block the server's event loop.
    status = await trio.to_thread.run_sync(partial(main, list(argv)))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_cli_changes_a_running_daemon_through_the_admin_listener(
    start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server: Server = await start_server(SINKS)
    drain = server.running.drain
    where = ["--data-dir", str(server.data_dir), "--admin-url", admin_url(server)]
    status, out, err = await cli(capsys, "sinks", "pause", "out", *where)
    assert (status, out) == (0, "sink out: paused\n"), err
    assert drain.statistics()[0].state == "paused"
    # Paused: deliveries are journaled but not drained.
    assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200
    await trio.sleep(0.3)
    assert drain.statistics()[0].confirmed == 0
    status, out, _ = await cli(capsys, "sinks", "resume", "out", *where)
    assert (status, out) == (0, "sink out: active\n")
    await server.wait_for(lambda: drain.statistics()[0].confirmed == 6, "drained after resume")
    status, out, _ = await cli(capsys, "sinks", "replay", "out", "--from-seq", "2", *where)
    assert status == 0 and "delivers again from seq 2" in out
    await server.wait_for(lambda: drain.statistics()[0].confirmed == 11, "replayed 2..6")
    status, out, _ = await cli(capsys, "sinks", "disable", "out", *where)
    assert (status, out) == (0, "sink out: disabled\n")
    status, out, err = await cli(capsys, "sinks", "resume", "out", *where)
    assert status == 1 and "sink 'out' is disabled; enable it instead" in err
    assert (await cli(capsys, "sinks", "enable", "out", *where))[0] == 0
    status, out, err = await cli(capsys, "sinks", "pause", "nope", *where)
    assert status == 1 and "no sink named 'nope'" in err
    status, out, _ = await cli(capsys, "dlq", "drop", "--sink", "out", "--all", *where)
    assert (status, out) == (0, "0 dead letters of out dropped\n")


async def test_admin_routes_refuse_bad_bodies(start_server: StartServer) -> None:
    server: Server = await start_server(SINKS)
    base, auth = admin_url(server), admin_auth(server)
    listed = await server.client.get(base + "/sinks", headers=auth)
    assert listed.status_code == 200
    assert [s["name"] for s in listed.json()] == ["out"]
    for route, body, message in [
        ("/sinks/pause", b"{", "body: not valid JSON"),
        ("/sinks/pause", b'{"name": 5}', "body: Expected `str`, got `int` - at `$.name`"),
        ("/sinks/pause", b'{"name": "out", "x": 1}', "body: Object contains unknown field `x`"),
        ("/sinks/replay", b'{"name": "out"}', "replay: give exactly one of from_seq and since"),
        ("/sinks/replay", b'{"name": "out", "since": "soon"}', "'soon' is not a duration"),
        ("/dlq/drop", b'{"sink": "out"}', "give dead letter ids or all: true"),
        ("/dlq/drop", b'{"sink": "out", "ids": [0]}', "Expected `int` >= 1"),
    ]:
        reply = await server.client.post(base + route, content=body, headers=auth)
        assert reply.status_code == 400, (route, body, reply.text)
        assert message in reply.json()["error"], (route, body, reply.text)
    assert (
        await server.client.post(base + "/sinks/pause", content=b'{"name": "out"}')
    ).status_code == 401
    replay = await server.client.post(
        base + "/sinks/replay", content=json.dumps({"name": "out", "from_seq": 1}), headers=auth
    )
    assert replay.status_code == 200 and replay.json()["cursor"] == 0
