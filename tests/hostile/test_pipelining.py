"""Pipelined floods: many plain requests in one write, read or never read.

A small request whose head and body come whole in one read is answered by the edge's
plain-request path (streamd/service/fast.py), which walks a buffer of pipelined
requests one after another. Against the real daemon:

- a client writes hundreds of POSTs at once and then reads: every one is answered 200
  in order, each event is journaled once, and another sender is answered meanwhile;
- a client writes as much as the server will take and never reads its answers: the
  server stops reading from it once its answers fill the socket (no unbounded buffering),
  another sender is still answered at once, and the memory stays bounded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from tests.hostile.conftest import scale
from tests.hostile.test_duplicate_flood import rss
from tests.system._harness import (
    Processes,
    assert_no_traceback,
    check_journal,
    post,
    serve,
    stop_gracefully,
)

PER_REQUEST = 5
RSS_BOUND = 256 * 1024 * 1024
OTHER = b'[{"specversion": "1.0", "id": "another sender", "type": "t"}]'


def event_id(n: int) -> str:
    return f"0000beef-f100-4000-8000-{n:012x}"


def request(token: str, k: int) -> bytes:
    events = [
        {
            "specversion": "1.0",
            "id": event_id(k * PER_REQUEST + i),
            "type": "com.adobe.platform.marketo.activity.standard.visitWebpage",
            "source": "urn:test",
            "time": "2026-04-21T15:28:40Z",
            "data": {"leadId": 1000 + k, "activityTypeId": 1},
        }
        for i in range(PER_REQUEST)
    ]
    body = json.dumps(events, separators=(",", ":")).encode()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_answers(sock: socket.socket, count: int, deadline: float) -> list[tuple[int, bytes]]:
    """``count`` answers (status, body) off ``sock``, each framed by Content-Length."""
    buf = b""
    answers: list[tuple[int, bytes]] = []
    while len(answers) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(buf) >= end + 4 + length:
                answers.append((int(head.split()[1]), buf[end + 4 : end + 4 + length]))
                buf = buf[end + 4 + length :]
                continue
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"the server closed after {len(answers)} answers of {count}"
        buf += chunk
    return answers


def test_hundreds_of_pipelined_posts_are_each_answered_and_journaled_once(
    tmp_path: Path, processes: Processes
) -> None:
    count = scale(400, 5000)
    server = serve(processes, tmp_path / "data")
    token = server.token()
    flood = b"".join(request(token, k) for k in range(count))
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        # Written from a thread while this one reads: the server answers as it reads,
        # and once the unread answers filled the socket it would stop reading.
        writer = threading.Thread(target=sock.sendall, args=(flood,), daemon=True)
        writer.start()
        # Another sender meanwhile: answered while the flood's requests are served.
        other = post(server.port, OTHER, token=token)
        assert other.status == 200, other
        answers = read_answers(sock, count, time.monotonic() + 60)
        writer.join(10)
    assert [status for status, _ in answers] == [200] * count
    expected = {"accepted": PER_REQUEST, "duplicates": 0}
    assert all(json.loads(body) == expected for _, body in answers), answers[:3]
    stop_gracefully(server)
    assert_no_traceback(server.spawned.stderr())
    keys = check_journal(server.journal, [event_id(n) for n in range(count * PER_REQUEST)])
    assert set(keys.values()) == {1}


def test_a_client_that_never_reads_its_answers_is_not_buffered_for(
    tmp_path: Path, processes: Processes
) -> None:
    server = serve(processes, tmp_path / "data")
    token = server.token()
    pid = server.spawned.pid
    start = rss(pid)
    one = request(token, 0)  # the same request again and again: duplicates after the first
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + scale(4.0, 30.0)
        block = one * 64
        while time.monotonic() < deadline and sent < 256 * 1024 * 1024:
            try:
                sent += sock.send(block)
            except BlockingIOError:
                time.sleep(0.01)  # full: the server stopped reading us
        # The server took only what fits beside the unread answers (socket buffers on
        # both sides, and the request it is answering): far less than was offered.
        assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of a client not reading"
        print(f"pipelining: a client not reading got {sent} bytes taken in, then no more")
        started = time.monotonic()
        other = post(server.port, OTHER, token=token)
        assert other.status == 200, other
        assert time.monotonic() - started < 10
        assert rss(pid) - start < RSS_BOUND
    stop_gracefully(server)
    assert_no_traceback(server.spawned.stderr())
