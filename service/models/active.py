"""The model a worker serves, and the hot swap when the store's active pointer moves.

The poller (service.models.reloader) reads the pointer every `poll_s` seconds. A new version is
loaded, probed (one small ranking) and warmed for the pages the served one used (`warm_like`,
at most WARM_BUDGET_S) off the request path, then swapped in with one reference assignment:
requests in flight finish on the model they started with. A version that fails (corrupt,
unreadable, fails the probe) is refused: the old model keeps serving and the refusal shows in
`/v1/model` and the metrics until the pointer moves again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bandit.policy import Policy
from bandit.types import Context, Shelf
from service.logs import get_logger
from service.models.reloader import Refusal, Reloader
from service.models.store import ModelRefused, ModelStore, ModelVersion, UnknownModelVersion

if TYPE_CHECKING:
    from service.ops.metrics import ServiceMetrics

PROBE_SHELVES = (Shelf("probe-a", {"kind": "probe"}), Shelf("probe-b", {"kind": "probe"}))
WARM_BUDGET_S = 2.0  # a new version prepares for the pages the served one used, for at most this long

log = get_logger()


@dataclass(frozen=True, slots=True)
class Served:
    """A loaded policy and where it came from (replaced whole on a swap)."""

    policy: Policy
    stored: ModelVersion
    loaded_at: float

    @property
    def version(self) -> str:
        return self.stored.version


def probe(policy: Policy, version: str) -> None:
    """Rank a tiny request; raise ModelRefused if the policy cannot."""
    try:
        policy.rank(Context({"probe": True}), PROBE_SHELVES, 2, event_id="model-probe")
    except Exception as err:  # any failure here means the model must not serve
        raise ModelRefused("version", f"{version} is refused (a probe ranking failed: {type(err).__name__}: {err})") from None


class ActiveModel(Reloader[Served | None]):
    """Holds the served model; `current` is what a request ranks with."""

    refusable = (ModelRefused, UnknownModelVersion)

    def __init__(self, store: ModelStore, metrics: ServiceMetrics, *, poll_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        super().__init__("model-poller", metrics, metrics.model_refused, metrics.model_refusals, current=None,
                         poll_s=poll_s, max_backoff_s=max_backoff_s)
        self.store = store
        self._pointer_seen: tuple[str, float] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the active version (or, if it is refused, the one before it) and start polling."""
        pointer = self.store.active()
        if pointer is not None:
            self._pointer_seen = (pointer.version, pointer.activated_at)
            refusal = None
            for version in (pointer.version, pointer.previous):
                if version is not None and self._try_load(version):
                    break
                refusal = refusal or self.refused
            if refusal is not None and self.current is not None:  # the previous one serves: the pointer's stays refused
                self.show_refusal(refusal)
        self.poller.start()

    # -- swapping ------------------------------------------------------------------------------
    def poll_once(self) -> None:
        """Load the pointer's version if the pointer moved since the last look."""
        try:
            pointer = self.store.active()
        except ModelRefused as err:
            if self.refused is None or self.refused.reason != str(err):
                self.refuse(str(err), version="unknown (pointer unreadable)")
            return
        if pointer is None or (pointer.version, pointer.activated_at) == self._pointer_seen:
            return
        self._pointer_seen = (pointer.version, pointer.activated_at)
        if self.current is not None and pointer.version == self.current.version:
            self.clear_refusal()
            return
        self._try_load(pointer.version)

    def activate(self, version: str) -> tuple[str, str | None]:
        """Check, activate and pin in the store, and serve `version` (admin endpoint); returns
        (version, previous). Raises UnknownModelVersion or ModelRefused; the served model is
        unchanged then. The pin pauses the trainer's timed publishing until `store.resume()`."""
        loaded: list[Served] = []

        def check(v: str) -> None:
            loaded.append(self._load_checked(v))

        pointer = self.store.activate(version, check=check, pin=True)
        self._pointer_seen = (pointer.version, pointer.activated_at)
        self.swap(loaded[0])
        return pointer.version, pointer.previous

    def _load_checked(self, version: str) -> Served:
        policy, stored = self.store.load(version)
        probe(policy, version)
        serving = self.current
        if serving is not None:  # off the request path: the first requests need not wait for VW's probes
            policy.warm_like(serving.policy, WARM_BUDGET_S)
        return Served(policy, stored, time.time())

    def _try_load(self, version: str) -> bool:
        return self.offer(lambda: self._load_checked(version), version=version)

    def announce_swap(self, previous: Served | None, served: Served | None) -> None:
        self.metrics.serve_model(served.version, served.stored.created)
        if previous is not None and previous.version != served.version:
            self.metrics.model_swaps.inc()
        log.info(
            "model loaded",
            extra={"fields": {"version": served.version, "previous": previous.version if previous else None}},
        )

    def announce_refusal(self, refusal: Refusal) -> None:
        log.error(
            "model refused, the previous model keeps serving",
            extra={"fields": {"version": refusal.version, "reason": refusal.reason,
                              "serving": self.current.version if self.current else None}},
        )
