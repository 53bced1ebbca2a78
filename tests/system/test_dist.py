"""What an operator installs: the units, the install script, the one-file build."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ._harness import READY, REPO_ROOT, Processes, fixture_bytes, post, read_token, wait_for

SYSTEMD_DIR = REPO_ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing (make test installs systemd)"
)
STREAMD = Path(sys.executable).with_name("streamd")


def _units_with_real_binary(tmp_path: Path) -> list[Path]:
    # verify checks that ExecStart's binary exists: point it at this checkout's.
    out = []
    for name in ("streamd.service", "streamd.socket"):
        text = (SYSTEMD_DIR / name).read_text().replace("/usr/local/bin/streamd", str(STREAMD))
        path = tmp_path / name
        path.write_text(text)
        out.append(path)
    return out


@needs_analyze
def test_units_verify_without_a_single_message(tmp_path: Path) -> None:
    assert ANALYZE is not None
    units = _units_with_real_binary(tmp_path)
    result = subprocess.run(
        [ANALYZE, "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    # verify exits 0 even with warnings: the output must be empty.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_analyze
def test_service_sandbox_exposure_is_at_most_2(tmp_path: Path) -> None:
    assert ANALYZE is not None
    (service, _) = _units_with_real_binary(tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for streamd\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) <= 2.0


def test_install_script_is_idempotent_and_keeps_what_the_operator_changed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    binary = tmp_path / "streamd-binary"
    binary.write_text("#!/bin/sh\necho streamd 9.9.9\n")
    binary.chmod(0o755)
    env = {**os.environ, "DESTDIR": str(root)}

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(SYSTEMD_DIR / "install.sh"), str(binary)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    first = install()
    assert first.returncode == 0, first.stderr
    assert "generated an API token" in first.stdout
    assert "Next steps" in first.stdout
    installed = root / "usr/local/bin/streamd"
    assert os.access(installed, os.X_OK)
    token_file = root / "etc/streamd/api-token"
    token = read_token(token_file)
    assert token.startswith("sd_") and len(token) > 40
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (root / "etc/systemd/system/streamd.service").read_text() == (
        SYSTEMD_DIR / "streamd.service"
    ).read_text()
    config = root / "etc/streamd/streamd.toml"
    config.write_text(config.read_text() + "\n# changed by the operator\n")

    second = install()
    assert second.returncode == 0, second.stderr
    assert "kept the API token" in second.stdout and "kept your" in second.stdout
    assert read_token(token_file) == token
    assert config.read_text().endswith("# changed by the operator\n")
    assert not list(root.rglob("*.new"))  # no half-written file left behind


def test_install_script_refuses_a_missing_binary(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(SYSTEMD_DIR / "install.sh"), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env={**os.environ, "DESTDIR": str(tmp_path / "root")},
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "not found: build it first with 'make dist'" in result.stderr
    assert not (tmp_path / "root").exists()


def test_example_config_is_valid(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(STREAMD), "check-config", "--config", str(SYSTEMD_DIR / "streamd.toml.example")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert ": ok" in result.stdout


def test_dist_build_runs_outside_the_repo(processes: Processes, tmp_path: Path) -> None:
    shiv = Path(sys.executable).with_name("shiv")
    target = tmp_path / "dist" / "streamd"
    target.parent.mkdir()
    argv = [str(shiv), "--quiet", "-c", "streamd", "-o", str(target), "--python"]
    argv += ["/usr/bin/env python3", "--reproducible", "--compressed", str(REPO_ROOT)]
    build = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert os.access(target, os.X_OK)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # No venv on PATH and no PYTHONPATH: only what the zipapp carries can be imported.
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {"PATH": path, "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}
    env["PYTHONUNBUFFERED"] = "1"
    spawned = processes.spawn(
        [
            str(target),
            "serve",
            *("--listen", "127.0.0.1:0", "--data-dir", str(outside / "data")),
            *("--admin-listen", "127.0.0.1:0"),  # not 8081, which a running streamd may hold
        ],
        "dist-streamd",
        env=env,
    )
    match = wait_for(
        lambda: READY.search(spawned.stdout()),
        timeout=60,
        what="dist/streamd to be ready",
        context=spawned.stderr,
    )
    assert match is not None
    port = int(match.group(1))
    token = read_token(outside / "data" / "api-token")
    reply = post(port, fixture_bytes("legacy_push.json"), token=token)
    assert (reply.status, reply.body) == (200, {"accepted": 4, "duplicates": 0})
    spawned.send_signal(signal.SIGTERM)
    assert spawned.wait(30) == 0
    # It ran from the zipapp's own copy, unpacked under SHIV_ROOT.
    assert list((tmp_path / "shiv").glob("*/site-packages/streamd/__init__.py"))
