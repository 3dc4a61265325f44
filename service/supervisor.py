"""Supervised background work: every thread the service runs besides its request handling.

A task is a `step()` called in a loop on a thread of its own. `step()` returns how long to
wait before the next call (0: at once; None: the task is finished). A step that raises is a
failure: it is counted (`shelfbandit_background_failures_total{task}`), logged with its
traceback once, at the first failure of a streak (`failing` keeps the latest error), and the
step is retried after a capped exponential backoff: `min(max_backoff_s, base_s * 2**(n-1))`
after the n-th failure in a row. While a task is failing, `failing` names the error and
`/readyz` answers 503; the first step that succeeds ends the streak.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.logs import get_logger

if TYPE_CHECKING:
    from service.ops.metrics import ServiceMetrics

log = get_logger()


class Supervised:
    """Runs `step` until it returns None or `stop()` is called; see the module docstring."""

    def __init__(
        self,
        task: str,
        step: Callable[[], float | None],
        metrics: ServiceMetrics | None = None,
        *,
        base_s: float = 0.1,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not 0 < base_s <= max_backoff_s:
            raise ValueError(f"backoff: need 0 < base_s <= max_backoff_s (found {base_s}, {max_backoff_s})")
        self.task = task
        self.metrics = metrics
        self.base_s = base_s
        self.max_backoff_s = max_backoff_s
        self.failing: str | None = None  # "Type: message" of the current streak's last failure
        self.n_failures = 0  # in the current streak
        self._step = step
        self._streak_started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervised:
        self._thread = threading.Thread(target=self._run, name=self.task, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the task to end (it ends at its next wait) and wait for it."""
        self._stop.set()
        self.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._step()
            except Exception as err:  # every failure is supervised: counted, logged, retried
                delay = self._failed(err)
            else:
                self._succeeded()
            if delay is None or (delay > 0 and self._stop.wait(delay)):
                return

    def backoff_s(self) -> float:
        """The wait after the current streak's last failure."""
        return min(self.max_backoff_s, self.base_s * 2.0 ** (self.n_failures - 1))

    def _failed(self, err: Exception) -> float:
        error = f"{type(err).__name__}: {err}"
        if self.n_failures == 0:
            self._streak_started = time.time()
        self.n_failures += 1
        if self.metrics is not None:
            self.metrics.background_failures.labels(self.task).inc()
            self.metrics.background_failing.labels(self.task).set(1)
        if self.n_failures == 1:
            fields = {"task": self.task, "error": error, "failures_in_a_row": self.n_failures,
                      "retry_in_s": round(self.backoff_s(), 3),
                      "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))}
            event_id = getattr(err, "event_id", None)
            if event_id is not None:
                fields["event_id"] = event_id
            log.error("background task failed; retrying with backoff", extra={"fields": fields})
        self.failing = error
        return self.backoff_s()

    def _succeeded(self) -> None:
        if self.failing is None:
            return
        log.info("background task recovered", extra={"fields": {
            "task": self.task, "failures": self.n_failures, "failing_s": round(time.time() - self._streak_started, 3)}})
        self.failing = None
        self.n_failures = 0
        if self.metrics is not None:
            self.metrics.background_failing.labels(self.task).set(0)
