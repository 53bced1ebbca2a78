"""What checking Adobe's signatures costs ingest: I/O batches with and without them.

    python -m bench.signatures [--duration 12] [--rounds 2] [--out FILE]

Each case runs a fresh ``streamd serve`` (FULL) with two sources: ``/events``
(API token) and ``/io`` (``auth = "adobe-signature"``, keys fetched from a key
server this process serves on loopback). The load: 20-event I/O batches from
the emulator's generator over 16 keep-alive connections, unpaced; for the signed
case every body is signed (RSA-2048, both headers) *before* the clock starts, so
the client's signing cost is not in the figures, only streamd's verification.
Cases alternate (token, signed, token, signed, ...). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench._report import print_summary
from bench._server import READY_PREFIX, streamd_command
from streamd.emit.generate import RECIPIENT_CLIENT_ID, iter_batches
from streamd.emit.http import Connection, Target

TOKEN = "sd_bench-signatures-token-0123456789"
CLIENT_ID = RECIPIENT_CLIENT_ID  # what the generated events name
KEY_PATH = "/prod/keys/pub-key-bench0001.pem"
CONNECTIONS = 16


def _key_server(pem: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == KEY_PATH
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(pem) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(pem)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _bodies(count: int, worker: int) -> list[bytes]:
    return list(itertools.islice(iter_batches("io", 20, seed=9, worker=worker), count))


def _serve(workdir: Path, key_port: int) -> tuple[subprocess.Popen[bytes], int]:
    data = workdir / "data"
    token_file = workdir / "tokens"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = workdir / "streamd.toml"
    config.write_text(
        f'[tokens]\nfiles = ["{token_file}"]\n'
        '[[sources]]\nname = "events"\npath = "/events"\n'
        '[[sources]]\nname = "io"\npath = "/io"\nauth = "adobe-signature"\n'
        f'[sources.adobe]\nclient_id = "{CLIENT_ID}"\nkey_host = "http://127.0.0.1:{key_port}"\n'
    )
    out = (workdir / "server.out").open("wb")
    proc = subprocess.Popen(
        [
            *streamd_command(),
            *("--log-level", "warning", "serve", "--config", str(config)),
            *("--listen", "127.0.0.1:0", "--data-dir", str(data)),
            *("--admin-listen", "127.0.0.1:0"),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in (workdir / "server.out").read_text(errors="replace").splitlines():
            if line.startswith(READY_PREFIX):
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("streamd did not start: " + (workdir / "server.out").read_text()[-2000:])


async def _load(
    port: int, path: str, requests: list[tuple[bytes, list[tuple[str, str]]]], duration: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    queue = iter(requests)
    stop_at = trio.current_time() + duration

    async def connection() -> None:
        conn = Connection(Target.parse(f"http://127.0.0.1:{port}{path}"))
        try:
            for body, headers in queue:
                if trio.current_time() >= stop_at:
                    return
                start = time.perf_counter()
                reply = await conn.request("POST", path, headers, body)
                latencies.append(time.perf_counter() - start)
                status = str(reply.status)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await conn.aclose()

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(CONNECTIONS):
            nursery.start_soon(connection)
    elapsed = trio.current_time() - started
    latencies.sort()
    done = len(latencies)
    return {
        "requests_per_s": round(done / elapsed, 1),
        "events_per_s": round(done * 20 / elapsed, 1),
        "p50_ms": round(latencies[done // 2] * 1000, 2) if done else None,
        "p99_ms": round(latencies[min(done - 1, int(done * 0.99))] * 1000, 2) if done else None,
        "statuses": statuses,
        "ran_out_of_bodies": done == len(requests),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.signatures", description=__doc__)
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per case")
    ap.add_argument("--rounds", type=int, default=2, help="token/signed pairs")
    ap.add_argument("--per-case", type=int, default=20_000, help="bodies generated per case")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys = _key_server(pem)
    results: dict[str, list[dict[str, Any]]] = {"token": [], "signed": []}
    worker = 0
    try:
        for _ in range(args.rounds):
            for case in ("token", "signed"):
                worker += 1
                bodies = _bodies(args.per_case, worker)
                requests: list[tuple[bytes, list[tuple[str, str]]]] = []
                for body in bodies:
                    headers = [("Content-Type", "application/cloudevents-batch+json")]
                    if case == "token":
                        headers.append(("Authorization", f"Bearer {TOKEN}"))
                    else:
                        sig = base64.b64encode(
                            key.sign(body, padding.PKCS1v15(), hashes.SHA256())
                        ).decode()
                        headers += [
                            ("x-adobe-digital-signature-1", sig),
                            ("x-adobe-public-key1-path", KEY_PATH),
                            ("x-adobe-digital-signature-2", sig),
                            ("x-adobe-public-key2-path", KEY_PATH),
                        ]
                    requests.append((body, headers))
                workdir = Path(tempfile.mkdtemp(prefix="bench-sig-"))
                proc, port = _serve(workdir, keys.server_port)
                try:
                    path = "/events" if case == "token" else "/io"
                    result = trio.run(_load, port, path, requests, args.duration)
                finally:
                    proc.terminate()
                    proc.wait(60)
                    shutil.rmtree(workdir, ignore_errors=True)
                results[case].append(result)
                print(f"{case}: {result}", file=sys.stderr)
    finally:
        keys.shutdown()
    token = statistics.median(r["requests_per_s"] for r in results["token"])
    signed = statistics.median(r["requests_per_s"] for r in results["signed"])
    summary = {
        "question": "ingest cost of Adobe signature verification, I/O 20-event batches, c16",
        "cases": results,
        "median_requests_per_s": {"token": token, "signed": signed},
        "change": round(signed / token - 1, 3),
        "machine_load_1m": os.getloadavg()[0],
    }
    print_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
