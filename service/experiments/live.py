"""The arms a worker serves, and their hot reload when `arms.json` changes.

The poller (service.models.reloader, as for the active model pointer) reads
`<data_dir>/arms.json` every `poll_s` seconds. A changed file is parsed, checked, and its pinned
model versions loaded and probed off the request path; then the new arms are swapped in by one
reference assignment (requests in flight finish with the arms they started with). An invalid
file is refused: the previous arms keep serving and the refusal shows in `GET /v1/arms` and in
the metrics until the file changes again. A poll that fails (an unreadable file, a popularity
refit that fails) is retried with backoff while `/readyz` says so.

Policies per arm: `active` is the worker's active model at the time of the request; a stored
version is loaded once per configuration; `editorial` and `uniform` are the baselines;
`popularity` is the popularity baseline fitted on the learnable rows of the joined slate
tables, refitted as the joiner commits parts (events marked `learn = false` are left out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bandit.baselines import EditorialPolicy, PopularityPolicy, UniformRandomPolicy
from bandit.errors import ValidationError
from bandit.policy import Policy
from bandit.sampling import SlotModel, logged_distributions
from bandit.types import Context, Decision, Shelf
from service.errors import NotReady
from service.experiments.arms import ACTIVE, APPRENTICE, Arm, ArmsConfig, ArmsFile
from service.join.reader import JoinedLog
from service.logs import get_logger
from service.models.active import ActiveModel, probe
from service.models.reloader import Refusal, Reloader
from service.models.store import ModelRefused, ModelStore, UnknownModelVersion

if TYPE_CHECKING:
    from service.ops.metrics import ServiceMetrics

log = get_logger()
DEFAULT_SOURCE, FILE_SOURCE = "default", "file"


@dataclass(frozen=True, slots=True)
class LiveArms:
    """A checked configuration with its pinned models loaded (replaced whole on a reload)."""

    config: ArmsConfig
    pinned: Mapping[str, Policy]
    source: str
    loaded_at: float

    def choose(self, key: str) -> Arm:
        return self.config.arms[self.config.arm_index(key)]


@dataclass(slots=True)
class AgreementCount:
    """Apprentice slots compared with the model's top choice, and how many agreed."""

    slots: int = 0
    agreed: int = 0


def top_choice_agreement(model: SlotModel, indices: np.ndarray) -> np.ndarray:
    """agrees[k]: given the shelves `indices[:k]` above, the model's most probable shelf at
    slot k is `indices[k]`, strictly (a tie counts as disagreement, so an untrained model,
    indifferent between shelves, agrees with nothing). Shape (K,) bool."""
    slots = np.arange(len(indices))
    p = logged_distributions(model, indices)  # 0 for the shelves placed above
    others = p.copy()
    others[slots, indices] = -np.inf
    return p[slots, indices] > others.max(axis=1)


def compare_with_model(
    model: Policy, context: Context, shelves: Sequence[Shelf], decision: Decision, baseline: Sequence[str]
) -> tuple[bool, ...]:
    """Per slot, whether `model`'s top choice agrees with what `decision` showed (one VW pass)."""
    position = {shelf.shelf_id: i for i, shelf in enumerate(shelves)}
    indices = np.array([position[shelf_id] for shelf_id in decision.shelf_ids])
    slot_model = model.slot_model(context, shelves, decision.n_slots, baseline)
    return tuple(top_choice_agreement(slot_model, indices).tolist())


class PopularityFeed:
    """A PopularityPolicy fitted on the committed slate tables, refitted from new parts."""

    def __init__(self, joined: JoinedLog) -> None:
        self.joined = joined
        self.next_part = 0
        self.policy = PopularityPolicy()

    def refresh(self) -> PopularityPolicy:
        committed = self.joined.checkpoint().next_part
        if committed <= self.next_part:
            return self.policy
        rows = self.joined.slate_table(self.next_part, committed, ["action", "reward"], learnable=True)
        totals = rows.groupby("action", observed=True)["reward"].agg(["size", "sum"])
        refitted = PopularityPolicy()
        refitted.shows = dict(self.policy.shows)
        refitted.reward_sums = dict(self.policy.reward_sums)
        for shelf_id, shows, reward_sum in zip(totals.index.astype(str), totals["size"].tolist(), totals["sum"].tolist()):
            refitted.shows[shelf_id] = refitted.shows.get(shelf_id, 0.0) + shows
            refitted.reward_sums[shelf_id] = refitted.reward_sums.get(shelf_id, 0.0) + reward_sum
        self.policy = refitted  # one reference assignment: a ranking sees old or new
        self.next_part = committed
        return refitted


def load_pinned(store: ModelStore, config: ArmsConfig, *, reuse: Mapping[str, Policy] | None = None) -> dict[str, Policy]:
    """version -> loaded and probed policy, for every stored version the config pins; raises
    ValidationError naming the arm (`arms[i].policy`) if one is unknown or refused."""
    pinned: dict[str, Policy] = {}
    for i, arm in enumerate(config.arms):
        version = arm.pinned_version
        if version is None or version in pinned:
            continue
        if reuse and version in reuse:
            pinned[version] = reuse[version]
            continue
        try:
            policy, _ = store.load(version)
            probe(policy, version)
        except (UnknownModelVersion, ModelRefused, ValidationError) as err:
            raise ValidationError(f"arms[{i}].policy", err.rule) from None
        pinned[version] = policy
    return pinned


EDITORIAL = EditorialPolicy()
UNIFORM = UniformRandomPolicy()


class Experiment(Reloader[LiveArms]):
    """The arms of one worker: `current` is what a request is assigned with."""

    refusable = (ValidationError,)

    def __init__(
        self, data_dir, store: ModelStore, model: ActiveModel, metrics: ServiceMetrics, *, poll_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        super().__init__("arms-poller", metrics, metrics.arms_refused, metrics.arms_refusals,
                         current=LiveArms(ArmsConfig.default(), {}, DEFAULT_SOURCE, time.time()),
                         poll_s=poll_s, max_backoff_s=max_backoff_s)
        self.file = ArmsFile(data_dir)
        self.store = store
        self.model = model
        self.popularity = PopularityFeed(JoinedLog(data_dir))
        self.agreement: dict[str, AgreementCount] = {}
        self._seen: bytes | None = None
        self._apply_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve the file's arms (the default arm if there is none or it is refused) and poll."""
        self._publish_metrics(self.current)
        self.poll_once()
        self.poller.start()

    # -- serving -------------------------------------------------------------------------------
    def policy_of(self, live: LiveArms, arm: Arm) -> Policy:
        """The policy behind an arm's name (for an apprentice arm: the model it compares)."""
        if arm.policy == ACTIVE:
            served = self.model.current
            if served is None:
                raise NotReady("model", "no model is loaded yet")
            return served.policy
        if arm.policy == "editorial":
            return EDITORIAL
        if arm.policy == "uniform":
            return UNIFORM
        if arm.policy == "popularity":
            return self.popularity.policy
        return live.pinned[arm.policy]

    def serving_policy(self, live: LiveArms, arm: Arm) -> Policy:
        """What serves the arm's requests: the editorial order for an apprentice arm."""
        return EDITORIAL if arm.mode == APPRENTICE else self.policy_of(live, arm)

    def count_agreement(self, arm: str, agrees: tuple[bool, ...]) -> None:
        """Count an apprentice decision's compared and agreeing slots."""
        count = self.agreement.setdefault(arm, AgreementCount())
        agreed = sum(agrees)
        count.slots += len(agrees)
        count.agreed += agreed
        self.metrics.observe_agreement(arm, len(agrees), agreed)

    # -- configuration -------------------------------------------------------------------------
    def resolve(self, config: ArmsConfig, source: str) -> LiveArms:
        """Load and probe the stored versions the config pins (ValidationError naming the arm)."""
        pinned = load_pinned(self.store, config, reuse=self.current.pinned)
        if any(arm.policy == "popularity" for arm in config.arms):
            self.popularity.refresh()
        return LiveArms(config, pinned, source, time.time())

    def apply(self, config: ArmsConfig) -> LiveArms:
        """Check `config`, write it to `arms.json` and serve it (admin endpoint, CLI). Other
        workers pick it up within `poll_s`. Raises ValidationError; then nothing changes."""
        with self._apply_lock:
            live = self.resolve(config, FILE_SOURCE)
            self.file.write(config)
            self._seen = self.file.read_bytes()
            self.swap(live)
        return live

    def clear(self) -> LiveArms:
        """Remove `arms.json`: back to the single `main` arm."""
        with self._apply_lock:
            self.file.clear()
            self._seen = None
            live = LiveArms(ArmsConfig.default(), {}, DEFAULT_SOURCE, time.time())
            self.swap(live)
        return live

    def poll_once(self) -> None:
        """Reload the arms if the file changed since the last look; refit popularity."""
        with self._apply_lock:
            data = self.file.read_bytes()
            if data != self._seen:
                self._seen = data
                self._reload(data)
        if any(arm.policy == "popularity" for arm in self.current.config.arms):
            self.popularity.refresh()

    def _reload(self, data: bytes | None) -> None:
        if data is None:
            self.swap(LiveArms(ArmsConfig.default(), {}, DEFAULT_SOURCE, time.time()))
        else:
            self.offer(lambda: self.resolve(ArmsConfig.from_json(data), FILE_SOURCE))

    def announce_swap(self, previous: LiveArms, live: LiveArms) -> None:
        self.metrics.arms_reloads.inc()
        self._publish_metrics(live, previous)
        log.info("arms loaded", extra={"fields": {"source": live.source, "arms": live.config.to_dict()["arms"]}})

    def announce_refusal(self, refusal: Refusal) -> None:
        log.error("arms config refused, the previous arms keep serving",
                  extra={"fields": {"reason": refusal.reason, "serving": list(self.current.config.names)}})

    def _publish_metrics(self, live: LiveArms, previous: LiveArms | None = None) -> None:
        if previous is not None:
            for arm in previous.config.arms:
                self.metrics.arm_share.labels(arm.name, arm.mode).set(0)
        for arm in live.config.arms:
            self.metrics.arm_share.labels(arm.name, arm.mode).set(arm.share)
