"""Run one page's examples the way a reader follows it: in order, in one directory, against
one streamd started the way ``make run`` starts it.

What differs from a reader's machine is substituted, visibly and nowhere else
(docs/README.md, "How the examples are tested"):

- the page's streamd listens on free loopback ports, so ``127.0.0.1:8080`` (ingest),
  ``127.0.0.1:8081`` (admin) and ``127.0.0.1:8090`` (``streamd emit --journal-server``)
  in a block, and in the output it is compared with, become those ports;
- the directory is a fresh one holding a link ``tests`` to the checkout's tests/ (the
  example deliveries under tests/fixtures/contract), with ``streamd`` on ``PATH``;
- in a configuration, ``/etc/streamd/`` and ``/var/lib/streamd`` are moved under that
  directory, and the files a marker's ``creates:`` names are made there.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

import pytest
import trustme

from tests.docs._markdown import REPO, Block, output_matches
from tests.system._harness import Spawned, clean_env, free_port, streamd_argv, wait_for

DOC_PORTS = (8080, 8081, 8090)  # ingest, admin, emit --journal-server
# Programs the examples use besides streamd and the shell: without one, the page skips
# (and says which), as the systemd tests do without systemd; make test installs them.
TOOLS = ("curl", "jq", "sqlite3")
_SERVE = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S+\s+)*)make run$")
_ADMIN_READY = re.compile(r"^streamd admin ready: ", re.MULTILINE)
BLOCK_TIMEOUT = 180.0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _content(kind: str) -> str:
    """What a file a ``creates:`` option names holds."""
    if kind == "token":  # an API or admin token file
        return f"sd_{secrets.token_urlsafe(32)}\n"
    if kind == "whsec":  # a Standard Webhooks signing secret
        return f"whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}\n"
    if kind == "secret":  # a client secret
        return f"{secrets.token_urlsafe(24)}\n"
    if kind == "tls-cert":  # a server certificate (PEM) for 127.0.0.1 and localhost
        return "".join(p.bytes().decode() for p in _server_cert().cert_chain_pems)
    if kind == "tls-key":  # ... and its key
        return _server_cert().private_key_pem.bytes().decode()
    if kind == "ca":  # a CA certificate, e.g. the one that signs client certificates
        return trustme.CA().cert_pem.bytes().decode()
    if kind in ("rsa-key", "rsa-public-key"):  # a signing key pair's private or public half
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(65537, 2048)
        if kind == "rsa-key":
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        return (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
    raise ValueError(
        f"unknown kind of file {kind!r} (token, whsec, secret, tls-cert, tls-key, ca, rsa-key "
        "or rsa-public-key)"
    )


@functools.cache
def _server_cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1", "localhost")


class PageRun:
    """A reader's directory, shell and streamd for one page."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tests").symlink_to(REPO / "tests")
        self.logs = workdir / ".doctest"
        self.logs.mkdir()
        self.root = self.logs / "root"  # where /etc/streamd and /var/lib/streamd go
        self.ports = {doc: free_port() for doc in DOC_PORTS}
        env = clean_env()
        env.pop("CREDENTIALS_DIRECTORY", None)
        env["PATH"] = f"{Path(streamd_argv()[0]).parent}{os.pathsep}{env.get('PATH', '')}"
        env["NO_COLOR"] = "1"
        self.env = env
        self.daemon: Spawned | None = None
        self._daemons: list[Spawned] = []
        self._groups: list[int] = []
        self._count = 0
        self.last_output: str | None = None

    def __enter__(self) -> PageRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever a block left running in the background (emit --journal-server &).
        for group in self._groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for daemon in self._daemons:
            if daemon.alive():
                daemon.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.popen.wait(10)
            # Captured by pytest: shown only when the test failed.
            print(f"--- {daemon.name} (pid {daemon.pid}) exit {daemon.popen.returncode}")
            print(daemon.stderr()[-3000:], end="")

    # -- substitutions ------------------------------------------------------------------

    def ports_in(self, text: str) -> str:
        for doc, real in self.ports.items():
            text = text.replace(f"127.0.0.1:{doc}", f"127.0.0.1:{real}")
        return text

    def paths_in(self, text: str) -> str:
        text = text.replace("/etc/streamd/", f"{self.root}/etc/streamd/")
        return text.replace("/var/lib/streamd", f"{self.root}/var/lib/streamd")

    # -- the page's streamd --------------------------------------------------------------

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """``make run``: ``streamd serve`` in the directory, on the page's ports."""
        argv = [*streamd_argv(), "serve", "--listen", f"127.0.0.1:{self.ports[8080]}"]
        argv += ["--admin-listen", f"127.0.0.1:{self.ports[8081]}"]
        name = f"streamd-{len(self._daemons)}"
        out_path, err_path = self.logs / f"{name}.stdout", self.logs / f"{name}.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env={**self.env, **(extra_env or {})},
            )
        daemon = Spawned(name, popen, out_path, err_path)
        self._daemons.append(daemon)
        self.daemon = daemon

        def ready() -> bool:
            if not daemon.alive():
                raise AssertionError(
                    f"streamd exited with {daemon.popen.returncode}:\n{daemon.stderr()[-3000:]}"
                )
            return _ADMIN_READY.search(daemon.stdout()) is not None

        wait_for(ready, timeout=60, what="the page's streamd to be ready")

    def stop(self) -> None:
        """Ctrl-C on ``make run``: a graceful stop, exit 0."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGINT)
        status = self.daemon.wait(60)
        assert status == 0, f"streamd exited with {status}:\n{self.daemon.stderr()[-3000:]}"
        self.daemon = None

    # -- blocks --------------------------------------------------------------------------

    def execute(self, block: Block) -> None:
        """Do what the block's marker says; fail naming the block."""
        if block.kind == "skip":
            return
        handler = {
            "run": self._run,
            "output": self._output,
            "serve": self._serve,
            "daemon-output": self._daemon_output,
            "check-config": self._check_config,
        }[block.kind]
        handler(block)

    def _run(self, block: Block) -> None:
        for tool in TOOLS:
            if re.search(rf"(^|[\s|;(]){tool}\s", block.text, re.MULTILINE) and not shutil.which(
                tool, path=self.env["PATH"]
            ):
                pytest.skip(f"{block.where} uses {tool}, which is not installed here")
        if self.daemon is None:
            self.start()
        self._count += 1
        out_path = self.logs / f"{self._count:03d}.stdout"
        err_path = self.logs / f"{self._count:03d}.stderr"
        script = self.ports_in(block.text)
        stdin = block.options.get("stdin")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,  # its own process group: what it leaves running dies
                # Ctrl-C must work as at a terminal even when the suite itself was started
                # where SIGINT is ignored (a background job of a script: the child would
                # inherit SIG_IGN, and `tail -f` would never stop).
                preexec_fn=_default_sigint,
            )
        self._groups.append(proc.pid)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(f"{stdin}\n".encode())
            proc.stdin.close()

        def said() -> str:
            return (
                f"{block.where}: the block\n{script}\n--- stdout\n{out_path.read_text()[-3000:]}"
                f"\n--- stderr\n{err_path.read_text()[-3000:]}"
            )

        if "interrupt" in block.options:
            # Ctrl-C once it has printed something: the terminal signals the whole group.
            wait_for(lambda: out_path.read_text().strip() or proc.poll() is not None,
                     timeout=60, what=f"{block.where} to print", context=said)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            ok = {0, 130}  # 130: Ctrl-C came before the command began to follow
        else:
            ok = {0}
        try:
            status = proc.wait(BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running after {BLOCK_TIMEOUT:g} s: {said()}") from None
        assert status in ok, f"exit status {status}: {said()}"
        self.last_output = out_path.read_text()

    def aliases(self) -> dict[str, str]:
        """In compared output, a documented address also matches the one substituted
        (``check-config`` prints the configuration's own, the page's streamd the other)."""
        return {f"127.0.0.1:{doc}": f"127.0.0.1:{real}" for doc, real in self.ports.items()}

    def _output(self, block: Block) -> None:
        assert self.last_output is not None
        assert output_matches(block.text, self.last_output, self.aliases()), (
            f"{block.where}: the output differs.\n--- documented\n{block.text}"
            f"--- printed (ports {self.ports})\n{self.last_output}"
        )

    def _serve(self, block: Block) -> None:
        commands = [
            line.strip()
            for line in block.text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        match = _SERVE.match(commands[0]) if len(commands) == 1 else None
        assert match is not None, f"{block.where}: a serve block is one '[VAR=value ...] make run'"
        env = dict(item.split("=", 1) for item in match.group(1).split())
        if self.daemon is not None:
            self.stop()
        self.start(env)

    def _daemon_output(self, block: Block) -> None:
        if self.daemon is None:
            self.start()
        assert self.daemon is not None
        printed = self.daemon.stdout()
        assert output_matches(block.text, printed, self.aliases()), (
            f"{block.where}: streamd printed otherwise.\n--- documented\n{block.text}"
            f"--- printed (ports {self.ports})\n{printed}"
        )

    def _check_config(self, block: Block) -> None:
        self._count += 1
        if "file" in block.options:
            cwd = self.workdir
            path = cwd / block.options["file"]
        else:
            cwd = self.logs / f"config-{self._count:03d}"
            cwd.mkdir()
            path = cwd / "streamd.toml"
        path.write_text(self.paths_in(self.ports_in(block.text)))
        env = dict(self.env)
        for item in filter(None, (i.strip() for i in block.options.get("creates", "").split(","))):
            name, _, kind = item.partition("=")
            if name.startswith("$CREDENTIALS_DIRECTORY/"):
                env["CREDENTIALS_DIRECTORY"] = str(self.logs / "credentials")
                target = Path(env["CREDENTIALS_DIRECTORY"]) / name.split("/", 1)[1]
            else:
                target = cwd / self.paths_in(name)  # an absolute path stays absolute
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_content(kind))
            target.chmod(0o600)
        result = subprocess.run(
            [*streamd_argv(), "--log-format", "text", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=60,
            check=False,
        )
        warned = bool(result.stderr) if "warns" in block.options else not result.stderr
        assert result.returncode == 0 and ": ok — " in result.stdout and warned, (
            f"{block.where}: check-config (exit {result.returncode}) on\n{path.read_text()}"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
        )
        self.last_output = result.stderr  # what an output block after it shows
