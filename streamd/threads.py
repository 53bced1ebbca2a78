"""streamd's threads, named for the operating system too.

CPython before 3.14 names a ``threading.Thread`` for Python only: ``top -H``, ``ps -L``
and ``/proc/PID/task/TID/comm`` show every thread of the daemon as ``streamd`` (or
the start of its command line). :class:`Thread` gives the OS thread its Python name,
so an operator can tell the journal writer from the indexer when one of them is busy,
and ``bench.request_cpu`` can report each thread's CPU.
"""

from __future__ import annotations

import threading
from typing import Any

COMM_BYTES = 15  # Linux's limit on a thread's name (TASK_COMM_LEN less the NUL)


def name_os_thread(name: str) -> bool:
    """Give the calling OS thread ``name`` (cut to :data:`COMM_BYTES`); False where the
    system does not let it (not Linux, no /proc): the name is only for people."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(name.encode("utf-8", "replace")[:COMM_BYTES])
    except OSError:
        return False
    return True


class Thread(threading.Thread):
    """A :class:`threading.Thread` whose OS thread carries ``comm`` (default: its
    name) while it runs. Give ``comm`` when the name's first 15 bytes would not tell
    two threads apart."""

    def __init__(self, *args: Any, comm: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.comm = comm or self.name

    def run(self) -> None:
        name_os_thread(self.comm)
        super().run()
