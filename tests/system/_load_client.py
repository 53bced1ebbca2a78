"""A sender process for the system tests: posts batches as fast as it can, records acks.

    python tests/system/_load_client.py --port P --token-file F --seed S --client I \\
        --ack-file ACKS --sent-file SENT

Batches are deterministic from (seed, client, counter): legacy pushes of 50 activities
and Adobe I/O arrays of 20 CloudEvents, every event id unique. Before the first attempt
of a new batch its ids are appended to ``--sent-file``; after every 200 the ids of the
batch are appended to ``--ack-file`` (one line per batch, written and flushed before the
next request). Every status but 200 means "not acknowledged": the same batch is retried
after a short backoff, as a sender would; connection errors (the server was killed, or
is restarting) are retried the same way, on a new connection. Now and then a batch that
was already acknowledged is sent again: the answer must then report every event as a
duplicate (anything else means an acknowledged event was lost).

SIGTERM stops it after the request in flight; it prints a JSON summary on stdout. Only
the standard library: it runs as a script, outside the test package.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

LEGACY_SIZE = 50
IO_SIZE = 20
RESEND_FRACTION = 0.1
RESERVOIR = 256  # acknowledged batches kept for re-sending (uniform over the whole run)
ID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-4000-8000-[0-9a-f]{12}"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def event_id(seed: int, client: int, counter: int) -> str:
    """The unique, deterministic id of one event (UUID-shaped)."""
    return f"{seed & 0xFFFFFFFF:08x}-{client:04x}-4000-8000-{counter:012x}"


@dataclass(frozen=True, slots=True)
class Batch:
    """One request body and the ids of the events in it."""

    number: int
    shape: str
    ids: tuple[str, ...]
    body: bytes


class BatchMaker:
    """Deterministic batches for one client: the same seed gives the same bodies."""

    def __init__(self, seed: int, client: int) -> None:
        self._seed = seed
        self._client = client
        self._rng = random.Random(f"batches:{seed}:{client}")
        self._counter = 0
        self._number = 0

    def next(self) -> Batch:
        """The next batch: legacy push or I/O array, chosen by the seeded generator."""
        self._number += 1
        if self._rng.random() < 0.5:
            return self._legacy()
        return self._io()

    def _ids(self, n: int) -> list[tuple[str, str, int]]:
        out = []
        for _ in range(n):
            self._counter += 1
            when = _EPOCH + timedelta(seconds=self._counter)
            out.append(
                (
                    event_id(self._seed, self._client, self._counter),
                    when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    self._rng.randrange(1, 10_000_000),
                )
            )
        return out

    def _legacy(self) -> Batch:
        events = self._ids(LEGACY_SIZE)
        body = {
            "sourceApplication": "Marketo",
            "munchkinId": "123-ABC-456",
            "messageId": f"{self._client}-{self._number}",
            "messageCreatedDate": events[-1][1],
            "activities": [
                {
                    "marketoGUID": key,
                    "leadId": lead,
                    "activityDate": when,
                    "activityTypeId": 1,
                    "activityType": "Visit Webpage",
                    "primaryAttributeValueId": 92,
                    "primaryAttributeValue": "pricing.html",
                    "attributes": [
                        {"name": "Query Parameters", "dataType": "string", "value": "utm=st"}
                    ],
                }
                for key, when, lead in events
            ],
        }
        return Batch(self._number, "legacy", tuple(e[0] for e in events), _encode(body))

    def _io(self) -> Batch:
        events = self._ids(IO_SIZE)
        body = [
            {
                "eventid": key,
                "specversion": "1.0",
                "type": "com.adobe.platform.marketo.activity.standard.visitwebpage",
                "source": "urn:marketo_activity_stream",
                "id": key,
                "time": when,
                "datacontenttype": "application/json",
                "data": {
                    "munchkinId": "123-ABC-456",
                    "leadId": str(lead),
                    "activityDate": when,
                    "activityTypeId": 1,
                    "activityType": "Visit Webpage",
                    "attributes": [],
                },
                "recipientclientid": "streamd-test-client",
            }
            for key, when, lead in events
        ]
        return Batch(self._number, "io", tuple(e[0] for e in events), _encode(body))


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _Stop:
    requested = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        cls.requested = True


@dataclass
class _Tally:
    new_batches: int = 0
    acked_batches: int = 0
    acked_events: int = 0
    resends: int = 0
    attempts: int = 0
    connects: int = 0

    def __post_init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.violations: list[str] = []


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Post until SIGTERM (or the lifetime ends, or the parent is gone); return the tally."""
    token = _read_token(args.token_file)
    maker = BatchMaker(args.seed, args.client)
    rng = random.Random(f"client:{args.seed}:{args.client}")
    tally = _Tally()
    reservoir: list[Batch] = []
    parent = os.getppid()
    ends = time.monotonic() + args.lifetime
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn: http.client.HTTPConnection | None = None
    pending: Batch | None = None
    resend = False
    with open(args.ack_file, "a") as acks, open(args.sent_file, "a") as sent:
        while not _Stop.requested and os.getppid() == parent and time.monotonic() < ends:
            if pending is None:
                resend = bool(reservoir) and rng.random() < RESEND_FRACTION
                if resend:
                    pending = rng.choice(reservoir)
                    tally.resends += 1
                else:
                    pending = maker.next()
                    tally.new_batches += 1
                    sent.write(" ".join(pending.ids) + "\n")
                    sent.flush()
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=15)
                tally.connects += 1
            tally.attempts += 1
            try:
                conn.request("POST", args.path, body=pending.body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                # Killed or restarting server: not acknowledged, retry on a new connection.
                tally.errors[type(exc).__name__] += 1
                conn.close()
                conn = None
                time.sleep(rng.uniform(0.01, 0.05))
                continue
            tally.statuses[str(response.status)] += 1
            if response.status != 200:
                if response.status != 503:
                    tally.violations.append(
                        f"batch {pending.number}: unexpected {response.status} {payload[:200]!r}"
                    )
                    pending = None  # a 4xx will not change on retry; the test fails anyway
                    continue
                time.sleep(rng.uniform(0.01, 0.05))  # 503: retry soon (ignore Retry-After)
                continue
            _check_answer(pending, payload, resend, tally.violations)
            if not resend:
                # ack file first: it must never miss a batch that got its 200
                acks.write(" ".join(pending.ids) + "\n")
                acks.flush()
                tally.acked_batches += 1
                tally.acked_events += len(pending.ids)
                if len(reservoir) < RESERVOIR:
                    reservoir.append(pending)
                else:
                    slot = rng.randrange(tally.acked_batches)
                    if slot < RESERVOIR:
                        reservoir[slot] = pending
            pending = None
    if conn is not None:
        conn.close()
    return {
        "client": args.client,
        "new_batches": tally.new_batches,
        "acked_batches": tally.acked_batches,
        "acked_events": tally.acked_events,
        "resends": tally.resends,
        "attempts": tally.attempts,
        "connects": tally.connects,
        "statuses": dict(tally.statuses),
        "errors": dict(tally.errors),
        "violations": tally.violations,
    }


def _check_answer(batch: Batch, payload: bytes, resend: bool, violations: list[str]) -> None:
    try:
        answer = json.loads(payload)
        accepted, duplicates = int(answer["accepted"]), int(answer["duplicates"])
    except (ValueError, KeyError, TypeError):
        violations.append(f"batch {batch.number}: 200 with an unexpected body {payload[:200]!r}")
        return
    if accepted + duplicates != len(batch.ids):
        violations.append(
            f"batch {batch.number}: accepted {accepted} + duplicates {duplicates} "
            f"!= {len(batch.ids)} events"
        )
    if resend and accepted:
        violations.append(
            f"batch {batch.number} was acknowledged before, yet a re-send had {accepted} "
            "new events: acknowledged events were lost"
        )


def _read_token(path: str) -> str:
    with open(path) as f:
        for line in f:
            token = line.strip()
            if token and not token.startswith("#"):
                return token
    raise SystemExit(f"{path}: no token")


def main() -> int:
    """Parse the flags, run until told to stop, print the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--client", type=int, required=True)
    parser.add_argument("--ack-file", required=True)
    parser.add_argument("--sent-file", required=True)
    parser.add_argument("--path", default="/events")
    parser.add_argument("--lifetime", type=float, default=600.0, help="exit after this long")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _Stop.handler)
    summary = run(args)
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
