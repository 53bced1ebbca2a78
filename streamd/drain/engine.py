"""The drain engine: one :class:`SinkRunner` per sink, their state saved through the
journal writer, and the operator's operations on a running daemon.

Writes (cursors, dead letters, sink states) are controls run by the journal
writer inside its group transactions (``Journal.control``): the drain never
holds SQLite's write lock, so it never makes an ingest commit wait. At most
one progress save is in flight; saves made meanwhile coalesce into the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol, TypeVar

import trio

from streamd.clock import utc_now
from streamd.drain import store
from streamd.drain.pressure import IngestPressure, YieldSettings
from streamd.drain.runner import DestinationCounts, SinkRunner, SinkSpec
from streamd.drain.sinks.base import ProcessRestarts, Sink
from streamd.drain.store import NewDeadLetter, Progress, SinkRow
from streamd.errors import JournalError, StreamdError
from streamd.journal import Journal

log = logging.getLogger("streamd.drain")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# Between two progress saves: bounds the fsyncs an idle-ingest drain causes.
_SAVE_INTERVAL = 0.02
# After a runner failed (the journal could not be read, a bug): wait, then start again.
_RESTART_DELAY = 5.0


class DrainError(StreamdError):
    """Raised when an operator's request names a sink not configured here, or the
    journal refused the change."""

    status_hint = 409


class SinkOperation(Protocol[T_co]):
    """An operator's action on one sink (``streamd.ops``: the rules live there)."""

    @property
    def name(self) -> str: ...

    retires: ClassVar[bool]  # stop the runner (and save it) before applying
    rewinds: ClassVar[bool]  # it moves the cursor back: what was sent is replayed
    resumes: ClassVar[bool]  # an operator's resume: a probe's wait ends
    wakes_letters: ClassVar[bool]  # dead letters were marked for retry

    def apply(self, conn: sqlite3.Connection, now: str) -> T_co: ...


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """What ``streamd sinks list`` shows for one sink."""

    name: str
    kind: str
    state: str  # active, paused, auto-paused, disabled
    cursor: int
    lag_events: int
    lag_seconds: float | None
    confirmed: int
    dead_letters: int
    last_error: str | None
    failed_attempts: int = 0  # since start
    # Kinds whose destination drops a repeat by event key and says so (postgres, nats):
    # confirmed events that were new there and that it already held, since start.
    destination_new: int | None = None
    destination_present: int | None = None
    # Kinds whose client runs in a process of its own (kafka): processes started again
    # after one ended, by how it ended (SinkSpec.restart_reasons), since start.
    producer_restarts: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class RunnerStatistics:
    """A running sink's delivery pool (see :mod:`streamd.drain.runner`)."""

    outstanding: int  # matching events read, not yet saved as passed (<= max_in_flight)
    yields: int  # pages it waited for because ingest was saturated


class _Slot:
    """A sink's place in the engine: its spec, its current runner, and its scope."""

    def __init__(self, spec: SinkSpec, row: SinkRow) -> None:
        self.spec = spec
        self.row = row
        self.runner: SinkRunner | None = None
        self.destination = DestinationCounts()
        self.sink: Sink | None = None  # the runner's, while it runs
        # The restarts of the sinks closed so far (each runner opens its own sink).
        self.restarts: dict[str, int] = {}
        self.scope: trio.CancelScope | None = None
        self.wanted = trio.Event()  # set: (re)start the runner
        self.finished = trio.Event()
        self.lock = trio.Lock()  # one operator change at a time
        self.removed = False  # set by a reload that dropped the sink: the supervisor ends

    def producer_restarts(self) -> dict[str, int] | None:
        """The sink's process restarts since start (None: not a kind that has them)."""
        if not self.spec.restart_reasons:
            return None
        counts = dict.fromkeys(self.spec.restart_reasons, 0)
        parts: list[Mapping[str, int]] = [self.restarts]
        if isinstance(self.sink, ProcessRestarts):  # the running sink's
            parts.append(self.sink.restarts_by_reason)
        for part in parts:
            for reason, n in part.items():
                counts[reason] = counts.get(reason, 0) + n
        return counts

    def sink_closed(self) -> None:
        """Keep the restarts of the runner's sink, now closed."""
        sink, self.sink = self.sink, None
        if isinstance(sink, ProcessRestarts):
            for reason, n in sink.restarts_by_reason.items():
                self.restarts[reason] = self.restarts.get(reason, 0) + n


class Drain:
    """The running drain (see :func:`open_drain`)."""

    def __init__(
        self,
        journal: Journal,
        specs: Sequence[SinkSpec],
        *,
        read_threads: int,
        yield_settings: YieldSettings | None = None,
        commit_seconds: Callable[[], float] | None = None,
    ) -> None:
        self.journal = journal
        self.pressure = IngestPressure(
            commit_seconds or (lambda: journal.statistics().commit_seconds_sum),
            yield_settings or YieldSettings(),
        )
        self._specs = {spec.name: spec for spec in specs}
        self._slot: dict[str, _Slot] = {}
        self._nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(read_threads)
        self._dirty = trio.Event()
        self._unsaved_since: float | None = None  # monotonic time of the oldest unsaved change
        self._stopping = False
        self._reader: sqlite3.Connection | None = None

    # -- operator operations (for the admin listener) ----------------------------------
    def statistics(self) -> list[SinkStatus]:
        """Every sink's state, cursor and lag, from memory (no journal read)."""
        out = []
        for slot in self._slot.values():
            runner = slot.runner
            cursor = runner.cursor if runner else slot.row.cursor
            out.append(
                SinkStatus(
                    name=slot.spec.name,
                    kind=slot.spec.kind,
                    state=runner.status if runner else slot.row.state,
                    cursor=cursor,
                    lag_events=max(0, self.journal.last_seq - cursor),
                    lag_seconds=None,
                    confirmed=runner.confirmed_total if runner else slot.row.confirmed,
                    dead_letters=runner.dead_lettered if runner else 0,
                    last_error=(runner.health.last_error if runner else None)
                    or slot.row.last_error,
                    failed_attempts=runner.attempts_failed if runner else 0,
                    destination_new=slot.destination.new if slot.spec.dedups else None,
                    destination_present=slot.destination.present if slot.spec.dedups else None,
                    producer_restarts=slot.producer_restarts(),
                )
            )
        return out

    def runner_statistics(self, name: str) -> RunnerStatistics | None:
        """Sink ``name``'s delivery pool now, or None while it is not running (disabled,
        stopped). Raises :class:`DrainError` for a sink not configured here."""
        runner = self._get(name).runner
        if runner is None:
            return None
        return RunnerStatistics(outstanding=runner.outstanding, yields=runner.yields)

    async def sinks(self) -> list[SinkStatus]:
        """Every sink's state, with lag in seconds and dead-letter counts from the journal."""
        statuses = self.statistics()
        now = datetime.now(UTC)

        def read() -> list[SinkStatus]:
            assert self._reader is not None
            counts = store.dead_letter_counts(self._reader)
            result = []
            for s in statuses:
                _, oldest = store.lag(self._reader, s.cursor)
                result.append(
                    dataclasses.replace(
                        s, lag_seconds=age_seconds(oldest, now), dead_letters=counts.get(s.name, 0)
                    )
                )
            return result

        return await trio.to_thread.run_sync(read, limiter=self._limiter)

    async def run(self, op: SinkOperation[T]) -> T:
        """Apply an operator's operation (``streamd.ops``) to a running sink: stop what it
        touches, run its rules in the journal writer, then let the runner follow the
        sink's new row (state, cursor) and wake it. Raises :class:`DrainError` for a
        sink not configured here, and what the operation raises (its refusals)."""
        slot = self._get(op.name)
        async with slot.lock:
            # What the runner handed to its workers may have reached the destination even
            # where no confirmation was saved: a rewind replays all of it.
            sent = slot.runner.sent_to if slot.runner is not None else 0
            if op.retires:
                await self._retire(slot)
            now = utc_now()
            name = slot.spec.name

            def apply(conn: sqlite3.Connection) -> tuple[T, SinkRow]:
                result = op.apply(conn, now)
                if op.rewinds:
                    store.replayed_up_to(conn, name, sent)
                return result, store.load_sinks(conn)[name]

            result, slot.row = await self._control(apply)
            runner = slot.runner
            if runner is None:
                if slot.row.state != "disabled":
                    slot.wanted.set()  # rewound, or enabled: start from the saved row
                return result
            runner.state = slot.row.state
            if op.resumes:
                runner.resumes += 1  # cuts a probe's wait short
            runner.changed.fire()
            if op.wakes_letters:
                runner.wake_letters()
            return result

    # -- internals ----------------------------------------------------------------------
    def _get(self, name: str) -> _Slot:
        try:
            return self._slot[name]
        except KeyError:
            raise DrainError(
                f"no sink named {name!r} (configured: {', '.join(self._slot) or 'none'})"
            ) from None

    async def _control(self, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self.journal.control(op)
        except JournalError as exc:
            raise DrainError(str(exc)) from exc

    async def reconfigure(self, specs: Sequence[SinkSpec], changed: set[str]) -> list[str]:
        """Apply a reloaded configuration; returns what was done, one line per sink.

        Sinks in ``changed`` (their settings differ) stop, saving their progress, and
        start again with the new settings from their cursor; new sinks get their row
        and start; sinks no longer configured stop (their row stays, so putting one
        back continues where it was). The others are not touched.
        """
        assert self._nursery is not None
        wanted = {spec.name: spec for spec in specs}
        done = []
        for name in [n for n in self._slot if n not in wanted]:
            slot = self._slot[name]
            async with slot.lock:
                await self._retire(slot)
                slot.removed = True
                slot.wanted.set()  # the supervisor sees `removed` and ends
                del self._slot[name]
                self._specs.pop(name, None)
            done.append(f"sink {name}: removed (its cursor is kept)")
        added = [spec for spec in specs if spec.name not in self._slot]
        if added:
            starts = {spec.name: spec.start for spec in added}
            rows = await self._control(lambda conn: store.ensure_sinks(conn, starts, utc_now()))
            for spec in added:
                slot = _Slot(spec, rows[spec.name])
                self._slot[spec.name] = slot
                self._specs[spec.name] = spec
                if slot.row.state != "disabled":
                    slot.wanted.set()
                self._nursery.start_soon(self._supervise, slot)
                done.append(f"sink {spec.name}: added, starting at cursor {slot.row.cursor}")
        for name in sorted(changed & set(self._slot)):
            slot = self._slot[name]
            if any(spec.name == name for spec in added):
                continue
            async with slot.lock:
                was_running = slot.runner is not None
                await self._retire(slot)
                slot.spec = wanted[name]
                self._specs[name] = wanted[name]
                if was_running or slot.row.state != "disabled":
                    slot.wanted.set()
            done.append(f"sink {name}: restarted with its new settings")
        return done

    async def _set_state(self, slot: _Slot, state: str, reason: str | None) -> SinkRow:
        name = slot.spec.name
        row = await self._control(
            lambda conn: store.set_state(conn, name, state, reason, utc_now())
        )
        slot.row = row
        return row

    async def _retire(self, slot: _Slot) -> None:
        """Cancel the slot's runner and wait until its progress is saved (so nothing
        saved later can move the cursor back past what an operator sets)."""
        if slot.runner is not None:
            assert slot.scope is not None
            slot.scope.cancel()
            await slot.finished.wait()

    def _mark_dirty(self) -> None:
        if self._unsaved_since is None:
            self._unsaved_since = time.monotonic()
        self._dirty.set()

    def making_progress(self, within: float) -> bool:
        """False when confirmed progress has waited more than ``within`` seconds to be
        saved: the save loop is stuck (for the systemd watchdog)."""
        since = self._unsaved_since
        return since is None or time.monotonic() - since < within

    def _disable_from_sink(self, runner: SinkRunner, reason: str) -> None:
        log.error("sink %s: disabled: %s", runner.spec.name, reason)
        slot = self._slot[runner.spec.name]
        runner.state = "disabled"
        if slot.scope is not None:
            slot.scope.cancel()
        assert self._nursery is not None
        self._nursery.start_soon(self._persist_disabled, slot, reason)

    async def _persist_disabled(self, slot: _Slot, reason: str) -> None:
        async with slot.lock:
            await slot.finished.wait()
            with contextlib.suppress(DrainError):
                await self._set_state(slot, "disabled", reason)

    async def _save(self, runners: Sequence[SinkRunner]) -> None:
        """Persist dead letters and cursors of ``runners`` (one control, one commit)."""
        progress: dict[str, Progress] = {}
        dead: list[tuple[str, NewDeadLetter]] = []
        taken: list[tuple[SinkRunner, int, int, list[NewDeadLetter]]] = []
        for r in runners:
            paused = r.health.paused
            if (
                r.cursor == r.persisted
                and not r.staged_dead
                and not r.confirmed_unsaved
                and paused == r.saved_paused
                and r.health.last_error == r.saved_error
                and not r.save_again
            ):
                continue
            r.save_again = False
            staged, r.staged_dead = r.staged_dead, []
            dead += [(r.spec.name, d) for d in staged]
            progress[r.spec.name] = Progress(
                r.cursor, r.confirmed_unsaved, r.health.last_error, paused
            )
            taken.append((r, r.cursor, r.confirmed_unsaved, staged))
            r.saved_paused, r.saved_error = paused, r.health.last_error
        if not taken:
            return
        now = utc_now()
        try:
            await self.journal.control(lambda conn: store.save_progress(conn, progress, dead, now))
        except Exception:
            for r, _, _, staged in taken:
                r.staged_dead[:0] = staged  # try again with the next save
                r.save_again = True
            raise
        for r, cursor, confirmed, _ in taken:
            r.persisted_up_to(cursor, confirmed)

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            runners = [s.runner for s in self._slot.values() if s.runner is not None]
            try:
                await self._save(runners)
                if not self._dirty.is_set():
                    self._unsaved_since = None
            except Exception as exc:  # JournalError (disk full...), or a bug: keep trying
                log.error("cannot save the drain's progress (will retry): %s", exc)
                self._dirty.set()
                await trio.sleep(1.0)
            await trio.sleep(_SAVE_INTERVAL)

    async def _wake_on_commit(self) -> None:
        seen = self.journal.last_seq
        while True:
            await self.journal.wait_beyond(seen)
            seen = self.journal.last_seq
            for slot in self._slot.values():
                if slot.runner is not None:
                    slot.runner.changed.fire()

    async def _supervise(self, slot: _Slot) -> None:
        while True:
            await slot.wanted.wait()
            if self._stopping or slot.removed:
                return
            runner = SinkRunner(
                slot.spec,
                slot.row,
                self.journal,
                limiter=self._limiter,
                dirty=self._mark_dirty,
                disable=self._disable_from_sink,
                pressure=self.pressure,
                destination=slot.destination,
            )
            slot.finished = trio.Event()
            # Visible (and cancellable) at once: an operator's change must reach it.
            slot.runner, slot.scope = runner, trio.CancelScope()
            failed = False
            try:
                with slot.scope:
                    await self._run_runner(slot, runner)
            except Exception as exc:  # reading the journal failed, or a bug: restart it
                failed = True
                runner.health.last_error = f"drain error: {type(exc).__name__}: {exc}"
                log.exception("sink %s: the drain failed; restarting it in 5 s", slot.spec.name)
            finally:
                slot.runner, slot.scope = None, None
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    try:
                        await self._save([runner])
                    except JournalError as exc:
                        log.error("sink %s: cannot save its progress: %s", slot.spec.name, exc)
                slot.row = _row_after(slot.row, runner)
                # Run again only when an operator asks (enable, replay) before this is set.
                slot.wanted = trio.Event()
                slot.finished.set()
            if failed and not self._stopping:
                await trio.sleep(_RESTART_DELAY)
                if slot.row.state != "disabled" and not slot.wanted.is_set():
                    slot.wanted.set()

    async def _run_runner(self, slot: _Slot, runner: SinkRunner) -> None:
        conn = await trio.to_thread.run_sync(store.open_reader, self.journal.path)
        try:
            sink = slot.sink = slot.spec.open_sink()
            try:
                if self._stopping:
                    return
                log.info(
                    "sink %s (%s): starting at cursor %d (%s)",
                    slot.spec.name,
                    slot.spec.kind,
                    runner.cursor,
                    runner.state,
                )
                await runner.run(conn, sink)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    try:
                        await sink.aclose()
                    except Exception as exc:  # a sink's close problem must not stop the drain
                        log.warning("sink %s: closing: %s", slot.spec.name, exc)
                    finally:
                        slot.sink_closed()
        finally:
            await trio.to_thread.run_sync(conn.close)

    def _stop_all(self) -> None:
        self._stopping = True
        for slot in self._slot.values():
            slot.wanted.set()  # a supervisor waiting for it sees _stopping and returns
            if slot.runner is not None:
                slot.runner.stop()


def _row_after(row: SinkRow, runner: SinkRunner) -> SinkRow:
    """The row as the runner left it (its cursor was just saved)."""
    return dataclasses.replace(
        row,
        cursor=runner.persisted,
        last_error=runner.health.last_error or row.last_error,
        confirmed=runner.confirmed_total,
        paused_for_failures=runner.health.paused,
    )


def age_seconds(received_at: str | None, now: datetime) -> float | None:
    if received_at is None:
        return 0.0
    try:
        then = datetime.strptime(received_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, (now - then).total_seconds())


@asynccontextmanager
async def open_drain(
    journal: Journal,
    specs: Sequence[SinkSpec],
    *,
    grace: float = 10.0,
    read_threads: int = 2,
    yield_settings: YieldSettings | None = None,
    commit_seconds: Callable[[], float] | None = None,
) -> AsyncIterator[Drain]:
    """Start a runner for every enabled sink; on exit, stop gracefully.

    The stop reads nothing more, lets batches in flight finish their current attempt
    for up to ``grace`` seconds, cancels what is left (unconfirmed: delivered again
    after the restart), and saves every cursor. ``commit_seconds`` is the journal
    writer's commit time so far, which tells how busy ingest is (``yield_settings``;
    by default the journal's statistics). Raises :class:`JournalError` when the
    sinks' rows cannot be created.
    """
    drain = Drain(
        journal,
        specs,
        read_threads=read_threads,
        yield_settings=yield_settings,
        commit_seconds=commit_seconds,
    )
    starts = {spec.name: spec.start for spec in specs}
    rows = await journal.control(lambda conn: store.ensure_sinks(conn, starts, utc_now()))
    drain._reader = await trio.to_thread.run_sync(store.open_reader, journal.path)
    try:
        async with trio.open_nursery() as nursery:
            drain._nursery = nursery
            for spec in specs:
                slot = _Slot(spec, rows[spec.name])
                drain._slot[spec.name] = slot
                if slot.row.state != "disabled":
                    slot.wanted.set()
                nursery.start_soon(drain._supervise, slot)
            nursery.start_soon(drain._save_loop)
            nursery.start_soon(drain._wake_on_commit)
            try:
                yield drain
            finally:
                drain._stop_all()
                with trio.move_on_after(grace) as grace_scope:
                    for slot in drain._slot.values():
                        if slot.runner is not None:
                            await slot.finished.wait()
                if grace_scope.cancelled_caught:
                    log.warning(
                        "drain: grace period over; batches still in flight are "
                        "delivered again after the restart"
                    )
                for slot in drain._slot.values():
                    if slot.scope is not None:
                        slot.scope.cancel()
                with trio.CancelScope(shield=True):
                    for slot in drain._slot.values():
                        if slot.runner is not None:
                            await slot.finished.wait()
                nursery.cancel_scope.cancel()
    finally:
        drain._reader.close()
