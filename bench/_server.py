"""Receiver processes for the benchmarks: start, wait for ready, measure, stop.

Also which streamd to run: the working tree, or a snapshot of one commit (``export_ref``).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
READY_PREFIX: Final = "streamd ready: "
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class ServerError(Exception):
    """Raised when a receiver does not start, or does not stop cleanly in time."""


@dataclass(frozen=True, slots=True)
class StopStats:
    """What we learn about a receiver as it stops."""

    peak_rss_mib: float  # summed over the process and its children (streamd's workers)
    cpu_s: float
    exit_code: int | None
    stop_s: float
    main_peak_rss_mib: float = 0.0  # the process alone


def system_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``), to spot other load."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    return (sum(fields[:8]) - idle) / _CLK_TCK


def streamd_command(src: Path | None = None) -> list[str]:
    """How to run streamd: from ``src`` (a source snapshot) if given, else the venv's script."""
    if src is not None:
        # PYTHONPATH (set by the caller) puts the snapshot before the editable install;
        # the log line proves which copy runs.
        code = (
            "import sys, streamd; from streamd.cli import main; "
            "print('streamd imported from', streamd.__file__, file=sys.stderr); sys.exit(main())"
        )
        return [sys.executable, "-c", code]
    script = Path(sys.executable).with_name("streamd")
    if not script.exists():
        raise ServerError(f"{script} not found: install the project (make test does)")
    return [str(script)]


class ServerProcess:
    """A receiver started with stdout/stderr in files, ready once it prints its URL."""

    def __init__(
        self,
        cmd: list[str],
        logdir: Path,
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.out_path = logdir / f"{name}.server.out"
        self.err_path = logdir / f"{name}.server.err"
        # Files, not pipes: a chatty server must never block on a full pipe mid-run.
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env)
        self.base_url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Return the first ``http://host:port`` it announces; raise ``ServerError``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out_path.read_text(errors="replace").splitlines():
                if line.startswith(READY_PREFIX):
                    self.base_url = line[len(READY_PREFIX) :].strip().rstrip("/")
                    return self.base_url
            if self.proc.poll() is not None:
                raise ServerError(
                    f"server exited {self.proc.returncode} before ready: {self.stderr_tail()}"
                )
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"server not ready after {timeout} s: {self.stderr_tail()}")

    def pids(self) -> list[int]:
        """The server and its child processes (streamd's ingest workers), alive now."""
        return [self.pid, *_descendants(self.pid)]

    def cpu_s(self) -> float:
        """User + system CPU seconds of its whole process tree so far.

        Each process's counters include all its threads; each live process's
        ``cutime``/``cstime`` add the children it has already reaped (and what those had
        reaped), so a worker that exited mid-run still counts. Only a child orphaned
        before exiting (re-parented to init) would escape; streamd's workers are not.
        """
        return sum(_cpu_s(pid, reaped=True) for pid in self.pids())

    def main_cpu_s(self) -> float:
        """The same for the process alone (without streamd's ingest workers)."""
        return _cpu_s(self.pid)

    def peak_rss_mib(self) -> float:
        """The sum of each process's peak RSS (an upper bound of the peak of the sum)."""
        total = 0.0
        for pid in self.pids():
            total += _peak_rss_mib(pid)
        return total

    def stop(self, timeout: float = 60.0) -> StopStats:
        """Read peak RSS and CPU, send SIGTERM, wait for exit; kill after ``timeout``."""
        rss, cpu, main_rss = self.peak_rss_mib(), self.cpu_s(), _peak_rss_mib(self.pid)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return StopStats(
            round(rss, 1), round(cpu, 2), code, round(time.monotonic() - t0, 3), round(main_rss, 1)
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr_tail(self, limit: int = 2000) -> str:
        return self.err_path.read_text(errors="replace")[-limit:]


def _cpu_s(pid: int, reaped: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads); with ``reaped``, + cutime + cstime."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0  # exited meanwhile
    # After the ")": state is fields[0], so utime (field 14 of proc(5)) is fields[11].
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return 0.0
    return float("nan")


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            out.append(int(child))
            out.extend(_descendants(int(child)))
    return out


def start_streamd(
    workdir: Path,
    data_dir: Path,
    synchronous: str,
    logdir: Path,
    name: str,
    src: Path | None = None,
    workers: int = 0,
) -> tuple[ServerProcess, str]:
    """Start ``streamd serve`` on a free loopback port; return it and its API token.

    With ``src``, the streamd package is imported from that directory instead of the
    working tree; ``workers`` sets ``server.workers`` (0: the key is left out, so an
    older streamd runs too). Raises ``ServerError`` when it does not come up.
    """
    config = workdir / "streamd.toml"
    text = f'[journal]\nsynchronous = "{synchronous}"\n'
    if workers:
        text += f"[server]\nworkers = {workers}\n"
    config.write_text(text)
    token_file = data_dir / "api-token"
    cmd = [
        *streamd_command(src),
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--token-file",
        str(token_file),
        # Not the default 8081: a streamd running on this host must not fail the benchmark.
        "--admin-listen",
        "127.0.0.1:0",
    ]
    if src is None:
        server = ServerProcess(cmd, logdir, name)
    else:
        # cwd too: ``python -c`` puts the working directory first on sys.path.
        env = {**os.environ, "PYTHONPATH": str(src)}
        server = ServerProcess(cmd, logdir, name, env, cwd=src)
    try:
        server.wait_ready()
        tokens = [t.strip() for t in token_file.read_text().splitlines() if t.strip()]
        if not tokens:
            raise ServerError(f"{token_file} holds no token")
    except BaseException:
        server.kill()
        raise
    return server, tokens[0]


def start_baseline(logdir: Path, name: str) -> ServerProcess:
    """Start ``bench.baseline_app`` on a free loopback port."""
    cmd = [sys.executable, "-m", "bench.baseline_app", "--listen", "127.0.0.1:0"]
    server = ServerProcess(cmd, logdir, name)
    server.wait_ready()
    return server


def source_hash(src: Path | None) -> str:
    """Changes when streamd or the generator change, so a cached journal is rebuilt.

    The load generator always imports the working tree's ``streamd.emit.generate``,
    even when the server runs from a snapshot: both go into the hash.
    """
    root = src or REPO
    h = hashlib.sha256()
    for f in sorted((root / "streamd").rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    h.update((REPO / "streamd" / "emit" / "generate.py").read_bytes())
    h.update((REPO / "streamd" / "emit" / "catalog.py").read_bytes())
    return h.hexdigest()[:12]


def export_ref(ref: str, cache: Path) -> tuple[str, Path]:
    """Extract ``streamd/`` at git ``ref`` under ``cache``; return (commit, directory).

    Benchmarking a commit, not the working tree, keeps a long run on one version of
    streamd while someone keeps editing it. Raises ``RuntimeError`` for an unknown ref.
    """
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if rev.returncode != 0:
        raise RuntimeError(f"unknown git ref {ref!r}: {rev.stderr.strip()}")
    sha = rev.stdout.strip()
    dest = cache / f"src-{sha[:12]}"
    if not dest.exists():
        tmp = cache / f"src-{sha[:12]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", sha, "streamd"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(dest)
    return sha, dest


EXPRESS_SRC: Final = REPO / "bench" / "express"
NODE_DURABLE_SRC: Final = REPO / "bench" / "node_durable"


def _ensure_npm_app(src: Path, app: Path, what: str, timeout: float, note: str = "") -> Path:
    """Install the Node app in ``src`` from npm into ``app`` (once; again when its
    ``package.json`` or ``package-lock.json`` changes); return ``app``.

    With a committed lock file, ``npm ci`` installs exactly the pinned versions.
    Raises ``ServerError`` when Node.js or npm is missing or the install fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ServerError(f"Node.js and npm are needed for {what} (apt install nodejs npm)")
    app.mkdir(parents=True, exist_ok=True)
    # One install at a time (a test and a benchmark may both need it).
    with (app.parent / f"{app.name}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return _install_npm_app(src, app, what, timeout, npm, node, note)


def _install_npm_app(
    src: Path, app: Path, what: str, timeout: float, npm: str, node: str, note: str
) -> Path:
    shutil.copy2(src / "server.js", app / "server.js")
    lock = src / "package-lock.json"
    manifest = (src / "package.json").read_bytes() + (lock.read_bytes() if lock.exists() else b"")
    stamp = app / ".installed"
    if (app / "node_modules").is_dir() and stamp.exists() and stamp.read_bytes() == manifest:
        return app
    stamp.unlink(missing_ok=True)
    shutil.copy2(src / "package.json", app / "package.json")
    if lock.exists():
        shutil.copy2(lock, app / "package-lock.json")
    env = dict(os.environ)
    # node-gyp (a native module built from source) would download Node's headers;
    # point it at the ones installed beside node instead (Debian's nodejs has them).
    headers = Path(node).resolve().parent.parent
    if (headers / "include" / "node" / "node_version.h").exists():
        env.setdefault("npm_config_nodedir", str(headers))
    print(f"  installing {what} from npm into {app}{note} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    verb = "ci" if lock.exists() else "install"
    try:
        done = subprocess.run(
            [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerError(f"npm {verb} for {what} took over {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ServerError(f"npm {verb} for {what} failed: {done.stderr[-1500:]}")
    print(f"  installed in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    stamp.write_bytes(manifest)
    return app


def ensure_express(cache: Path) -> Path:
    """The Express reference consumer (express, winston) installed under ``cache``."""
    return _ensure_npm_app(EXPRESS_SRC, cache / "express-app", "the Express reference", 600)


def start_express(cache: Path, logdir: Path, name: str, log: Path, limit: str) -> ServerProcess:
    """Start the Express consumer (``limit``: a body limit like ``10mb``, or ``default``)."""
    app = ensure_express(cache)
    node = shutil.which("node") or "node"
    server = ServerProcess([node, "server.js", "0", str(log), limit], logdir, name, cwd=app)
    server.wait_ready()
    return server


def ensure_node_durable(cache: Path) -> Path:
    """The durable Node peer (express, better-sqlite3) installed under ``cache``.

    better-sqlite3's prebuilt binaries are fetched from outside the npm registry; where
    that fails, its install script compiles SQLite and the addon with node-gyp, which
    takes minutes on a small machine: done once, then cached.
    """
    note = " (better-sqlite3 may compile from source: several minutes, once)"
    return _ensure_npm_app(
        NODE_DURABLE_SRC, cache / "node-durable-app", "the durable Node peer", 1800, note
    )


def start_node_durable(cache: Path, logdir: Path, name: str, db: Path) -> ServerProcess:
    """Start the durable Node peer on a free loopback port, storing into ``db``."""
    app = ensure_node_durable(cache)
    node = shutil.which("node") or "node"
    server = ServerProcess([node, "server.js", "0", str(db)], logdir, name, cwd=app)
    server.wait_ready()
    return server


def start_naive(logdir: Path, name: str, log: Path) -> ServerProcess:
    """Start ``bench.naive_app`` on a free loopback port, appending events to ``log``."""
    cmd = [sys.executable, "-m", "bench.naive_app", "--listen", "127.0.0.1:0", "--log", str(log)]
    server = ServerProcess(cmd, logdir, name)
    server.wait_ready()
    return server


def count_lines(path: Path) -> int:
    """Lines in a file (0 when it does not exist), read in chunks."""
    if not path.exists():
        return 0
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n
