"""Does a sender still get through while the edge is attacked, and what does a flood of
idle connections cost in memory?

    python -m bench.edge [--ref REF ...] [--nofile 2048] [--idle 2000] [--slow 300]
                         [--duration 20] [--out FILE]

Each case runs a fresh ``streamd serve`` (FULL, default configuration but for two
sources: ``/io`` signed with Adobe signatures, ``/events`` with an API token) under
``prlimit --nofile=N``, and up to three other processes on loopback:

- ``quiet``: a *sender* process posts ``lads_single`` to ``/events`` with its token, one
  request at a time on one kept-alive connection and, beside it, one request per fresh
  connection (``Connection: close``), for ``--duration`` s;
- ``attack``: the same sender while an *attacker* process holds ``--idle`` idle
  connections (each opened again half a second after the server closes it) and runs
  ``--slow`` slowloris clients on ``/io`` (valid-looking signature headers,
  ``Content-Length: 10000``, then one byte a second, again after each answer);
- ``idle-memory``: the attacker's idle connections alone, three times: streamd's RSS
  before, with them open, and after they closed.

``--ref REF`` runs the same cases against streamd as committed at REF (the bench script
stays this one), side by side with the working tree. Prints one JSON object.

The roles (``sender``, ``attacker``) are this module run with ``--role``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench._report import print_summary
from bench._server import REPO, ServerProcess, export_ref, streamd_command

SIGNATURE = {
    "x-adobe-digital-signature-1": "QUJDRA==",
    "x-adobe-public-key1-path": "/prod/keys/pub-key-slowloris.pem",
}
BODY = (REPO / "tests" / "fixtures" / "contract" / "lads_single.json").read_bytes()
CONFIG = """
[journal]
synchronous = "full"
[[sources]]
name = "io"
path = "/io"
auth = "adobe-signature"
[sources.adobe]
client_id = "bench"
key_host = "http://127.0.0.1:9"
[[sources]]
name = "events"
path = "/events"
"""


# -- the sender -------------------------------------------------------------------------


def _request(path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bench", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _answer(stream: trio.SocketStream) -> tuple[int, bool]:
    """(status, whether the server asked to close) of one Content-Length response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed before an answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of an answer")
        rest += chunk
    return int(head.split(b" ", 2)[1]), b"\r\nconnection: close" in head.lower()


async def _poster(
    port: int, token: str, keep_alive: bool, until: float, out: dict[str, Any]
) -> None:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Length": str(len(BODY)),
    }
    if not keep_alive:
        headers["Connection"] = "close"
    request = _request("/events", headers, BODY)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = reconnects = 0
    stream: trio.SocketStream | None = None
    while trio.current_time() < until:
        started = trio.current_time()
        try:
            with trio.fail_after(30):
                if stream is None:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    reconnects += 1
                await stream.send_all(request)
                status, close = await _answer(stream)
        except (OSError, ConnectionError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            errors += 1
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            if stream is not None:
                await stream.aclose()
                stream = None
            continue
        latencies.append(trio.current_time() - started)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if close or not keep_alive:
            await stream.aclose()
            stream = None
    if stream is not None:
        await stream.aclose()
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        return (
            round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 1)
            if ordered
            else None
        )

    out["kept-alive" if keep_alive else "fresh"] = {
        "requests": len(latencies),
        "statuses": statuses,
        "errors": errors,
        "connections": reconnects,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }


async def sender(port: int, token: str, duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    until = trio.current_time() + duration
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_poster, port, token, True, until, out)
        nursery.start_soon(_poster, port, token, False, until, out)
    return out


# -- the attacker -----------------------------------------------------------------------


async def _idle(port: int, stats: dict[str, int], opened: trio.Event, idle: int) -> None:
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await trio.sleep(0.5)
            continue
        stats["idle_opened"] += 1
        if stats["idle_opened"] >= idle:
            opened.set()
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.receive_some(1)  # until the server closes it
        stats["idle_closed_by_server"] += 1
        await trio.sleep(0.5)


async def _slowloris(port: int, stats: dict[str, int]) -> None:
    head = _request("/io", {**SIGNATURE, "Content-Length": "10000"}, b"")
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await trio.sleep(0.5)
            continue
        async with stream, trio.open_nursery() as nursery:

            async def drip(stream: trio.SocketStream = stream) -> None:
                try:
                    await stream.send_all(head)
                    while True:
                        await stream.send_all(b"[")
                        stats["slow_bytes"] += 1
                        await trio.sleep(1.0)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

            nursery.start_soon(drip)
            try:
                status, _ = await _answer(stream)
                stats[f"slow_{status}"] = stats.get(f"slow_{status}", 0) + 1
            except (ConnectionError, trio.BrokenResourceError):
                stats["slow_dropped"] += 1
            nursery.cancel_scope.cancel()


async def attacker(port: int, idle: int, slow: int, ready_file: str) -> dict[str, int]:
    stats = {
        "idle_opened": 0,
        "idle_closed_by_server": 0,
        "connect_errors": 0,
        "slow_bytes": 0,
        "slow_dropped": 0,
    }
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            opened = trio.Event()
            for _ in range(idle):
                nursery.start_soon(_idle, port, stats, opened, idle)
            for _ in range(slow):
                nursery.start_soon(_slowloris, port, stats)
            await opened.wait()
            await trio.Path(ready_file).write_text("ready\n")
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return stats


# -- the orchestrator -------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _phase(text: str) -> None:
    """Progress on stderr, so a run that takes too long says where it is."""
    print(f"bench.edge {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _settled_fds(pid: int, done: Callable[[int], bool], limit: float = 60.0) -> int:
    """The server's descriptor count once ``done`` holds for it or it has not changed
    for 2 s (a lazily opened journal file, the connection cap), at most ``limit`` s."""
    deadline = time.monotonic() + limit
    last, since = _fds(pid), time.monotonic()
    while not done(last) and time.monotonic() - since < 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = _fds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _start(work: Path, name: str, src: Path | None, nofile: int) -> tuple[ServerProcess, int, str]:
    data = work / f"{name}-data"
    config = work / f"{name}.toml"
    config.write_text(CONFIG)
    token_file = data / "api-token"
    cmd = [
        "prlimit",
        f"--nofile={nofile}:{nofile}",
        "--",
        *streamd_command(src),
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data),
        "--token-file",
        str(token_file),
    ]
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    server = ServerProcess(cmd, work / "logs", name, env, cwd=src or REPO)
    url = server.wait_ready()
    token = token_file.read_text().split()[0]
    return server, int(url.rsplit(":", 1)[1]), token


def _role(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.edge", "--role", *args]


def _run_sender(port: int, token: str, duration: float) -> dict[str, Any]:
    done = subprocess.run(
        _role("sender", "--port", str(port), "--token", token, "--duration", str(duration)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _start_attacker(work: Path, port: int, idle: int, slow: int) -> subprocess.Popen[str]:
    ready = work / "attacker.ready"
    ready.unlink(missing_ok=True)
    out = (work / "attacker.out").open("w")
    proc = subprocess.Popen(
        _role(
            "attacker",
            "--port",
            str(port),
            "--idle",
            str(idle),
            "--slow",
            str(slow),
            "--ready-file",
            str(ready),
        ),
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the attacker did not get its connections open: {proc.returncode}")
        time.sleep(0.1)
    return proc


def _stop_attacker(proc: subprocess.Popen[str], work: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    lines = (work / "attacker.out").read_text().strip().splitlines()
    stats: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return stats


def run_cases(version: str, src: Path | None, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # quiet
    _phase(f"{version}: quiet")
    server, port, token = _start(work, f"{version}-quiet", src, a.nofile)
    try:
        results["quiet"] = {"sender": _run_sender(port, token, a.duration)}
    finally:
        stopped = server.stop()
    results["quiet"]["server_cpu_s"] = stopped.cpu_s
    # attack
    _phase(f"{version}: attack")
    server, port, token = _start(work, f"{version}-attack", src, a.nofile)
    base = _rss_kib(server.pid)
    attack = _start_attacker(work, port, a.idle, a.slow)
    _phase(f"{version}: attacker ready, the sender posts")
    try:
        sent = _run_sender(port, token, a.duration)
        rss = _rss_kib(server.pid)
    finally:
        attack_stats = _stop_attacker(attack, work)
        log = server.err_path.read_text(errors="replace")
        stopped = server.stop()
    results["attack"] = {
        "sender": sent,
        "attacker": attack_stats,
        "server_rss_kib": {"before": base, "during": rss},
        "server_cpu_s": stopped.cpu_s,
        "log_tracebacks": log.count("Traceback"),
        "log_emfile_lines": log.count("EMFILE"),
    }
    # idle memory
    nofile = max(a.nofile, a.memory_idle + 512)
    server, port, token = _start(work, f"{version}-idle-memory", src, nofile)
    rounds = []
    try:
        base_fds = _settled_fds(server.pid, lambda n: False)
        base = _rss_kib(server.pid)
        for number in range(3):
            _phase(f"idle-memory round {number + 1}: {a.memory_idle} connections")
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.memory_idle)]
            # less than asked when the server's cap is lower
            held = _settled_fds(server.pid, lambda n: n >= base_fds + a.memory_idle) - base_fds
            peak = _rss_kib(server.pid)
            for s in socks:
                s.close()
            _settled_fds(server.pid, lambda n: n <= base_fds)
            time.sleep(1.0)
            rounds.append({"held": held, "with_connections": peak, "after": _rss_kib(server.pid)})
    finally:
        server.stop()
    results["idle-memory"] = {
        "connections": a.memory_idle,
        "rss_kib_before": base,
        "rounds": rounds,
    }
    return results


def _raise_nofile() -> None:
    """The attacker and the orchestrator open thousands of connections."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--role", choices=["sender", "attacker"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", help=argparse.SUPPRESS)
    ap.add_argument("--ref", action="append", default=[], help="also run streamd as of this commit")
    ap.add_argument("--nofile", type=int, default=2048, help="streamd's RLIMIT_NOFILE")
    ap.add_argument("--idle", type=int, default=2000, help="idle connections of the attack")
    ap.add_argument("--slow", type=int, default=300, help="slowloris clients of the attack")
    ap.add_argument(
        "--memory-idle",
        type=int,
        default=4000,
        help="idle connections, memory case (at most 4096: the automatic cap)",
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds the sender posts")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.role == "sender":
        print(json.dumps(trio.run(sender, a.port, a.token, a.duration)))
        return 0
    _raise_nofile()
    if a.role == "attacker":
        print(json.dumps(trio.run(attacker, a.port, a.idle, a.slow, a.ready_file)))
        return 0
    summary: dict[str, Any] = {
        "nofile": a.nofile,
        "idle": a.idle,
        "slow": a.slow,
        "duration_s": a.duration,
        "versions": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        work = Path(tmp)
        versions: list[tuple[str, Path | None]] = [("working-tree", None)]
        for ref in a.ref:
            sha, snapshot = export_ref(ref, REPO / "bench" / ".cache")
            versions.append((sha[:12], snapshot))
        for name, src in versions:
            summary["versions"][name] = run_cases(name, src, a, work)
    print_summary(summary, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
