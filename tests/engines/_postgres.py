"""A real PostgreSQL server for the tests: ``initdb`` in a temporary directory, one
loopback port, the Unix socket inside that directory; stop and start it again at will.

PostgreSQL refuses to run as root: as root, its programs run as the ``postgres``
user (Debian's package creates it) through ``runuser``. No pytest here: the
multi-receiver tests reuse it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

from tests.system._harness import free_port

PASSWORD = "streamd-test-secret"
INSTALL_HINT = "PostgreSQL server binaries: apt-get install postgresql (Debian: postgresql-15)"


def find_bin(name: str) -> str | None:
    """A PostgreSQL server program (initdb, pg_ctl) from PATH or Debian's versioned dirs."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def available() -> str | None:
    """None when a server can be started here; else why not."""
    for name in ("initdb", "pg_ctl"):
        if find_bin(name) is None:
            return f"{name} not found ({INSTALL_HINT})"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1: ``with PostgresServer() as pg: pg.dsn()``.

    The superuser ``postgres`` has the password :data:`PASSWORD` over TCP (scram);
    over the Unix socket in :attr:`socket_dir` it needs none.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="streamd-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log = self.root / "server.log"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o755)
        self.running = False

    def _run(self, *argv: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._as_postgres, *argv], capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chmod(pwfile, 0o644)
        self._run("mkdir", "-p", str(self.socket_dir))
        initdb = find_bin("initdb")
        assert initdb is not None
        self._run(
            initdb, "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 60\n"
                "shared_buffers = 32MB\n"
                "max_wal_size = 256MB\n"
            )

    def start(self) -> None:
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def __enter__(self) -> PostgresServer:
        try:
            self.init()
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", **extra: str) -> str:
        """A TCP conninfo without the password (the way streamd is configured)."""
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": "postgres"}
        parts["dbname"] = dbname
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit superuser connection over the Unix socket (for the tests' SQL)."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname,
            autocommit=True, options="-c TimeZone=UTC -c default_transaction_read_only=off",
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """A new empty database; its DSN."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def wait_connectable(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
