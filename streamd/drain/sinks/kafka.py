"""The ``kafka`` sink: events produced idempotently with acks=all (confluent-kafka).

Each event is one message: key = the event key (``key = "lead"``: the lead id as
text, else the event key), value = the envelope every sink delivers, headers =
the event's metadata (:data:`HEADERS`), topic = ``settings.topic`` filled in and
made a legal topic name (:func:`topic_name`). A batch is confirmed only when
every one of its messages has a successful delivery report; a message the
broker refuses for good (too large, unknown topic) is a dead letter on its own;
anything else fails the whole batch, which the runner sends again (Kafka keeps
both copies: at least once; consumers dedup by the key, docs/kafka.md).

librdkafka never runs on the trio loop: ``produce()`` runs in a worker thread
(one at a time per sink), and one thread per producer calls ``poll()``, which
runs the delivery callbacks; the last report of a batch wakes its waiter through
the trio token. A full local queue (``BufferError``) makes the producing side
wait on the loop, with ``trio.sleep``, for reports to free space.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamd.drain.policy import Kind
from streamd.drain.sinks.base import CONFIRMED, DrainEvent, Result, confirmed, envelope, transient

log = logging.getLogger("streamd.drain.kafka")
_librdkafka_log = logging.getLogger("streamd.drain.kafka.librdkafka")

#: The headers of each message (UTF-8 text); those of a field the event lacks are left out.
HEADERS = (
    "streamd-event-key",  # the event key (the journal's dedup key): the consumer's dedup key
    "streamd-stream",  # activity, audit, notification, other
    "streamd-type",
    "streamd-source",  # the endpoint that received it
    "streamd-munchkin-id",
    "streamd-seq",  # the event's sequence in this receiver's journal (not global)
    "streamd-occurred-at",
    "streamd-received-at",
    "streamd-instance",  # the receiving streamd (``instance``, else the host name)
)
# Refused for good, for this message alone: it becomes a dead letter. Every other error
# fails the whole batch, which is retried (never lose an event on an unknown error).
# TOPIC_AUTHORIZATION_FAILED is retried too: an ACL fixed by an operator should let the
# events through, not leave them in the dead letters.
_PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
    KafkaError.TOPIC_EXCEPTION, KafkaError.RECORD_LIST_TOO_LARGE,
})  # fmt: skip
_TIMEOUTS = frozenset({KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT,
                       KafkaError.REQUEST_TIMED_OUT})  # fmt: skip
_NOT_IN_TOPIC = re.compile(r"[^A-Za-z0-9._-]")
_MAX_TOPIC = 249
_QUEUE_FULL_WAIT = 0.01  # s between tries when librdkafka's local queue is full
_POLL = 0.1  # s: how soon the poller notices it must stop
_CLOSE_FLUSH = 2.0  # s to serve the purged messages' reports when a producer is retired


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: tuple[str, ...]
    topic: str = "streamd.{stream}"  # {stream} {type} {source} {munchkin_id}
    key: str = "event"  # "event": the event key; "lead": the lead id (else the event key)
    properties: dict[str, str] = field(default_factory=dict)  # more librdkafka settings
    password: str | None = None  # sasl.password, from kafka.password_file
    instance: str = ""
    timeout: float = 20.0  # the pool's timeout: one batch's delivery reports
    sink: str = ""


def topic_name(template: str, event: DrainEvent) -> str:
    """``template`` filled in from the event; a field it lacks is ``none``. Characters a
    topic name cannot hold (outside ``[A-Za-z0-9._-]``) become ``_``, the name is cut at
    249 characters, and ``.``, ``..`` and the empty name (which Kafka refuses) become ``_``.
    """
    name = template.format(
        stream=event.stream,
        type=event.type if event.type is not None else "none",
        source=event.source,
        munchkin_id=event.munchkin_id if event.munchkin_id is not None else "none",
    )
    name = _NOT_IN_TOPIC.sub("_", name)[:_MAX_TOPIC]
    return "_" if name in ("", ".", "..") else name


def message_timeout_ms(timeout: float) -> int:
    """librdkafka's ``message.timeout.ms``: a little below the pool's timeout, so every
    message of a batch has its report (delivered or timed out) before the runner gives up
    on the batch: 90 %, and at most 2 s less."""
    return max(100, int(max(timeout * 0.9, timeout - 2.0) * 1000))


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The librdkafka configuration: defaults a property may change, the properties,
    then what makes a delivery confirmed (which the config checks keep out of them)."""
    timeout_ms = message_timeout_ms(settings.timeout)
    config: dict[str, Any] = {
        "client.id": f"streamd/{settings.sink}/{settings.instance}",
        # Fail a message to a topic that does not exist (auto-create off) before it times
        # out, so it becomes a dead letter instead of failing its batch for ever.
        "topic.metadata.propagation.max.ms": min(30_000, timeout_ms // 2),
        "log.connection.close": False,  # idle connections closed by the broker: not news
        # Half the broker's CPU per event (Tansu, bench/RESULTS.md); every client reads it.
        "compression.type": "lz4",
        # A message in flight to a broker that stopped answering times out with its
        # request, not with message.timeout.ms: keep that inside the pool's timeout too.
        "request.timeout.ms": min(30_000, timeout_ms),
    }
    config.update(settings.properties)
    config.update(
        {
            "bootstrap.servers": ",".join(settings.bootstrap_servers),
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": timeout_ms,
        }
    )
    if settings.password is not None:
        config["sasl.password"] = settings.password
    return config


class _LibrdkafkaLog:
    """librdkafka's own log lines, at debug level: what matters comes through error_cb."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _librdkafka_log.debug(msg, *args)


class _Reports:
    """The delivery reports of one batch, filled in from librdkafka's poller thread.

    One bound method (:meth:`report`) is every message's delivery callback: no object
    per message. A successful report only counts down; a failed one is kept with the
    seq of its event, read from the message's value (the envelope) only then. Counts
    one more than the batch's messages until the producing side has handed every
    message over (``handed_over``): a report may come before ``produce`` has returned.
    The last one wakes the waiter through the trio token (once per batch); after a
    cancellation nobody waits and late reports change nothing.
    """

    __slots__ = ("_lock", "_remaining", "_token", "done", "errors")

    def __init__(self, size: int, token: trio.lowlevel.TrioToken) -> None:
        self._lock = threading.Lock()
        self._remaining = size + 1
        self._token = token
        # (the event's seq, else None when the message cannot be told, error)
        self.errors: list[tuple[int | None, KafkaError]] = []
        self.done = trio.Event()

    def report(self, error: KafkaError | None, message: Message | None) -> None:
        """One message's delivery report (the poller thread)."""
        if error is not None:
            self.failed(_seq_of(message), error)
            return
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._wake()

    def failed(self, seq: int | None, error: KafkaError) -> None:
        """A message that failed (any thread): refused by ``produce`` or reported."""
        with self._lock:
            self.errors.append((seq, error))
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._wake()

    def handed_over(self) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone
            self._token.run_sync_soon(self.done.set)


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


class _Producer:
    """One librdkafka producer and the thread that serves its callbacks (``poll``).

    Made in a worker thread (``rd_kafka_new`` starts threads and may take a while).
    ``retire`` asks the thread to purge what is queued or in flight, serve the purged
    messages' reports (their batches fail and are retried) and close the producer.
    """

    def __init__(self, config: dict[str, Any], name: str) -> None:
        self.fatal: KafkaError | None = None
        # Timed out or cancelled messages leave the idempotent producer waiting to resync
        # its sequence numbers; after a 60 s freeze of Tansu it never sent again. A new
        # producer (new producer id) is made instead.
        self.stale = False
        self.last_error = ""
        self._stopping = False
        self._warned: dict[str, float] = {}
        self.producer = Producer({**config, "error_cb": self._on_error, "logger": _LibrdkafkaLog()})
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
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
        producer at the next delivery."""
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

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


class KafkaSink:
    """Produces each batch's events, one message each, and waits for every report."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._config = producer_config(settings)
        self._key_by_lead = settings.key == "lead"
        self._instance = settings.instance
        self._current: _Producer | None = None
        self._retired: list[_Producer] = []
        self._opening = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)  # producing is CPU: one thread is enough
        # route (stream, type, source, munchkin id) -> (topic, the route's headers)
        self._routes: dict[
            tuple[str, str | None, str, str | None], tuple[str, tuple[tuple[str, str], ...]]
        ] = {}
        self._closed = False

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        if not events:
            return CONFIRMED
        try:
            producer = await self._producer()
        except trio.ClosedResourceError:
            return transient("the kafka sink is closed")
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG:
                # A property librdkafka refuses can never work: disable with the reason.
                return Result(Kind.GONE, f"kafka: {error.str()}")
            return transient(f"kafka: cannot make a producer: {exc}")
        reports = _Reports(len(events), trio.lowlevel.current_trio_token())
        start = 0
        while True:
            start = await trio.to_thread.run_sync(
                self._produce, producer, events, reports, start, limiter=self._limiter
            )
            if start == len(events):
                break
            await trio.sleep(_QUEUE_FULL_WAIT)  # the local queue is full: reports free it
        reports.handed_over()
        try:
            await reports.done.wait()
        except trio.Cancelled:
            producer.stale = True  # the pool's timeout: reports did not come in time
            raise
        return self._result(producer, events, reports)

    async def _producer(self) -> _Producer:
        """The current producer, made on first use or after a fatal error."""
        async with self._opening:
            current = self._current
            if current is not None and current.fatal is None and not current.stale:
                return current
            if current is not None:
                log.info("kafka sink %s: a new producer replaces the %s one", self.settings.sink,
                         "failed" if current.fatal else "timed out")  # fmt: skip
                current.retire()
                self._retired = [p for p in self._retired if p.thread.is_alive()]
                self._retired.append(current)
                self._current = None
            if self._closed:
                raise trio.ClosedResourceError("the kafka sink is closed")
            name = f"streamd-kafka-{self.settings.sink}"
            self._current = await trio.to_thread.run_sync(_Producer, self._config, name)
            return self._current

    def _produce(
        self, producer: _Producer, events: Sequence[DrainEvent], reports: _Reports, start: int
    ) -> int:
        """Hand the events from ``start`` on to librdkafka (worker thread); returns where
        it stopped: ``len(events)``, or the first one the full local queue did not take.

        The per-message work is kept small: one delivery callback for the whole batch,
        and the topic and the headers that follow from the route made once per route.
        """
        produce = producer.producer.produce
        on_delivery = reports.report
        routes = self._routes
        by_lead = self._key_by_lead
        for index in range(start, len(events)):
            e = events[index]
            route = (e.stream, e.type, e.source, e.munchkin_id)
            routed = routes.get(route)
            if routed is None:
                if len(routes) >= 4096:
                    routes.clear()
                routed = routes[route] = self._route(e)
            topic, route_headers = routed
            headers: list[tuple[str, str | bytes | None]] = [
                ("streamd-event-key", e.key),
                ("streamd-seq", str(e.seq)),
                ("streamd-received-at", e.received_at),
                *route_headers,
            ]
            if e.occurred_at is not None:
                headers.append(("streamd-occurred-at", e.occurred_at))
            try:
                produce(
                    topic,
                    e.line or envelope(e),
                    str(e.lead_id) if by_lead and e.lead_id is not None else e.key,
                    headers=headers,
                    on_delivery=on_delivery,
                )
            except BufferError:
                return index
            except KafkaException as exc:  # refused before it was queued (too large, fatal)
                reports.failed(e.seq, exc.args[0])
        return len(events)

    def _route(self, event: DrainEvent) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The topic of the event's route and the headers every event of it carries."""
        headers = [("streamd-stream", event.stream), ("streamd-source", event.source)]
        if event.type is not None:
            headers.append(("streamd-type", event.type))
        if event.munchkin_id is not None:
            headers.append(("streamd-munchkin-id", event.munchkin_id))
        headers.append(("streamd-instance", self._instance))
        return topic_name(self.settings.topic, event), tuple(headers)

    def _result(
        self, producer: _Producer, events: Sequence[DrainEvent], reports: _Reports
    ) -> Result:
        if not reports.errors:
            return CONFIRMED
        in_batch = {e.seq for e in events}
        rejected: list[tuple[int, str]] = []
        failed: list[KafkaError] = []
        for seq, error in sorted(reports.errors, key=lambda r: (r[0] is None, r[0] or 0)):
            if error.fatal():
                producer.fatal = producer.fatal or error
                failed.append(error)
            elif error.code() in _PERMANENT and seq in in_batch:
                rejected.append((seq, f"kafka: {error.name()}: {error.str()}"))
            else:  # transient, or a refusal that cannot be told apart: the batch again
                failed.append(error)
        if not failed:
            return confirmed(rejected=rejected)
        if any(e.code() in _TIMEOUTS for e in failed):
            producer.stale = True
        first = failed[0]
        reason = (
            f"kafka: {len(failed)} of {len(events)} messages failed: {first.name()}: {first.str()}"
        )
        if producer.fatal is not None:
            reason += " (fatal for the producer: a new one is made for the next attempt)"
        elif producer.last_error:
            reason += f"; last client error: {producer.last_error}"
        return transient(reason)

    async def aclose(self) -> None:
        """Retire the producers: their queued messages are purged (their batches were not
        confirmed, so they are sent again later) and their threads end."""
        async with self._opening:
            self._closed = True
            producers = self._retired + ([self._current] if self._current else [])
            self._current, self._retired = None, []
        for producer in producers:
            producer.retire()

        def join() -> None:
            for producer in producers:
                producer.join(_CLOSE_FLUSH + 10.0)

        if producers:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(join)
