"""One sink's pool: a reader that batches the journal, bounded workers that deliver.

Invariants:
- ``cursor`` (the low-water mark) only passes events whose batch was confirmed,
  dead-lettered, or did not match the sink's route. Batches may finish out of
  order; the cursor moves over the contiguous finished prefix.
- ``outstanding`` counts matching events read but not yet persisted as passed:
  the reader never lets it exceed ``max_in_flight``, so memory is bounded by
  that window and, after a crash, redelivery is confined to it.
- The reader wakes on journal commits (``Journal.wait_beyond``), never polls.
- Every delivery goes through the same workers: journal batches, and dead letters
  an operator asked to retry or a range replay queued (``letters``). So the
  sink's state (paused, disabled, auto-paused), ``workers``, ``interval`` and
  ``batch_size`` bind all of them alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from streamd.drain.policy import Action, Health, Kind, RetrySettings
from streamd.drain.pressure import IngestPressure
from streamd.drain.routing import Route
from streamd.drain.sinks.base import DrainEvent, Result, Sink, transient
from streamd.drain.store import (
    NewDeadLetter,
    SinkRow,
    letters_to_retry,
    mark_retry_seqs,
    read_events,
    retried,
)
from streamd.journal import Journal

log = logging.getLogger("streamd.drain")


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """Everything the engine needs to run one sink (built from its config)."""

    name: str
    kind: str
    route: Route
    open_sink: Callable[[], Sink]
    workers: int = 4
    batch_size: int = 500
    linger: float = 0.2
    interval: float = 0.0
    max_in_flight: int = 5000
    timeout: float = 20.0
    start: str = "oldest"
    retry: RetrySettings = field(default_factory=RetrySettings)
    # The sink reads the event's columns and JSON (sqlite); False: envelopes suffice.
    full_events: bool = True
    # With full_events False: False reads references only (the sqlite sink copies the
    # rows from the attached journal and needs no envelope).
    envelopes: bool = True
    # The destination drops a repeat by event key and reports it (Result.present).
    dedups: bool = False
    # The sink's client runs in a process of its own, started again when one ends (kafka):
    # how one can end. The engine counts the restarts by these (SinkStatus).
    restart_reasons: tuple[str, ...] = ()


class Broadcast:
    """Wake every waiter once per :meth:`fire` (a re-armed ``trio.Event``)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        event, self._event = self._event, trio.Event()
        event.set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(eq=False, slots=True)
class Batch:
    """Events ``(start, end]`` of the journal; ``events`` are the ones routed to the sink."""

    start: int
    end: int
    events: list[DrainEvent]
    attempts: int = 0
    done: bool = False
    delivery_id: str = ""
    # Dead letters asked to be delivered again (their ids): not journal progress.
    letters: list[int] | None = None
    finished: trio.Event = field(default_factory=trio.Event)  # letters: attempt over


@dataclass(slots=True)
class DestinationCounts:
    """Confirmed events the destination took as new / already held (by event key),
    since start: kept by the engine across the sink's runners (a rewind, a restart)."""

    new: int = 0
    present: int = 0


class SinkRunner:
    """Runs one sink from its persisted row until stopped, cancelled or disabled."""

    def __init__(
        self,
        spec: SinkSpec,
        row: SinkRow,
        journal: Journal,
        *,
        limiter: trio.CapacityLimiter,
        dirty: Callable[[], None],
        disable: Callable[[SinkRunner, str], None],
        pressure: IngestPressure | None = None,
        destination: DestinationCounts | None = None,
    ) -> None:
        self.spec = spec
        self.destination = destination if destination is not None else DestinationCounts()
        self._pressure = pressure
        self.yields = 0  # pages this runner waited for because ingest was saturated
        self.journal = journal
        self.health = Health(spec.retry)
        self.state = row.state  # operator state: active, paused, disabled
        self.cursor = row.cursor  # low-water mark of what is passed (in memory)
        self.persisted = row.cursor  # ... and of what is committed to the journal
        self.read_pos = row.cursor
        self.confirmed_unsaved = 0
        self.confirmed_total = row.confirmed
        self.dead_lettered = 0
        self.attempts_failed = 0
        self.staged_dead: list[NewDeadLetter] = []
        self.outstanding = 0
        self.changed = Broadcast()  # state, health, capacity, stop
        self.dlq_wake = Broadcast()
        self._limiter = limiter
        self._dirty = dirty
        self._disable = disable
        self._in_order: deque[Batch] = deque()  # read, not yet passed by the cursor
        self._unsaved: deque[Batch] = deque()  # passed, cursor not yet persisted
        self._stopping = False
        self._conn: sqlite3.Connection | None = None
        self._sink: Sink | None = None
        self._last_start = -math.inf
        self._pace = trio.Lock()
        self.resumes = 0  # bumped by an operator's resume: cuts a probe's wait short
        self.saved_paused = row.paused_for_failures  # what the journal says, to save changes
        self.saved_error = row.last_error
        self.save_again = False  # the last save failed: include this runner in the next
        self.replay_to, self.replay_tag = row.replay_to, row.replay_tag
        # Every batch up to here went to a worker: it may have reached the destination,
        # confirmed or not (a rewind makes all of them a replay).
        self.sent_to = row.cursor
        self._suspects: list[int] = []  # seqs of a probe dead-lettered in this pause
        self._letter_wakes = 0  # bumped by wake_letters: no retry request is missed

    # -- what the engine sees --------------------------------------------------------
    @property
    def status(self) -> str:
        """``active``, ``paused`` (operator), ``auto-paused`` (probing) or ``disabled``."""
        if self.state != "active":
            return self.state
        return "auto-paused" if self.health.paused else "active"

    def stop(self) -> None:
        """Begin a graceful stop: read nothing more; batches in flight finish their attempt."""
        self._stopping = True
        self.changed.fire()

    def wake_letters(self) -> None:
        """Dead letters were marked for retry (or a replay queued): look for them."""
        self._letter_wakes += 1
        self.dlq_wake.fire()

    def persisted_up_to(self, cursor: int, confirmed: int) -> None:
        """The journal now holds ``cursor``: free the window behind it."""
        self.persisted = cursor
        self.confirmed_unsaved -= confirmed
        while self._unsaved and self._unsaved[0].end <= cursor:
            self.outstanding -= len(self._unsaved.popleft().events)
        self.changed.fire()

    # -- running ---------------------------------------------------------------------
    async def run(self, conn: sqlite3.Connection, sink: Sink) -> None:
        """Deliver until stopped (returns once the workers finished what they hold) or
        cancelled (the engine does that to disable, replay, or end the grace period)."""
        self._conn, self._sink = conn, sink
        send, receive = trio.open_memory_channel[Batch](0)
        async with trio.open_nursery() as workers:
            for _ in range(self.spec.workers):
                workers.start_soon(self._worker, receive.clone())
            receive.close()
            async with trio.open_nursery() as producers:
                producers.start_soon(self._retry_dead_letters, send.clone())
                async with send:
                    await self._read(send)
                producers.cancel_scope.cancel()  # the retrier: its channel closes

    async def _read(self, send: trio.MemorySendChannel[Batch]) -> None:
        spec = self.spec
        pending: list[DrainEvent] = []
        first_at = 0.0
        while not self._stopping:
            deadline = first_at + spec.linger if pending else math.inf
            if pending and trio.current_time() >= deadline:
                await self._dispatch(send, pending, self.read_pos)
                pending = []
                continue
            caught_up = self.read_pos >= self.journal.last_seq
            room = spec.max_in_flight - self.outstanding
            if caught_up or room < min(spec.batch_size, spec.max_in_flight):
                # Woken by a commit (the engine fires ``changed``), a freed window,
                # an operator, a stop, or the linger deadline. Never by a timer when idle.
                with trio.move_on_at(deadline):
                    await self.changed.wait()
                continue
            if self._pressure is not None:
                pause = self._pressure.pause()
                if pause:
                    # Ingest first: it is saturated, and this sink cannot keep up with it
                    # anyway; the journal holds the events (pressure.py). One page is
                    # read after each pause, so the sink never stops altogether.
                    self.yields += 1
                    await trio.sleep(pause)
                    if self._stopping:
                        break
            snapshot = self.journal.last_seq
            limit = min(room, max(spec.batch_size, 1000))
            conn = self._conn
            assert conn is not None
            rows = await trio.to_thread.run_sync(
                partial(
                    read_events,
                    conn,
                    self.read_pos,
                    limit,
                    full=spec.full_events,
                    envelope=spec.envelopes,
                ),
                limiter=self._limiter,
            )
            if spec.route.everything:
                # No filter: batches are slices of the page (no per-event Python work).
                start = 0
                while start < len(rows):
                    if not pending:
                        first_at = trio.current_time()
                    take = rows[start : start + spec.batch_size - len(pending)]
                    pending.extend(take)
                    self.outstanding += len(take)
                    start += len(take)
                    if len(pending) >= spec.batch_size:
                        await self._dispatch(send, pending, pending[-1].seq)
                        pending = []
            else:
                for event in rows:
                    if spec.route.matches(event):
                        if not pending:
                            first_at = trio.current_time()
                        pending.append(event)
                        self.outstanding += 1
                        if len(pending) >= spec.batch_size:
                            await self._dispatch(send, pending, event.seq)
                            pending = []
            if rows:
                self.read_pos = rows[-1].seq
            if len(rows) < limit:
                self.read_pos = max(self.read_pos, snapshot)
            if not pending and self.read_pos > self._range_start():
                self._pass_unmatched(self.read_pos)
        # Stopping: what was read but not dispatched is simply not passed.
        self.outstanding -= len(pending)

    def _range_start(self) -> int:
        return self._in_order[-1].end if self._in_order else self.cursor

    def _pass_unmatched(self, end: int) -> None:
        """Events up to ``end`` matched nothing: they pass once everything before them did."""
        batch = Batch(self._range_start(), end, [], done=True)
        self._in_order.append(batch)
        self._advance()

    async def _dispatch(
        self, send: trio.MemorySendChannel[Batch], events: list[DrainEvent], end: int
    ) -> None:
        batch = Batch(self._range_start(), end, events, delivery_id=self._delivery_id(events))
        self._in_order.append(batch)
        self.sent_to = max(self.sent_to, end)
        await send.send(batch)

    def _delivery_id(self, events: Sequence[DrainEvent], tag: str | None = None) -> str:
        """``<sink>-<first seq>-<last seq>``; a replay (the sink was rewound over these
        events, or dead letters are retried) adds its tag, so it is not a repeat."""
        first, last = events[0].seq, events[-1].seq
        if tag is None and first <= self.replay_to:
            tag = self.replay_tag
        base = f"{self.spec.name}-{first}-{last}"
        return f"{base}-r{tag}" if tag else base

    def _advance(self) -> None:
        moved = False
        while self._in_order and self._in_order[0].done:
            batch = self._in_order.popleft()
            self.cursor = batch.end
            self._unsaved.append(batch)
            moved = True
        if moved:
            self._dirty()
            self.changed.fire()

    # -- workers ---------------------------------------------------------------------
    async def _worker(self, receive: trio.MemoryReceiveChannel[Batch]) -> None:
        async with receive:
            async for batch in receive:
                if batch.letters is None:
                    await self._deliver(batch)
                else:
                    try:
                        await self._deliver_letters(batch)
                    finally:
                        batch.finished.set()

    async def _paced(self) -> None:
        """At least ``interval`` from any attempt to the first attempt of the next batch
        (retries follow the retry policy instead)."""
        if self.spec.interval:
            async with self._pace:  # one worker at a time takes the next start slot
                await trio.sleep_until(self._last_start + self.spec.interval)
                self._last_start = trio.current_time()

    async def _attempt(self, batch: Batch) -> Result:
        assert self._sink is not None
        with trio.move_on_after(self.spec.timeout):
            try:
                return await self._sink.deliver(batch.events, delivery_id=batch.delivery_id)
            except Exception as exc:  # a bug or an untranslated error in a sink: retry
                log.exception("sink %s: unexpected error while delivering", self.spec.name)
                return transient(f"unexpected {type(exc).__name__}: {exc}")
        return transient(f"no answer within {self.spec.timeout:g} s")

    async def _deliver(self, batch: Batch) -> None:
        await self._paced()
        while True:
            if not await self._gate(batch):
                return  # stopping: the batch stays unconfirmed
            self._last_start = trio.current_time()
            result = await self._attempt(batch)
            batch.attempts += 1
            if result.kind is Kind.CONFIRMED:
                if self.health.succeeded():
                    log.info("sink %s: delivery succeeded; resuming", self.spec.name)
                    self.changed.fire()
                    self._dirty()  # save that it is no longer paused
                    await self._retry_suspects(recovered=True)
                delivered = len(batch.events) - self._reject(batch, result)
                self._count_destination(delivered, result)
                self.confirmed_unsaved += delivered
                self.confirmed_total += delivered
                self._finish(batch)
                return
            self.attempts_failed += 1
            if result.kind is Kind.GONE:
                self.health.last_error = result.reason
                self._disable(self, result.reason)  # cancels this runner; the batch stays
                return
            if result.kind is Kind.PERMANENT:
                if self.health.permanent(result.reason):
                    self.changed.fire()
                log.warning(
                    "sink %s: %d events dead-lettered: %s",
                    self.spec.name,
                    len(batch.events),
                    result.reason,
                )
                self._dead_letter(batch, result)
                return
            verdict = self.health.failed(
                batch,
                batch.attempts,
                trio.current_time(),
                reason=result.reason,
                retry_after=result.retry_after,
            )
            self._dirty()  # persist last_error
            if verdict.action is Action.DEAD_LETTER:
                suspect = self.health.paused
                log.warning(
                    "sink %s: %d events dead-lettered after %d attempts%s: %s",
                    self.spec.name,
                    len(batch.events),
                    batch.attempts,
                    "; the next batch probes (if it fails as often, the destination is "
                    "down and these are delivered again once it is up)"
                    if suspect
                    else "",
                    result.reason,
                )
                self._dead_letter(batch, result)
                self._suspects = [e.seq for e in batch.events] if suspect else []
                return
            if verdict.retry_suspects:
                await self._retry_suspects()
            if verdict.action is Action.PROBE and self.health.probe is batch:
                failures = self.health.consecutive_failures
                if failures == self.spec.retry.pause_after:
                    log.warning(
                        "sink %s: paused after %d failures in a row (%s); probing every %g s",
                        self.spec.name,
                        failures,
                        result.reason,
                        self.spec.retry.probe_interval,
                    )
                self.changed.fire()
            if verdict.action is Action.HOLD:
                batch.attempts = 0  # attempts during an outage do not count
                continue
            if self._stopping:
                return
            await self._sleep_until(verdict.at)

    async def _gate(self, batch: Batch) -> bool:
        """Wait until this batch may be attempted; False when stopping instead."""
        while True:
            if self._stopping and batch.attempts:
                return False
            if self.state == "active":
                if batch.letters is not None:
                    if not self.health.paused:  # retries wait while the sink probes
                        return True
                elif self.health.probe is batch or self.health.may_attempt(batch):
                    if self.health.paused and trio.current_time() < self.health.next_probe:
                        # It takes over from a probe that was dead-lettered: probes
                        # stay ``probe_interval`` apart.
                        await self._sleep_until(self.health.next_probe)
                        continue
                    return True
            if self._stopping:
                return False
            await self.changed.wait()

    async def _retry_suspects(self, *, recovered: bool = False) -> None:
        """The destination is down (two probes in a row failed ``max_attempts`` times),
        or it is up again (``recovered``: the next batch got through, which does not
        tell whether the destination or the suspect was at fault): the probe
        dead-lettered before is tried once more. A batch that is at fault fails again
        and stays a dead letter."""
        seqs, self._suspects = set(self._suspects), []
        if not seqs:
            return
        log.warning(
            "sink %s: %s; the %d events dead-lettered during the pause are tried again",
            self.spec.name,
            "the destination is up again" if recovered
            else "a second batch failed as often: the destination is down",
            len(seqs),
        )  # fmt: skip
        staged = self.staged_dead
        self.staged_dead = [
            dataclasses.replace(d, retry=True) if d.event.seq in seqs else d for d in staged
        ]
        # Those already saved (a save hands its letters to the writer before any
        # later control: this one runs after it).
        name = self.spec.name
        await self.journal.control(partial(mark_retry_seqs, sink=name, seqs=sorted(seqs)))
        self.wake_letters()

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline``; an operator's resume or a stop ends it early."""
        resumes = self.resumes
        with trio.move_on_at(deadline):
            while not self._stopping and self.resumes == resumes:
                await self.changed.wait()

    def _count_destination(self, delivered: int, result: Result) -> None:
        if result.present is not None:
            self.destination.present += result.present
            self.destination.new += delivered - result.present

    def _reject(self, batch: Batch, result: Result) -> int:
        """Dead-letter the events of a confirmed batch the destination refused for good
        (the others are delivered); how many."""
        if not result.rejected:
            return 0
        reasons = dict(result.rejected)
        refused = [event for event in batch.events if event.seq in reasons]
        for event in refused:
            reason = reasons[event.seq]
            self.staged_dead.append(NewDeadLetter(event, reason, batch.attempts, result.response))
        log.warning(
            "sink %s: %d of %d events refused by the destination, dead-lettered: %s",
            self.spec.name,
            len(refused),
            len(batch.events),
            reasons[refused[0].seq] if refused else "",
        )
        self.dead_lettered += len(refused)
        return len(refused)

    def _dead_letter(self, batch: Batch, result: Result) -> None:
        self.staged_dead.extend(
            NewDeadLetter(event, result.reason, batch.attempts, result.response)
            for event in batch.events
        )
        self.dead_lettered += len(batch.events)
        self._finish(batch)

    def _finish(self, batch: Batch) -> None:
        batch.done = True
        self._advance()

    # -- dead letters asked to be retried, and range replays -------------------------
    async def _retry_dead_letters(self, send: trio.MemorySendChannel[Batch]) -> None:
        """Hand the dead letters marked for retry to the workers, ``batch_size`` at a
        time, one batch at a time (each is attempted once, when the sink lets it)."""
        conn = self._conn
        assert conn is not None
        async with send:
            while not self._stopping:
                wakes = self._letter_wakes
                found = await trio.to_thread.run_sync(
                    lambda: letters_to_retry(conn, self.spec.name, self.spec.batch_size),
                    limiter=self._limiter,
                )
                if not found:
                    while self._letter_wakes == wakes:
                        await self.dlq_wake.wait()
                    continue
                events = [event for _, event in found]
                batch = Batch(
                    events[0].seq,
                    events[-1].seq,
                    events,
                    letters=[d.id for d, _ in found],
                    delivery_id=self._delivery_id(events, secrets.token_hex(4)),
                )
                await send.send(batch)
                await batch.finished.wait()

    async def _deliver_letters(self, batch: Batch) -> None:
        if not await self._gate(batch):
            return  # stopping: they stay marked for retry, for the next run
        await self._paced()
        self._last_start = trio.current_time()
        result = await self._attempt(batch)
        ids = batch.letters or []
        if result.kind is Kind.CONFIRMED:
            # Refused again for good: they stay dead letters, with the new reason.
            reasons = dict(result.rejected)
            failed = [
                (i, reasons[e.seq], result.response)
                for i, e in zip(ids, batch.events, strict=True)
                if e.seq in reasons
            ]
            done = [i for i, e in zip(ids, batch.events, strict=True) if e.seq not in reasons]
            self._count_destination(len(done), result)
            log.info("sink %s: %d dead letters delivered", self.spec.name, len(done))
            await self.journal.control(partial(retried, delivered=done, failed=failed))
        else:
            self.attempts_failed += 1
            failed = [(i, result.reason, result.response) for i in ids]
            await self.journal.control(partial(retried, delivered=[], failed=failed))
