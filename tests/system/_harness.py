"""Machinery of the system tests: run the real ``streamd``, wait with deadlines, read results.

Every process is started through :class:`Processes`, whose finaliser (the ``processes``
fixture) kills whatever is still running, so a failing test leaves nothing behind.
stdout and stderr of each process go to files: nothing can block on a full pipe, and
the tests wait for a line to appear there (with a deadline), never for a fixed time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import FIXTURES  # the contract's copy, or the vendored one

REPO_ROOT = Path(__file__).parents[2]
LOAD_CLIENT = Path(__file__).with_name("_load_client.py")
READY = re.compile(r"^streamd ready: http://127\.0\.0\.1:(\d+)\n", re.MULTILINE)
GENERATED = re.compile(r"^streamd: generated an API token \(kept in (.+)\): (\S+)\n", re.MULTILINE)
# Variables that would make a run depend on the developer's shell.
_SCRUBBED_ENV = ("STREAMD_CONFIG", "STREAMD_LOG_LEVEL", "STATE_DIRECTORY")

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s.

    ``context`` adds to the failure message (say, the tail of a log).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(0.01)


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()  # seeded from the system per process: xdist workers differ


def free_port() -> int:
    """A loopback port that nobody uses right now, for a server a test starts later.

    Picked below the kernel's ephemeral range: the kernel hands ports of that range to
    every port-0 bind and every outgoing connection of the whole parallel run, so one
    picked there can be taken before the server binds it (a full run failed so: "cannot
    listen on 127.0.0.1:50687: Address already in use", 2026-12-07). Below it, only
    another test's pick can collide, and each pick is checked free.
    """
    low = _ephemeral_low()
    if low > 11000:
        for _ in range(200):
            port = _PORTS.randrange(10000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def refuses_connections(port: int) -> bool:
    """True when nothing accepts connections on the loopback port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            listed = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        for child in listed:
            if not exited(int(child)):
                out.append(int(child))
    return out


def exited(pid: int) -> bool:
    """Gone, or a zombie (its parent died and nobody reaped it yet).

    A process reaped between the open and the read of its ``stat`` fails the read
    with ESRCH (ProcessLookupError), not FileNotFoundError: gone all the same."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def streamd_argv() -> list[str]:
    """The installed ``streamd`` console script (or ``python -m streamd`` without one)."""
    script = Path(sys.executable).with_name("streamd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "streamd"]


def clean_env() -> dict[str, str]:
    """The environment for child processes, without streamd's own variables."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Spawned:
    """One child process and the files that hold its output."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status; fails the test when the process does not exit in time."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:g} s; "
                f"stderr ends with:\n{self.stderr()[-2000:]}"
            ) from None


class Processes:
    """Starts child processes and guarantees that none outlives the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._spawned: list[Spawned] = []

    def spawn(
        self, argv: Sequence[str], name: str, *, env: Mapping[str, str] | None = None
    ) -> Spawned:
        index = len(self._spawned)
        stdout_path = self.workdir / f"{index:03d}-{name}.stdout"
        stderr_path = self.workdir / f"{index:03d}-{name}.stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=dict(env) if env is not None else clean_env(),
            )
        spawned = Spawned(name, popen, stdout_path, stderr_path)
        self._spawned.append(spawned)
        return spawned

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command to completion (it is killed if it overruns)."""
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=clean_env(),
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        """Kill every child still running, reap them all, print what they said."""
        for spawned in reversed(self._spawned):
            if spawned.alive():
                spawned.popen.kill()
        for spawned in self._spawned:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spawned.popen.wait(10)
        for spawned in self._spawned:
            # Captured by pytest: shown only when the test failed.
            print(f"--- {spawned.name} (pid {spawned.pid}) exit {spawned.popen.returncode}")
            print(spawned.stderr()[-3000:], end="")


class Server:
    """A running ``streamd serve``."""

    def __init__(self, spawned: Spawned, data_dir: Path) -> None:
        self.spawned = spawned
        self.data_dir = data_dir
        self.port = 0

    @property
    def journal(self) -> Path:
        return self.data_dir / "journal.db"

    def wait_ready(self, timeout: float = 15.0) -> int:
        """Wait for the ready line; return the bound port. Fails if streamd exits first."""

        def ready() -> int | None:
            match = READY.search(self.spawned.stdout())
            if match:
                return int(match.group(1))
            if not self.spawned.alive():
                raise AssertionError(
                    f"{self.spawned.name} exited with {self.spawned.popen.returncode} "
                    f"before it was ready:\n{self.spawned.stderr()[-3000:]}"
                )
            return None

        port = wait_for(ready, timeout=timeout, what=f"{self.spawned.name} to be ready")
        assert port is not None
        self.port = port
        return port

    def wait_log(self, text: str, *, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears (``count`` times) in streamd's stderr (its log)."""
        wait_for(
            lambda: self.spawned.stderr().count(text) >= count,
            timeout=timeout,
            what=f"{text!r} (x{count}) in the log of {self.spawned.name}",
        )

    def token(self) -> str:
        return read_token(self.data_dir / "api-token")


def serve(
    processes: Processes,
    data_dir: Path,
    *,
    port: int = 0,
    args: Sequence[str] = (),
    name: str = "streamd",
    ready: bool = True,
) -> Server:
    """Start ``streamd serve`` on a loopback port; by default wait until it is ready."""
    argv = [
        *streamd_argv(),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",  # not the default 8081: other tests and engineers run beside us
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        *args,
    ]
    server = Server(processes.spawn(argv, name), data_dir)
    if ready:
        server.wait_ready()
    return server


def read_token(path: Path) -> str:
    """The first token of a token file."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            return line.strip()
    raise AssertionError(f"{path} holds no token")


@dataclass(frozen=True)
class Reply:
    """A response: status, lower-cased headers, decoded JSON body (or the text)."""

    status: int
    headers: dict[str, str]
    body: Any


def post(
    port: int,
    body: bytes,
    *,
    token: str | None,
    path: str = "/events",
    content_type: str = "application/json",
) -> Reply:
    """One POST on a fresh connection."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    parsed: Any
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data.decode(errors="replace")
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, parsed)


class HeldRequest:
    """A POST sent with ``Expect: 100-continue`` whose body is held back.

    Once the ``100 Continue`` came back, the server has parsed the request and
    handed it to the app: the request is in flight, and stays so until
    :meth:`finish` sends the body.
    """

    def __init__(self, port: int, token: str, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        self._buffer = b""
        head = (
            "POST /events HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n"
        )
        try:
            self.sock.sendall(head.encode())
            status, _, _ = self._read_response()
            assert status == 100, f"expected 100 Continue, got {status}"
        except BaseException:
            self.sock.close()
            raise

    def finish(self) -> tuple[int, Any]:
        """Send the body; return the final status and the decoded JSON answer."""
        self.sock.sendall(self.body)
        status, _, body = self._read_response()
        return status, json.loads(body)

    def read_eof(self) -> bytes:
        """What arrives until the server closes the connection (b"" if nothing)."""
        chunks = []
        try:
            while chunk := self.sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return self._buffer + b"".join(chunks)

    def close(self) -> None:
        self.sock.close()

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; got {self._buffer!r}")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside the body")
            self._buffer += chunk
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, headers, body


def fixture_bytes(name: str) -> bytes:
    """The exact bytes of a contract fixture."""
    return (FIXTURES / name).read_bytes()


def legacy_ids(body: bytes) -> list[str]:
    """The dedup keys of a legacy push: each activity's ``marketoGUID``."""
    return [a["marketoGUID"] for a in json.loads(body)["activities"]]


# -- the journal, read directly -------------------------------------------------


def journal_keys(db: Path) -> Counter[str]:
    """How many times each event key is in the journal."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return Counter(dict(conn.execute("SELECT event_key, count(*) FROM events GROUP BY 1")))


def check_journal(db: Path, acked: Iterable[str]) -> Counter[str]:
    """Assert: file intact, no key twice, every acknowledged id present. Returns the keys."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        assert integrity == [("ok",)], f"integrity_check: {integrity[:10]}"
        twice = conn.execute(
            "SELECT event_key, count(*) FROM events GROUP BY event_key HAVING count(*) > 1"
        ).fetchall()
        assert twice == [], f"{len(twice)} keys journaled more than once: {twice[:10]}"
        accepted, total = conn.execute(
            "SELECT (SELECT coalesce(sum(accepted), 0) FROM deliveries), "
            "(SELECT count(*) FROM events)"
        ).fetchone()
        assert accepted == total, f"deliveries accepted {accepted} != {total} events"
    keys = journal_keys(db)
    missing = sorted(set(acked) - keys.keys())
    assert not missing, f"{len(missing)} acknowledged ids are not in the journal: {missing[:10]}"
    return keys


def check_batches_atomic(sent: Iterable[Sequence[str]], keys: Mapping[str, int]) -> set[str]:
    """Assert each batch is all in the journal or all out; return every id sent."""
    sent_ids: set[str] = set()
    for batch in sent:
        present = sum(1 for key in batch if key in keys)
        assert present in (0, len(batch)), (
            f"{present} of the {len(batch)} events of a batch are journaled (first {batch[0]})"
        )
        sent_ids.update(batch)
    return sent_ids


def read_lines(path: Path) -> list[list[str]]:
    """The complete lines of an ack/sent file, each split into ids."""
    if not path.exists():
        return []
    text = path.read_text()
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n")]


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, f"a traceback was printed:\n{text[-3000:]}"


def stop_gracefully(server: Server, signum: int = signal.SIGTERM, timeout: float = 15.0) -> float:
    """Signal streamd, assert exit status 0; return how long it took."""
    started = time.monotonic()
    server.spawned.send_signal(signum)
    status = server.spawned.wait(timeout)
    elapsed = time.monotonic() - started
    assert status == 0, f"exit status {status}:\n{server.spawned.stderr()[-3000:]}"
    return elapsed


class LoadClient:
    """A ``_load_client.py`` process and its ack and sent files."""

    def __init__(self, spawned: Spawned, ack_file: Path, sent_file: Path) -> None:
        self.spawned = spawned
        self.ack_file = ack_file
        self.sent_file = sent_file
        self._offset = 0
        self._acked = 0

    @classmethod
    def start(
        cls, processes: Processes, *, port: int, token_file: Path, seed: int, client: int
    ) -> LoadClient:
        ack_file = processes.workdir / f"client-{client}.acks"
        sent_file = processes.workdir / f"client-{client}.sent"
        argv = [
            sys.executable,
            str(LOAD_CLIENT),
            f"--port={port}",
            f"--token-file={token_file}",
            f"--seed={seed}",
            f"--client={client}",
            f"--ack-file={ack_file}",
            f"--sent-file={sent_file}",
        ]
        return cls(processes.spawn(argv, f"client-{client}"), ack_file, sent_file)

    def acked_batches(self) -> int:
        """Batches acknowledged so far (complete lines of the ack file; read incrementally)."""
        if self.ack_file.exists():
            with open(self.ack_file, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._acked += data.count(b"\n", 0, end)
            self._offset += end
        return self._acked

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM (it finishes the request in flight); return its JSON summary."""
        if self.spawned.alive():
            self.spawned.send_signal(signal.SIGTERM)
        status = self.spawned.wait(timeout)
        assert status == 0, f"{self.spawned.name} exited with {status}:\n{self.spawned.stderr()}"
        summary: dict[str, Any] = json.loads(self.spawned.stdout())
        return summary

    def acked_ids(self) -> set[str]:
        return {key for line in read_lines(self.ack_file) for key in line}

    def sent_batches(self) -> list[list[str]]:
        return read_lines(self.sent_file)


def total_acked(clients: Iterable[LoadClient]) -> int:
    return sum(client.acked_batches() for client in clients)
