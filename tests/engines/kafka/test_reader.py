"""The tests' reader of a topic (``Tansu.read``) against the broker it reads from.

Tansu 0.6.0 (memory storage) answers ListOffsets "latest" with the base offset of the
last batch + 1, not the end of the partition (tests/upstream/tansu_listoffsets_latest/).
A reader that stopped at that "watermark" lost the rest of the last batch whenever its
``consume()`` call ended inside it: events the sink had delivered looked missing.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.engines._kafka import Tansu


def test_read_returns_the_whole_last_batch_past_tansus_listoffsets_answer(
    broker: Tansu, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.reader"
    producer = Producer({
        "bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all",
        "linger.ms": 200, "batch.num.messages": 10_000, "log_level": 0,
    })  # fmt: skip
    # Two batches in one partition: 40 messages, then 1,500 (more than one consume() call
    # of the reader takes), so the old reader's stop came inside the last batch.
    sizes = (40, 1500)
    sent = 0
    for size in sizes:
        for i in range(sent, sent + size):
            producer.produce(topic, b"value-%d" % i, b"key-%d" % i, partition=0)
        assert producer.flush(10) == 0
        sent += size
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t", "log_level": 0})
    try:
        _, latest = consumer.get_watermark_offsets(
            TopicPartition(topic, 0), timeout=10, cached=False
        )
    finally:
        consumer.close()
    # Tansu's own answer (if a later Tansu gives the real end, this test still stands).
    assert latest in (sizes[0] + 1, sent), latest

    messages = broker.read(topic)

    assert [m.offset for m in messages] == list(range(sent))
    assert [m.key for m in messages] == [b"key-%d" % i for i in range(sent)]


def test_read_of_a_topic_with_empty_partitions(broker: Tansu, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.sparse"
    producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    producer.produce(topic, b"only", b"k", partition=0)
    assert producer.flush(10) == 0

    messages = broker.read(topic, timeout=20)

    assert [(m.partition, m.key) for m in messages] == [(0, b"k")]
