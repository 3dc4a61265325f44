"""The service's wall clock: the system's wall time when the process started plus the monotonic
time since, so a step of the system clock while the service runs (an NTP correction, an
operator's `date -s`, a restored VM) can neither reorder a decision segment nor move a reward
window: the joiner reads each segment in time order, and a decision stamped an hour late would
hold back every decision logged after it. A step shows at the next start of the process.
"""

from __future__ import annotations

import time


class SteadyClock:
    """`clock()` -> seconds since the epoch, advancing exactly as `time.monotonic()` does."""

    def __init__(self) -> None:
        self._origin = time.time() - time.monotonic()

    def __call__(self) -> float:
        return self._origin + time.monotonic()
