"""The wire between ingest workers and the main process: frames, limits, refusals."""

from __future__ import annotations

import random
import struct

import msgspec
import pytest
import trio

from streamd.core import decode_delivery
from streamd.errors import (
    CommitTimeout,
    JournalBusy,
    JournalClosed,
    JournalError,
    StreamdError,
)
from streamd.ingest import app as app_module
from streamd.ingest import ipc
from streamd.ingest.remote import MainGone, RemoteJournal, refusal, refusal_error
from streamd.journal import AppendResult, Batch
from tests.conftest import fixture_bytes


def batch(fixture: str = "lads_batch", **extra: object) -> Batch:
    delivery = decode_delivery(fixture_bytes(fixture))
    return Batch(
        source="events",
        received_at="2026-11-30T00:00:00.000Z",
        shape=delivery.shape,
        events=delivery.events,
        message_id=delivery.message_id,
        **extra,  # type: ignore[arg-type]
    )


def test_a_batch_crosses_intact() -> None:
    sent = ipc.Append(7, batch(adobe_event_id="abc", retry_count=2))
    (received,) = ipc.main_reader(1 << 20).feed(ipc.frame(sent))
    assert received == sent
    assert received.batch.events == list(sent.batch.events)


@pytest.mark.parametrize("seed", range(20))
def test_frames_split_anywhere_come_out_whole_and_in_order(seed: int) -> None:
    print(f"seed {seed}")
    rng = random.Random(seed)
    fixtures = ("lads_batch", "legacy_push", "lads_single", "notification")
    messages: list[ipc.Append | ipc.Observed] = [
        ipc.Append(i, batch(rng.choice(fixtures))) for i in range(40)
    ]
    messages += [ipc.Observed([("events", 200, 0.01, None)], {200: i}, i) for i in range(5)]
    stream = b"".join(ipc.frame(m) for m in messages)
    reader = ipc.main_reader(1 << 20)
    got: list[object] = []
    position = 0
    while position < len(stream):
        size = rng.choice((1, 3, 4, 5, 100, 4096, 65536))
        got += reader.feed(stream[position : position + size])
        position += size
    assert got == messages
    assert reader.pending == 0


def test_a_frame_over_the_limit_is_refused_before_it_is_read() -> None:
    reader = ipc.main_reader(1024)  # a batch frame may hold 2 x 1024 + 1 MiB
    limit = 2 * 1024 + 1024 * 1024
    with pytest.raises(ipc.ProtocolError, match=f"over the limit of {limit}"):
        reader.feed(struct.pack(">I", limit + 1))


def test_the_worker_side_bounds_frames_too() -> None:
    with pytest.raises(ipc.ProtocolError, match="over the limit"):
        ipc.worker_reader().feed(struct.pack(">I", ipc.WORKER_FRAME_LIMIT + 1) + b"x")


@pytest.mark.parametrize(
    "body",
    [b"\x00\x01", msgspec.msgpack.encode(["no-such-tag", 1]), msgspec.msgpack.encode({"a": 1})],
)
def test_an_undecodable_message_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ipc.ProtocolError, match="undecodable message"):
        ipc.main_reader(1 << 20).feed(struct.pack(">I", len(body)) + body)


def test_a_worker_cannot_send_what_only_the_main_process_sends() -> None:
    with pytest.raises(ipc.ProtocolError):
        ipc.main_reader(1 << 20).feed(ipc.frame(ipc.Committed(1, 1, 0, 1)))


@pytest.mark.parametrize(
    "error",
    [
        JournalBusy("the journal writer queue is full", retry_after=2, reason="queue_full"),
        JournalBusy("free disk space is below the floor", retry_after=60, reason="low_disk"),
        JournalBusy("over retention.max_bytes", retry_after=60, reason="journal_full"),
        JournalClosed("streamd is shutting down", retry_after=10),
        CommitTimeout("the journal did not commit within 5 s", retry_after=5),
        JournalError("the journal commit failed: disk I/O error"),
    ],
)
def test_a_refusal_answers_as_the_in_process_app_would(error: StreamdError) -> None:
    (message,) = ipc.worker_reader().feed(ipc.frame(refusal(3, error)))
    again = refusal_error(message)
    assert (again.status_hint, str(again), again.reason) == (
        error.status_hint,
        str(error),
        error.reason,
    )
    # What the app puts in Retry-After for each.
    assert app_module.retry_after_of(again) == app_module.retry_after_of(error)


def test_an_unexpected_error_in_the_main_process_is_an_internal_503() -> None:
    again = refusal_error(refusal(4, RuntimeError("boom")))
    assert (again.status_hint, again.reason, app_module.retry_after_of(again)) == (
        503,
        "internal",
        5,
    )
    assert "boom" not in str(again)  # never our internals to the sender


async def test_remote_appends_resolve_by_id_in_any_order() -> None:
    a, b = trio.socket.socketpair()
    stream, peer = trio.SocketStream(a), trio.SocketStream(b)
    remote = RemoteJournal(stream)
    results: dict[str, object] = {}
    async with stream, peer, trio.open_nursery() as nursery:
        nursery.start_soon(remote.serve_sender)
        nursery.start_soon(remote.serve_receiver, ipc.worker_reader(), lambda m: None)

        async def append(fixture: str) -> None:
            try:
                results[fixture] = await remote.append(batch(fixture))
            except StreamdError as exc:
                results[fixture] = exc

        nursery.start_soon(append, "legacy_push")
        nursery.start_soon(append, "lads_batch")
        reader = ipc.main_reader(1 << 20)
        appends: list[ipc.Append] = []
        while len(appends) < 2:
            appends += reader.feed(await peer.receive_some())
        ident = {m.batch.shape: m.id for m in appends}
        # Answer the later one first: each waiter gets its own answer, whatever the order.
        later, earlier = sorted(appends, key=lambda m: -m.id)
        for message in (later, earlier):
            if message.id == ident["legacy"]:
                await peer.send_all(ipc.frame(ipc.Committed(message.id, 4, 0, 9)))
            else:
                busy = JournalBusy("full", 2, "queue_full")
                await peer.send_all(ipc.frame(refusal(message.id, busy)))
        with trio.fail_after(5):
            while len(results) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    legacy, io = results["legacy_push"], results["lads_batch"]
    assert isinstance(io, JournalBusy)
    assert (io.retry_after, io.reason) == (2, "queue_full")
    assert isinstance(legacy, AppendResult)
    assert (legacy.accepted, legacy.duplicates, legacy.delivery) == (4, 0, 9)


async def test_batches_in_flight_fail_with_503_when_the_main_process_goes_away() -> None:
    a, b = trio.socket.socketpair()
    stream, peer = trio.SocketStream(a), trio.SocketStream(b)
    remote = RemoteJournal(stream)
    outcome: list[MainGone] = []
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(remote.serve_sender)

        async def append() -> None:
            try:
                await remote.append(batch())
            except MainGone as exc:
                outcome.append(exc)

        nursery.start_soon(append)
        await peer.receive_some()  # the batch reached the "main process"
        await peer.aclose()
        await remote.serve_receiver(ipc.worker_reader(), lambda m: None)  # returns at EOF
        remote.lost()
        with trio.fail_after(5):
            while not outcome:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    (error,) = outcome
    assert (error.status_hint, error.retry_after, error.reason) == (503, 10, "shutting_down")
    with pytest.raises(MainGone):
        await remote.append(batch())
