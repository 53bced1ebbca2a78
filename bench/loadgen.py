"""Load generator: POST Marketo batches at a receiver and report throughput and latency.

    python -m bench.loadgen --url http://127.0.0.1:8080/events --token T \\
        --shape legacy --batch 500 --concurrency 16 --duration 10 [--rate 10000] [--processes 2]

Every body is generated before the timed phase (``streamd.emit.generate``; ids never repeat).
``--concurrency`` keep-alive connections per process each post batches back to back, or
paced so that all of them together offer ``--rate`` events/s. 200 with
``{"accepted": n, "duplicates": m}`` acknowledges a batch; 503/429 (and other retryable
5xx) are counted and the same batch is retried after its Retry-After, capped at 0.05 s,
until it is acknowledged, 60 s have passed or the run's duration is over (then it counts
as abandoned). Prints one JSON object on stdout. With ``--processes P`` the work is split
over P child processes that start together after all have pre-generated; their figures
are merged.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
import trio

from streamd.emit.accounting import percentiles_ms
from streamd.emit.generate import MAX_WORKERS, SHAPES, BatchMaker, Shape, iter_batches
from streamd.emit.http import Connection as RawConnection
from streamd.emit.http import HttpError, Response, Target

_TIMEOUT_S: Final = 30.0  # Marketo's own sender gives up after 20 s
_MAX_BACKOFF_S: Final = 0.05
_MIN_BACKOFF_S: Final = 0.005  # never spin: the server shares the CPU with us
_MAX_CONSECUTIVE_FAILURES: Final = 50  # connection-level failures: the server is gone
_GIVE_UP_S: Final = 60.0  # a bench, not a sender: stop retrying one batch after this
_DEFAULT_BUDGET_RATE: Final = 80_000  # events/s pre-generated per second of --duration


class LoadgenError(Exception):
    """Raised when the target keeps failing at the connection level."""


@dataclass(frozen=True, slots=True)
class Options:
    url: str
    token: str
    shape: Shape
    batch: int
    concurrency: int
    duration: float | None
    count: int | None
    rate: float | None
    seed: int
    processes: int
    client: str
    budget_events: int | None
    reuse: bool
    ack_body: str
    child: int | None
    starts: str | None = None
    single: bool = False  # I/O batch of one as a bare CloudEvent (not a 1-element array)

    @property
    def workers(self) -> int:
        return self.processes * self.concurrency


@dataclass(slots=True)
class _Tally:
    """What one process saw; merged across processes by ``_summarise``."""

    acked_batches: int = 0
    acked_events: int = 0
    accepted: int = 0
    duplicates: int = 0
    failed_batches: int = 0
    abandoned_batches: int = 0
    retries: int = 0
    inline_batches: int = 0
    reused_batches: int = 0
    connects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_us: list[int] = field(default_factory=list)
    sched_latencies_us: list[int] = field(default_factory=list)
    # --starts: (wall-clock time of the first attempt, body) per batch; not in the output
    starts: list[tuple[float, bytes]] = field(default_factory=list)


class _Sender(Protocol):
    async def post(self, body: bytes) -> Response: ...
    async def aclose(self) -> None: ...


class _HttpxSender:
    """The same interface over httpx, to measure what the client library costs."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        import httpx

        self._httpx = httpx
        self._url, self._headers = url, headers
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._client = httpx.AsyncClient(limits=limits, timeout=_TIMEOUT_S)

    async def post(self, body: bytes) -> Response:
        try:
            r = await self._client.post(self._url, content=body, headers=self._headers)
        except self._httpx.HTTPError as exc:
            raise HttpError(repr(exc)) from exc
        return Response(r.status_code, dict(r.headers), r.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def _make_sender(opts: Options) -> _Sender:
    # A single CloudEvent goes as Adobe sends one: structured mode, its own media type.
    media = "application/cloudevents+json; charset=UTF-8" if opts.single else "application/json"
    headers = {"Authorization": f"Bearer {opts.token}", "Content-Type": media}
    if opts.client == "httpx":
        return _HttpxSender(opts.url, headers)
    return RawConnection(Target.parse(opts.url), headers)


def _share(opts: Options, worker: int) -> int:
    """How many bodies worker ``worker`` (of all processes) pre-generates."""
    if opts.count is not None:
        return opts.count // opts.workers + (1 if worker < opts.count % opts.workers else 0)
    assert opts.duration is not None
    if opts.rate is not None:
        return math.ceil(opts.rate * opts.duration / opts.batch / opts.workers) + 1
    budget = opts.budget_events or int(_DEFAULT_BUDGET_RATE * opts.duration)
    return max(1, math.ceil(budget / opts.batch / opts.workers))


def _backoff(resp: Response) -> float:
    try:
        wanted = float(resp.headers.get("retry-after", ""))
    except ValueError:
        wanted = _MAX_BACKOFF_S
    return min(max(wanted, _MIN_BACKOFF_S), _MAX_BACKOFF_S)


async def _deliver(
    sender: _Sender, body: bytes, opts: Options, tally: _Tally, due: float, deadline: float
) -> None:
    """Post ``body`` until the server acknowledges or refuses it, or we give up on it.

    We give up (``abandoned_batches``) once retries have gone on for ``_GIVE_UP_S`` or the
    run's ``deadline`` has passed, so a server that answers 503 forever ends the run too.
    """
    broken = 0  # consecutive connection-level failures
    retrying = False
    give_up_at = min(trio.current_time() + _GIVE_UP_S, deadline)
    if opts.starts is not None:
        tally.starts.append((time.time(), body))
    while True:
        if retrying and trio.current_time() >= give_up_at:
            tally.abandoned_batches += 1
            return
        sent = time.perf_counter()
        try:
            with trio.fail_after(_TIMEOUT_S):
                resp = await sender.post(body)
        except (HttpError, trio.TooSlowError) as exc:
            await sender.aclose()  # a timed-out exchange leaves the stream mid-response
            tally.errors["timeout" if isinstance(exc, trio.TooSlowError) else "connection"] += 1
            broken += 1
            if broken >= _MAX_CONSECUTIVE_FAILURES:
                raise LoadgenError(f"{broken} consecutive failures; last: {exc!r}") from exc
            retrying = True
            tally.retries += 1
            await trio.sleep(_MAX_BACKOFF_S)
            continue
        if resp.status == 200:
            tally.latencies_us.append(int((time.perf_counter() - sent) * 1e6))
            if opts.rate is not None:
                tally.sched_latencies_us.append(int((trio.current_time() - due) * 1e6))
            tally.acked_batches += 1
            tally.acked_events += opts.batch
            if opts.ack_body == "any":
                return  # a peer's plain "OK": the status alone acknowledges
            try:
                ack = orjson.loads(resp.body)
                tally.accepted += int(ack["accepted"])
                tally.duplicates += int(ack["duplicates"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                tally.errors["bad_ack"] += 1
            return
        tally.errors[str(resp.status)] += 1
        # Adobe retries 429 and 5xx except 505; every other status drops the batch.
        if resp.status == 429 or (resp.status >= 500 and resp.status != 505):
            broken = 0
            retrying = True
            tally.retries += 1
            await trio.sleep(_backoff(resp))
            continue
        tally.failed_batches += 1
        return


async def _connection(
    opts: Options,
    worker: int,
    bodies: list[bytes],
    more: Iterator[bytes],
    tally: _Tally,
    t0: float,
) -> None:
    sender = _make_sender(opts)
    # Paced: worker w sends at t0 + phase + k * interval, phases spread over one interval.
    interval = opts.batch * opts.workers / opts.rate if opts.rate else 0.0
    phase = interval * worker / opts.workers
    deadline = t0 + opts.duration if opts.duration is not None else math.inf
    k = 0
    try:
        while True:
            due = t0 + phase + k * interval if opts.rate else trio.current_time()
            if opts.count is not None and k >= len(bodies):
                break
            if due >= deadline:
                break
            if k < len(bodies):
                body = bodies[k]
            elif opts.reuse:
                tally.reused_batches += 1  # ids repeat: only for servers that don't dedupe
                body = bodies[k % len(bodies)]
            else:
                tally.inline_batches += 1  # reported: the budget was too small
                body = next(more)
            if opts.rate:
                await trio.sleep_until(due)
            await _deliver(sender, body, opts, tally, due, deadline)
            k += 1
    finally:
        if isinstance(sender, RawConnection):
            tally.connects += sender.connects
        await sender.aclose()


def _pregenerate(opts: Options, index: int) -> list[tuple[int, list[bytes], Iterator[bytes]]]:
    plans = []
    for j in range(opts.concurrency):
        worker = index * opts.concurrency + j
        if opts.single:
            it = _singles(opts.seed, worker)
        else:
            it = iter_batches(opts.shape, opts.batch, seed=opts.seed, worker=worker)
        plans.append((worker, [next(it) for _ in range(_share(opts, worker))], it))
    return plans


def _singles(seed: int, worker: int) -> Iterator[bytes]:
    """Bare CloudEvent bodies, one event each (ids as ``iter_batches('io', 1, ...)``)."""
    maker = BatchMaker("io", seed=seed, worker=worker)
    while True:
        yield maker.make(1, single=True).body


def _run_process(opts: Options, index: int, wait_for_go: bool) -> dict[str, Any]:
    """Pre-generate, optionally wait for the parent's go, run, and return raw figures."""
    g0 = time.perf_counter()
    plans = _pregenerate(opts, index)
    pregen_s = time.perf_counter() - g0
    if wait_for_go:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise LoadgenError("parent went away before the start signal")
    tally = _Tally()

    async def run_all() -> None:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for worker, bodies, more in plans:
                nursery.start_soon(_connection, opts, worker, bodies, more, tally, t0)

    cpu0 = _cpu_s()
    start = time.monotonic()
    trio.run(run_all)
    end = time.monotonic()
    if opts.starts is not None:
        _write_starts(opts.starts, tally.starts)
    return {
        "start": start,
        "end": end,
        "cpu_s": _cpu_s() - cpu0,
        "pregen_s": pregen_s,
        **{k: getattr(tally, k) for k in _Tally.__slots__ if k != "starts"},
    }


def _write_starts(path: str, starts: list[tuple[float, bytes]]) -> None:
    """One JSON line per batch: [first attempt's time.time(), [event keys]] (after the run)."""
    from streamd.core.normalise import decode_delivery

    with open(path, "wb") as out:
        for started, body in starts:
            keys = [record.key for record in decode_delivery(body).events]
            out.write(orjson.dumps([started, keys], option=orjson.OPT_APPEND_NEWLINE))


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run_children(opts: Options, argv: Sequence[str]) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "bench.loadgen", *argv]
    children = [
        subprocess.Popen(
            [*cmd, "--child", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for i in range(opts.processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise LoadgenError(f"loadgen child {child.pid} failed before the start")
        for child in children:  # all bodies exist: start everyone together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, _ = child.communicate()
            if child.returncode != 0:
                raise LoadgenError(f"loadgen child {child.pid} exited {child.returncode}")
            results.append(orjson.loads(out))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def quantiles_ms(samples_us: Sequence[int], points: int = 100) -> list[float] | None:
    """Latency at quantiles 0, 1/points, ..., 1 (nearest rank), in ms: a CDF to plot."""
    if not samples_us:
        return None
    s = sorted(samples_us)
    n = len(s)
    return [s[min(n - 1, max(0, math.ceil(i / points * n) - 1))] / 1000 for i in range(points + 1)]


def _summarise(opts: Options, parts: list[dict[str, Any]]) -> dict[str, Any]:
    duration = max(p["end"] for p in parts) - min(p["start"] for p in parts)

    def total(key: str) -> int:
        return sum(int(p[key]) for p in parts)

    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    acked_events = total("acked_events")
    return {
        "shape": opts.shape,
        "batch": opts.batch,
        "concurrency": opts.concurrency,
        "processes": opts.processes,
        "client": opts.client,
        "rate_offered": opts.rate,
        "duration_s": round(duration, 3),
        "events_per_s": round(acked_events / duration, 1),
        "batches_per_s": round(total("acked_batches") / duration, 1),
        "acked_batches": total("acked_batches"),
        "acked_events": acked_events,
        "accepted": total("accepted"),
        "duplicates": total("duplicates"),
        "failed_batches": total("failed_batches"),
        "abandoned_batches": total("abandoned_batches"),
        "retries": total("retries"),
        "errors": dict(sorted(errors.items())),
        "latency_ms": percentiles_ms([x for p in parts for x in p["latencies_us"]]),
        "latency_quantiles_ms": quantiles_ms([x for p in parts for x in p["latencies_us"]]),
        "latency_from_schedule_ms": percentiles_ms(
            [x for p in parts for x in p["sched_latencies_us"]]
        ),
        "connects": total("connects"),
        "inline_batches": total("inline_batches"),
        "reused_batches": total("reused_batches"),
        "client_cpu_s": round(sum(p["cpu_s"] for p in parts), 3),
        "pregen_s": round(max(p["pregen_s"] for p in parts), 3),
    }


def _parse_args(argv: Sequence[str]) -> Options:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/events")
    ap.add_argument("--token", required=True, help="sent as 'Authorization: Bearer TOKEN'")
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--batch", type=int, required=True, help="events per request")
    ap.add_argument("--concurrency", type=int, default=1, help="connections per process")
    stop = ap.add_mutually_exclusive_group(required=True)
    stop.add_argument("--duration", type=float, help="seconds to send for")
    stop.add_argument("--count", type=int, help="batches to send in total")
    ap.add_argument("--rate", type=float, help="offered events/s in total (default: unpaced)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1, help="client processes")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument(
        "--budget-events",
        type=int,
        help="events to pre-generate for an unpaced --duration run "
        f"(default {_DEFAULT_BUDGET_RATE} x duration); beyond it bodies are made inline",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="when the budget runs out, send the same bodies again instead of making new "
        "ones (ids repeat: for the baseline app, which does not dedupe)",
    )
    ap.add_argument(
        "--ack-body",
        choices=("streamd", "any"),
        default="streamd",
        help="streamd: a 200 must carry {accepted, duplicates} (else noted as bad_ack); "
        "any: the status alone acknowledges (peers answering a plain OK)",
    )
    ap.add_argument(
        "--starts",
        metavar="FILE",
        help="write each batch's send time (time.time()) and event keys here, for "
        "end-to-end latency from the sender's request start (one process only)",
    )
    ap.add_argument(
        "--single",
        action="store_true",
        help="with --shape io --batch 1: each body is one bare CloudEvent object "
        "(Content-Type application/cloudevents+json), not an array of one",
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.starts and a.processes != 1:
        ap.error("--starts needs --processes 1")
    if a.batch < 1 or a.concurrency < 1 or a.processes < 1:
        ap.error("--batch, --concurrency and --processes must be at least 1")
    if a.processes * a.concurrency > MAX_WORKERS:
        ap.error(f"at most {MAX_WORKERS} connections in total")
    if a.rate is not None and a.rate <= 0:
        ap.error("--rate must be positive")
    if a.single and (a.shape != "io" or a.batch != 1):
        ap.error("--single needs --shape io --batch 1")
    return Options(
        url=a.url,
        token=a.token,
        shape=a.shape,
        batch=a.batch,
        concurrency=a.concurrency,
        duration=a.duration,
        count=a.count,
        rate=a.rate,
        seed=a.seed,
        processes=a.processes,
        client=a.client,
        budget_events=a.budget_events,
        reuse=a.reuse,
        ack_body=a.ack_body,
        child=a.child,
        starts=a.starts,
        single=a.single,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = _parse_args(args)
    if opts.child is not None:
        sys.stdout.buffer.write(orjson.dumps(_run_process(opts, opts.child, wait_for_go=True)))
        return 0
    if opts.processes == 1:
        parts = [_run_process(opts, 0, wait_for_go=False)]
    else:
        parts = _run_children(opts, args)
    print(orjson.dumps(_summarise(opts, parts)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
