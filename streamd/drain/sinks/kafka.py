"""The ``kafka`` sink: events produced idempotently with acks=all (confluent-kafka).

Each event is one message: key = the event key (``key = "lead"``: the lead id as
text, else the event key), value = the envelope every sink delivers, headers =
the event's metadata (:data:`HEADERS`), topic = ``settings.topic`` filled in and
made a legal topic name (:func:`topic_name`). A batch is confirmed only when
every one of its messages has a successful delivery report; a message the
broker refuses for good (too large, unknown topic) is a dead letter on its own;
anything else fails the whole batch, which the runner sends again (Kafka keeps
both copies: at least once; consumers dedup by the key, docs/kafka.md).

librdkafka runs in a producer process of the sink's own
(:mod:`~streamd.drain.sinks.kafka_child`, started as ``python -P -m
streamd.service.kafka_producer``): ``produce()``, the loop around it and the
delivery reports were most of the daemon's GIL time, and there they take another
core. This side keeps the decisions: per batch it sends ONE frame (the events as the
drain read them, encoded by msgspec in C: no Python work per event here) and
gets ONE frame back (all delivered, or each failed message's error), from
which :meth:`KafkaSink._result` decides as before. The process is started at the
first batch and again, with a backoff while it keeps dying, after it died (its
batches in flight fail as transient and are sent again).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from confluent_kafka import KafkaError

from streamd.children import describe_exit, environment, python_argv
from streamd.drain.policy import Kind
from streamd.drain.sinks import _kafka_wire as wire
from streamd.drain.sinks.base import CONFIRMED, DrainEvent, Result, confirmed, transient
from streamd.threads import Thread

log = logging.getLogger("streamd.drain.kafka")

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
_RECV = 256 * 1024
_SNDBUF = 4 * 1024 * 1024
# A producer process that keeps dying is started again no sooner than this after it
# died, doubling up to _MAX_BACKOFF; the delay starts over once one lived _STABLE s.
_MIN_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STABLE = 10.0
# After EOF the process purges, closes its producers and exits (kafka_child: at most
# 10 s); it is killed when it takes longer than this.
_EXIT_WAIT = 15.0

#: How a producer process can end, as counted in :attr:`KafkaSink.restarts_by_reason`
#: (and ``streamd_sink_producer_restarts_total``): ``exited``, it ended by itself or by
#: a signal (a crash, the OOM killer, a SIGKILL), or closed its end of the connection;
#: ``protocol``, it sent a bad frame and the sink killed it. A timeout or a fatal error
#: replaces the producer inside the same process: not a restart.
RESTART_REASONS = ("exited", "protocol")


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
    # The daemon's log format (its stderr is the producer process's): "json", "text" or
    # "auto", set by the service (streamd.service.logs.current_format).
    log_format: str = "auto"


# The producer process's entry point: it sets up logging as the daemon does, so it lives
# with the service's entry points (streamd/service/kafka_producer.py runs
# kafka_child.run); a name, not an import.
PRODUCER_PROGRAM = "streamd.service.kafka_producer"


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


class _Waiter:
    """One batch waiting for its answer: ``answer``, or ``lost`` when the process died."""

    __slots__ = ("answer", "done", "lost")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: wire.Done | wire.Unusable | None = None
        self.lost = ""


class _Child:
    """The sink's producer process, seen from the daemon: a sender and a reader thread.

    Frames to send are queued whole (a cancelled batch never leaves half a frame on the
    socket); the sender thread writes them and, at :meth:`close`, shuts down our side
    (EOF: the process purges and exits). The reader thread decodes the answers and hands
    them to the trio loop; at EOF, or on a bad frame (the process is killed), it reaps
    the process and reports the exit, which fails the batches still waiting.
    """

    def __init__(
        self, sink: KafkaSink, popen: subprocess.Popen[bytes], sock: socket.socket
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.started = time.monotonic()
        self.alive = True
        self.ended = "exited"  # how it ended (RESTART_REASONS), set by the reader thread
        self.pending: dict[int, _Waiter] = {}
        self._sink = sink
        self._sock = sock
        self._token = trio.lowlevel.current_trio_token()
        self._out: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        name = f"streamd-kafka-{sink.settings.sink}"
        sink_name = sink.settings.sink
        self._sender = Thread(
            target=self._send_all, name=name + "-send", comm=f"ksend:{sink_name}", daemon=True
        )
        self.reader = Thread(
            target=self._read, name=name + "-read", comm=f"kread:{sink_name}", daemon=True
        )
        self._sender.start()
        self.reader.start()

    def send(self, data: bytearray) -> None:
        self._out.put(data)

    def close(self) -> None:
        """Send EOF once the frames queued so far are sent."""
        self._out.put(None)

    def _send_all(self) -> None:
        sock = self._sock
        while True:
            data = self._out.get()
            try:
                if data is None:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
            except OSError:  # the process is gone: the reader sees EOF and reports it
                return

    def _read(self) -> None:
        reader = wire.sink_reader()
        error = ""
        try:
            while True:
                data = self._sock.recv(_RECV)
                if not data:
                    break
                messages = reader.feed(data)
                if messages:
                    self._soon(self._sink._answers, self, messages)
        except wire.ProtocolError as exc:
            error = f"sent a bad frame ({exc}) and was killed"
            self.ended = "protocol"
            log.error("kafka sink %s: the producer process (pid %d) %s",
                      self._sink.settings.sink, self.pid, error)  # fmt: skip
            self.popen.kill()
        except OSError:
            pass
        try:
            code = self.popen.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            log.error("kafka sink %s: the producer process (pid %d) did not exit; killing it",
                      self._sink.settings.sink, self.pid)  # fmt: skip
            self.popen.kill()
            code = self.popen.wait()
        # The sender ends too (a send to the exited process fails at once); only then is
        # the socket closed, so that it never writes to a descriptor number reused since.
        self._out.put(None)
        self._sender.join(5.0)
        self._sock.close()
        self._soon(self._sink._exited, self, code, error)

    def _soon(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone
            self._token.run_sync_soon(fn, *args)


def _wire_events(events: Sequence[DrainEvent]) -> list[wire.Event]:
    return [
        (e.seq, e.key, e.stream, e.type, e.munchkin_id, e.source, e.occurred_at, e.received_at,
         e.lead_id, e.line, e.activity_type_id, "" if e.line else e.raw)
        for e in events
    ]  # fmt: skip


class KafkaSink:
    """Produces each batch's events, one message each, through its producer process."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._config = producer_config(settings)
        self._child: _Child | None = None
        self._opening = trio.Lock()
        # The producer the next batch asks for: a new number after a timeout or a fatal
        # error makes the producer process replace its producer.
        self._generation = 0
        self._next_id = 0
        self._backoff = _MIN_BACKOFF
        self._not_before = 0.0  # trio time: no new process before this
        #: Producer processes started after the first (one died, or was killed), by
        #: how the one before ended (:data:`RESTART_REASONS`).
        self.restarts_by_reason = dict.fromkeys(RESTART_REASONS, 0)
        self._closed = False

    @property
    def restarts(self) -> int:
        """Producer processes started after the first."""
        return sum(self.restarts_by_reason.values())

    @property
    def pid(self) -> int | None:
        """The producer process's id; None before the first batch or while it is down."""
        child = self._child
        return child.pid if child is not None and child.alive else None

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        if not events:
            return CONFIRMED
        try:
            child = await self._running_child()
        except trio.ClosedResourceError:
            return transient("the kafka sink is closed")
        except OSError as exc:
            return transient(f"kafka: cannot start the producer process: {exc}")
        generation = self._generation
        self._next_id += 1
        batch_id = self._next_id
        data = wire.frame(wire.Produce(batch_id, generation, _wire_events(events)))
        if len(data) - 4 > wire.CHILD_FRAME_LIMIT:
            if len(events) > 1:
                return await self._in_halves(events)
            # One event over the bound: over librdkafka's largest message.max.bytes too.
            reason = f"kafka: the event's frame of {len(data) - 4} bytes is over the bound"
            return confirmed(rejected=[(events[0].seq, reason)])
        if not child.alive:  # it died meanwhile: the next attempt starts a new one
            return transient(f"kafka: the producer process (pid {child.pid}) exited")
        waiter = _Waiter()
        child.pending[batch_id] = waiter
        child.send(data)
        del data
        try:
            await waiter.done.wait()
        except trio.Cancelled:
            # The pool's timeout: the reports did not come in time. The producer process
            # retires that producer now; the next batch gets a new one.
            child.pending.pop(batch_id, None)
            if generation == self._generation:
                self._generation += 1
                if child.alive:
                    child.send(wire.frame(wire.Stale(generation)))
            raise
        answer = waiter.answer
        if answer is None:
            return transient(f"kafka: {waiter.lost}")
        if isinstance(answer, wire.Unusable):
            if answer.code == KafkaError._INVALID_ARG:
                # A property librdkafka refuses can never work: disable with the reason.
                return Result(Kind.GONE, f"kafka: {answer.text}")
            return transient(f"kafka: cannot make a producer: {answer.name}: {answer.text}")
        return self._result(generation, events, answer)

    async def _in_halves(self, events: Sequence[DrainEvent]) -> Result:
        """A batch over one frame's bound, delivered as two (their results merged)."""
        middle = len(events) // 2
        first = await self.deliver(events[:middle])
        if first.kind is not Kind.CONFIRMED:
            return first
        second = await self.deliver(events[middle:])
        if second.kind is not Kind.CONFIRMED:
            return second
        return confirmed(rejected=[*first.rejected, *second.rejected])

    async def _running_child(self) -> _Child:
        """The producer process, started on first use, or again after it died (no
        sooner than the backoff allows)."""
        async with self._opening:
            if self._closed:
                raise trio.ClosedResourceError("the kafka sink is closed")
            child = self._child
            if child is not None and child.alive:
                return child
            if child is not None:
                await trio.sleep_until(self._not_before)
            # Spawned, never forked (this process has threads): a fresh interpreter.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            # A batch's frame in one send() where the system allows (net.core.wmem_max):
            # each partial send of the sender thread waits for the GIL again.
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
            try:
                popen = await trio.to_thread.run_sync(self._spawn, theirs.fileno())
            except OSError:
                ours.close()
                raise
            finally:
                theirs.close()  # the process has its copy: EOF on ours means it is gone
            if child is not None:  # counted once a process is started, not per attempt
                self.restarts_by_reason[child.ended] += 1
            child = self._child = _Child(self, popen, ours)
            hello = wire.Hello(self._config, self.settings.sink, self.settings.topic,
                               self.settings.key, self.settings.instance)  # fmt: skip
            child.send(wire.frame(hello))
            log.info("kafka sink %s: producer process started (pid %d)",
                     self.settings.sink, child.pid)  # fmt: skip
            return child

    def _spawn(self, ipc_fd: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(ipc_fd), pass_fds=(ipc_fd,), stdin=subprocess.DEVNULL, env=environment()
        )

    def command(self, ipc_fd: int) -> list[str]:
        """The argv of the producer process, ``ipc_fd`` its end of the socketpair."""
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        return [*python_argv(PRODUCER_PROGRAM), "--ipc-fd",
                str(ipc_fd), "--sink", self.settings.sink, "--log-level", level,
                "--log-format", self.settings.log_format]  # fmt: skip

    def _answers(self, child: _Child, messages: list[wire.ToSink]) -> None:
        """Answers from the producer process (trio loop)."""
        for message in messages:
            waiter = child.pending.pop(message.id, None)
            if waiter is not None:  # else: a batch cancelled by the pool's timeout
                waiter.answer = message
                waiter.done.set()

    def _exited(self, child: _Child, code: int, error: str) -> None:
        """The producer process is gone (trio loop): its batches fail, to be sent again."""
        child.alive = False
        what = f"the kafka producer process (pid {child.pid}) " + (
            error or f"exited with {describe_exit(code)}"
        )
        for waiter in child.pending.values():
            waiter.lost = what
            waiter.done.set()
        child.pending.clear()
        if self._closed:
            return
        now = trio.current_time()
        if time.monotonic() - child.started >= _STABLE:
            self._backoff = _MIN_BACKOFF
        self._not_before = now + self._backoff
        log.error("kafka sink %s: %s; its batches in flight are sent again; a new one "
                  "starts in %g s", self.settings.sink, what, self._backoff)  # fmt: skip
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    def _result(self, generation: int, events: Sequence[DrainEvent], done: wire.Done) -> Result:
        if not done.failures:
            return CONFIRMED
        in_batch = {e.seq for e in events}
        rejected: list[tuple[int, str]] = []
        failed: list[wire.Failure] = []
        fatal = done.fatal
        for failure in sorted(done.failures, key=lambda f: (f[0] is None, f[0] or 0)):
            seq, code, name, text, is_fatal, _retriable = failure
            if is_fatal:
                fatal = True
                failed.append(failure)
            elif code in _PERMANENT and seq is not None and seq in in_batch:
                rejected.append((seq, f"kafka: {name}: {text}"))
            else:  # transient, or a refusal that cannot be told apart: the batch again
                failed.append(failure)
        if not failed:
            return confirmed(rejected=rejected)
        if (fatal or any(f[1] in _TIMEOUTS for f in failed)) and generation == self._generation:
            # Timed out messages leave an idempotent producer waiting to resync its
            # sequence numbers (after a 60 s freeze of Tansu it never sent again); a fatal
            # error ends it. The next batch asks for a new producer (a new producer id).
            self._generation += 1
        first = failed[0]
        reason = f"kafka: {len(failed)} of {len(events)} messages failed: {first[2]}: {first[3]}"
        if fatal:
            reason += " (fatal for the producer: a new one is made for the next attempt)"
        elif done.last_error:
            reason += f"; last client error: {done.last_error}"
        return transient(reason)

    async def aclose(self) -> None:
        """End the producer process: EOF makes it purge its queued messages (their
        batches were not confirmed, so they are sent again later) and exit."""
        async with self._opening:
            self._closed = True
            child, self._child = self._child, None
        if child is None:
            return
        child.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(child.reader.join, _EXIT_WAIT + 5.0)
