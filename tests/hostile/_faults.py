"""Machinery of the journal fault tests: checked senders, readiness, a small tmpfs.

:class:`Senders` are threads that post unique batches (``tests/system/_load_client.py``'s
deterministic batches) as a real sender would: a 503 makes them send the same batch
again, a 200 records its ids as acknowledged. Every answer is checked as it comes:
only 200 and 503 are allowed, a 503 must carry ``Retry-After``, a 200 must account for
every event. The tests then compare what was acknowledged with the journal itself.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.system._harness import Server, wait_for
from tests.system._load_client import Batch as SentBatch
from tests.system._load_client import BatchMaker

ADMIN_READY = re.compile(r"^streamd admin ready: (http://127\.0\.0\.1:\d+)\n", re.MULTILINE)
MIB = 1024 * 1024


def admin_url(server: Server) -> str:
    """The admin listener's base URL (streamd prints it once ready)."""
    match = wait_for(
        lambda: ADMIN_READY.search(server.spawned.stdout()),
        timeout=15,
        what="the admin listener",
        context=server.spawned.stderr,
    )
    assert match is not None
    return match.group(1)


def get(url: str, path: str) -> tuple[int, dict[str, str], Any]:
    """One GET: status, lower-cased headers, the decoded JSON body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(body)


def metric(admin: str, admin_token: str, name: str) -> float:
    """One unlabelled sample of ``GET /metrics`` (0 when absent)."""
    host, port = admin.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {admin_token}"})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def readyz(admin: str) -> tuple[bool, list[str]]:
    """(ready, problems) as ``GET /readyz`` says; checks its status and Retry-After agree."""
    status, headers, body = get(admin, "/readyz")
    if status == 200:
        assert body == {"ready": True}, body
        return True, []
    assert status == 503 and "retry-after" in headers, (status, headers, body)
    assert body["ready"] is False and body["problems"], body
    return False, list(body["problems"])


def wait_unready(admin: str, pattern: str, *, timeout: float) -> str:
    """Wait until /readyz is not ready with a problem matching ``pattern``; return it."""

    def problem() -> str | None:
        _, problems = readyz(admin)
        return next((p for p in problems if re.fullmatch(pattern, p)), None)

    found = wait_for(problem, timeout=timeout, what=f"/readyz to say {pattern!r}")
    assert found is not None
    return found


@dataclass
class _Answers:
    """What one sender thread saw (written by that thread only)."""

    statuses: Counter[int] = field(default_factory=Counter)
    acked: list[tuple[str, ...]] = field(default_factory=list)
    sent: list[tuple[str, ...]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0


class Sender(threading.Thread):
    """Posts unique batches until stopped; a batch answered 503 is sent again."""

    def __init__(self, port: int, token: str, seed: int, client: int) -> None:
        super().__init__(name=f"sender-{client}", daemon=True)
        self.port = port
        self.token = token
        self.maker = BatchMaker(seed, client)
        self.answers = _Answers()
        self.stopping = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        pending: SentBatch | None = None
        conn: http.client.HTTPConnection | None = None
        a = self.answers
        while not self.stopping.is_set():
            if pending is None:
                pending = self.maker.next()
                a.sent.append(pending.ids)
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            started = time.monotonic()
            try:
                conn.request("POST", "/events", body=pending.body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                a.errors[type(exc).__name__] += 1
                conn.close()
                conn = None
                self.stopping.wait(0.05)
                continue
            a.slowest = max(a.slowest, time.monotonic() - started)
            a.statuses[response.status] += 1
            if response.status == 200:
                self._check(pending, payload)
                a.acked.append(pending.ids)
                pending = None
            elif response.status == 503:
                if not response.getheader("retry-after"):
                    a.violations.append(f"503 without Retry-After: {payload[:200]!r}")
                self.stopping.wait(0.02)  # a sender retries the same batch
            else:
                a.violations.append(f"unexpected {response.status}: {payload[:200]!r}")
                pending = None
        if conn is not None:
            conn.close()

    def _check(self, batch: SentBatch, payload: bytes) -> None:
        answer = json.loads(payload)
        if answer["accepted"] + answer["duplicates"] != len(batch.ids):
            self.answers.violations.append(f"200 that does not account for its batch: {answer}")


class Senders:
    """A few :class:`Sender` threads and what they saw together."""

    def __init__(self, port: int, token: str, seed: int, clients: int) -> None:
        self.threads = [Sender(port, token, seed, client) for client in range(clients)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stopping.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    def statuses(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for thread in self.threads:
            total.update(thread.answers.statuses.copy())
        return total

    def acked_batches(self) -> int:
        return sum(len(thread.answers.acked) for thread in self.threads)

    def acked_ids(self) -> set[str]:
        return {key for t in self.threads for batch in list(t.answers.acked) for key in batch}

    def sent_batches(self) -> list[tuple[str, ...]]:
        return [batch for thread in self.threads for batch in list(thread.answers.sent)]

    def violations(self) -> list[str]:
        return [v for thread in self.threads for v in thread.answers.violations]

    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for thread in self.threads:
            total.update(thread.answers.errors.copy())
        return total

    def slowest(self) -> float:
        return max(thread.answers.slowest for thread in self.threads)

    def wait_answers(self, status: int, more: int, *, timeout: float, what: str) -> None:
        """Wait until ``more`` further answers with ``status`` came (counted from now)."""
        start = self.statuses()[status]
        wait_for(lambda: self.statuses()[status] >= start + more, timeout=timeout, what=what)


@contextlib.contextmanager
def tmpfs(where: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of ``mib`` MiB mounted at ``where``, lazily unmounted at the end.

    Skips the test where mounting is impossible (not root, no mount namespace).
    """
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); it needs root")
    try:
        yield where
    finally:
        # Lazy: a streamd that a failing test left running still has files open there.
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path, *, leave: int = 0) -> int:
    """Write ``path`` until its file system has at most ``leave`` bytes free (``leave``
    0: until ENOSPC, to the last byte). Returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (MIB, 64 * 1024, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                if leave:
                    st = os.statvfs(path.parent)
                    if st.f_bavail * st.f_frsize - chunk < leave:
                        break
                try:
                    n = f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
                if n != chunk:
                    break
        os.fsync(f.fileno())
    return written
