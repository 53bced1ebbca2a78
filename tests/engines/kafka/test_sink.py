"""The kafka sink through the drain engine, against a real broker (Tansu): what arrives at
the broker is compared, message by message and by event key, with the journal."""

from __future__ import annotations

import json
from collections import defaultdict

import trio

from streamd.drain import Kind, open_drain
from streamd.drain.sinks.base import DrainEvent
from streamd.drain.sinks.kafka import (
    KafkaSettings,
    KafkaSink,
    message_timeout_ms,
    producer_config,
    topic_name,
)
from streamd.journal import Journal
from tests.engines._kafka import Message, Tansu

from .conftest import (
    append,
    dead_letters,
    expected_envelope,
    expected_headers,
    journal_rows,
    kafka_spec,
    record,
)

VISIT = "com.adobe.platform.marketo.activity.standard.visitwebpage"


async def wait_cursor(drain: object, value: int, timeout: float = 30.0) -> None:
    with trio.move_on_after(timeout):
        while drain.statistics()[0].cursor < value:  # type: ignore[attr-defined]
            await trio.sleep(0.02)
    cursor = drain.statistics()[0].cursor  # type: ignore[attr-defined]
    assert cursor >= value, f"cursor {cursor} < {value}: {drain.statistics()[0]}"  # type: ignore[attr-defined]


def read_all(broker: Tansu, prefix: str) -> list[Message]:
    return [m for t in broker.topics() if t.startswith(prefix) for m in broker.read(t)]


async def test_messages_match_the_journal_and_route_by_stream_and_type(
    broker: Tansu, journal: Journal, topic_prefix: str
) -> None:
    await append(journal, [record(f"a{i}", lead_id=i) for i in range(40)])
    await append(
        journal,
        [
            record("odd type", type="x y/z:€"),  # characters a topic name cannot hold
            record("no type", type=None, munchkin_id=None, lead_id=None, occurred_at=None),
            record("audit1", stream="audit", type="com.adobe.platform.marketo.audit.login"),
        ],
        source="audit",
    )
    settings = KafkaSettings(
        bootstrap_servers=(broker.bootstrap,),
        topic=topic_prefix + ".{stream}.{type}",
        instance="receiver-1",
        sink="k",
    )
    async with open_drain(journal, [kafka_spec("k", settings)]) as drain:
        await wait_cursor(drain, 43)
    rows = journal_rows(journal.path)
    assert len(rows) == 43
    messages = read_all(broker, topic_prefix)
    by_key: dict[bytes | None, list[Message]] = defaultdict(list)
    for m in messages:
        by_key[m.key].append(m)
    journaled = sorted(r["event_key"].encode() for r in rows)
    assert sorted(k for k in by_key if k is not None) == journaled
    expected_topic = {
        "activity." + VISIT: f"{topic_prefix}.activity.{VISIT}",
        "activity.x y/z:€": f"{topic_prefix}.activity.x_y_z__",
        "activity.None": f"{topic_prefix}.activity.none",
        "audit.com.adobe.platform.marketo.audit.login": (
            f"{topic_prefix}.audit.com.adobe.platform.marketo.audit.login"
        ),
    }
    for row in rows:
        got = by_key[row["event_key"].encode()]
        assert len(got) == 1, f"{row['event_key']}: {len(got)} messages (no failure happened)"
        m = got[0]
        assert m.topic == expected_topic[f"{row['stream']}.{row['type']}"]
        assert json.loads(m.value) == expected_envelope(row)
        assert m.headers == expected_headers(row, "receiver-1")
    # The value is the very envelope the other sinks deliver: one line of JSON.
    assert all(b"\n" not in m.value for m in messages)


async def test_key_lead_keys_by_lead_id_else_the_event_key(
    broker: Tansu, journal: Journal, topic_prefix: str
) -> None:
    await append(journal, [record("l1", lead_id=1001), record("l2", lead_id=1001)])
    await append(journal, [record("l3", lead_id=None), record("l4", lead_id=42)])
    settings = KafkaSettings(
        bootstrap_servers=(broker.bootstrap,), topic=topic_prefix, key="lead", sink="k"
    )
    async with open_drain(journal, [kafka_spec("k", settings)]) as drain:
        await wait_cursor(drain, 4)
    got = {m.headers["streamd-event-key"]: m.key for m in broker.read(topic_prefix)}
    assert got == {b"l1": b"1001", b"l2": b"1001", b"l3": b"l3", b"l4": b"42"}


async def test_an_oversized_event_alone_is_dead_lettered(
    broker: Tansu, journal: Journal, topic_prefix: str
) -> None:
    big = '{"id": "big", "text": "' + "x" * 5000 + '"}'
    await append(journal, [record("s1"), record("big", raw=big), record("s2")])
    await append(journal, [record("s3")])
    settings = KafkaSettings(
        bootstrap_servers=(broker.bootstrap,),
        topic=topic_prefix,
        # The producer refuses a message over message.max.bytes, as a broker would.
        properties={"message.max.bytes": "3000"},
        sink="k",
    )
    async with open_drain(journal, [kafka_spec("k", settings)]) as drain:
        await wait_cursor(drain, 4)
        status = drain.statistics()[0]
        assert (status.confirmed, status.dead_letters) == (3, 1)
    letters = dead_letters(journal.path)
    assert [key for key, _ in letters] == ["big"]
    assert "MSG_SIZE_TOO_LARGE" in letters[0][1]
    keys = sorted(m.key for m in broker.read(topic_prefix) if m.key is not None)
    assert keys == [b"s1", b"s2", b"s3"]


async def test_an_unknown_topic_with_auto_create_off_is_a_dead_letter(
    broker: Tansu, journal: Journal, topic_prefix: str
) -> None:
    """The broker refuses a message for a topic it does not have (Tansu honours the
    client's ``allow.auto.create.topics = false``, as Kafka does its own
    ``auto.create.topics.enable = false``): a delivery report's error, told apart per
    event, so only the events of that topic are dead letters."""
    existing = f"{topic_prefix}.activity"
    _create_topic(broker, existing)
    await append(journal, [record("a1"), record("a2")])
    await append(journal, [record("x1", stream="audit")], source="audit")
    await append(journal, [record("a3"), record("x2", stream="audit"), record("a4")])
    settings = KafkaSettings(
        bootstrap_servers=(broker.bootstrap,),
        topic=topic_prefix + ".{stream}",
        properties={"allow.auto.create.topics": "false"},
        timeout=6.0,  # the unknown topic is reported after half the message timeout
        sink="k",
    )
    async with open_drain(journal, [kafka_spec("k", settings, timeout=6.0)]) as drain:
        await wait_cursor(drain, 6)
        status = drain.statistics()[0]
        assert (status.confirmed, status.dead_letters) == (4, 2)
    letters = dead_letters(journal.path)
    assert [key for key, _ in letters] == ["x1", "x2"]
    assert all("UNKNOWN_TOPIC" in reason for _, reason in letters), letters
    assert f"{topic_prefix}.audit" not in broker.topics()
    keys = sorted(m.key for m in broker.read(existing) if m.key is not None)
    assert keys == [b"a1", b"a2", b"a3", b"a4"]


def _create_topic(broker: Tansu, topic: str) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=10)


async def test_a_property_librdkafka_refuses_disables_the_sink(
    broker: Tansu, journal: Journal, topic_prefix: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=(broker.bootstrap,),
        topic=topic_prefix,
        properties={"no.such.property": "1"},
        sink="k",
    )
    sink = KafkaSink(settings)
    try:
        result = await sink.deliver([_event(1)])
    finally:
        await sink.aclose()
    assert result.kind is Kind.GONE
    assert "no.such.property" in result.reason


async def test_an_unreachable_broker_is_transient_within_the_timeout(topic_prefix: str) -> None:
    from tests.system._harness import free_port

    settings = KafkaSettings(
        bootstrap_servers=(f"127.0.0.1:{free_port()}",), topic=topic_prefix, timeout=2.0, sink="k"
    )
    sink = KafkaSink(settings)  # no connection is made here
    try:
        with trio.fail_after(5):
            result = await sink.deliver([_event(1), _event(2)])
    finally:
        await sink.aclose()
    assert result.kind is Kind.TRANSIENT
    assert "2 of 2 messages failed" in result.reason and "_MSG_TIMED_OUT" in result.reason


async def test_a_cancelled_delivery_leaves_the_sink_usable(
    broker: Tansu, topic_prefix: str
) -> None:
    """The runner's timeout cancels a batch waiting for its reports; they come later,
    change nothing, and the next batch is confirmed on its own reports."""
    settings = KafkaSettings(bootstrap_servers=(broker.bootstrap,), topic=topic_prefix, sink="k")
    sink = KafkaSink(settings)
    try:
        with trio.fail_after(20):
            assert (await sink.deliver([_event(1)])).kind is Kind.CONFIRMED
        broker.freeze()
        try:
            with trio.move_on_after(1.0) as waiting:
                await sink.deliver([_event(i) for i in range(2, 102)])
            assert waiting.cancelled_caught, "delivered to a frozen broker?"
        finally:
            broker.thaw()
        with trio.fail_after(20):
            result = await sink.deliver([_event(i) for i in range(102, 202)])
        assert result.kind is Kind.CONFIRMED
    finally:
        await sink.aclose()
    keys = {m.key for m in broker.read(topic_prefix)}
    confirmed = {f"e{i}".encode() for i in (1, *range(102, 202))}
    assert confirmed <= keys, sorted(confirmed - keys)
    # The cancelled batch was produced, but its producer was retired (purged) at the next
    # batch: its messages may or may not have reached the broker (it would be re-sent).
    assert keys <= {f"e{i}".encode() for i in range(1, 202)}


def test_topic_names_are_legal() -> None:
    e = _event(1)
    assert topic_name("streamd.{stream}", e) == "streamd.activity"
    assert topic_name("{munchkin_id}-{source}", e) == "123-ABC-456-events"
    assert topic_name("a{type}", _event(1, type=None)) == "anone"
    assert topic_name("{stream}", _event(1, stream="..")) == "_"
    assert topic_name("x{stream}", _event(1, stream="ä" * 300)) == "x" + "_" * 248


def test_producer_config_keeps_what_confirms_a_delivery() -> None:
    settings = KafkaSettings(
        bootstrap_servers=("b1:9092", "b2:9092"),
        properties={"compression.type": "zstd", "client.id": "mine"},
        password="s3cret",
        instance="vm1",
        timeout=20.0,
        sink="orders",
    )
    config = producer_config(settings)
    assert config["bootstrap.servers"] == "b1:9092,b2:9092"
    assert (config["acks"], config["enable.idempotence"]) == ("all", True)
    assert config["message.timeout.ms"] == 18_000
    assert config["compression.type"] == "zstd"
    assert config["client.id"] == "mine"  # a property may name the client
    assert config["sasl.password"] == "s3cret"
    default = producer_config(KafkaSettings(bootstrap_servers=("b",), instance="vm1", sink="s"))
    assert default["client.id"] == "streamd/s/vm1"
    assert "sasl.password" not in default
    assert default["compression.type"] == "lz4"  # half Tansu's CPU per event
    assert [message_timeout_ms(t) for t in (1.0, 5.0, 60.0)] == [900, 4500, 58_000]


def _event(seq: int, **kw: object) -> DrainEvent:
    fields: dict[str, object] = {
        "seq": seq,
        "key": f"e{seq}",
        "stream": "activity",
        "type": VISIT,
        "munchkin_id": "123-ABC-456",
        "activity_type_id": 1,
        "source": "events",
        "occurred_at": None,
        "received_at": "2026-05-01T10:00:00.000Z",
        "raw": f'{{"id": "e{seq}"}}',
        "lead_id": 7,
    }
    fields.update(kw)
    return DrainEvent(**fields)  # type: ignore[arg-type]
