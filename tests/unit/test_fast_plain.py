"""``plain_request`` (streamd/service/fast.py) never reads a request differently from h11.

Whatever it takes as plain, h11 must parse to the same method, target, headers (as
hypercorn passes them: names lowercased) and body, and end at the same byte; whatever h11
refuses, it must not take. Checked on hand-picked requests and on seeded random
mutations of a well-formed one (bytes dropped, doubled, replaced by the characters that
matter to HTTP framing).
"""

from __future__ import annotations

import random

import h11
import pytest

from streamd.service.fast import plain_request

LIMIT = 16 * 1024
BASE = (
    b"POST /events?token=a%20b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\nContent-Length: 12\r\n"
    b"X-Adobe-Retry-Count: 0\r\n\r\n"
    b'[{"id": "1"}]'  # one byte more than declared: the start of a next request
)


def h11_reading(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, int] | None:
    """What h11 reads at the start of ``data``: (method, target, headers, body, end), or
    None when it refuses the bytes or needs more."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
    conn.receive_data(data)
    body = b""
    request = None
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    except h11.RemoteProtocolError:
        return None
    assert request is not None
    end = len(data) - len(conn.trailing_data[0])
    return request.method, request.target, list(request.headers), body, end


def check(data: bytes) -> bool:
    """Assert the two agree wherever ``plain_request`` takes ``data``; True if it did."""
    plain = plain_request(data, 0, LIMIT)
    if plain is None:
        return False
    read = h11_reading(data)
    assert read is not None, f"plain but h11 refuses or waits: {data!r}"
    assert (plain.method, plain.target, plain.headers, plain.body, plain.end) == read, data
    return True


@pytest.mark.parametrize(
    "data",
    [
        BASE,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhOsT: x\r\nX-A:b\r\nX-B: \t c d \t\r\nX-E:\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 000\r\n\r\nnext",
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nz",
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: \x80\xff\x01\x7f\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_what_it_takes_h11_reads_the_same(data: bytes) -> None:
    assert check(data)


@pytest.mark.parametrize(
    "data",
    [
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabc",  # body not all here
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n",  # head not all here
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nz",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\nz",
        b"POST /a HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",  # no Host
        b"POST /a HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n",  # folded
        b"POST /a HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-A : b\r\nContent-Length: 0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n",
        b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * LIMIT + b"\r\n\r\n",
    ],
)
def test_what_is_not_plain_is_left_to_h11(data: bytes) -> None:
    assert plain_request(data, 0, LIMIT) is None


def test_an_offset_reads_the_request_there() -> None:
    first = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]"
    second = b"GET /b?c HTTP/1.1\r\nHost: x\r\n\r\n"
    data = first + second
    one = plain_request(data, 0, LIMIT)
    assert one is not None and one.end == len(first) and one.body == b"[]"
    two = plain_request(data, one.end, LIMIT)
    assert two is not None and (two.method, two.target, two.end) == (b"GET", b"/b?c", len(data))


def test_random_mutations_never_disagree_with_h11() -> None:
    rng = random.Random(17)
    alphabet = [b"\r", b"\n", b" ", b"\t", b":", b"\x00", b",", b"0", b"a", b"\x7f", b"\xff"]
    taken = 0
    for _ in range(6000):
        data = bytearray(BASE)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.3:
                del data[at]
            elif action < 0.5:
                data.insert(at, data[at])
            else:
                data[at : at + 1] = rng.choice(alphabet)
        taken += check(bytes(data))
    # The mutations that keep a request plain (in a value, the body, the query) are
    # taken; the test means something only if there are some of both.
    assert 100 < taken < 5900, taken
