"""/metrics, /healthz and /readyz on the admin listener of a real server.

The exposition is parsed with prometheus_client's own text parser (what a
Prometheus scrape would read); the disk floor is crossed for real, on a
small tmpfs filled by a ballast file.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from streamd.service import serve
from tests.conftest import fixture_bytes
from tests.integration.conftest import Server, StartServer, make_config
from tests.integration.test_admin import admin_auth, admin_url
from tests.integration.test_errors import write_locked

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(server: Server) -> Samples:
    reply = await server.client.get(admin_url(server) + "/metrics", headers=admin_auth(server))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(reply.text)


def value(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_as_events_flow(start_server: StartServer) -> None:
    server: Server = await start_server(
        '[[sinks]]\nname = "out"\nkind = "file"\n[sinks.file]\ndirectory = "out"\n'
    )
    before = await scrape(server)
    assert value(before, "streamd_requests_total", source="events", status="200") == 0
    assert value(before, "streamd_sink_state", sink="out", state="active") == 1
    # A file sink has no producer process: no restart series (kafka sinks have them).
    assert not [k for k in before if k[0] == "streamd_sink_producer_restarts_total"]

    assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200
    assert (await server.post(fixture_bytes("legacy_push"))).status_code == 200
    assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200  # duplicates
    assert (await server.post(b"{not json")).status_code == 400
    bad = await server.client.post(
        server.url + "/events", content=b"[]", headers={"Authorization": "Bearer wrong"}
    )
    assert bad.status_code == 401
    await server.wait_for(
        lambda: server.running.drain.statistics()[0].confirmed == 10, "the sink confirmed all"
    )

    after = await scrape(server)
    assert value(after, "streamd_requests_total", source="events", status="200") == 3
    assert value(after, "streamd_requests_total", source="events", status="400") == 1
    assert value(after, "streamd_requests_total", source="events", status="401") == 1
    assert value(after, "streamd_events_journaled_total", source="events", stream="activity") == 10
    assert value(after, "streamd_duplicates_total") == 6
    assert value(after, "streamd_ack_latency_seconds_count", source="events") == 3
    assert value(after, "streamd_ack_latency_seconds_bucket", source="events", le="+Inf") == 3
    assert value(after, "streamd_commit_seconds_count") >= 2
    assert value(after, "streamd_journal_last_seq") == 10
    assert value(after, "streamd_journal_file_bytes", file="journal") > 0
    assert value(after, "streamd_sink_delivered_events_total", sink="out") == 10
    assert value(after, "streamd_sink_lag_events", sink="out") == 0
    assert value(after, "streamd_oldest_unconfirmed_event_age_seconds") == 0
    assert value(after, "streamd_source_requests_24h", source="events") == 5
    assert value(after, "streamd_source_failure_ratio_24h", source="events") == pytest.approx(0.4)
    assert value(after, "streamd_source_silence_seconds", source="events") < 60
    assert (
        "streamd_munchkin_silence_seconds",
        (("munchkin_id", "123-ABC-456"), ("source", "events")),
    ) in after


async def test_503_reasons_are_counted(start_server: StartServer) -> None:
    server: Server = await start_server("[journal]\nmin_free_disk_mib = 1000000000\n")
    reply = await server.post(fixture_bytes("lads_single"))
    assert reply.status_code == 503
    m = await scrape(server)
    assert value(m, "streamd_unavailable_responses_total", reason="low_disk") == 1
    assert value(m, "streamd_low_disk") == 1


async def test_health_needs_no_token_metrics_does(server: Server) -> None:
    base = admin_url(server)
    health = await server.client.get(base + "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "alive"})
    ready = await server.client.get(base + "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert (await server.client.get(base + "/metrics")).status_code == 401
    # Never on the public ingest listener.
    assert (await server.client.get(server.url + "/metrics")).status_code == 404


FAILING = re.compile(
    r"journal commits are failing since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z: "
    r"database is locked \(SQLITE_BUSY\)"
)


async def test_readyz_says_commits_fail_until_one_succeeds_again(start_server: StartServer) -> None:
    # Another process holds the journal's write lock: every commit fails after SQLite's
    # busy_timeout (5 s). Readiness must say so, with the reason, and come back by
    # itself (the writer's probe) once the lock is released, without a POST.
    server: Server = await start_server("[journal]\ncommit_budget = 30.0\n")
    base = admin_url(server)
    assert (await server.client.get(base + "/readyz")).status_code == 200
    with write_locked(server.journal) as blocker:
        reply = await server.post(fixture_bytes("lads_single"))
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "5"
        assert "database is locked" in reply.json()["error"]
        ready = await server.client.get(base + "/readyz")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "5"
        assert ready.json()["ready"] is False
        assert [p for p in ready.json()["problems"] if FAILING.fullmatch(p)], ready.json()
        m = await scrape(server)
        assert value(m, "streamd_journal_commits_failing") == 1
        assert value(m, "streamd_journal_commit_failures_total") >= 1
        blocker.execute("ROLLBACK")
    with trio.fail_after(20):
        while (ready := await server.client.get(base + "/readyz")).status_code != 200:
            await trio.sleep(0.05)
    assert ready.json() == {"ready": True}
    assert value(await scrape(server), "streamd_journal_commits_failing") == 0
    assert (await server.post(fixture_bytes("lads_single"))).status_code == 200


@contextlib.contextmanager
def small_tmpfs(where: Path, mib: int) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_readyz_turns_unready_when_the_disk_floor_is_crossed(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 64) as disk:
        data_dir = disk / "data"
        data_dir.mkdir()
        config = make_config(data_dir, "[journal]\nmin_free_disk_mib = 24\n")
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve, config)
            async with httpx.AsyncClient(timeout=10) as client:
                token = (data_dir / "admin-token").read_text().strip()
                base = running.admin_binds[0]
                assert (await client.get(base + "/readyz")).status_code == 200
                ballast = disk / "ballast"
                with ballast.open("wb") as f:  # leave less than the 24 MiB floor free
                    f.write(b"\0" * (48 * 1024 * 1024))
                    f.flush()
                    os.fsync(f.fileno())
                with trio.fail_after(10):
                    while (reply := await client.get(base + "/readyz")).status_code == 200:
                        await trio.sleep(0.1)
                assert reply.status_code == 503
                assert reply.json() == {
                    "ready": False,
                    "problems": ["free disk space is below journal.min_free_disk_mib"],
                }
                post = await client.post(
                    running.binds[0] + "/events",
                    content=fixture_bytes("lads_single"),
                    headers={
                        "Authorization": f"Bearer {(data_dir / 'tokens').read_text().strip()}"
                    },
                )
                assert post.status_code == 503
                ballast.unlink()  # space returns: ready again, by itself
                with trio.fail_after(10):
                    while (await client.get(base + "/readyz")).status_code != 200:
                        await trio.sleep(0.1)
                metrics = await client.get(
                    base + "/metrics", headers={"Authorization": f"Bearer {token}"}
                )
                m = samples(metrics.text)
                assert value(m, "streamd_unavailable_responses_total", reason="low_disk") == 1
            nursery.cancel_scope.cancel()


async def test_connection_metrics_count_the_edge(start_server: StartServer) -> None:
    server: Server = await start_server("[server]\nmax_connections = 3\n")
    assert (await server.post(fixture_bytes("lads_single"))).status_code == 200
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(5)]
    table = server.running.connections
    assert table is not None
    # Five idle connections against a cap of 3 (the client's kept-alive one among
    # them): the oldest idle ones were closed to make room.
    await server.wait_for(lambda: table.statistics().evicted >= 3, "evictions")
    m = await scrape(server)
    for stream in idle:
        await stream.aclose()
    assert value(m, "streamd_connections_limit") == 3
    assert value(m, "streamd_connections_open") <= 3
    assert value(m, "streamd_connections_accepted_total") >= 6
    assert value(m, "streamd_connections_evicted_total") >= 3
    assert value(m, "streamd_connections_refused_total") == 0
    assert value(m, "streamd_accept_pauses_total") == 0


async def test_every_metric_is_in_the_reference(start_server: StartServer) -> None:
    server: Server = await start_server(
        '[[sinks]]\nname = "out"\nkind = "file"\n[sinks.file]\ndirectory = "out"\n'
    )
    assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200
    names = {name for name, _ in await scrape(server)}
    reference = (Path(__file__).resolve().parents[2] / "docs" / "admin-api.md").read_text()
    families = {
        re.sub(r"_(bucket|count|sum)$", "", name) for name in names if not name.endswith("_created")
    }
    missing = sorted(f for f in families if f"\n| `{f}` |" not in reference)
    assert missing == [], f"metrics not in docs/admin-api.md's table: {missing}"


async def test_the_commit_histogram_keeps_its_series(start_server: StartServer) -> None:
    """streamd_commit_seconds: the same buckets, no labels, no extra series (_created)."""
    server: Server = await start_server()
    for name in ("lads_batch", "legacy_push", "lads_single"):
        assert (await server.post(fixture_bytes(name))).status_code == 200
    reply = await server.client.get(admin_url(server) + "/metrics", headers=admin_auth(server))
    lines = [line for line in reply.text.splitlines() if line.startswith("streamd_commit_seconds")]
    bounds = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
              "1.0", "2.5", "5.0", "+Inf"]  # fmt: skip
    names = [line.split(" ")[0] for line in lines]
    assert names == [
        *(f'streamd_commit_seconds_bucket{{le="{b}"}}' for b in bounds),
        "streamd_commit_seconds_count",
        "streamd_commit_seconds_sum",
    ]
    m = samples(reply.text)
    counts = [value(m, "streamd_commit_seconds_bucket", le=b) for b in bounds]
    assert counts == sorted(counts) and counts[-1] == value(m, "streamd_commit_seconds_count")
    assert counts[-1] >= 3 and value(m, "streamd_commit_seconds_sum") > 0
    assert "# TYPE streamd_commit_seconds histogram" in reply.text
