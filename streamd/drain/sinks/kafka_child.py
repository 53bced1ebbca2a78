"""The producer process of a kafka sink: librdkafka on its own core, under its own GIL.

Started by the sink (:class:`~streamd.drain.sinks.kafka.KafkaSink`) as
``python -P -m streamd.service.kafka_producer --ipc-fd N --sink NAME`` (its entry point,
which runs :func:`run`) with one end of a
socketpair inherited (spawned, never forked: the daemon has threads). Over it come the
configuration (:class:`~streamd.drain.sinks._kafka_wire.Hello`) and one frame per batch
(:class:`~streamd.drain.sinks._kafka_wire.Produce`); back goes one frame per batch once
every message has its delivery report (:class:`~streamd.drain.sinks._kafka_wire.Done`).
What the sink decides (confirmed, dead letter, retried, a new producer) it decides from
those reports, as when librdkafka ran in the daemon itself.

Two threads: the main one reads frames and calls ``produce()`` (waiting while the local
queue is full); one per producer calls ``poll()``, which runs the delivery callbacks and
sends each finished batch's answer. The process exits as soon as it reads EOF (the sink
closed, or the daemon died, even by SIGKILL): the queued messages are purged (their
batches were not confirmed) and nothing is produced for a daemon that is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamd.drain.sinks import _kafka_wire as wire
from streamd.drain.sinks.base import DrainEvent, envelope
from streamd.drain.sinks.kafka import topic_name
from streamd.threads import Thread

log = logging.getLogger("streamd.drain.kafka")
_librdkafka_log = logging.getLogger("streamd.drain.kafka.librdkafka")

_QUEUE_FULL_WAIT = 0.005  # s between tries when librdkafka's local queue is full
_POLL = 0.1  # s: how soon a poller notices it must stop
_CLOSE_FLUSH = 2.0  # s to serve the purged messages' reports when a producer is retired
_EXIT_GRACE = 10.0  # s after EOF: the process exits even if a producer hangs in close
_RECV = 1024 * 1024

SendFn = Callable[[wire.Done | wire.Unusable], None]


class _LibrdkafkaLog:
    """librdkafka's own log lines, at debug level: what matters comes through error_cb."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _librdkafka_log.debug(msg, *args)


def _failure(seq: int | None, error: KafkaError) -> wire.Failure:
    return (seq, error.code(), error.name(), error.str(), error.fatal(), error.retriable())


class _Producer:
    """One librdkafka producer and the thread that serves its callbacks (``poll``).

    ``retire`` asks the thread to purge what is queued or in flight, serve the purged
    messages' reports (their batches fail and are retried) and close the producer.
    """

    def __init__(self, config: dict[str, Any], generation: int, name: str) -> None:
        self.generation = generation
        self.fatal: KafkaError | None = None
        self.last_error = ""
        self._stopping = False
        self._warned: dict[str, float] = {}
        self.producer = Producer({**config, "error_cb": self._on_error, "logger": _LibrdkafkaLog()})
        self.thread = Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        producer = self.producer
        try:
            while not self._stopping:
                producer.poll(_POLL)
            # Queued messages belong to batches that will be sent again: purging them
            # saves duplicates. Their reports (purged: transient) are served here.
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.flush(_CLOSE_FLUSH)
            producer.close()
        except Exception:  # a bug: shown, never silent
            log.exception("kafka producer thread %s failed", self.thread.name)

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (poller thread): a broker down, a fatal
        idempotence error. Logged once a minute per message; a fatal one retires this
        producer at the next batch."""
        text = f"{error.name()}: {error.str()}"
        self.last_error = text
        if error.fatal():
            self.fatal = error
        now = time.monotonic()
        if now - self._warned.get(text, -120.0) >= 60.0:
            self._warned[text] = now
            if len(self._warned) > 100:
                self._warned.clear()
            log.warning("kafka: %s%s", text, " (fatal: a new producer is made)" * error.fatal())

    def retire(self) -> None:
        self._stopping = True


class _Batch:
    """The delivery reports of one batch, filled in from the poller thread.

    One bound method (:meth:`report`) is every message's delivery callback: no object
    per message. A failed report is kept with the seq of its event, read from the
    message's value (the envelope) only then. Counts one more than the batch's messages
    until every message was handed over (``handed_over``): a report may come before
    ``produce`` has returned. The last one sends the answer.
    """

    __slots__ = ("_lock", "_producer", "_remaining", "_send", "failures", "id")

    def __init__(self, batch_id: int, size: int, producer: _Producer, send: SendFn) -> None:
        self.id = batch_id
        self._lock = threading.Lock()
        self._remaining = size + 1
        self._producer = producer
        self._send = send
        self.failures: list[wire.Failure] = []

    def report(self, error: KafkaError | None, message: Message | None) -> None:
        """One message's delivery report (the poller thread)."""
        if error is not None:
            self.failed(_seq_of(message), error)
            return
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._finish()

    def failed(self, seq: int | None, error: KafkaError) -> None:
        """A message that failed (any thread): refused by ``produce`` or reported."""
        with self._lock:
            self.failures.append(_failure(seq, error))
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._finish()

    def handed_over(self) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        producer = self._producer
        self._send(
            wire.Done(self.id, self.failures, producer.fatal is not None, producer.last_error)
        )


def _drain_event(event: wire.Event) -> DrainEvent:
    seq, key, stream, type_, munchkin_id, source, occurred_at, received_at = event[:8]
    lead_id, line, activity_type_id, raw = event[8:]
    return DrainEvent(seq, key, stream, type_, munchkin_id, activity_type_id, source,
                      occurred_at, received_at, raw, lead_id, line)  # fmt: skip


def _seq_of(message: Message | None) -> int | None:
    """The journal seq of a reported message: the ``seq`` of its value, the envelope.
    (A delivery report carries no headers.) None when it cannot be told."""
    value = message.value() if message is not None else None
    if not isinstance(value, bytes):
        return None
    try:
        seq = orjson.loads(value).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


class _Child:
    """The process's state: the connection to the sink and the current producer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self.config: dict[str, Any] | None = None
        self.sink = ""
        self.topic = ""
        self.key_by_lead = False
        self.instance = ""
        # route (stream, type, source, munchkin id) -> (topic, the route's headers)
        self.routes: dict[
            tuple[str, str | None, str, str | None], tuple[str, list[tuple[str, str]]]
        ] = {}
        self.current: _Producer | None = None
        self.retired: list[_Producer] = []

    def send(self, message: wire.Done | wire.Unusable) -> None:
        """Send one answer (any thread). The sink gone: nothing to do, EOF ends us."""
        data = wire.frame(message)
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def serve(self) -> None:
        """Read and act on frames until EOF."""
        reader = wire.child_reader()
        while True:
            data = self.sock.recv(_RECV)
            if not data:
                return
            for message in reader.feed(data):
                self.handle(message)

    def handle(self, message: wire.ToChild) -> None:
        if isinstance(message, wire.Produce):
            self.produce(message)
        elif isinstance(message, wire.Stale):
            current = self.current
            if current is not None and current.generation == message.generation:
                log.warning(
                    "kafka sink %s: a batch timed out; its producer is retired (its queue "
                    "purged), the next batch gets a new one",
                    self.sink,
                )
                self._retire(current)
        elif self.config is None:
            self.config, self.sink, self.topic = message.config, message.sink, message.topic
            self.key_by_lead, self.instance = message.key == "lead", message.instance
        else:
            raise wire.ProtocolError("a second hello")

    def _retire(self, producer: _Producer) -> None:
        producer.retire()
        self.retired = [p for p in self.retired if p.thread.is_alive()]
        self.retired.append(producer)
        if self.current is producer:
            self.current = None

    def _producer(self, message: wire.Produce) -> _Producer | None:
        """The producer of the batch's generation, made if need be; None (and the batch
        answered ``Unusable``) when librdkafka refuses to make one."""
        current = self.current
        if current is not None:
            if current.generation == message.generation and current.fatal is None:
                return current
            log.info("kafka sink %s: a new producer replaces the %s one", self.sink,
                     "failed" if current.fatal else "timed out")  # fmt: skip
            self._retire(current)
        if self.config is None:
            raise wire.ProtocolError("a batch before the hello")
        try:
            self.current = _Producer(self.config, message.generation, f"kafka-{self.sink}")
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError):
                self.send(wire.Unusable(message.id, error.code(), error.name(), error.str()))
            else:
                self.send(wire.Unusable(message.id, KafkaError._FAIL, "_FAIL", str(exc)))
            return None
        return self.current

    def produce(self, message: wire.Produce) -> None:
        """Hand the batch's events to librdkafka, one message each, waiting while its
        queue is full.

        The per-message work is kept small: one delivery callback for the whole batch,
        and the topic and the headers that follow from the route made once per route.
        """
        producer = self._producer(message)
        if producer is None:
            return
        events = message.events
        batch = _Batch(message.id, len(events), producer, self.send)
        produce = producer.producer.produce
        on_delivery = batch.report
        routes = self.routes
        by_lead = self.key_by_lead
        for event in events:
            seq, key, stream, type_, munchkin_id, source, occurred_at, received_at = event[:8]
            lead_id, value = event[8], event[9]
            route = (stream, type_, source, munchkin_id)
            routed = routes.get(route)
            if routed is None:
                if len(routes) >= 4096:
                    routes.clear()
                routed = routes[route] = self._route(_drain_event(event))
            topic, route_headers = routed
            headers: list[tuple[str, str | bytes | None]] = [
                ("streamd-event-key", key),
                ("streamd-seq", str(seq)),
                ("streamd-received-at", received_at),
                *route_headers,
            ]
            if occurred_at is not None:
                headers.append(("streamd-occurred-at", occurred_at))
            if not value:  # the reader did not build the envelope
                value = envelope(_drain_event(event))
            while True:
                try:
                    produce(
                        topic,
                        value,
                        str(lead_id) if by_lead and lead_id is not None else key,
                        headers=headers,
                        on_delivery=on_delivery,
                    )
                except BufferError:  # the local queue is full: reports free it
                    time.sleep(_QUEUE_FULL_WAIT)
                    continue
                except KafkaException as exc:  # refused before it was queued (too large, fatal)
                    batch.failed(seq, exc.args[0])
                break
        batch.handed_over()

    def _route(self, event: DrainEvent) -> tuple[str, list[tuple[str, str]]]:
        """The topic of the event's route and the headers every event of it carries."""
        headers = [("streamd-stream", event.stream), ("streamd-source", event.source)]
        if event.type is not None:
            headers.append(("streamd-type", event.type))
        if event.munchkin_id is not None:
            headers.append(("streamd-munchkin-id", event.munchkin_id))
        headers.append(("streamd-instance", self.instance))
        return topic_name(self.topic, event), headers

    def close(self) -> None:
        """Retire every producer (queued messages purged) and wait for their threads."""
        if self.current is not None:
            self._retire(self.current)
        deadline = time.monotonic() + _CLOSE_FLUSH + 5.0
        for producer in self.retired:
            producer.thread.join(max(0.0, deadline - time.monotonic()))


def _exit_later(seconds: float) -> None:
    """Exit after ``seconds`` whatever is still running (a producer hung in close)."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def run(ipc_fd: int) -> int:
    """Serve the sink until EOF; return the exit status."""
    sock = socket.socket(fileno=ipc_fd)
    sock.setblocking(True)
    child = _Child(sock)
    try:
        child.serve()
    except wire.ProtocolError as exc:
        log.error("kafka producer process: a bad frame from the sink (%s); exiting", exc)
        _exit_later(_EXIT_GRACE)
        child.close()
        return 2
    # EOF: the sink closed, or the daemon is gone. What is queued is purged: nothing is
    # produced for a daemon that can no longer record it.
    _exit_later(_EXIT_GRACE)
    child.close()
    return 0
