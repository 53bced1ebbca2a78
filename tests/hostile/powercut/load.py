"""Senders for the durability checks: distinct batches over kept-alive connections.

Each client is a thread with one kept-alive HTTP/1.1 connection, posting its batches
one after another: on one connection the n-th 200 answers the n-th batch that got a
200, so a 200 seen on the server side (by the shim, or in an strace) is mapped to its
batch by the connection's port and its rank. Batches are built from the contract's
fixtures: legacy pushes of 500 activities (``legacy_push.json``'s activities repeated)
and Adobe I/O arrays of 20 CloudEvents (``lads_batch.json``'s), every event id unique
and derived from the seed. Now and then an acknowledged batch is sent again: its answer
must count every event as a duplicate.
"""

from __future__ import annotations

import copy
import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.conftest import fixture_bytes

LEGACY_SIZE = 500
IO_SIZE = 20
_LEGACY = json.loads(fixture_bytes("legacy_push"))
_IO = json.loads(fixture_bytes("lads_batch"))


@dataclass(frozen=True, slots=True)
class Batch:
    """One request body and the dedup keys of its events."""

    client: int
    number: int
    shape: str
    keys: tuple[str, ...]
    body: bytes


def make_batches(seed: int, client: int, count: int, legacy_size: int = LEGACY_SIZE) -> list[Batch]:
    """``count`` deterministic batches for one client, half legacy pushes of
    ``legacy_size`` activities, half I/O arrays of 20 CloudEvents."""
    rng = random.Random(f"powercut-batches:{seed}:{client}")
    out = []
    counter = 0
    for number in range(count):
        legacy = rng.random() < 0.5
        size = legacy_size if legacy else IO_SIZE
        keys = []
        for _ in range(size):
            counter += 1
            keys.append(f"{seed & 0xFFFFFFFF:08x}-{client:04x}-4000-8000-{counter:012x}")
        if legacy:
            body = copy.deepcopy(_LEGACY)
            body["messageId"] = f"{client}-{number}"
            template = body["activities"]
            body["activities"] = [
                dict(template[i % len(template)], marketoGUID=key) for i, key in enumerate(keys)
            ]
        else:
            body = [dict(_IO[i % len(_IO)], id=key, eventid=key) for i, key in enumerate(keys)]
        data = json.dumps(body, separators=(",", ":")).encode()
        out.append(Batch(client, number, "legacy" if legacy else "io", tuple(keys), data))
    return out


@dataclass
class ClientLog:
    """What one client saw: for each local port, the batches answered 200, in order."""

    client: int
    acks: dict[int, list[Batch]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    resends: int = 0
    connections: int = 0


def _post_all(
    port: int,
    token: str,
    batches: list[Batch],
    log: ClientLog,
    resend_fraction: float,
    seed: int,
    deadline: float,
) -> None:
    rng = random.Random(f"powercut-client:{seed}:{log.client}")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn: http.client.HTTPConnection | None = None
    acked: list[Batch] = []
    queue = list(batches)
    try:
        while queue:
            resend = bool(acked) and rng.random() < resend_fraction
            batch = rng.choice(acked) if resend else queue[0]
            if time.monotonic() > deadline:
                log.violations.append(f"deadline passed with {len(queue)} batches unsent")
                return
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if conn.sock is None:  # new, or closed by the server after an answer
                conn.connect()
                log.connections += 1
            assert conn.sock is not None
            local = conn.sock.getsockname()[1]
            try:
                conn.request("POST", "/events", body=batch.body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                log.violations.append(f"batch {batch.number}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = None
                continue
            log.statuses[response.status] += 1
            if response.status != 200:
                if response.status != 503:
                    log.violations.append(f"batch {batch.number}: {response.status} {payload!r}")
                    return
                time.sleep(0.05)  # a retry pause, as a sender would; not a wait for state
                continue
            log.acks.setdefault(local, []).append(batch)
            answer = json.loads(payload)
            if resend:
                log.resends += 1
                if answer != {"accepted": 0, "duplicates": len(batch.keys)}:
                    log.violations.append(f"re-sent batch {batch.number} answered {answer}")
            else:
                if answer != {"accepted": len(batch.keys), "duplicates": 0}:
                    log.violations.append(f"batch {batch.number} answered {answer}")
                acked.append(queue.pop(0))
    finally:
        if conn is not None:
            conn.close()


def drive(
    port: int,
    token: str,
    *,
    seed: int,
    clients: int,
    batches_per_client: int,
    resend_fraction: float = 0.1,
    legacy_size: int = LEGACY_SIZE,
    timeout: float = 300.0,
) -> tuple[list[ClientLog], list[Batch]]:
    """Post every client's batches concurrently; return the clients' logs and the batches.

    Fails (AssertionError) on any answer but 200 or 503, or a client past ``timeout``.
    """
    deadline = time.monotonic() + timeout
    logs = [ClientLog(client) for client in range(clients)]
    every: list[Batch] = []
    threads = []
    for log in logs:
        batches = make_batches(seed, log.client, batches_per_client, legacy_size)
        every += batches
        threads.append(
            threading.Thread(
                target=_post_all,
                args=(port, token, batches, log, resend_fraction, seed, deadline),
                name=f"powercut-client-{log.client}",
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    for log in logs:
        assert not log.violations, f"client {log.client}: {log.violations[:5]}"
    return logs, every


def acks_by_port(logs: list[ClientLog]) -> dict[int, list[Batch]]:
    """Every connection's acknowledged batches in order, keyed by its local port."""
    out: dict[int, list[Batch]] = {}
    for log in logs:
        for port, batches in log.acks.items():
            assert port not in out, f"port {port} used by two clients"
            out[port] = batches
    return out
