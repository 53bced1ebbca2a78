"""How fast do the sinks drain a backlog, and what do three draining sinks cost ingest?

    python -m bench.drain [--events 200000] [--duration 15] [--rounds 1]
                          [--backlog 0] [--only PATTERN] [--ref REF ...]
                          [--out bench/out/drain.json]

Cases, each measured in processes of their own:

- ``sink-{file,sqlite,http}``: a journal already holding ``--events`` legacy events
  (built once, cached in ``bench/.cache/drain-N-HASH/``) is drained from its first
  event by one sink with the service's default pool for its kind (4 workers; 500-event
  batches in a 5,000 window, sqlite 2,000 in 20,000); events/s
  from the drain's start until its cursor reaches the end. ``http`` posts to
  ``bench.sink_receiver`` (raw trio, answers 200) on loopback. Each run registers a
  new sink name, so every run drains the whole journal.
- ``ingest-{none,3sinks}-rN``: ``streamd serve`` (FULL) takes legacy 500-event batches
  from ``bench.loadgen`` over 16 connections for ``--duration`` s, with no sink, then
  with three sinks (file, sqlite, http to the receiver) draining what arrives; run in
  alternation for ``--rounds`` rounds. Reports events/s and, with sinks, how far behind
  the sinks were when the load stopped.
- ``sink-{postgres,kafka,nats,nats-r3}``: the same, into the shared engines, each started
  by the orchestrator on loopback from the packages ``make test`` installs (PostgreSQL 15,
  the Tansu broker, nats-server: one node, or ``nats-r3`` a 3-node cluster with a
  3-replica stream), with the service's default pool for the kind. The streamd CPU
  counts the sink's own processes too (kafka's producer process: ``children_cpu_s``,
  reaped when the sink closed; ``streamd_cpu_s_per_100k`` is both together).
- ``latency-10k-postgres``: two ``streamd serve`` receivers behind HAProxy (the
  configuration of docs/scale-out.md), each with a postgres sink into one table; legacy
  500-event batches paced to 10,000 events/s in total; per event, the PostgreSQL commit
  time of its row (``track_commit_timestamp``) minus the start of the sender's first
  request that carried it.
- ``--ref REF`` (repeatable): each sink case also runs with streamd as of git ``REF``
  (``git archive`` of ``streamd/``), right after the working tree's run of the case,
  on the same journal: old against new in the same minutes. Its rows are named
  ``CASE@REF``.
- ``backlog-rss`` (with ``--backlog N``): a journal of N events, drained by a file
  sink for ``--duration`` s; peak RSS of the draining process against the backlog.

Prints one JSON document (also written to ``--out``) and a markdown table.
"""

from __future__ import annotations

import argparse
import fnmatch
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import islice, product
from pathlib import Path
from typing import Any, Final

import orjson
import trio

from bench._engines import engine as _engine
from bench._engines import postgres_with_commit_times
from bench._machine import machine_facts
from bench._server import REPO, ServerProcess, _cpu_s, export_ref, source_hash, streamd_command

CACHE: Final = REPO / "bench" / ".cache"
OUT: Final = REPO / "bench" / "out"


# -- children ---------------------------------------------------------------------


def _rss_mib() -> tuple[float, float]:
    cur = peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def child_prefill(journal: str, events: int) -> dict[str, Any]:
    """Journal ``events`` legacy events through a real JournalWriter (FULL)."""
    import threading

    from streamd.core import decode_delivery
    from streamd.emit.generate import iter_batches
    from streamd.journal import Batch, Job, JournalWriter, WriterOptions, utc_now

    writer = JournalWriter(journal, WriterOptions(max_queued_events=10**9), utc_now)
    writer.start()
    slots = threading.Semaphore(16)
    started = time.perf_counter()
    try:
        bodies = iter_batches("legacy", 500, seed=7, worker=1)
        for body in islice(bodies, max(1, events // 500)):
            d = decode_delivery(body)
            slots.acquire()
            writer.submit(
                Job(
                    batch=Batch("bench", utc_now(), d.shape, d.events),
                    on_done=lambda job: slots.release(),
                )
            )
        for _ in range(16):
            slots.acquire()
    finally:
        writer.close()
    return {"events": writer.stats.events, "seconds": round(time.perf_counter() - started, 1)}


async def _drain_child(args: argparse.Namespace) -> dict[str, Any]:
    from streamd.drain import Route, SinkSpec, open_drain
    from streamd.drain.presets import DEFAULT_POOL, KIND_POOLS
    from streamd.drain.sinks.file import FileSettings, FileSink
    from streamd.drain.sinks.http import HttpSettings, HttpSink
    from streamd.drain.sinks.sqlite import SqliteSettings, SqliteSink
    from streamd.journal import WriterOptions, open_journal

    try:
        from streamd.service.sinks import drain_reads
    except ImportError:  # a --ref before drain_reads: what the service read then

        def drain_reads(kind: str, converts: bool = False) -> tuple[bool, bool]:
            return kind in _ENGINES, kind != "sqlite"

    name = f"bench-{args.kind}-{time.time_ns()}"
    out = Path(args.work)
    openers = {
        "file": lambda: FileSink(FileSettings(str(out / "files"), name)),
        "sqlite": lambda: SqliteSink(SqliteSettings(str(out / "tables.db"), journal=args.journal)),
        "http": lambda: HttpSink(HttpSettings(url=args.url, sink=name, connections=5)),
    }
    engine = args.kind.split("-")[0]
    if engine in _ENGINES:
        openers[args.kind] = _engine_opener(engine, orjson.loads(args.engine), name)
    pool = KIND_POOLS.get(engine, DEFAULT_POOL)  # the service's defaults for the kind
    spec = SinkSpec(
        name,
        args.kind,
        Route(()),
        openers[args.kind],  # type: ignore[arg-type]
        workers=pool.workers,
        batch_size=pool.batch_size,
        linger=pool.linger,
        max_in_flight=pool.max_in_flight,
        # What the service reads for the kind.
        full_events=drain_reads(args.kind)[0],
        envelopes=drain_reads(args.kind)[1],
    )
    samples: list[float] = []
    async with open_journal(args.journal, WriterOptions()) as journal:
        target = journal.last_seq
        started = time.perf_counter()
        cpu0 = time.process_time()
        children0 = _children_cpu_s()
        async with open_drain(journal, [spec]) as drain:
            # The cursor is checked every 10 ms (a 0.25 s poll added up to 0.25 s to a
            # 1-2 s drain: 10-20% off the rate); RSS is sampled every 0.25 s.
            with trio.move_on_after(args.duration) as scope:
                next_sample = 0.0
                while drain.statistics()[0].cursor < target:
                    await trio.sleep(0.01)
                    if time.perf_counter() >= next_sample:
                        samples.append(_rss_mib()[0])
                        next_sample = time.perf_counter() + 0.25
            elapsed = time.perf_counter() - started
            cursor = drain.statistics()[0].cursor
        cpu = time.process_time() - cpu0
        # The sink's own processes (kafka's producer process), reaped when it closed.
        children = _children_cpu_s() - children0
    import streamd

    return {
        "kind": args.kind,
        "streamd": str(Path(streamd.__file__).parent),  # the working tree's, or a --ref's
        "backlog": target,
        "drained": cursor,
        "finished": not scope.cancelled_caught,
        "seconds": round(elapsed, 2),
        "events_per_s": round(cursor / elapsed, 1),
        "process_cores": round(cpu / elapsed, 2),
        "process_cpu_s_per_100k": round(cpu / max(1, cursor) * 1e5, 2),
        "children_cpu_s_per_100k": round(children / max(1, cursor) * 1e5, 2),
        "streamd_cores": round((cpu + children) / elapsed, 2),
        "streamd_cpu_s_per_100k": round((cpu + children) / max(1, cursor) * 1e5, 2),
        "rss_max_mib": round(max(samples, default=0.0), 1),
        "peak_rss_mib": round(_rss_mib()[1], 1),
    }


def _children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_ENGINES: Final = ("postgres", "kafka", "nats")


def _engine_opener(engine: str, settings: dict[str, Any], name: str) -> Any:
    if engine == "postgres":
        from streamd.drain.sinks.postgres import PostgresSettings, PostgresSink

        ps = PostgresSettings(**settings, table=f"t_{name.replace('-', '_')}", sink=name)
        return lambda: PostgresSink(ps)
    if engine == "kafka":
        from streamd.drain.sinks.kafka import KafkaSettings, KafkaSink

        ks = KafkaSettings(bootstrap_servers=(settings["bootstrap"],), topic=f"{name}.{{stream}}",
                           sink=name)  # fmt: skip
        return lambda: KafkaSink(ks)
    from streamd.drain.sinks.nats import NatsSettings, NatsSink

    ns = NatsSettings(
        servers=tuple(settings["servers"]),
        stream=name.replace("-", "_").upper(),
        subject=f"{name}.{{stream}}",
        replicas=settings["replicas"],
        sink=name,
    )
    return lambda: NatsSink(ns)


# -- orchestration ----------------------------------------------------------------


def _run_child(argv: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.drain", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {argv[:3]} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def _journal(events: int) -> str:
    directory = CACHE / f"drain-{events}-{source_hash(None)}"
    path = directory / "journal.db"
    if not (directory / "done").exists():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        print(f"building a journal of {events} events in {directory} ...", file=sys.stderr)
        info = _run_child(["--child", "prefill", "--journal", str(path),
                           "--events", str(events)], timeout=3600)  # fmt: skip
        print(f"  {info}", file=sys.stderr)
        (directory / "done").write_text("ok\n")
    return str(path)


def _receiver(logdir: Path) -> ServerProcess:
    rx = ServerProcess([sys.executable, "-m", "bench.sink_receiver"], logdir, "receiver")
    rx.wait_ready()
    return rx


_SINK_TOML: Final = {
    "file": '[[sinks]]\nname = "files"\nkind = "file"\n[sinks.file]\ndirectory = "out"\n',
    "sqlite": '[[sinks]]\nname = "tables"\nkind = "sqlite"\n[sinks.sqlite]\npath = "t.db"\n',
    "http": '[[sinks]]\nname = "hook"\nkind = "http"\n[sinks.http]\nurl = "{url}"\n',
}


def _ingest_case(
    name: str, kinds: Sequence[str], url: str, duration: float, logdir: Path
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="drain-ingest-", dir=CACHE))
    try:
        data = work / "data"
        config = work / "streamd.toml"
        text = '[journal]\nsynchronous = "full"\n'
        text += "".join(_SINK_TOML[kind].replace("{url}", url) for kind in kinds)
        config.write_text(text)
        token = data / "api-token"
        cmd = [*streamd_command(None), "serve", "--config", str(config), "--listen",
               "127.0.0.1:0", "--data-dir", str(data), "--token-file", str(token),
               "--admin-listen", "127.0.0.1:0"]  # fmt: skip
        server = ServerProcess(cmd, logdir, name)
        try:
            base = server.wait_ready()
            cpu0 = server.cpu_s()
            load = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", "--url", f"{base}/events", "--token",
                 token.read_text().strip(), "--shape", "legacy", "--batch", "500",
                 "--concurrency", "16", "--duration", str(duration), "--seed", "1"],
                capture_output=True, text=True, timeout=duration + 300, check=True, cwd=REPO,
            )  # fmt: skip
            cpu = server.cpu_s() - cpu0
            result = orjson.loads(load.stdout.strip().splitlines()[-1])
            lag = None
            catch_up_s = None
            if kinds:

                def lags() -> dict[str, int]:
                    listing = subprocess.run(
                        [*streamd_command(None), "sinks", "list", "--json", "--data-dir",
                         str(data)],
                        capture_output=True, text=True, timeout=60, check=True,
                    )  # fmt: skip
                    return {s["name"]: s["lag_events"] for s in orjson.loads(listing.stdout)}

                lag = lags()
                # The other half of "ingest first": how long the sinks take to catch up
                # once the load stops (sampled every 0.5 s, at most 120 s).
                stopped = time.perf_counter()
                while any(lags().values()) and time.perf_counter() - stopped < 120:
                    time.sleep(0.5)
                if not any(lags().values()):
                    catch_up_s = round(time.perf_counter() - stopped, 1)
            stop = server.stop()
        finally:
            server.kill()
        return {
            "case": name,
            "events_per_s": result["events_per_s"],
            "p99_ms": result["latency_ms"].get("p99"),
            "errors": result["errors"],
            "server_cores": round(cpu / result["duration_s"], 2),
            "sink_lag_events_at_end": lag,
            "sinks_caught_up_after_s": catch_up_s,
            "server_peak_rss_mib": stop.peak_rss_mib,
            "exit": stop.exit_code,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def end_to_end(starts: Path, arrivals: Path) -> dict[str, Any]:
    """Per event: its arrival at the receiver - the start of the sender's first request
    that carried it. Events sent but never received are counted, not hidden."""
    arrived: dict[str, float] = orjson.loads(arrivals.read_bytes())
    latencies: list[float] = []
    missing = 0
    for line in starts.read_bytes().splitlines():
        started, keys = orjson.loads(line)
        for key in keys:
            at = arrived.get(key)
            if at is None:
                missing += 1
            else:
                latencies.append(at - started)
    latencies.sort()
    n = len(latencies)

    def rank(p: float) -> float | None:
        return round(latencies[min(n - 1, max(0, round(p * n) - 1))] * 1000, 1) if n else None

    return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": rank(1.0), "n": n,
            "sent_not_received": missing}  # fmt: skip


def _latency_case(duration: float, logdir: Path) -> dict[str, Any]:
    """streamd with one http sink (default pool), legacy 500 paced to 10,000 events/s."""
    work = Path(tempfile.mkdtemp(prefix="drain-latency-", dir=CACHE))
    arrivals, starts = work / "arrivals.json", work / "starts.jsonl"
    rx = ServerProcess(
        [sys.executable, "-m", "bench.sink_receiver", "--latency", "--arrivals", str(arrivals)],
        logdir,
        "latency-receiver",
    )
    rx.wait_ready()
    try:
        data = work / "data"
        config = work / "streamd.toml"
        config.write_text(_SINK_TOML["http"].replace("{url}", rx.base_url + "/hook"))
        token = data / "api-token"
        cmd = [*streamd_command(None), "serve", "--config", str(config), "--listen",
               "127.0.0.1:0", "--data-dir", str(data), "--token-file", str(token),
               "--admin-listen", "127.0.0.1:0"]  # fmt: skip
        server = ServerProcess(cmd, logdir, "latency-streamd")
        try:
            base = server.wait_ready()
            load = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", "--url", f"{base}/events", "--token",
                 token.read_text().strip(), "--shape", "legacy", "--batch", "500",
                 "--concurrency", "8", "--rate", "10000", "--duration", str(duration),
                 "--seed", "1", "--starts", str(starts)],
                capture_output=True, text=True, timeout=duration + 300, check=True, cwd=REPO,
            )  # fmt: skip
            result = orjson.loads(load.stdout.strip().splitlines()[-1])
            time.sleep(3)  # the last batches reach the receiver
            server.stop()
        finally:
            server.kill()
        rx.stop()
        summary = orjson.loads(rx.out_path.read_text().strip().splitlines()[-1])
        return {
            "case": "latency-10k",
            "offered_events_per_s": 10_000,
            "acked_events_per_s": result["events_per_s"],
            "request_latency_ms": result["latency_ms"],
            "receive_to_destination_ms": summary["latency"],
            "sender_start_to_destination_ms": end_to_end(starts, arrivals),
        }
    finally:
        rx.kill()
        shutil.rmtree(work, ignore_errors=True)


def _latency_postgres_case(duration: float, logdir: Path) -> dict[str, Any]:
    """Two receivers behind HAProxy, postgres sinks into one table, 10,000 events/s."""
    from tests.engines._deploy import haproxy_config
    from tests.engines._postgres import PASSWORD

    work = Path(tempfile.mkdtemp(prefix="drain-latency-pg-", dir=CACHE))
    starts = work / "starts.jsonl"
    servers: list[ServerProcess] = []
    try:
        with postgres_with_commit_times() as pg:
            dsn = pg.create_database("latency")
            password = work / "pg-password"
            password.write_text(PASSWORD + "\n")
            token = work / "api-token"
            token.write_text("bench-latency-token-0123456789\n")
            ports = []
            for name in ("r1", "r2"):
                config = work / f"{name}.toml"
                config.write_text(
                    f'instance = "{name}"\n[tokens]\nfiles = ["{token}"]\n'
                    '[[sinks]]\nname = "warehouse"\nkind = "postgres"\n[sinks.postgres]\n'
                    f'dsn = "{dsn}"\npassword_file = "{password}"\n'
                )
                port, admin = _free_port(), _free_port()
                cmd = [*streamd_command(None), "serve", "--config", str(config), "--listen",
                       f"127.0.0.1:{port}", "--data-dir", str(work / name),
                       "--admin-listen", f"127.0.0.1:{admin}"]  # fmt: skip
                server = ServerProcess(cmd, logdir, f"latency-pg-{name}")
                servers.append(server)
                server.wait_ready()
                ports.append((port, admin))
            front = _free_port()
            (work / "haproxy.cfg").write_text(haproxy_config(front, ports))
            haproxy = ServerProcess(["haproxy", "-db", "-f", str(work / "haproxy.cfg")],
                                    logdir, "latency-haproxy")  # fmt: skip
            servers.append(haproxy)
            time.sleep(2.0)  # the health checks mark both receivers up
            load = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", "--url",
                 f"http://127.0.0.1:{front}/events", "--token",
                 token.read_text().strip(), "--shape", "legacy", "--batch", "500",
                 "--concurrency", "8", "--rate", "10000", "--duration", str(duration),
                 "--seed", "1", "--starts", str(starts)],
                capture_output=True, text=True, timeout=duration + 300, check=True, cwd=REPO,
            )  # fmt: skip
            result = orjson.loads(load.stdout.strip().splitlines()[-1])
            time.sleep(5)  # the last batches reach the table
            import psycopg

            with psycopg.connect(dsn, password=PASSWORD) as conn:
                committed = {
                    str(key): at.timestamp()
                    for key, at in conn.execute(
                        "SELECT event_key, pg_xact_commit_timestamp(xmin) FROM streamd_events"
                    )
                }
        arrivals = work / "arrivals.json"
        arrivals.write_bytes(orjson.dumps(committed))
        return {
            "case": "latency-10k-postgres",
            "offered_events_per_s": 10_000,
            "acked_events_per_s": result["events_per_s"],
            "request_latency_ms": result["latency_ms"],
            "sender_start_to_postgres_commit_ms": end_to_end(starts, arrivals),
        }
    finally:
        for server in servers:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    ap.add_argument("--events", type=int, default=200_000, help="backlog of the sink cases")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per ingest case")
    ap.add_argument("--rounds", type=int, default=1, help="ingest none/3sinks alternations")
    ap.add_argument("--backlog", type=int, default=0, help="events for the backlog-rss case")
    ap.add_argument("--only", default="*", help="run the cases matching this glob")
    ap.add_argument("--ref", action="append", default=[],
                    help="also run each sink case with streamd at this git ref")  # fmt: skip
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT / "drain.json"))
    ap.add_argument("--child", choices=("prefill", "drain"), help=argparse.SUPPRESS)
    ap.add_argument("--journal", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "prefill":
        print(orjson.dumps(child_prefill(args.journal, args.events)).decode())
        return 0
    if args.child == "drain":
        if args.src:  # streamd as of a --ref, ahead of the working tree's
            sys.path.insert(0, args.src)
        print(orjson.dumps(trio.run(_drain_child, args)).decode())
        return 0

    CACHE.mkdir(parents=True, exist_ok=True)
    logdir = OUT / "logs" / "drain"
    results: list[dict[str, Any]] = []
    rx = _receiver(logdir)
    try:
        url = rx.base_url + "/hook"
        cases = ("sink-file", "sink-sqlite", "sink-http", "sink-postgres", "sink-kafka",
                 "sink-nats", "sink-nats-r3")  # fmt: skip
        wanted = [c for c in cases if fnmatch.fnmatch(c, args.only)]
        versions: list[tuple[str, list[str], dict[str, str]]] = [("", [], {})]
        for ref in args.ref:
            sha, src = export_ref(ref, CACHE)
            versions.append((f"@{ref}", ["--src", str(src)], {"commit": sha}))
        if wanted:
            journal = _journal(args.events)
            for case, (label, src_args, commit) in product(wanted, versions):
                work = tempfile.mkdtemp(prefix="drain-sink-", dir=CACHE)
                kind = case.removeprefix("sink-")
                try:
                    with _engine(kind) as engine:
                        server = engine.get("server_pid")
                        server_cpu0 = _cpu_s(server) if server else 0.0
                        r = _run_child(["--child", "drain", "--journal", journal, "--kind",
                                        kind, "--url", url, "--work", work, "--engine",
                                        orjson.dumps(engine).decode(), "--duration", "300",
                                        *src_args], timeout=600)  # fmt: skip
                        if server:  # the engine's CPU for the drain (startup excluded)
                            server_cpu = _cpu_s(server) - server_cpu0
                            r["server_cpu_s"] = round(server_cpu, 2)
                            r["server_cpu_s_per_100k"] = round(server_cpu / r["drained"] * 1e5, 2)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                results.append({"case": case + label, **commit, **r})
                print(f"{case}{label}: {r}", file=sys.stderr)
        variants: list[tuple[str, tuple[str, ...]]] = [
            ("none", ()),
            ("3sinks", ("file", "sqlite", "http")),
            ("file", ("file",)),
            ("sqlite", ("sqlite",)),
            ("http", ("http",)),
        ]
        for round_ in range(1, args.rounds + 1):
            for label, kinds in variants:
                case = f"ingest-{label}-r{round_}"
                # The single-sink variants only when asked for by name (--only).
                if fnmatch.fnmatch(case, args.only) and (
                    label in ("none", "3sinks") or args.only != "*"
                ):
                    r = _ingest_case(case, kinds, url, args.duration, logdir)
                    results.append(r)
                    print(f"{case}: {r}", file=sys.stderr)
        if fnmatch.fnmatch("latency-10k-postgres", args.only):
            r = _latency_postgres_case(args.duration, logdir)
            results.append(r)
            print(f"latency-10k-postgres: {r}", file=sys.stderr)
        if fnmatch.fnmatch("latency-10k", args.only):
            r = _latency_case(args.duration, logdir)
            results.append(r)
            print(f"latency-10k: {r}", file=sys.stderr)
        if args.backlog and fnmatch.fnmatch("backlog-rss", args.only):
            journal = _journal(args.backlog)
            work = tempfile.mkdtemp(prefix="drain-backlog-", dir=CACHE)
            try:
                r = _run_child(["--child", "drain", "--journal", journal, "--kind", "file",
                                "--url", url, "--work", work, "--duration",
                                str(args.duration)], timeout=args.duration + 600)  # fmt: skip
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results.append({"case": "backlog-rss", **r})
            print(f"backlog-rss: {r}", file=sys.stderr)
    finally:
        rx.stop()
    document = {
        "machine": machine_facts(REPO, CACHE, "bench.drain"),
        "source": source_hash(None),
        "cases": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
