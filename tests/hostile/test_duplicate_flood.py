"""A duplicate flood: the same batches posted many times, concurrently and repeatedly.

16 clients post 500-event legacy pushes on kept-alive connections, round after round,
all at once: in even rounds all 16 post the same batch ``r``; in odd rounds half of them
post batch ``r`` and the other half batch ``r + 1``, which shares half its ids with it
(overlapping batches committed concurrently, often in one group). Every answer must be
200 and account for its 500 events; the journal must hold each id exactly once; the
duplicates must be counted (answers and ``streamd_duplicates_total`` agree); and
streamd's memory must stay bounded (RSS sampled from /proc all along).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from pathlib import Path

from tests.hostile._faults import admin_url, metric
from tests.hostile.conftest import scale
from tests.system._harness import (
    Processes,
    assert_no_traceback,
    check_journal,
    serve,
    stop_gracefully,
)

CLIENTS = 16
BATCH = 500
STEP = BATCH // 2  # batch k holds ids [k * STEP, k * STEP + BATCH)
RSS_BOUND = 256 * 1024 * 1024  # peak RSS streamd may reach (it starts near 60 MiB)


def event_id(seed: int, n: int) -> str:
    return f"{seed & 0xFFFFFFFF:08x}-f100-4000-8000-{n:012x}"


def legacy_body(seed: int, k: int) -> bytes:
    activities = [
        {
            "marketoGUID": event_id(seed, n),
            "leadId": 1000 + n,
            "activityDate": "2026-04-21T15:28:40Z",
            "activityTypeId": 1,
            "activityType": "Visit Webpage",
            "primaryAttributeValueId": 92,
            "primaryAttributeValue": "pricing.html",
            "attributes": [{"name": "Query Parameters", "dataType": "string", "value": "x"}],
        }
        for n in range(k * STEP, k * STEP + BATCH)
    ]
    body = {
        "sourceApplication": "Marketo",
        "munchkinId": "123-ABC-456",
        "messageId": f"flood-{k}",
        "messageCreatedDate": "2026-04-21T15:28:49Z",
        "activities": activities,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_duplicate_flood_is_all_200_journaled_once_and_counted(
    tmp_path: Path, processes: Processes
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rounds = scale(16, 400)  # even: the last (odd) round posts batch `rounds` too
    print(f"duplicate flood: seed={seed} clients={CLIENTS} rounds={rounds} batch={BATCH}")
    server = serve(processes, tmp_path / "data")
    pid, token = server.spawned.pid, server.token()
    admin = admin_url(server)
    admin_token = (tmp_path / "data" / "admin-token").read_text().strip()
    bodies = [legacy_body(seed, k) for k in range(rounds + 1)]
    start_rss = rss(pid)
    samples: list[int] = []
    answers: list[list[tuple[int, dict[str, int] | str]]] = [[] for _ in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS + 1, timeout=60)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            for r in range(rounds):
                barrier.wait()  # every client posts at the same moment
                k = r + c % 2 if r % 2 else r
                conn.request("POST", "/events", body=bodies[k], headers=headers)
                response = conn.getresponse()
                payload = response.read()
                try:
                    answers[c].append((response.status, json.loads(payload)))
                except ValueError:
                    answers[c].append((response.status, payload.decode(errors="replace")))
                barrier.wait()  # the round is over for everyone
        except threading.BrokenBarrierError:
            return
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(rounds):
            barrier.wait()
            samples.append(rss(pid))
            barrier.wait()
            samples.append(rss(pid))
    finally:
        barrier.abort()
        for thread in threads:
            thread.join(60)
    got = [answer for per_client in answers for answer in per_client]
    assert len(got) == CLIENTS * rounds, f"{len(got)} answers of {CLIENTS * rounds}"
    bad = [answer for answer in got if answer[0] != 200 or not isinstance(answer[1], dict)]
    assert bad == [], f"{len(bad)} answers were not 200: {bad[:5]}"
    counts = [body for _, body in got if isinstance(body, dict)]
    accepted = sum(body["accepted"] for body in counts)
    duplicates = sum(body["duplicates"] for body in counts)
    assert all(body["accepted"] + body["duplicates"] == BATCH for body in counts)
    distinct = STEP * (rounds + 2)
    assert accepted == distinct, "every id accepted exactly once over all the answers"
    assert duplicates == CLIENTS * rounds * BATCH - distinct
    assert metric(admin, admin_token, "streamd_duplicates_total") == duplicates
    peak = max(samples)
    stop_gracefully(server)
    assert_no_traceback(server.spawned.stderr())
    keys = check_journal(server.journal, [event_id(seed, n) for n in range(distinct)])
    assert len(keys) == distinct and set(keys.values()) == {1}
    print(
        f"duplicate flood: {len(got)} answers, all 200; {accepted} accepted, {duplicates} "
        f"duplicates; journal {len(keys)} ids, each once; RSS start {start_rss / 2**20:.0f} "
        f"MiB, peak {peak / 2**20:.0f} MiB, end of flood {samples[-1] / 2**20:.0f} MiB"
    )
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
