"""The sink's own side of the NATS protocol, without a server: the PubAck frames it
reads off nats-py's parser, the PubAcks it decodes by the batch, the header values."""

from __future__ import annotations

import asyncio
import random

import pytest
from nats.aio.client import Client

from streamd.drain.sinks._nats_wire import (
    Ack,
    AckReader,
    decode_acks,
    header_value,
    missing_internals,
)

INBOX = b"_INBOX.abc."
SID = 7


def _ack(tail: bytes, body: bytes, sid: int = SID) -> bytes:
    return b"MSG %b%b %d %d\r\n%b\r\n" % (INBOX, tail, sid, len(body), body)


# What a connection may bring between PubAcks: the server's PING, a message for
# another subscription (with a reply subject), a 503 status for one of ours (headers:
# nats-py's path), a PubAck body holding CRLF and "MSG", and the server's +OK.
OTHER = b"MSG _INBOX.zzz.1 3 reply.to 11\r\nhello\r\nMSG \r\n"
STATUS = b"HMSG %b2.0 %d 16 16\r\nNATS/1.0 503\r\n\r\n\r\n" % (INBOX, SID)
STREAM = (
    _ack(b"1.0", b'{"stream":"S","seq":1}')
    + b"PING\r\n"
    + _ack(b"1.1", b'{"stream":"S","seq":2,"duplicate":true}')
    + OTHER
    + _ack(b"1.2", b'{"stream":"S","seq":3}')
    + STATUS
    + _ack(b"1.3", b'{"stream":"S","x":"\r\nMSG y"}')
    + b"+OK\r\n"
    + _ack(b"1.4", b"")
)
ACKS = [
    (b"1.0", b'{"stream":"S","seq":1}'),
    (b"1.1", b'{"stream":"S","seq":2,"duplicate":true}'),
    (b"1.2", b'{"stream":"S","seq":3}'),
    (b"1.3", b'{"stream":"S","x":"\r\nMSG y"}'),
    (b"1.4", b""),
]


def _read(chunks: list[bytes]) -> tuple[list[tuple[bytes, bytes]], list[tuple[object, ...]], int]:
    """Feed ``chunks`` to a client's parser with an AckReader; return what reached the
    reader, what reached nats-py's per-message path, and the PINGs nats-py answered."""
    nc = Client()
    acks: list[tuple[bytes, bytes]] = []
    slow: list[tuple[object, ...]] = []
    pings = 0

    async def process_msg(*args: object) -> None:
        slow.append(args)

    async def process_ping() -> None:
        nonlocal pings
        pings += 1

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
    nc._process_ping = process_ping  # type: ignore[method-assign]
    AckReader(nc._ps, SID, INBOX, lambda tail, data: acks.append((tail, data)))  # type: ignore[arg-type]

    async def feed() -> None:
        for chunk in chunks:
            await nc._ps.parse(chunk)

    asyncio.run(feed())
    return acks, slow, pings


def test_pubacks_are_read_and_every_other_frame_goes_to_nats_py() -> None:
    acks, slow, pings = _read([STREAM])
    assert acks == ACKS
    assert slow == [
        (3, b"_INBOX.zzz.1", b"reply.to", b"hello\r\nMSG ", None),
        (SID, INBOX + b"2.0", b"", b"", b"NATS/1.0 503\r\n\r\n"),
    ]
    assert pings == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frames_split_anywhere_by_the_reads_come_out_the_same(seed: int) -> None:
    # every split point once, then random reads of 1 to 40 bytes (seed printed by -v)
    for cut in range(1, len(STREAM)):
        assert _read([STREAM[:cut], STREAM[cut:]]) == (_read([STREAM])), cut
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(STREAM):
        step = rng.randint(1, 40)
        chunks.append(STREAM[at : at + step])
        at += step
    assert _read(chunks) == _read([STREAM])


def test_a_frame_for_another_subscription_under_the_inbox_prefix_is_not_taken() -> None:
    frame = _ack(b"1.0", b"{}", sid=SID + 1)
    acks, slow, _ = _read([frame])
    assert acks == [] and [args[0] for args in slow] == [SID + 1]


def test_pubacks_decoded_by_the_batch() -> None:
    answers: list[bytes | Ack] = [
        b'{"stream":"S","seq":1}',
        b'{"stream":"S","seq":2,"duplicate":true,"domain":"d"}',
        b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum'
        b' allowed"},"stream":"S"}',
        Ack.status("503", "x.1"),
    ]
    got = decode_acks(answers)
    assert [a.duplicate for a in got] == [False, True, False, False]
    assert got[2].error_code == 10054 and "maximum" in (got[2].error or "")
    assert got[3].no_responders and got[3].error == "no responders on x.1"


@pytest.mark.parametrize(
    ("bad", "error"),
    [(b"nope", "not a PubAck: b'nope'"), (b"[1]", "not a PubAck: b'[1]'"),
     (b'{"error":"boom"}', "boom"), (b"", "not a PubAck: b''"),
     (b'{"seq":5},{"seq":6}', "not a PubAck: b'{\"seq\":5},{\"seq\":6}'")],
)  # fmt: skip
def test_an_answer_that_is_not_a_puback_is_an_error_and_the_others_stay_right(
    bad: bytes, error: str
) -> None:
    got = decode_acks([b'{"seq":1,"duplicate":true}', bad, b'{"seq":2}'])
    assert [(a.duplicate, a.error) for a in got] == [(True, None), (False, error), (False, None)]


@pytest.mark.parametrize(
    ("value", "written"),
    [("k1", "k1"), (" k1 ", "k1"), ("a\r\nb", "a  b"), ("\ta\nb\r", "a b"), ("é", "é")],
)  # fmt: skip
def test_header_values_as_nats_py_writes_them(value: str, written: str) -> None:
    assert header_value(value) == written


def test_the_nats_py_internals_the_sink_uses_are_there() -> None:
    assert missing_internals(Client()) == []


def test_a_nats_py_without_them_is_named() -> None:
    class Other:
        """A client of another nats-py version: a parser, without _send_command."""

        def __init__(self) -> None:
            self._ps = Client()._ps
            for name in ("_flush_pending", "_flush_queue", "_process_msg",
                         "_process_headers", "_subs", "stats"):  # fmt: skip
                setattr(self, name, None)
            del self._ps.needed

    assert missing_internals(Other()) == ["Client._send_command", "Parser.needed"]  # type: ignore[arg-type]
