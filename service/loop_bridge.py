"""Settling an event loop's futures from other threads, one loop wake-up per burst.

`asyncio.wrap_future` and `run_in_executor` wake the loop once per future, each wake-up a
write to its self-pipe and a hand-off of the GIL. A decision's future is settled by the log's
committer, which makes a whole group of decisions durable at once: `LoopBridge.settle` queues
the results and wakes the loop only if no wake-up is pending, so a group costs one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class LoopBridge:
    """Settles futures of `loop` from any thread, in the order they were settled."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: deque[tuple[asyncio.Future, object, BaseException | None]] = deque()
        self._wake_pending = False

    def settle(self, future: asyncio.Future, result: object = None, error: BaseException | None = None) -> None:
        """From any thread: complete `future` with `result`, or with `error` if it is given."""
        with self._lock:
            self._pending.append((future, result, error))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody awaits these futures any more
            with self._lock:
                self._pending.clear()
                self._wake_pending = False

    def _drain(self) -> None:
        with self._lock:
            settled, self._pending = self._pending, deque()
            self._wake_pending = False
        for future, result, error in settled:
            if future.done():  # cancelled meanwhile (the client went away)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
