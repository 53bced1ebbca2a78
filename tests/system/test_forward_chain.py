"""Two chained streamd processes: the first forwards to the second in Marketo's or Adobe's
body format, and every event arrives in the second journal once, under its event key.

``streamd emit`` posts legacy pushes and I/O Events deliveries (half each) to the
first; its http sink (``format = "legacy-push"`` or ``"cloudevents"``) forwards to the
second, whose source checks the API token (legacy-push) or Adobe's signature against
a pinned public key (cloudevents, signed by the first): docs/sinks.md, "Forwarding to
another streamd". The
second is SIGKILLed while the first forwards (the first's backlog grows), then the first
is SIGKILLed with that backlog undelivered; both restart. At the end the second journal
holds every event of the first exactly once, with the first's keys (which include every
event ``emit`` saw acknowledged), and the backlog of the kill among them.

``legacy-push`` carries lead activities only, so its run emits only those (legacy
pushes and lead-activity CloudEvents, which the first converts); ``cloudevents`` gets
every shape (``--shape mixed``: CloudEvents, audit events in both wrappers,
notifications) and legacy activities (converted to CloudEvents).
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.engines._deploy import Receiver
from tests.system._harness import Processes, streamd_argv, wait_for

TOKEN = "forward-chain-token-0123456789abcdef"


KEY_PATH = "/prod/keys/pub-key-forward.pem"
RECIPIENT = "streamd-bench-client"  # what streamd emit names in its I/O events


def first_config(fmt: str, token: Path, key: Path, second: Receiver) -> str:
    if fmt == "legacy-push":  # lead activities only; the second checks the API token
        extra = f'bearer_token_file = "{token}"\n[[sinks.filters]]\nstreams = ["activity"]\n'
    else:  # signed as Adobe signs; the second checks the signature against a pinned key
        extra = (
            f'adobe_signing_key_file = "{key}"\nadobe_key_path = "{KEY_PATH}"\n'
            f'recipient_client_id = "{RECIPIENT}"\n'
        )
    return f"""
[tokens]
files = ["{token}"]

[[sinks]]
name = "forward"
kind = "http"
[sinks.http]
url = "http://127.0.0.1:{second.port}/events"
format = "{fmt}"
{extra}[sinks.pool]
workers = 2
batch_size = 500
[sinks.retry]
max_attempts = 0
backoff_base = 0.1
backoff_cap = 1
probe_interval = 1
"""


def second_config(fmt: str, token: Path, public_key: Path) -> str:
    if fmt == "legacy-push":
        return f'[tokens]\nfiles = ["{token}"]\n'
    return f"""
[[sources]]
name = "events"
path = "/events"
auth = "adobe-signature"
[sources.adobe]
client_id = "{RECIPIENT}"
fetch_keys = false
pinned_keys = {{ "{KEY_PATH}" = "{public_key}" }}
"""


def write_key_pair(root: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    private, public = root / "forward-key.pem", root / "forward-key.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _query(node: Receiver, sql: str) -> list[tuple[object, ...]]:
    path = node.data / "journal.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


def journaled(node: Receiver) -> int:
    rows = _query(node, "SELECT count(*) FROM events")
    return int(str(rows[0][0])) if rows else 0


def backlog(node: Receiver) -> list[str]:
    """The keys of the first's events its forward sink has not confirmed."""
    rows = _query(
        node,
        "SELECT event_key FROM events WHERE seq > "
        "(SELECT cursor FROM sinks WHERE name = 'forward') ORDER BY seq",
    )
    return [str(r[0]) for r in rows]


def caught_up(node: Receiver) -> bool:
    cursor = _query(node, "SELECT cursor FROM sinks WHERE name = 'forward'")
    last = _query(node, "SELECT coalesce(max(seq), 0) FROM events")
    return bool(cursor) and cursor[0][0] == last[0][0]


def _emit(processes: Processes, url: str, mode: str, shape: str, count: int, token: Path,
          acked: Path, seed: int) -> subprocess.Popen[bytes]:  # fmt: skip
    argv = [*streamd_argv(), "emit", "--to", url, "--mode", mode, "--count", str(count),
            "--unpaced", "--seed", str(seed), "--time-scale", "60", "--drain", "120",
            "--token-file", str(token), "--acked", str(acked), "--progress", "0"]  # fmt: skip
    if mode == "io":
        argv += ["--shape", shape, "--no-sign", "--no-challenge"]
    return processes.spawn(argv, f"emit-{mode}-{shape}").popen


def run_chain(tmp_path: Path, processes: Processes, fmt: str, total: int) -> str:
    token = tmp_path / "api-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    private, public = write_key_pair(tmp_path)
    second = Receiver(processes, tmp_path, "second", second_config(fmt, token, public))
    first = Receiver(processes, tmp_path, "first", "")
    first.config.write_text(first_config(fmt, token, private, second))
    second.start()
    first.start()
    url = f"http://127.0.0.1:{first.port}/events"
    io_shape = "io" if fmt == "legacy-push" else "mixed"
    acked = [tmp_path / "acked-legacy.txt", tmp_path / "acked-io.txt"]
    senders = [
        _emit(processes, url, "legacy", "", total // 2, token, acked[0], 5),
        _emit(processes, url, "io", io_shape, total - total // 2, token, acked[1], 6),
    ]
    started = time.monotonic()
    # The second dies while the first forwards: the first's backlog grows ...
    wait_for(lambda: journaled(second) >= total // 10, timeout=120,
             what="the second journaling forwarded events")  # fmt: skip
    second.kill()
    wait_for(lambda: len(backlog(first)) >= total // 20, timeout=120,
             what="a backlog in the first while the second is down")  # fmt: skip
    # ... and the first dies with that backlog undelivered.
    first.kill()
    undelivered = backlog(first)
    assert undelivered, "the first had delivered everything: the kill proves nothing"
    first.start()
    time.sleep(1.0)  # the first retries against a dead second for a moment
    second.start()
    for sender in senders:
        assert sender.wait(timeout=600) == 0
    sent = time.monotonic() - started
    wait_for(
        lambda: caught_up(first),
        timeout=600,
        what="the first's forward sink caught up",
        context=lambda: first.server.spawned.stderr()[-2000:] if first.server else "",
    )
    forwarded = time.monotonic() - started

    firsts = Counter(first.journal_keys())
    seconds = Counter(second.journal_keys())
    everything = {k for path in acked for k in path.read_text().split()}
    assert len(everything) >= total * 0.99, "emit got too little acknowledged"
    assert everything <= set(firsts)
    dead = _query(first, "SELECT count(*), max(reason), max(last_response) FROM dead_letters")
    assert dead[0][0] == 0, f"dead letters in the first: {dead}"
    assert max(seconds.values()) == 1  # exactly once (the journal dedups by key)
    assert set(seconds) == set(firsts), (
        f"missing in the second: {sorted(set(firsts) - set(seconds))[:3]}, "
        f"not from the first: {sorted(set(seconds) - set(firsts))[:3]}"
    )
    assert set(undelivered) <= set(seconds)
    streams = Counter(str(s) for (s,) in _query(second, "SELECT stream FROM events"))
    if fmt == "legacy-push":
        assert set(streams) == {"activity"}
    else:  # every shape crossed
        assert {"activity", "audit", "notification"} <= set(streams)
    return (
        f"forward chain {fmt}: {len(everything)} acknowledged by the first, {len(firsts)} "
        f"journaled by the first, {len(seconds)} by the second (each once, same keys; "
        f"streams {dict(streams)}); {len(undelivered)} undelivered at the first's SIGKILL, "
        f"all arrived; senders done after {sent:.0f} s, forward caught up after "
        f"{forwarded:.0f} s"
    )


@pytest.mark.parametrize("fmt", ["legacy-push", "cloudevents"])
@pytest.mark.parametrize(
    "total",
    [pytest.param(6_000, id="6k"), pytest.param(100_000, id="100k", marks=pytest.mark.slow)],
)
def test_two_chained_receivers_keep_every_event_key_through_kills(
    tmp_path: Path, processes: Processes, fmt: str, total: int
) -> None:
    print(run_chain(tmp_path, processes, fmt, total))
