"""streamd's own child processes (the ingest workers, a kafka sink's producer process):
how they are started, and how their end is told.

Spawned, never forked (the daemon has threads by then), as ``python -P -m MODULE`` with
``PYTHONPATH`` naming the directory of the running ``streamd`` package (a venv, a source
tree, or the directory shiv unpacked a zipapp into): the child imports the very streamd
the daemon runs. ``-P`` because ``-m`` puts the working directory first on the path: a
daemon started in a directory holding another streamd checkout ran that checkout's code.
"""

from __future__ import annotations

import os
import signal
import sys

import streamd


def python_argv(module: str) -> list[str]:
    """The start of a child's argv: this interpreter running ``module``."""
    return [sys.executable, "-P", "-m", module]


def environment() -> dict[str, str]:
    """This process's environment, with the running streamd first on ``PYTHONPATH``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(streamd.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def describe_exit(code: int | None) -> str:
    """A child's exit status in words: ``status 3``, ``signal SIGKILL``."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
