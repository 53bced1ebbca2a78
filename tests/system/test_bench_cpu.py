"""The benchmark's CPU accounting: a receiver's whole process tree, exited children too."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from bench._server import ServerProcess
from bench.ingest import cpu_per_work, settle

# A parent that starts a child burning BURN_S of CPU, waits for it (reaps it), then says
# it is ready and sleeps until killed: the child's CPU lives on only in the parent's
# cutime/cstime.
BURN_S = 0.4
_TREE = f"""
import subprocess, sys, time
burn = "import time\\nwhile time.process_time() < {BURN_S}: pass"
subprocess.run([sys.executable, "-c", burn], check=True)
print("streamd ready: http://127.0.0.1:1", flush=True)
time.sleep(120)
"""


def test_cpu_of_a_child_that_exited_is_counted(tmp_path: Path) -> None:
    server = ServerProcess([sys.executable, "-c", _TREE], tmp_path, "tree")
    try:
        server.wait_ready(timeout=60)
        assert server.pids() == [server.pid]  # the child is gone
        # Its CPU (BURN_S, less one clock tick of rounding) is still in the tree's count;
        # the parent alone spent far less than that sleeping.
        assert server.cpu_s() >= BURN_S - 0.02
        assert server.main_cpu_s() < server.cpu_s()
    finally:
        server.kill()


# A receiver that keeps working after its last answer: it says ready, then burns BURN_S
# of CPU, then idles.
_BEHIND = f"""
import time
print("streamd ready: http://127.0.0.1:1", flush=True)
while time.process_time() < {BURN_S}: pass
time.sleep(120)
"""


def test_work_left_behind_by_the_load_is_counted(tmp_path: Path) -> None:
    server = ServerProcess([sys.executable, "-c", _BEHIND], tmp_path, "behind")
    try:
        server.wait_ready(timeout=60)
        waited, after = settle(server, timeout=60)
        # Nearly all of the burn (it started as ready was printed, a poll before settle).
        assert after >= BURN_S - 0.1
        assert waited < 60  # it went idle; it did not give up
    finally:
        server.kill()


def test_cpu_per_work_scales_and_refuses_nothing_to_divide() -> None:
    load = {"acked_batches": 2_000, "acked_events": 40_000}
    figures = cpu_per_work(3.0, load)
    assert figures == {"cpu_s_per_1k_requests": 1.5, "cpu_s_per_1m_events": 75.0}
    nothing = cpu_per_work(3.0, {"acked_batches": 0, "acked_events": 0})
    assert nothing == {"cpu_s_per_1k_requests": None, "cpu_s_per_1m_events": None}
    assert all(math.isfinite(v) for v in figures.values() if v is not None)


# A process whose named thread burns BURN_S of CPU while the main thread sleeps.
_NAMED = f"""
import time
from streamd.threads import Thread
def burn():
    while time.thread_time() < {BURN_S}: pass
    time.sleep(120)
Thread(target=burn, name="journal-writer", daemon=True).start()
time.sleep(0.05)
print("streamd ready: http://127.0.0.1:1", flush=True)
time.sleep(120)
"""


def test_request_cpu_counts_each_named_thread_apart(tmp_path: Path) -> None:
    from bench.request_cpu import _threads_cpu_s

    server = ServerProcess([sys.executable, "-c", _NAMED], tmp_path, "named")
    try:
        server.wait_ready(timeout=60)
        settle(server, timeout=60)
        threads = _threads_cpu_s(server.pid)
        # schedstat, not stat: on this VM's kernel a thread's stat times read 0.
        assert threads["journal-writer"] >= BURN_S - 0.05
        main = Path(f"/proc/{server.pid}/comm").read_text().strip()
        assert threads[main] < 0.5 * BURN_S, threads  # the main thread slept
    finally:
        server.kill()
