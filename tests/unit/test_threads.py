"""OS thread names (streamd/threads.py): what ``top -H`` and ``ps -L`` show."""

from __future__ import annotations

import threading
from pathlib import Path

from streamd.threads import COMM_BYTES, Thread, name_os_thread


def comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().rstrip("\n")


def test_a_thread_carries_its_name_or_its_comm_while_it_runs() -> None:
    seen: list[str] = []

    def look() -> None:
        seen.append(comm(threading.get_native_id()))

    threads = [
        Thread(target=look, name="journal-writer"),
        Thread(target=look, name="journal-checkpoint", comm="journal-ckpt"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(seen) == ["journal-ckpt", "journal-writer"]


def test_a_long_name_is_cut_to_what_linux_keeps_and_the_caller_keeps_its_own() -> None:
    before = comm(threading.get_native_id())
    seen: list[str] = []

    def long_name() -> None:
        assert name_os_thread("streamd-kafka-a-sink-with-a-long-name")
        seen.append(comm(threading.get_native_id()))

    thread = threading.Thread(target=long_name)
    thread.start()
    thread.join(10)
    assert seen == ["streamd-kafka-a-sink-with-a-long-name"[:COMM_BYTES]]
    assert comm(threading.get_native_id()) == before  # only the calling thread is named
