"""Adobe's Node SDK ``@adobe/aio-lib-events``, pinned in ``package-lock.json``, and the
loopback stand-ins for the Adobe hosts it talks to.

The SDK is installed with ``npm ci`` into ``tests/interop/node_modules`` (ignored by git)
the first time and whenever the lock file changes. Each node script runs in its own
empty directory and home (the SDK's config library reads ``.env`` and ``~/.config/aio``),
reads its input from a JSON file and writes its result to another (the SDK's logger
writes to stdout), and is killed when it overruns its timeout.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
SDK_VERSION = "4.1.0"
NODE_MODULES = HERE / "node_modules"
_STAMP = NODE_MODULES / ".streamd-lock-sha256"
_INSTALL_LOCK = HERE / ".install.lock"  # beside node_modules: npm ci replaces that folder
PRELOAD = HERE / "keyhost_preload.js"
# Adobe's hard-coded public-key host: the preload sends its requests to KeyHost instead.
ADOBE_KEY_HOST = "https://static.adobeioevents.com"
# Variables that would send the SDK elsewhere or change what node loads.
_DROPPED_ENV = ("NODE_OPTIONS", "NODE_PATH", "AIO_CLI_ENV", "AIO_STATE_ENDPOINT")


class SdkMissing(Exception):
    """Raised when node, npm or the pinned SDK cannot be had here."""


def _lock_digest() -> str:
    return hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()


def install(timeout: float = 600.0) -> None:
    """``npm ci`` the pinned SDK unless the installed tree matches the lock file.

    Raises :class:`SdkMissing` (with npm's own words) when node or npm is missing or
    the install fails, for instance because the npm registry cannot be reached.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SdkMissing(
            "node and npm are needed for the interop suite (make system-tools installs "
            "Debian's nodejs and npm)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    if not version.startswith("v") or int(version[1:].split(".")[0]) < 18:
        raise SdkMissing(f"node {version or '?'} is too old: @adobe/aio-lib-state needs 18+")
    # pytest-xdist workers each call this: one installs, the others wait and reuse it.
    with open(_INSTALL_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _install(npm, timeout)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install(npm: str, timeout: float) -> None:
    digest = _lock_digest()
    manifest = NODE_MODULES / "@adobe" / "aio-lib-events" / "package.json"
    if _STAMP.exists() and _STAMP.read_text() == digest and manifest.exists():
        return
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        raise SdkMissing(
            f"npm ci of @adobe/aio-lib-events {SDK_VERSION} took more than {timeout:g} s "
            "(is the npm registry reachable?)"
        ) from None
    if done.returncode != 0:
        raise SdkMissing(
            f"npm ci could not install @adobe/aio-lib-events {SDK_VERSION} (is the npm "
            f"registry reachable?): {done.stderr.strip()[-1500:]}"
        )
    installed = json.loads(manifest.read_text())["version"]
    if installed != SDK_VERSION:
        raise SdkMissing(f"npm installed @adobe/aio-lib-events {installed}, not {SDK_VERSION}")
    _STAMP.write_text(digest)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    # Never through a proxy: every host the scripts may reach is on loopback.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


@dataclass
class Node:
    """Runs the suite's node scripts in ``workdir``."""

    workdir: Path
    runs: int = 0

    def run(
        self,
        script: str,
        data: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        preload: bool = False,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Run ``tests/interop/SCRIPT`` on ``data``; its JSON result.

        Fails the test (with node's stderr) when the script exits non-zero, overruns
        ``timeout`` or writes no result.
        """
        proc = self.start(script, data, env=env, preload=preload)
        return proc.result(timeout)

    def start(
        self,
        script: str,
        data: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        preload: bool = False,
    ) -> NodeProcess:
        """Start a script without waiting for it (see :meth:`NodeProcess.result`)."""
        self.runs += 1
        home = self.workdir / f"node-{self.runs:03d}"
        home.mkdir(parents=True)
        (home / "input.json").write_text(json.dumps(data))
        argv = [shutil.which("node") or "node"]
        if preload:
            argv += ["-r", str(PRELOAD)]
        argv += [str(HERE / script), "input.json", "output.json"]
        with open(home / "stdout", "wb") as out, open(home / "stderr", "wb") as err:
            popen = subprocess.Popen(
                argv,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_env({"HOME": str(home), "AIO_CLI_ENV": "prod", **(env or {})}),
            )
        return NodeProcess(script, home, popen)


@dataclass
class NodeProcess:
    script: str
    home: Path
    popen: subprocess.Popen[bytes]

    def file(self, name: str) -> Path:
        return self.home / name

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(
                f"node {self.script} overran {timeout:g} s:\n{self._tail()}"
            ) from None
        output = self.home / "output.json"
        if status != 0 or not output.exists():
            raise AssertionError(f"node {self.script} exited {status}:\n{self._tail()}")
        result: dict[str, Any] = json.loads(output.read_text())
        return result

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def _tail(self) -> str:
        out = (self.home / "stdout").read_text(errors="replace")[-1500:]
        err = (self.home / "stderr").read_text(errors="replace")[-2500:]
        return f"--- stdout\n{out}\n--- stderr\n{err}"


# -- loopback stand-ins --------------------------------------------------------------


@contextlib.contextmanager
def serving(handle: Callable[[Any], None]) -> Iterator[str]:
    """Serve ``handle(request_handler)`` for every request on a loopback port; its URL."""

    class _Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            handle(self)

        do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def reply(
    req: Any, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> None:
    """Answer ``req`` (a ``BaseHTTPRequestHandler``) with a complete response."""
    req.send_response(status)
    for name, value in headers:
        req.send_header(name, value)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


def read_body(req: Any) -> bytes:
    length = int(req.headers.get("Content-Length") or 0)
    return bytes(req.rfile.read(length)) if length else b""


@dataclass
class KeyHost:
    """Adobe's public-key host on loopback: PEMs by path, 404 for others; what was asked."""

    keys: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __call__(self, req: Any) -> None:
        path = urlsplit(req.path).path
        self.requests.append(path)
        pem = self.keys.get(path)
        if req.command != "GET" or pem is None:
            reply(req, 404, b"no such key\n")
        else:
            reply(req, 200, pem, [("Content-Type", "application/x-pem-file")])


@dataclass
class StateStore:
    """A stand-in for Adobe's State service (aio-lib-state 5's REST API), which the SDK
    uses to cache public keys: ``GET``/``PUT /containers/NAMESPACE/data/KEY``, HTTP
    basic auth with the ``__OW_API_KEY``. It is reached through the library's own
    ``AIO_STATE_ENDPOINT`` override; :meth:`env` gives the variables."""

    namespace: str = "interop-namespace"
    api_key: str = "interop-user:interop-password"
    values: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def env(self) -> dict[str, str]:
        return {
            "AIO_STATE_ENDPOINT": self.url,
            "__OW_NAMESPACE": self.namespace,
            "__OW_API_KEY": self.api_key,
        }

    def __call__(self, req: Any) -> None:
        path = urlsplit(req.path).path
        body = read_body(req)
        prefix = f"/containers/{self.namespace}/data/"
        expected = "Basic " + base64.b64encode(self.api_key.encode()).decode()
        if req.headers.get("Authorization") != expected:
            reply(req, 401, b'{"error":"unauthorized"}')
            return
        if not path.startswith(prefix):
            reply(req, 404, b"")
            return
        key = path[len(prefix) :]
        self.requests.append((req.command, key))
        if req.command == "PUT":
            self.values[key] = body
            reply(req, 200, b"")
        elif req.command == "GET" and key in self.values:
            expires = str(4102444800000)  # 2100-01-01 in ms, as the header carries it
            reply(req, 200, self.values[key], [("x-key-expires-ms", expires)])
        else:
            reply(req, 404, b"")


@dataclass
class Receiver:
    """A webhook for ``streamd emit --mode io``: answers the challenge, keeps each POST's
    raw bytes and headers, and fetches each public key the first time a delivery names
    it from ``key_server`` (as a real receiver fetches from Adobe's host, during the
    delivery: the emulator's keys live only as long as its run)."""

    key_server: str
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, req: Any) -> None:
        if req.command == "GET":
            value = parse_qs(urlsplit(req.path).query).get("challenge", [""])[0]
            reply(req, 200, value.encode(), [("Content-Type", "text/plain")])
            return
        body = read_body(req)
        headers = {name.lower(): value for name, value in req.headers.items()}
        for n in (1, 2):
            path = headers.get(f"x-adobe-public-key{n}-path", "")
            with self.lock:
                if path and path not in self.keys:
                    self.keys[path] = _get(self.key_server + path)
        with self.lock:
            self.deliveries.append({"body": body, "headers": headers})
        reply(req, 200, b"{}", [("Content-Type", "application/json")])


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def delivery_input(delivery: dict[str, Any], body: bytes | None = None) -> dict[str, Any]:
    """One delivery as the verify script takes it (``body``: other bytes than received)."""
    h = delivery["headers"]
    return {
        "body_b64": base64.b64encode(delivery["body"] if body is None else body).decode(),
        "signature_options": {
            "digiSignature1": h.get("x-adobe-digital-signature-1"),
            "digiSignature2": h.get("x-adobe-digital-signature-2"),
            "publicKeyPath1": h.get("x-adobe-public-key1-path"),
            "publicKeyPath2": h.get("x-adobe-public-key2-path"),
        },
    }
