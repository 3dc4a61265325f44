"""The one hot-reload mechanism: what a worker serves, replaced whole when its source changes.

A supervised poller (service/supervisor.py) looks at the source every `poll_s` seconds. New
content is loaded and checked off the request path, then swapped in by one reference
assignment: requests in flight finish with what they started with. Content that fails its
checks is refused: the old content keeps serving, and the refusal shows in the API
(`refused`) and the metrics (a gauge at 1 and a counter) until new content is swapped in. A
poll that fails is retried with backoff while `/readyz` says so.

A subclass says what it serves: `poll_once` looks at its source and `offer`s (or `swap`s in)
what changed; `announce_swap` and `announce_refusal` write its metrics and log line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from service.supervisor import Supervised

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from service.ops.metrics import ServiceMetrics

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why and when new content was refused; `version` names a refused model version."""

    reason: str
    at: float
    version: str | None = None


class Reloader(Generic[T]):
    """Serves `current` (replaced whole on a swap); see the module docstring. `refusable`: the
    errors a load raises for content that must not serve (anything else is a failed poll)."""

    refusable: tuple[type[Exception], ...] = ()

    def __init__(
        self, task: str, metrics: ServiceMetrics, refused_gauge: Gauge, refusals: Counter, *, current: T,
        poll_s: float, max_backoff_s: float,
    ) -> None:
        self.metrics = metrics
        self.poll_s = poll_s
        self.current = current
        self.refused: Refusal | None = None
        self._refused_gauge = refused_gauge
        self._refusals = refusals
        self._swap_lock = threading.Lock()
        self.poller = Supervised(task, self._poll_step, metrics, base_s=poll_s, max_backoff_s=max(poll_s, max_backoff_s))

    def stop(self) -> None:
        self.poller.stop(timeout_s=5.0)

    def poll_once(self) -> None:
        """Look at the source once and `offer` what changed."""
        raise NotImplementedError

    def announce_swap(self, previous: T, current: T) -> None:
        """Metrics and log line of a swap (called under the swap lock)."""
        raise NotImplementedError

    def announce_refusal(self, refusal: Refusal) -> None:
        """Log line of a refusal (the refusal metrics are already counted)."""
        raise NotImplementedError

    def offer(self, load: Callable[[], T], *, version: str | None = None) -> bool:
        """Load and check new content with `load`, then swap it in; if `load` raises one of
        `refusable`, refuse it (naming `version`) and keep serving the current content."""
        try:
            content = load()
        except self.refusable as err:
            self.refuse(str(err), version=version)
            return False
        self.swap(content)
        return True

    def swap(self, content: T) -> None:
        """Serve `content` from now on (one reference assignment) and clear any refusal."""
        with self._swap_lock:
            previous = self.current
            self.current = content
            self.clear_refusal()
            self.announce_swap(previous, content)

    def refuse(self, reason: str, *, version: str | None = None) -> None:
        self.refused = Refusal(reason, time.time(), version)
        self._refusals.inc()
        self._refused_gauge.set(1)
        self.announce_refusal(self.refused)

    def show_refusal(self, refusal: Refusal) -> None:
        """Show a refusal again that a later swap cleared (it was counted and logged already),
        e.g. the pointer's version while the one before it serves in its place."""
        self.refused = refusal
        self._refused_gauge.set(1)

    def clear_refusal(self) -> None:
        self.refused = None
        self._refused_gauge.set(0)

    def _poll_step(self) -> float:
        self.poll_once()
        return self.poll_s
