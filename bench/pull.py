"""How fast the Journaling API pull source fills the journal from the loopback emulator.

    python -m bench.pull [--events 200000] [--limits 1000,100] [--rounds 2] [--out FILE]

Separate processes: the emulator (``streamd emit --journal-server``, also the IMS token
endpoint) and ``streamd serve`` (FULL) with one ``[[pulls]]`` entry. The clock starts
when streamd is ready and stops when the journal holds every event (``max(seq)``,
polled read-only every 50 ms); the token fetch is inside the measurement.

Side by side, in the same run: the emulator alone, paged through by a client that only
reads each page and follows ``next`` (what the emulator can serve; the pull cannot be
faster than that). Prints one JSON object; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench._machine import machine_facts
from bench._report import print_summary
from bench._server import READY_PREFIX, REPO, streamd_command
from streamd.core.headers import link

CLIENT = "bench-pull-client"
SECRET = "bench-pull-secret-0123456789"
ORG = "BENCH@AdobeOrg"
_JOURNAL_READY = re.compile(r"journal ready: (http://\S+)")


def _wait_line(path: Path, pattern: re.Pattern[str] | str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if isinstance(pattern, str):
            for line in text.splitlines():
                if line.startswith(pattern):
                    return line
        else:
            match = pattern.search(text)
            if match:
                return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{proc.args!r} did not start: {path.read_text()[-2000:]}")


def _emulator(workdir: Path, events: int) -> tuple[subprocess.Popen[bytes], str]:
    secret = workdir / "secret"
    secret.write_text(SECRET + "\n")
    log = workdir / "emulator.out"
    proc = subprocess.Popen(
        [
            *streamd_command(), "emit", "--journal-server", "--listen", "127.0.0.1:0",
            "--seed", "5", "--journal-events", str(events), "--client-id", CLIENT,
            "--client-secret-file", str(secret), "--journal-org-id", ORG,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = _wait_line(log, _JOURNAL_READY, proc)
    return proc, url.removesuffix("/journal")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _max_seq(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def pull_case(events: int, limit: int) -> dict[str, Any]:
    """streamd pulling ``events`` in pages of ``limit``; its rate, RSS and CPU."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    emulator, base = _emulator(workdir, events)
    config = workdir / "streamd.toml"
    config.write_text(
        "[[pulls]]\n"
        'name = "bench-pull"\n'
        f'url = "{base}/journal"\n'
        f'ims_url = "{base}/ims/token/v3"\n'
        f'org_id = "{ORG}"\nclient_id = "{CLIENT}"\n'
        f'client_secret_file = "{workdir / "secret"}"\n'
        'scope = "AdobeID,openid"\n'
        f"limit = {limit}\nmin_wait = 0.1\n"
    )
    log = workdir / "server.out"
    data = workdir / "data"
    server = subprocess.Popen(
        [
            *streamd_command(), "--log-level", "warning", "serve", "--config", str(config),
            "--listen", "127.0.0.1:0", "--data-dir", str(data), "--admin-listen", "127.0.0.1:0",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_line(log, READY_PREFIX, server)
        started = time.perf_counter()
        cpu0, ecpu0 = _cpu_s(server.pid), _cpu_s(emulator.pid)
        deadline = started + 600
        while _max_seq(data / "journal.db") < events:
            if time.perf_counter() > deadline or server.poll() is not None:
                raise RuntimeError("the pull did not finish: " + log.read_text()[-2000:])
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        result = {
            "case": f"pull limit={limit}",
            "events": events,
            "seconds": round(elapsed, 2),
            "events_per_s": round(events / elapsed),
            "server_cpu_s": round(_cpu_s(server.pid) - cpu0, 2),
            "emulator_cpu_s": round(_cpu_s(emulator.pid) - ecpu0, 2),
            "server_peak_rss_mib": round(_peak_rss_mib(server.pid), 1),
        }
    finally:
        for proc in (server, emulator):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def emulator_case(events: int, limit: int) -> dict[str, Any]:
    """The emulator paged through by a client that reads and discards: its ceiling."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-pull-emu-"))
    emulator, base = _emulator(workdir, events)
    try:
        with httpx.Client(timeout=30) as client:
            form = {"grant_type": "client_credentials", "client_id": CLIENT}
            form |= {"client_secret": SECRET, "scope": "AdobeID"}
            token = client.post(f"{base}/ims/token/v3", data=form).json()["access_token"]
            headers = {"authorization": f"Bearer {token}", "x-api-key": CLIENT}
            headers["x-ims-org-id"] = ORG
            url = f"{base}/journal?limit={limit}"
            got = 0
            started = time.perf_counter()
            while got < events:
                response = client.get(url, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"emulator answered {response.status_code}")
                got += len(orjson.loads(response.content)["events"])
                target = link(response.headers.get("link"), "next")
                assert target is not None
                url = base + target
            elapsed = time.perf_counter() - started
    finally:
        emulator.terminate()
        emulator.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "case": f"emulator alone limit={limit}",
        "events": got,
        "seconds": round(elapsed, 2),
        "events_per_s": round(got / elapsed),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pull", description=__doc__)
    ap.add_argument("--events", type=int, default=200_000, help="events in the journal")
    ap.add_argument("--limits", default="1000,100", help="page sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="repetitions of every case")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    limits = [int(x) for x in args.limits.split(",") if x]
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for limit in limits:
            for case in (emulator_case, pull_case):
                result = case(args.events, limit)
                print(result, file=sys.stderr)
                runs.append(result)
    medians = {
        name: statistics.median(r["events_per_s"] for r in runs if r["case"] == name)
        for name in dict.fromkeys(r["case"] for r in runs)
    }
    summary = {
        "question": "pull source into the journal (FULL), from the loopback emulator",
        "target_events_per_s": 20_000,
        "runs": runs,
        "median_events_per_s": medians,
        "machine_load_1m": os.getloadavg()[0],
        "machine": machine_facts(REPO, Path(tempfile.gettempdir()), "bench.pull"),
    }
    print_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
