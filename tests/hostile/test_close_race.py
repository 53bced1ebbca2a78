"""A client that reads its 401 and closes cannot put a traceback in the log.

Issue 13, case 8: ``POST`` headers with ``Content-Length: 1000`` and no token, read the
401, close without a body: about half the time the log got "Error in ASGI Framework"
with a ``trio.BusyResourceError`` traceback. hypercorn 0.18's ``TCPServer._close``
calls ``send_eof`` outside its ``send_lock`` while the response is still being written;
streamd's connection class takes the lock (streamd/service/http.py).
"""

from __future__ import annotations

import logging

import pytest
import trio

from tests.integration.conftest import Server

from ._wire import post_head, split_url
from .conftest import scale


async def test_no_traceback_when_a_refused_client_closes_at_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = post_head("/events", {"Content-Type": "application/json", "Content-Length": "1000"})
    tries = scale(40, 400)
    statuses = []
    for _ in range(tries):
        stream = await trio.open_tcp_stream(*split_url(server.url))
        await stream.send_all(head)
        data = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        statuses.append(int(data.split(b" ", 2)[1]))
        await stream.aclose()  # at once, the body never sent
    # Let the server finish with every connection before looking at the log.
    table = server.running.connections
    assert table is not None
    await server.wait_for(lambda: len(table) == 0, "every connection closed")
    assert statuses == [401] * tries
    problems = [r for r in caplog.records if r.exc_info or "Error in ASGI" in r.getMessage()]
    assert problems == [], [r.getMessage() for r in problems]
