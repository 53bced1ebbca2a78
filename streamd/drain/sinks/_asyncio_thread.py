"""An asyncio event loop in a thread of its own, and a way for trio to wait on it.

For client libraries that exist only for asyncio (nats-py): their coroutines run on
this loop, never on trio's, and trio waits for the result without blocking its loop
and without holding a worker thread (the future's done-callback wakes the trio task
through the run's token).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import trio

from streamd.threads import Thread

T = TypeVar("T")


class AsyncioThread:
    """A running asyncio loop in a daemon thread (daemon: an exit never waits for it)."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            # Whatever is still running (a publish cancelled too late) ends here, so the
            # loop closes without "Task was destroyed but it is pending" warnings.
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; its future can be waited for with :func:`wait`."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stop(self, timeout: float) -> None:
        """Stop the loop and wait (blocking, up to ``timeout``) for its thread to end."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


async def wait(future: concurrent.futures.Future[T]) -> T:
    """Wait in trio for a future of :meth:`AsyncioThread.submit`.

    Cancelling the waiting trio task cancels the coroutine in its loop too (a cancelled
    delivery is retried by the runner; the destination dedups what had gone out)."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        # RunFinishedError: the trio run ended first, nobody waits any more.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()
