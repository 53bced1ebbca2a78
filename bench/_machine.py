"""Facts about the machine and software a result was measured on."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("streamd", "trio", "hypercorn", "h11", "msgspec", "orjson", "httpx")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _filesystem(path: Path) -> dict[str, str] | None:
    """The mount holding ``path``: device and type (tmpfs would make fsync free)."""
    best: list[str] | None = None
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(path.resolve())
    for m in mounts:
        mp = m[1]
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) > len(best[1])):
            best = m
    if best is None:
        return None
    return {"device": best[0], "mount": best[1], "type": best[2], "options": best[3]}


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _node_versions(workdir: Path) -> dict[str, str | None]:
    """Node.js and the npm packages of the Node peers (installed under ``workdir``)."""
    out: dict[str, str | None] = {
        "node": None,
        "express": None,
        "winston": None,
        "better-sqlite3": None,
    }
    try:
        done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
        out["node"] = done.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return out
    for app, name in (
        ("express-app", "express"),
        ("express-app", "winston"),
        ("node-durable-app", "better-sqlite3"),
    ):
        manifest = workdir / app / "node_modules" / name / "package.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            out[name] = json.loads(manifest.read_text())["version"]
    return out


def machine_facts(repo: Path, workdir: Path, module: str = "bench.ingest") -> dict[str, Any]:
    """Return CPU, memory, kernel, filesystem, versions, git state and the command line."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git(repo, "status", "--porcelain")
    return {
        "when_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "filesystem": _filesystem(workdir),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "versions": versions,
        "node": _node_versions(workdir),
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "command": " ".join([Path(sys.executable).name, "-m", module, *sys.argv[1:]]),
    }
