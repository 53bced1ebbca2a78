"""The durable Node peer of the ingest benchmark (bench/node_durable), over real HTTP.

It must be what it claims: every acknowledged event in its database, duplicates dropped
by streamd's dedup key, 400 for malformed bodies with nothing stored, and it must run in the
benchmark. Installing it compiles better-sqlite3 the first time (minutes, cached under
bench/.cache); without Node.js and npm, or make and a C++ compiler, these tests skip.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._server import ServerProcess, ensure_node_durable, start_node_durable
from bench.ingest import CACHE
from tests.conftest import FIXTURES

from ._harness import REPO_ROOT, clean_env

# A benchmark peer, not streamd: its first install compiles better-sqlite3 (minutes of
# a core), too much for every `make test` on a fresh clone; `make test-slow` runs it.
pytestmark = [pytest.mark.xdist_group("node-durable"), pytest.mark.slow]


@pytest.fixture(scope="module")
def installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the durable Node peer")
    if shutil.which("make") is None or shutil.which("c++") is None:
        # better-sqlite3 compiles from source where its prebuilt binary is unreachable.
        pytest.skip("make and a C++ compiler are needed to build better-sqlite3")
    return ensure_node_durable(CACHE)


@pytest.fixture
def peer(installed: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    db = tmp_path / "events.db"
    server = start_node_durable(CACHE, tmp_path / "logs", "peer", db)
    try:
        yield server, db
    finally:
        server.kill()


def _post(
    server: ServerProcess, body: bytes, media: str = "application/json"
) -> tuple[int, dict[str, object]]:
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/events", body, {"Content-Type": media})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _keys(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [k for (k,) in conn.execute("SELECT event_id FROM events ORDER BY seq")]


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_every_shape_is_stored_once_by_streamds_dedup_key(
    peer: tuple[ServerProcess, Path],
) -> None:
    server, db = peer
    legacy = json.loads(_fixture("legacy_push.json"))
    guids = [a["marketoGUID"] for a in legacy["activities"]]
    assert _post(server, _fixture("legacy_push.json")) == (
        200,
        {"accepted": len(guids), "duplicates": 0},
    )
    # The same push again: every event is a duplicate, nothing new is stored.
    assert _post(server, _fixture("legacy_push.json")) == (
        200,
        {"accepted": 0, "duplicates": len(guids)},
    )
    single = json.loads(_fixture("lads_single.json"))
    status, ack = _post(server, _fixture("lads_single.json"), "application/cloudevents+json")
    assert (status, ack) == (200, {"accepted": 1, "duplicates": 0})
    batch = json.loads(_fixture("lads_batch.json"))
    assert _post(server, _fixture("lads_batch.json"))[0] == 200
    audit = json.loads(_fixture("audit_wrapper.json"))
    old = json.loads(_fixture("audit_old_wrapper.json"))
    notes = json.loads(_fixture("notification.json"))
    for name in ("audit_wrapper.json", "audit_old_wrapper.json", "notification.json"):
        assert _post(server, _fixture(name))[0] == 200, name
    # The CloudEvent id wins over the delivery's eventid when they differ.
    both = {"eventid": "delivery-1", "event_id": "delivery-1", "id": "event-1", "type": "t"}
    assert _post(server, json.dumps(both).encode()) == (200, {"accepted": 1, "duplicates": 0})
    expected = [
        *guids,
        single["id"],
        *(e["id"] for e in batch),
        audit["eventid"],  # no CloudEvent id inside the wrapper
        old["event"]["id"],  # the CloudEvent's id, not the delivery's event_id
        *(n["eventid"] for n in notes),
        "event-1",
    ]
    server.stop()  # the database is closed: read what was committed
    assert _keys(db) == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"activities": [', "JSON"),
        (b"[]", "empty batch"),
        (b'"text"', "expected an object"),
        (b'{"specversion": "1.0", "type": "x"}', "no id"),
        (b'{"activities": [{"leadId": 1}]}', "no marketoGUID"),
        (b'{"id": {"nested": 1}}', "must be a string"),
        (b'{"id": "%s"}' % (b"x" * 513), "longer than 512"),
    ],
)
def test_malformed_bodies_get_400_and_store_nothing(
    peer: tuple[ServerProcess, Path], body: bytes, error: str
) -> None:
    server, db = peer
    status, answer = _post(server, body)
    assert status == 400
    assert error.lower() in str(answer["error"]).lower()
    server.stop()
    assert _keys(db) == []


def test_a_batch_with_one_bad_event_is_refused_whole(peer: tuple[ServerProcess, Path]) -> None:
    server, db = peer
    good = json.loads(_fixture("lads_batch.json"))
    status, answer = _post(server, json.dumps([*good, {"type": "no id"}]).encode())
    assert status == 400
    assert f"$[{len(good)}]" in str(answer["error"])
    server.stop()
    assert _keys(db) == []


def test_the_ingest_benchmark_runs_the_peer(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    cases = "node-durable-io1-c16,node-durable-io20-c16"
    argv = [sys.executable, "-m", "bench.ingest", "--quick", "--only", cases]
    argv += ["--duration", "0.5", "--no-plots", "--out", str(out)]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    by_name = {e["case"]["name"]: e for e in json.loads(out.read_text())["cases"]}
    assert set(by_name) == set(cases.split(","))
    for name, entry in by_name.items():
        load, server = entry["load"], entry["server"]
        assert load["errors"] == {}, (name, load["errors"])
        # Fresh ids: all accepted, none duplicate, and all of them in its database.
        assert load["accepted"] == load["acked_events"] > 0, name
        assert load["duplicates"] == 0
        assert entry["stored"] == {"events": load["acked_events"], "unit": "events"}
        assert server["exit_code"] == 0
        assert 0 < server["cpu_s_per_1k_requests"] < math.inf
        assert 0 < server["cpu_s_per_1m_events"] < math.inf
    assert "| durable Node receiver (better-sqlite3, FULL, UNIQUE id) |" in done.stdout
