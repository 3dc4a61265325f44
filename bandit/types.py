"""Value objects of the decision loop: shelves, contexts, decisions, outcomes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from bandit.errors import ValidationError
from bandit.features import Features, as_features

MAX_SHELVES = 200
PROBABILITY_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Shelf:
    """A candidate shelf (carousel): its id and the features the ranker sees."""

    shelf_id: str
    features: Features = field(default_factory=Features)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.shelf_id, str) or not self.shelf_id:
            raise ValidationError("shelf_id", "must be a non-empty string", self.shelf_id)
        object.__setattr__(self, "features", as_features(self.features, f"shelves[{self.shelf_id}].features"))
        object.__setattr__(self, "_hash", hash((self.shelf_id, self.features)))

    def __hash__(self) -> int:  # computed once: candidate sets of shelves are cache keys on every request
        return self._hash

    def __reduce__(self):
        # rebuilt, not copied: the hash of a string differs between processes (Ray's workers)
        return (Shelf, (self.shelf_id, self.features))


@dataclass(frozen=True, slots=True)
class Context:
    """The listener and request features (country, platform, hour, tastes...)."""

    features: Features = field(default_factory=Features)
    listener_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", as_features(self.features, "context.features"))
        if self.listener_id is not None and (not isinstance(self.listener_id, str) or not self.listener_id):
            raise ValidationError("context.listener_id", "must be a non-empty string or None", self.listener_id)


@dataclass(frozen=True, slots=True)
class Decision:
    """A served shelf ordering and how likely the policy was to serve it.

    `slot_probs[k]` = P(shelf_ids[k] at slot k | shelf_ids[:k] above it); their product over
    the first k slots is the probability of the top-k prefix. `slot_marginals[k]` =
    P(shelf_ids[k] at slot k) without conditioning (NaN where unknown), with `marginal_stderr[k]`
    its Monte Carlo standard error (0.0 where exact). `slot_distributions[k]` lists (shelf id, probability)
    for every shelf that slot k could have shown, the chosen one first.
    """

    event_id: str
    model_version: str
    shelf_ids: tuple[str, ...]
    slot_probs: tuple[float, ...]
    slot_marginals: tuple[float, ...]
    marginal_stderr: tuple[float, ...]
    slot_distributions: tuple[tuple[tuple[str, float], ...], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.event_id, str) or not self.event_id:
            raise ValidationError("event_id", "must be a non-empty string", self.event_id)
        n_slots = len(self.shelf_ids)
        if n_slots == 0:
            raise ValidationError("shelf_ids", "a decision fills at least one slot", self.shelf_ids)
        for name in ("slot_probs", "slot_marginals", "marginal_stderr", "slot_distributions"):
            if len(getattr(self, name)) != n_slots:
                raise ValidationError(name, f"needs one entry per slot ({n_slots})", len(getattr(self, name)))
        if len(set(self.shelf_ids)) != n_slots:
            raise ValidationError("shelf_ids", "a shelf appears twice", self.shelf_ids)
        _check_probabilities("slot_probs", self.slot_probs)
        _check_probabilities("slot_marginals", [m for m in self.slot_marginals if not math.isnan(m)])
        for k, distribution in enumerate(self.slot_distributions):
            _check_distribution(k, distribution, self.shelf_ids, self.slot_probs[k])

    @property
    def n_slots(self) -> int:
        return len(self.shelf_ids)

    @property
    def slate_prob(self) -> float:
        """Probability of the whole ordering: the product of the per-slot probabilities."""
        return math.prod(self.slot_probs)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Rewards per slot (higher is better); `defaulted[k]` marks a default reward."""

    rewards: tuple[float, ...]
    defaulted: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        rewards = tuple(float(r) for r in self.rewards)
        if not all(math.isfinite(r) for r in rewards):
            raise ValidationError("outcome.rewards", "rewards must be finite numbers", self.rewards)
        object.__setattr__(self, "rewards", rewards)
        defaulted = tuple(bool(d) for d in self.defaulted) or (False,) * len(rewards)
        if len(defaulted) != len(rewards):
            raise ValidationError("outcome.defaulted", "needs one flag per slot", len(defaulted))
        object.__setattr__(self, "defaulted", defaulted)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """Context + candidate shelves + decision + outcome: what training and evaluation consume."""

    context: Context
    shelves: tuple[Shelf, ...]
    decision: Decision
    outcome: Outcome
    timestamp: float = 0.0
    baseline: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "shelves", tuple(self.shelves))
        object.__setattr__(self, "baseline", tuple(self.baseline))
        ids = check_shelves(self.shelves)
        missing = [s for s in self.decision.shelf_ids if s not in ids]
        if missing:
            raise ValidationError("decision.shelf_ids", "every shown shelf must be a candidate", missing)
        if len(self.outcome.rewards) != self.decision.n_slots:
            raise ValidationError(
                "outcome.rewards", f"needs one reward per slot ({self.decision.n_slots})", len(self.outcome.rewards)
            )

    @property
    def event_id(self) -> str:
        return self.decision.event_id


def check_shelves(shelves: Sequence[Shelf]) -> dict[str, int]:
    """Validate a candidate list; return shelf id -> position."""
    if len(shelves) == 0:
        raise ValidationError("shelves", "at least one candidate shelf is required", 0)
    if len(shelves) > MAX_SHELVES:
        raise ValidationError("shelves", f"at most {MAX_SHELVES} candidate shelves", len(shelves))
    positions: dict[str, int] = {}
    for i, shelf in enumerate(shelves):
        if not isinstance(shelf, Shelf):
            raise ValidationError(f"shelves[{i}]", "must be a Shelf", type(shelf).__name__)
        if shelf.shelf_id in positions:
            raise ValidationError("shelves", "shelf ids must be unique", shelf.shelf_id)
        positions[shelf.shelf_id] = i
    return positions


def check_slots(n_slots: object, n_shelves: int) -> int:
    """Validate the number of slots K against N candidates: 1 <= K <= N."""
    if isinstance(n_slots, bool) or not isinstance(n_slots, int):
        raise ValidationError("slots", "must be an integer", n_slots)
    if n_slots < 1:
        raise ValidationError("slots", "must be at least 1", n_slots)
    if n_slots > n_shelves:
        raise ValidationError("slots", f"must not exceed the number of candidate shelves ({n_shelves})", n_slots)
    return n_slots


def _check_probabilities(name: str, values: Sequence[float]) -> None:
    for k, p in enumerate(values):
        if not (0.0 < p <= 1.0 + PROBABILITY_TOLERANCE):
            raise ValidationError(f"{name}[{k}]", "probabilities must lie in (0, 1]", p)


def _check_distribution(
    slot: int, distribution: Sequence[tuple[str, float]], shelf_ids: Sequence[str], slot_prob: float
) -> None:
    if not distribution or distribution[0][0] != shelf_ids[slot]:
        _refuse_distribution(slot, "must list the chosen shelf first", distribution[:1])
    if abs(distribution[0][1] - slot_prob) > PROBABILITY_TOLERANCE:
        _refuse_distribution(slot, "the chosen shelf's probability must equal slot_probs", distribution[0][1])
    ids, probs = zip(*distribution)
    total = math.fsum(probs)
    if abs(total - 1.0) > 1e-4:
        _refuse_distribution(slot, "probabilities over the slot's candidates must sum to 1", total)
    if slot and not set(shelf_ids[:slot]).isdisjoint(ids):
        _refuse_distribution(slot, "must not list a shelf already placed above", distribution)


def _refuse_distribution(slot: int, rule: str, found: object) -> NoReturn:
    # the field name is built only here: distributions are checked on every decision
    raise ValidationError(f"slot_distributions[{slot}]", rule, found)
