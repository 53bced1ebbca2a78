"""Prometheus metrics, health and readiness on the admin listener.

Counters that move per request (answers, ack latency) are prometheus_client
objects updated by the ingest app's observer (:class:`RequestStats`); everything else is read at
scrape time from the parts' own statistics (the journal writer, the drain,
retention, stream health), so nothing is counted twice and an idle daemon
does no metrics work. Names follow Prometheus conventions: ``_total`` for
counters, ``_seconds`` and ``_bytes`` for units. docs/admin-api.md ("GET /metrics") lists
every metric.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamd.core.timeparse import format_utc
from streamd.drain import store
from streamd.drain.engine import Drain, age_seconds
from streamd.drain.retention import Retention
from streamd.errors import JournalError
from streamd.ingest.pull import Pulls
from streamd.journal import Journal
from streamd.service.health import StreamHealth
from streamd.service.http import ConnectionStatistics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SINK_STATES = ("active", "paused", "auto-paused", "disabled")


class Front(Protocol):
    """What serves the ingest listeners: the in-process app, or the worker processes."""

    @property
    def stopping(self) -> bool:
        """True once shutdown has begun."""

    @property
    def in_flight(self) -> int:
        """POST requests being handled."""


class Restarts(Protocol):
    """The ingest worker processes (``server.workers``), when there are any."""

    restarts: int


@dataclass
class Parts:
    """What the metrics read at scrape time."""

    app: Front
    journal: Journal
    drain: Drain | None
    retention: Retention | None
    health: StreamHealth
    journal_path: str
    pulls: Pulls | None = None
    workers: Restarts | None = None
    # The ingest listeners' connection table(s): this process's, or the workers' summed.
    connections: Callable[[], ConnectionStatistics] | None = None
    # journal.min_free_disk_mib in bytes: exported beside the free space, so an alert
    # compares the two instead of repeating the configured number.
    min_free_disk_bytes: int = 0


class RequestStats:
    """The per-request counters (answers, 503 reasons, ack latency) and the streams'
    health, fed by the ingest app's (or the workers') observer.

    Made before the app and before :class:`Metrics`: the app needs its
    :meth:`observe`, and the metrics need the app (for the gauges they read from it).
    """

    def __init__(self, health: StreamHealth) -> None:
        self.health = health
        self._requests = Counter(
            "streamd_requests",
            "POST deliveries answered, by source and HTTP status.",
            ["source", "status"],
            registry=None,
        )
        self._unavailable = Counter(
            "streamd_unavailable_responses",
            "503 answers (the sender retries), by reason.",
            ["reason"],
            registry=None,
        )
        self._ack = Histogram(
            "streamd_ack_latency_seconds",
            "From the request's arrival to its answer, for POST deliveries answered 200.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        # (source, status) -> (its requests counter, its ack histogram for a 200); bounded
        # by the configured sources times the statuses the app answers.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram | None]] = {}

    def observe(self, source: str, status: int, seconds: float, reason: str | None) -> None:
        """The ingest app's observer: one answered POST."""
        # The labelled children are looked up once per (source, status): ``labels()``
        # costs 2-3 µs a call, on the event loop, for every request.
        children = self._children.get((source, status))
        if children is None:
            ack = self._ack.labels(source) if status == 200 else None
            children = self._children[(source, status)] = (
                self._requests.labels(source, str(status)),
                ack,
            )
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)
        elif status == 503:
            self._unavailable.labels(reason or "other").inc()
        self.health.observe(source, status)

    def register(self, registry: CollectorRegistry) -> None:
        """Expose the counters in ``registry``."""
        for collector in (self._requests, self._unavailable, self._ack):
            registry.register(collector)


class Metrics:
    """The registry and the admin routes: ``requests``' counters, and gauges read from
    the parts at scrape time."""

    def __init__(self, parts: Parts, requests: RequestStats) -> None:
        self.parts = parts
        self.registry = CollectorRegistry(auto_describe=True)
        requests.register(self.registry)
        self._collector = _StateCollector(parts)
        self.registry.register(self._collector)

    def render(self) -> bytes:
        """The text exposition (reads the journal for sink lag: call it off the event loop)."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Close the journal reader the scrapes use (for sink lag)."""
        self._collector.close()

    def not_ready(self) -> list[str]:
        """Why ingest would not accept a delivery now (empty: ready)."""
        parts = self.parts
        stats = parts.journal.statistics()
        problems = []
        if not parts.journal.making_progress(within=10.0):
            problems.append("the journal writer is not making progress")
        failure = parts.journal.commit_failure()
        if failure is not None:
            # Until a commit (or the writer's probe while idle) succeeds again.
            since, reason = failure
            problems.append(f"journal commits are failing since {_utc(since)}: {reason}")
        if stats.low_disk:
            problems.append("free disk space is below journal.min_free_disk_mib")
        if parts.retention is not None and parts.retention.stats.refusing:
            problems.append("the journal is over retention.max_bytes")
        if parts.app.stopping:
            problems.append("streamd is stopping")
        return problems


def _utc(timestamp: float) -> str:
    return format_utc(datetime.fromtimestamp(timestamp, UTC))


def _connections(c: ConnectionStatistics) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    yield GaugeMetricFamily(
        "streamd_connections_open", "Connections open on the ingest listeners.", c.open
    )
    yield GaugeMetricFamily(
        "streamd_connections_idle",
        "Open connections with no request in progress (closed first at the cap).",
        c.idle,
    )
    yield GaugeMetricFamily(
        "streamd_connections_limit", "server.max_connections (per process, summed).", c.limit
    )
    yield CounterMetricFamily(
        "streamd_connections_accepted", "Connections accepted on the ingest listeners.", c.accepted
    )
    yield CounterMetricFamily(
        "streamd_connections_evicted",
        "Idle connections closed to make room at the cap or when out of descriptors.",
        c.evicted,
    )
    yield CounterMetricFamily(
        "streamd_connections_refused",
        "New connections closed at once: at the cap with every connection busy.",
        c.refused,
    )
    yield CounterMetricFamily(
        "streamd_accept_pauses",
        "Times accepting paused: out of file descriptors and no connection idle.",
        c.fd_pauses,
    )


def _without_created(families: Iterable[Metric]) -> Iterator[Metric]:
    """The families without their ``_created`` sample: a histogram kept outside the
    registry exposes exactly the series it had before it was a prometheus_client one."""
    for family in families:
        family.samples = [s for s in family.samples if not s.name.endswith("_created")]
        yield family


class _StateCollector(Collector):
    """Metrics read from the parts at scrape time."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._reader: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _lag_seconds(self, cursor: int, now: datetime) -> float:
        """Age of the first event after ``cursor`` (0 when there is none)."""
        try:
            if self._reader is None:
                self._reader = store.open_reader(self.parts.journal_path, cache_mib=2)
            _, oldest = store.lag(self._reader, cursor)
        except (JournalError, sqlite3.Error):
            return 0.0
        return age_seconds(oldest, now) or 0.0

    def collect(self) -> Iterator[Metric]:
        p = self.parts
        stats = p.journal.statistics()
        events = CounterMetricFamily(
            "streamd_events_journaled",
            "New (not duplicate) events committed to the journal, by source and stream.",
            labels=["source", "stream"],
        )
        for (source, stream), n in sorted(stats.events_by_stream.copy().items()):
            events.add_metric([source, stream], n)
        yield events
        yield CounterMetricFamily(
            "streamd_duplicates",
            "Events dropped as duplicates by event id.",
            value=stats.duplicates,
        )
        yield CounterMetricFamily(
            "streamd_journal_commits", "Journal transactions committed.", value=stats.commits
        )
        yield from _without_created(stats.commit_seconds.collect())
        yield GaugeMetricFamily(
            "streamd_journal_queued_events", "Events waiting for a commit.", stats.queued_events
        )
        yield GaugeMetricFamily(
            "streamd_requests_in_flight", "POST deliveries being handled.", p.app.in_flight
        )
        if p.workers is not None:
            yield CounterMetricFamily(
                "streamd_ingest_worker_restarts",
                "Ingest worker processes started again after they died (server.workers).",
                value=p.workers.restarts,
            )
        if p.connections is not None:
            yield from _connections(p.connections())
        yield GaugeMetricFamily(
            "streamd_low_disk", "1 while free disk is under the floor (503s).", int(stats.low_disk)
        )
        yield from self._disk()
        yield GaugeMetricFamily(
            "streamd_journal_commits_failing",
            "1 while journal commits fail (locked journal, full disk, I/O errors): not ready.",
            int(stats.failing_since is not None),
        )
        yield CounterMetricFamily(
            "streamd_journal_commit_failures",
            "Journal group commits (and the writer's recovery probes) that failed.",
            value=stats.commit_failures,
        )
        yield GaugeMetricFamily(
            "streamd_journal_last_seq", "The newest event's sequence number.", stats.last_seq
        )
        sizes = GaugeMetricFamily(
            "streamd_journal_file_bytes", "Size of the journal's files.", labels=["file"]
        )
        for suffix, name in (("", "journal"), ("-wal", "wal"), (".dedup.db", "dedup")):
            try:
                sizes.add_metric([name], os.path.getsize(p.journal_path + suffix))
            except OSError:
                sizes.add_metric([name], 0)
        yield sizes
        yield from self._sinks()
        yield from self._streams()
        yield from self._pulls()

    def _disk(self) -> Iterator[GaugeMetricFamily]:
        try:
            # What the journal writer measures (every second) against the floor.
            st = os.statvfs(os.path.dirname(os.path.abspath(self.parts.journal_path)))
        except OSError:
            pass
        else:
            yield GaugeMetricFamily(
                "streamd_disk_free_bytes",
                "Free disk space (for unprivileged users) where the journal is.",
                st.f_bavail * st.f_frsize,
            )
        yield GaugeMetricFamily(
            "streamd_disk_floor_bytes",
            "journal.min_free_disk_mib in bytes: under it, deliveries get 503 (low_disk).",
            self.parts.min_free_disk_bytes,
        )

    def _pulls(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pulls = self.parts.pulls
        if pulls is None or not pulls.running:
            return
        requests = CounterMetricFamily(
            "streamd_pull_requests",
            "Journaling API requests of each pull source, by answer (status, or error).",
            labels=["pull", "status"],
        )
        events = CounterMetricFamily(
            "streamd_pull_events",
            "Events pulled and committed, by pull source and outcome (new or duplicate).",
            labels=["pull", "outcome"],
        )
        gaps = CounterMetricFamily(
            "streamd_pull_gaps",
            "Restarts after a 410 (position past the journal's retention) since start.",
            labels=["pull"],
        )
        failing = GaugeMetricFamily(
            "streamd_pull_failures",
            "Consecutive failed attempts of each pull source (0 while it works).",
            labels=["pull"],
        )
        caught_up = GaugeMetricFamily(
            "streamd_pull_caught_up_timestamp_seconds",
            "When each pull source last reached the end of its journal (Unix time; 0: never).",
            labels=["pull"],
        )
        leader = GaugeMetricFamily(
            "streamd_pull_leader",
            "1 while this receiver holds the pull's lease and pulls, 0 while another one "
            "does ([pulls.lease] only).",
            labels=["pull"],
        )
        for name, running in sorted(pulls.running.items()):
            st = running.source.stats
            if st.leading is not None:
                leader.add_metric([name], int(st.leading))
            for status, n in sorted(st.responses.copy().items()):
                requests.add_metric([name, status], n)
            events.add_metric([name, "new"], st.accepted)
            events.add_metric([name, "duplicate"], st.duplicates)
            gaps.add_metric([name], st.gaps)
            failing.add_metric([name], st.failures)
            caught_up.add_metric([name], st.caught_up_at or 0.0)
        yield requests
        yield events
        yield gaps
        yield failing
        yield caught_up
        yield leader

    def _sinks(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        drain = self.parts.drain
        if drain is None:
            return
        yield GaugeMetricFamily(
            "streamd_journal_writer_busy_ratio",
            "Share of the last quarter second the journal writer spent committing "
            "(sinks yield to ingest at drain.yield_busy_ratio).",
            value=drain.pressure.sample(),
        )
        yield CounterMetricFamily(
            "streamd_drain_yields",
            "Pauses the sinks took before a page because ingest was saturated.",
            value=drain.pressure.yields,
        )
        statuses = drain.statistics()
        delivered = CounterMetricFamily(
            "streamd_sink_delivered_events", "Events a sink confirmed.", labels=["sink"]
        )
        dead = CounterMetricFamily(
            "streamd_sink_dead_lettered_events",
            "Events moved to the dead letters since start.",
            labels=["sink"],
        )
        failed = CounterMetricFamily(
            "streamd_sink_failed_attempts", "Delivery attempts that failed.", labels=["sink"]
        )
        lag = GaugeMetricFamily(
            "streamd_sink_lag_events", "Journaled events the sink has not passed.", labels=["sink"]
        )
        state = GaugeMetricFamily(
            "streamd_sink_state", "1 for the sink's current state.", labels=["sink", "state"]
        )
        at_destination = CounterMetricFamily(
            "streamd_sink_destination_events",
            "Confirmed events the destination took as new, or already held by event key "
            "(a redelivery, or another receiver's copy), since start; postgres and nats sinks.",
            labels=["sink", "outcome"],
        )
        restarts = CounterMetricFamily(
            "streamd_sink_producer_restarts",
            "Producer processes started again after one ended, by how it ended (exited, "
            "protocol: a bad frame), since start; kafka sinks.",
            labels=["sink", "reason"],
        )
        for s in statuses:
            if s.destination_new is not None and s.destination_present is not None:
                at_destination.add_metric([s.name, "new"], s.destination_new)
                at_destination.add_metric([s.name, "present"], s.destination_present)
            for reason, n in sorted((s.producer_restarts or {}).items()):
                restarts.add_metric([s.name, reason], n)
            delivered.add_metric([s.name], s.confirmed)
            dead.add_metric([s.name], s.dead_letters)
            failed.add_metric([s.name], s.failed_attempts)
            lag.add_metric([s.name], s.lag_events)
            for name in SINK_STATES:
                state.add_metric([s.name, name], int(s.state == name))
        yield from (delivered, dead, failed, lag, state, at_destination, restarts)
        lag_seconds = GaugeMetricFamily(
            "streamd_sink_lag_seconds",
            "Age of the oldest event the sink has not passed (0 when caught up).",
            labels=["sink"],
        )
        oldest = 0.0
        now = datetime.now(UTC)
        for s in statuses:
            age = self._lag_seconds(s.cursor, now) if s.lag_events else 0.0
            lag_seconds.add_metric([s.name], age)
            if s.state != "disabled":
                oldest = max(oldest, age)
        yield lag_seconds
        yield GaugeMetricFamily(
            "streamd_oldest_unconfirmed_event_age_seconds",
            "Age of the oldest event some enabled sink has not confirmed.",
            oldest,
        )

    def _streams(self) -> Iterator[GaugeMetricFamily]:
        health = self.parts.health
        silence = GaugeMetricFamily(
            "streamd_source_silence_seconds",
            "Seconds since the source's last accepted delivery (since start if none).",
            labels=["source"],
        )
        attempts = GaugeMetricFamily(
            "streamd_source_requests_24h", "POST deliveries answered in 24 h.", labels=["source"]
        )
        ratio = GaugeMetricFamily(
            "streamd_source_failure_ratio_24h",
            "Share of those answered with a non-2xx status (Adobe: Unstable at 0.8 of >= 10).",
            labels=["source"],
        )
        # The configured thresholds, per source so that an alert rule matches them to
        # the measured values one to one (deploy/prometheus/streamd-rules.yml).
        silence_window = GaugeMetricFamily(
            "streamd_source_silence_warning_seconds",
            "health.silence_warning: the silence after which a source is reported (0: never).",
            labels=["source"],
        )
        failure_threshold = GaugeMetricFamily(
            "streamd_source_failure_warning_ratio",
            "health.failure_warning_ratio: the failure share (of >= 10 requests) reported.",
            labels=["source"],
        )
        for name in health.sources:
            silence.add_metric([name], health.silence(name))
            n, failed = health.window(name)
            attempts.add_metric([name], n)
            ratio.add_metric([name], failed / n if n else 0.0)
            silence_window.add_metric([name], health.silence_warning)
            failure_threshold.add_metric([name], health.failure_warning_ratio)
        yield from (silence, attempts, ratio, silence_window, failure_threshold)
        munchkins = GaugeMetricFamily(
            "streamd_munchkin_silence_seconds",
            "Seconds since the newest event of each Munchkin id was journaled.",
            labels=["source", "munchkin_id"],
        )
        now = time.time()
        for (source, munchkin), seen in sorted(
            self.parts.journal.statistics().munchkin_seen.items()
        ):
            munchkins.add_metric([source, munchkin], max(0.0, now - seen))
        yield munchkins
