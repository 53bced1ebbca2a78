"""What the emulator sent and what came of it: the acked-ids file and the summary.

Every event id a receiver acknowledged is appended to the acked file (one id per line,
flushed after each acknowledged request), so ``streamd emit verify`` can check a
journal against it even when the emulator was stopped mid-run. Re-sent duplicates
are not written again.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from streamd.emit.errors import UsageError


def percentiles_ms(samples_us: Sequence[int]) -> dict[str, float] | None:
    """Nearest-rank p50/p90/p99/max (and mean) of microsecond samples, in ms."""
    if not samples_us:
        return None
    s = sorted(samples_us)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))] / 1000

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": s[-1] / 1000,
        "mean": round(sum(s) / len(s) / 1000, 3),
    }


class Ledger:
    """Counts of one run; appends acknowledged ids to ``acked_path`` when given.

    Raises :class:`UsageError` when the acked file cannot be opened for appending.
    """

    def __init__(self, acked_path: Path | None) -> None:
        self._acked: IO[bytes] | None = None
        if acked_path is not None:
            try:
                self._acked = open(acked_path, "ab")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise UsageError(f"--acked {acked_path}: cannot append: {exc.strerror}") from exc
        self.batches_sent = 0
        self.events_sent = 0
        self.attempts = 0
        self.retries = 0
        self.batches_acked = 0
        self.events_acked = 0
        self.batches_given_up = 0
        self.events_given_up = 0
        self.duplicate_batches_sent = 0
        self.duplicate_events_sent = 0
        self.receiver_duplicates = 0
        self.outcomes: Counter[str] = Counter()
        self.give_up_reasons: Counter[str] = Counter()
        self.ack_latency_us = array("q")
        self.delivery_latency_us = array("q")
        self.unresolved_batches = 0
        self.unresolved_events = 0
        self.in_flight: dict[int, int] = {}  # batch serial -> events, until resolved
        self.paused_subscriptions = 0
        self.pauses = 0
        self.token_fetches = 0
        self.registrations: dict[int, str] = {}  # I/O: health state, once it changed

    def started(self, serial: int, events: int, *, duplicate: bool) -> None:
        """A batch (or a re-sent duplicate) begins its first attempt."""
        self.in_flight[serial] = events
        if duplicate:
            self.duplicate_batches_sent += 1
            self.duplicate_events_sent += events
        else:
            self.batches_sent += 1
            self.events_sent += events

    def attempt(self, outcome: str, *, retry: bool) -> None:
        """One request ended with ``outcome`` (a status code, ``timeout``, ``connection``)."""
        self.attempts += 1
        self.outcomes[outcome] += 1
        if retry:
            self.retries += 1

    def acked(
        self,
        serial: int,
        keys: Sequence[str],
        latency_s: float,
        since_first_s: float,
        *,
        duplicate: bool,
        receiver_duplicates: int = 0,
    ) -> None:
        """The receiver acknowledged batch ``serial``: record its ids (first time only)."""
        self.in_flight.pop(serial, None)
        self.ack_latency_us.append(int(latency_s * 1e6))
        self.delivery_latency_us.append(int(since_first_s * 1e6))
        self.receiver_duplicates += receiver_duplicates
        if duplicate:
            return
        self.batches_acked += 1
        self.events_acked += len(keys)
        if self._acked is not None:
            self._acked.write("\n".join(keys).encode() + b"\n")
            self._acked.flush()  # ack means recorded: a killed emulator keeps what it saw

    def given_up(self, serial: int, events: int, reason: str, *, duplicate: bool) -> None:
        """The sender dropped batch ``serial`` for good."""
        self.in_flight.pop(serial, None)
        self.give_up_reasons[reason] += 1
        if not duplicate:
            self.batches_given_up += 1
            self.events_given_up += events

    def finish(self) -> None:
        """The run is over: whatever is still in flight is unresolved."""
        self.unresolved_batches = len(self.in_flight)
        self.unresolved_events = sum(self.in_flight.values())
        self.in_flight.clear()
        if self._acked is not None:
            self._acked.close()
            self._acked = None

    def summary(self, duration_s: float) -> dict[str, Any]:
        """The run's figures as a JSON-ready dict."""
        return {
            "duration_s": round(duration_s, 3),
            "batches_sent": self.batches_sent,
            "events_sent": self.events_sent,
            "batches_acked": self.batches_acked,
            "events_acked": self.events_acked,
            "events_acked_per_s": round(self.events_acked / duration_s, 1) if duration_s else 0.0,
            "attempts": self.attempts,
            "retries": self.retries,
            "batches_given_up": self.batches_given_up,
            "events_given_up": self.events_given_up,
            "give_up_reasons": dict(self.give_up_reasons),
            "batches_unresolved": self.unresolved_batches,
            "events_unresolved": self.unresolved_events,
            "duplicate_batches_sent": self.duplicate_batches_sent,
            "duplicate_events_sent": self.duplicate_events_sent,
            "receiver_reported_duplicates": self.receiver_duplicates,
            "outcomes": dict(sorted(self.outcomes.items())),
            "ack_latency_ms": percentiles_ms(self.ack_latency_us),
            "delivery_latency_ms": percentiles_ms(self.delivery_latency_us),
            "pauses": self.pauses,
            "subscriptions_paused_at_end": self.paused_subscriptions,
            "token_fetches": self.token_fetches,
            "registration_health": {str(k): v for k, v in sorted(self.registrations.items())},
        }


def format_summary(s: dict[str, Any]) -> str:
    """The summary for people."""

    def lat(key: str) -> str:
        p = s[key]
        if not p:
            return "-"
        return f"p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms, max {p['max']:.1f} ms"

    lines = [
        f"sent          {s['events_sent']} events in {s['batches_sent']} requests "
        f"over {s['duration_s']:.1f} s",
        f"acknowledged  {s['events_acked']} events in {s['batches_acked']} requests "
        f"({s['events_acked_per_s']:,.0f} events/s)",
        f"retried       {s['retries']} attempts (of {s['attempts']}); pauses {s['pauses']}"
        + (
            f" ({s['subscriptions_paused_at_end']} subscriptions still paused)"
            if s["subscriptions_paused_at_end"]
            else ""
        ),
        f"given up      {s['events_given_up']} events in {s['batches_given_up']} requests"
        + (f": {s['give_up_reasons']}" if s["give_up_reasons"] else ""),
        f"unresolved    {s['events_unresolved']} events in {s['batches_unresolved']} requests "
        "(still retrying when the run ended)",
        f"duplicates    {s['duplicate_events_sent']} events re-sent in "
        f"{s['duplicate_batches_sent']} requests; the receiver reported "
        f"{s['receiver_reported_duplicates']} duplicates",
        f"ack latency   {lat('ack_latency_ms')}",
        f"first send to ack  {lat('delivery_latency_ms')}",
        "outcomes      " + "  ".join(f"{k}={v}" for k, v in s["outcomes"].items()),
    ]
    unhealthy = {k: v for k, v in s["registration_health"].items() if v != "active"}
    if unhealthy:
        lines.append("registrations " + "  ".join(f"{k}={v}" for k, v in unhealthy.items()))
    return "\n".join(lines) + "\n"
