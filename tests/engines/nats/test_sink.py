"""The nats sink against a real 3-node JetStream cluster: what the stream holds, by key."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from streamd.drain import DrainEvent, Kind, Result, RetrySettings, open_drain
from streamd.drain.sinks.nats import NatsSettings, NatsSink, covers, stream_subjects, subject_token
from streamd.journal import Journal
from streamd.ops import RewindSink
from tests.drain.conftest import append, spec, wait_until
from tests.engines._nats import NatsCluster, StoredMessage

FAST_RETRY = RetrySettings(max_attempts=0, backoff_base=0.1, backoff_cap=0.5, jitter=0,
                           pause_after=1000, probe_interval=0.5)  # fmt: skip


def settings(cluster: NatsCluster, stream: str, **kw: object) -> NatsSettings:
    values: dict[str, object] = {
        "servers": tuple(cluster.urls),
        "stream": stream,
        "subject": f"{stream.lower()}.{{stream}}.{{type}}",
        "instance": "r1",
        "timeout": 5.0,
        "sink": "nats",
        "replicas": 3,
    }
    values.update(kw)
    return NatsSettings(**values)  # type: ignore[arg-type]


def event(seq: int, key: str, raw: str = "", **kw: object) -> DrainEvent:
    values: dict[str, object] = {
        "seq": seq,
        "key": key,
        "stream": "activity",
        "type": "com.adobe.platform.marketo.activity.standard.visitwebpage",
        "munchkin_id": "123-ABC-456",
        "activity_type_id": 1,
        "source": "events",
        "occurred_at": "2026-05-01T10:00:00.000Z",
        "received_at": "2026-05-01T10:00:01.000Z",
        "raw": raw or json.dumps({"id": key}),
    }
    values.update(kw)
    return DrainEvent(**values)  # type: ignore[arg-type]


async def messages(cluster: NatsCluster, stream: str) -> list[StoredMessage]:
    return await trio.to_thread.run_sync(cluster.messages, stream)


def journal_rows(path: Path) -> dict[str, tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT event_key, seq, stream, type, source, munchkin_id, raw FROM events"
            )
        }


def dead(journal_path: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(journal_path)) as conn:
        return [tuple(r) for r in conn.execute("SELECT seq, reason FROM dead_letters")]


@pytest.fixture
def journal_path(journal: Journal, tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


# -- helpers that need no server ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [("a.b", "a_b"), ("x*y>z", "x_y_z"), ("sp ace\ttab", "sp_ace_tab"), ("", "_"), (None, "_"),
     ("123-ABC-456", "123-ABC-456"), ("é", "é")],
)  # fmt: skip
def test_placeholder_values_become_one_token(value: str | None, token: str) -> None:
    assert subject_token(value) == token


@pytest.mark.parametrize(
    ("template", "subjects"),
    [("streamd.{stream}.{type}", ["streamd.>"]), ("a.b.x{stream}", ["a.b.>"]),
     ("events", ["events"]), ("acme.mkto.{source}.{munchkin_id}", ["acme.mkto.>"])],
)  # fmt: skip
def test_stream_subjects_cover_the_template(template: str, subjects: list[str]) -> None:
    assert stream_subjects(template) == subjects


def test_subject_matching() -> None:
    assert covers("a.>", "a.b.c") and not covers("a.>", "a") and not covers("a.>", "b.c")
    assert covers("a.*.c", "a.b.c") and not covers("a.*", "a.b.c") and covers("a.b", "a.b")


# -- against the cluster ----------------------------------------------------------


async def test_messages_in_the_stream_match_the_journal(
    cluster: NatsCluster, stream_name: str, journal: Journal, journal_path: Path
) -> None:
    await append(journal, [f"a{i}" for i in range(30)])
    await append(journal, ["u.1", "u 2"], stream="audit", type="com.adobe.platform.marketo.audit.x")
    await append(journal, ["n1"], source="other", munchkin_id="999-XYZ-000")
    s = settings(cluster, stream_name)
    async with open_drain(journal, [spec("nats", NatsSink(s), full_events=True)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 33, "delivered", timeout=30)
    stored = await messages(cluster, stream_name)
    rows = journal_rows(journal_path)
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == sorted(rows)
    prefix = stream_name.lower()
    for m in stored:
        key = m.headers["Nats-Msg-Id"]
        seq, stream, type_, source, munchkin, raw = rows[key]
        assert m.subject == f"{prefix}.{stream}.{subject_token(str(type_))}"
        assert m.headers == {
            "Nats-Msg-Id": key,
            "Streamd-Stream": stream,
            "Streamd-Type": type_,
            "Streamd-Munchkin-Id": munchkin,
            "Streamd-Source": source,
            "Streamd-Seq": str(seq),
            "Streamd-Instance": "r1",
        }
        body = json.loads(m.data)
        assert body["id"] == key and body["seq"] == seq and body["stream"] == stream
        assert body["event"] == json.loads(str(raw))
    info = await trio.to_thread.run_sync(cluster.stream_info, stream_name)
    assert info.config.subjects == [f"{prefix}.>"]
    assert info.config.storage == "file"
    assert info.config.num_replicas == 3
    assert info.config.duplicate_window == 120.0  # 120e9 ns on the server


async def test_a_redelivery_is_present_and_stored_once(
    cluster: NatsCluster, stream_name: str, journal: Journal
) -> None:
    keys = [f"k{i}" for i in range(40)]
    await append(journal, keys)
    sink = NatsSink(settings(cluster, stream_name))
    events = [event(i + 1, k) for i, k in enumerate(keys)]
    reasons: list[str] = []
    try:
        # As the runner would: a transient outcome is retried (a stream just created may
        # have no leader for a moment; once, in a full parallel run, the first batch got
        # one). A retry may then find some of the first attempt's messages present.
        for _ in range(50):
            first = await sink.deliver(events)
            if first.kind is not Kind.TRANSIENT:
                break
            reasons.append(first.reason)
            await trio.sleep(0.1)
        again = await sink.deliver([*events[10:], event(99, "new")])
    finally:
        await sink.aclose()
    assert first.kind is Kind.CONFIRMED and first.rejected == (), reasons
    assert first.present == 0 or reasons  # present only after a transient attempt
    assert again.kind is Kind.CONFIRMED and again.present == 30
    # and through the drain: a rewind sends everything again, the stream keeps one each
    async with open_drain(journal, [spec("nats", NatsSink(settings(cluster, stream_name)),
                                         full_events=True)]) as d:  # fmt: skip
        await wait_until(lambda: d.statistics()[0].cursor == 40, "delivered", timeout=30)
        await d.run(RewindSink(sink="nats", from_seq=1))
        await wait_until(lambda: d.statistics()[0].cursor == 40, "redelivered", timeout=30)
    stored = Counter(m.headers["Nats-Msg-Id"] for m in await messages(cluster, stream_name))
    assert stored == Counter([*keys, "new"])


async def test_two_receivers_with_overlapping_batches_store_each_key_once(
    cluster: NatsCluster, stream_name: str
) -> None:
    a = NatsSink(settings(cluster, stream_name, instance="ra"))
    b = NatsSink(settings(cluster, stream_name, instance="rb"))
    keys = [f"e{i:03d}" for i in range(500)]
    results: dict[str, list[Result]] = {}
    try:
        # The stream exists first (two creators at once is the next test's business).
        assert (await a.deliver([event(1, "e000")])).present == 0

        transient: list[str] = []

        async def run(name: str, sink: NatsSink, chosen: Sequence[str]) -> None:
            batch = [event(i + 1, k) for i, k in enumerate(chosen)]
            results[name] = []
            for j in range(0, len(batch), 50):
                # As the runner would: a transient outcome (a PubAck late on a loaded
                # machine: three servers and two receivers share two cores) is retried.
                for _ in range(5):
                    result = await sink.deliver(batch[j : j + 50])
                    if result.kind is not Kind.TRANSIENT:
                        break
                    transient.append(result.reason)
                results[name].append(result)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a", a, keys[:300])
            nursery.start_soon(run, "b", b, keys[200:])
    finally:
        await a.aclose()
        await b.aclose()
    outcomes = [r for rs in results.values() for r in rs]
    assert all(r.kind is Kind.CONFIRMED and not r.rejected for r in outcomes), (
        outcomes,
        transient,
    )
    # e000 was stored once before; each of e200..e299 is stored by one receiver only (a
    # retried batch also finds what its failed attempt stored)
    present = sum(r.present or 0 for r in outcomes)
    assert present == 1 + 100 if not transient else present >= 1 + 100, (present, transient)
    stored = await messages(cluster, stream_name)
    assert Counter(m.headers["Nats-Msg-Id"] for m in stored) == Counter(keys)
    instances = {m.headers["Nats-Msg-Id"]: m.headers["Streamd-Instance"] for m in stored}
    assert {instances[k] for k in keys[:200]} == {"ra"}
    assert {instances[k] for k in keys[300:]} == {"rb"}


async def test_two_sinks_creating_the_stream_at_once(
    cluster: NatsCluster, stream_name: str
) -> None:
    sinks = [NatsSink(settings(cluster, stream_name, instance=f"r{i}")) for i in range(3)]
    results = []
    reasons: list[str] = []

    async def one(sink: NatsSink) -> None:
        # As the runner would: retry a transient result (a stream just created may
        # have no leader yet for a moment: no responders).
        for _ in range(50):
            result = await sink.deliver([event(1, "same")])
            if result.kind is not Kind.TRANSIENT:
                break
            reasons.append(result.reason)
            await trio.sleep(0.1)
        results.append(result)

    try:
        async with trio.open_nursery() as nursery:
            for sink in sinks:
                nursery.start_soon(one, sink)
    finally:
        for sink in sinks:
            await sink.aclose()
    assert [r.kind for r in results] == [Kind.CONFIRMED] * 3, results
    assert all("no responders" in r or "no answer in time" in r for r in reasons), reasons
    assert sorted(r.present or 0 for r in results)[1:] == [1, 1]
    assert [m.headers["Nats-Msg-Id"] for m in await messages(cluster, stream_name)] == ["same"]


async def test_an_event_over_max_payload_alone_is_dead_lettered(
    cluster: NatsCluster, stream_name: str, journal: Journal, journal_path: Path
) -> None:
    from streamd.core import EventRecord, key_hash
    from streamd.journal import Batch, utc_now

    await append(journal, ["s1", "s2"])
    big = "x" * (cluster.max_payload + 1000)
    record = EventRecord(key="big", key_hash=key_hash("big"), stream="activity", type="t",
                         munchkin_id=None, activity_type_id=None, lead_id=None,
                         occurred_at=None, raw=json.dumps({"p": big}))  # fmt: skip
    await journal.append(Batch("events", utc_now(), "batch", [record]))
    await append(journal, ["s3"])
    sink = NatsSink(settings(cluster, stream_name))
    async with open_drain(
        journal, [spec("nats", sink, full_events=True, batch_size=10, linger=0.2)]
    ) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 4, "delivered", timeout=30)
    assert [(seq, "max_payload" in reason) for seq, reason in dead(journal_path)] == [(3, True)]
    stored = await messages(cluster, stream_name)
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == ["s1", "s2", "s3"]


async def test_an_event_over_the_streams_max_msg_size_alone_is_rejected(
    cluster: NatsCluster, stream_name: str
) -> None:
    subject = f"{stream_name.lower()}.>"
    await trio.to_thread.run_sync(lambda: cluster.add_stream(
        name=stream_name, subjects=[subject], max_msg_size=4096, duplicate_window=120))  # fmt: skip
    sink = NatsSink(settings(cluster, stream_name))
    try:
        result = await sink.deliver(
            [event(1, "ok1"), event(2, "huge", raw=json.dumps({"p": "y" * 5000})), event(3, "ok2")]
        )
    finally:
        await sink.aclose()
    assert result.kind is Kind.CONFIRMED and result.present == 0
    assert [seq for seq, _ in result.rejected] == [2]
    assert "maximum" in result.rejected[0][1]
    stored = await messages(cluster, stream_name)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == ["ok1", "ok2"]


async def test_without_manage_stream_a_missing_stream_is_gone(
    cluster: NatsCluster, stream_name: str
) -> None:
    sink = NatsSink(settings(cluster, stream_name, manage_stream=False))
    try:
        result = await sink.deliver([event(1, "a")])
    finally:
        await sink.aclose()
    assert result.kind is Kind.GONE
    assert stream_name in result.reason and "does not exist" in result.reason
    with pytest.raises(Exception, match="not found"):
        await trio.to_thread.run_sync(cluster.stream_info, stream_name)


async def test_a_stream_that_does_not_take_the_subject_is_gone(
    cluster: NatsCluster, stream_name: str
) -> None:
    await trio.to_thread.run_sync(lambda: cluster.add_stream(
        name=stream_name, subjects=[f"{stream_name.lower()}.audit.>"]))  # fmt: skip
    sink = NatsSink(settings(cluster, stream_name, manage_stream=False))
    try:
        result = await sink.deliver([event(1, "a")])
    finally:
        await sink.aclose()
    assert result.kind is Kind.GONE and "does not take subject" in result.reason


async def test_an_existing_stream_with_another_window_is_warned_about_not_changed(
    cluster: NatsCluster, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    await trio.to_thread.run_sync(lambda: cluster.add_stream(
        name=stream_name, subjects=[f"{stream_name.lower()}.>"], duplicate_window=30))  # fmt: skip
    sink = NatsSink(settings(cluster, stream_name, duplicate_window=600))
    with caplog.at_level(logging.WARNING, logger="streamd.drain"):
        try:
            assert (await sink.deliver([event(1, "a")])).kind is Kind.CONFIRMED
        finally:
            await sink.aclose()
    assert any("duplicate window of 30 s" in r.getMessage() for r in caplog.records)
    info = await trio.to_thread.run_sync(cluster.stream_info, stream_name)
    assert info.config.duplicate_window == 30.0


async def test_unreachable_servers_are_transient(stream_name: str) -> None:
    from tests.system._harness import free_port

    s = NatsSettings(servers=(f"nats://127.0.0.1:{free_port()}",), stream=stream_name,
                     timeout=1.0, sink="nats")  # fmt: skip
    sink = NatsSink(s)
    try:
        result = await sink.deliver([event(1, "a")])
    finally:
        await sink.aclose()
    assert result.kind is Kind.TRANSIENT and "no connection" in result.reason


async def test_a_connect_cut_off_by_the_deadline_closes_its_socket(stream_name: str) -> None:
    """A server that accepts and never sends INFO (hung, or a port that is not NATS's):
    each delivery ends transient at the sink's deadline, and the sink closes the
    connection it opened. nats-py leaves it open: a descriptor per delivery attempt
    until the garbage collector finds it (whose warning failed a CI run)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted = closed = 0

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal accepted, closed
        accepted += 1
        while await stream.receive_some():  # nats-py sends nothing before INFO
            pass
        closed += 1

    s = NatsSettings(servers=(f"nats://127.0.0.1:{port}",), stream=stream_name,
                     timeout=1.0, sink="nats")  # fmt: skip
    sink = NatsSink(s)
    gc.disable()  # only the sink's own close may end a connection here
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, silent, listeners)
            try:
                for _ in range(2):
                    result = await sink.deliver([event(1, "a")])
                    assert result.kind is Kind.TRANSIENT and "no connection" in result.reason
                await wait_until(lambda: accepted >= 2 and closed == accepted,
                                 f"the sink to close its connections ({closed} of "
                                 f"{accepted} closed)", timeout=5)  # fmt: skip
            finally:
                await sink.aclose()
                nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_a_cancelled_delivery_leaves_the_sink_usable(
    cluster: NatsCluster, stream_name: str
) -> None:
    sink = NatsSink(settings(cluster, stream_name))
    try:
        with trio.CancelScope() as scope:
            scope.cancel()
            await sink.deliver([event(1, "c1")])
        # Right after the stream is created it may not have a leader yet ("no
        # responders"): transient, tried again as the runner would.
        for _ in range(50):
            result = await sink.deliver([event(1, "c1"), event(2, "c2")])
            if result.kind is not Kind.TRANSIENT or "no responders" not in result.reason:
                break
            await trio.sleep(0.1)
    finally:
        await sink.aclose()
    assert result.kind is Kind.CONFIRMED, result
    stored = await messages(cluster, stream_name)
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == ["c1", "c2"]
