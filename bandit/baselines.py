"""Baseline policies: editorial order, popularity, uniform random. Exact probabilities."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.batch import EventBatch
from bandit.errors import ModelFileError, ValidationError
from bandit.model_file import read_payload, write_model
from bandit.policy import Policy, check_overrides
from bandit.types import Context, Shelf


@dataclass(frozen=True, slots=True)
class PrioritySlots:
    """Deterministic: each slot takes the available shelf with the lowest priority value."""

    priority: np.ndarray

    @property
    def n_shelves(self) -> int:
        return len(self.priority)

    def probs(self, slot: int, available: np.ndarray) -> np.ndarray:
        best = np.where(available, self.priority, np.inf).argmin(axis=1)
        p = np.zeros(available.shape)
        p[np.arange(len(best)), best] = 1.0
        return p


@dataclass(frozen=True, slots=True)
class UniformSlots:
    """Each slot takes any available shelf with equal probability."""

    n_shelves: int

    def probs(self, slot: int, available: np.ndarray) -> np.ndarray:
        return available / (self.n_shelves - slot)


class _StatelessPolicy(Policy):
    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self._version: str | None = None

    @property
    def model_version(self) -> str:
        """The saved version id, or the policy's kind before it is saved."""
        return self._version or self._unsaved_version()

    def _unsaved_version(self) -> str:
        return self.kind

    def _state(self) -> dict:
        return {}

    def save(self, path: str | Path) -> str:
        payload = json.dumps(self._state(), sort_keys=True).encode()
        self._version = write_model(path, payload, kind=self.kind, config={"seed": self.seed})
        return self._version

    @classmethod
    def load(cls, path: str | Path, **overrides):
        payload, meta = read_payload(path)
        if meta.get("kind") != cls.kind:
            raise ModelFileError(f"{path}: holds a {meta.get('kind')!r} policy, not {cls.kind!r}")
        sampling = {"seed": meta["config"].get("seed", 0), **check_overrides(overrides)}
        policy = cls(seed=sampling.pop("seed"))
        for name, value in sampling.items():
            setattr(policy, name, value)
        policy._restore(json.loads(payload))
        policy._version = meta["version"]
        return policy

    def _restore(self, state: dict) -> None:
        pass


class UniformRandomPolicy(_StatelessPolicy):
    """Every ordering equally likely: P(slot k) = 1/(N - k); marginals 1/N."""

    kind = "uniform"

    def slot_model(self, context: Context, shelves: Sequence[Shelf], n_slots: int, baseline: Sequence[str]):
        return UniformSlots(len(shelves))


class EditorialPolicy(_StatelessPolicy):
    """The editorial order: the request's `baseline`, else a configured order, then the rest
    in candidate order. Deterministic (probability 1.0)."""

    kind = "editorial"

    def __init__(self, order: Sequence[str] = (), *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.order = tuple(order)

    def _state(self) -> dict:
        return {"order": list(self.order)}

    def _restore(self, state: dict) -> None:
        self.order = tuple(state.get("order", ()))

    def slot_model(self, context: Context, shelves: Sequence[Shelf], n_slots: int, baseline: Sequence[str]):
        order = baseline or self.order
        rank = {shelf_id: r for r, shelf_id in enumerate(order)}
        n = len(shelves)
        return PrioritySlots(np.array([rank.get(s.shelf_id, len(rank) + i / n) for i, s in enumerate(shelves)]))


class PopularityPolicy(_StatelessPolicy):
    """Shelves by observed reward rate, (reward sum + prior_mean * prior_weight) / (shows + prior_weight).
    Deterministic (probability 1.0); ties keep candidate order."""

    kind = "popularity"

    def __init__(self, *, prior_mean: float = 0.0, prior_weight: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not prior_weight > 0:
            raise ValidationError("prior_weight", "must be > 0", prior_weight)
        self.prior_mean = prior_mean
        self.prior_weight = prior_weight
        self.shows: dict[str, float] = {}
        self.reward_sums: dict[str, float] = {}

    def _unsaved_version(self) -> str:
        return f"popularity-{int(sum(self.shows.values()))}"

    def _state(self) -> dict:
        return {
            "prior_mean": self.prior_mean,
            "prior_weight": self.prior_weight,
            "shows": self.shows,
            "reward_sums": self.reward_sums,
        }

    def _restore(self, state: dict) -> None:
        self.prior_mean = state["prior_mean"]
        self.prior_weight = state["prior_weight"]
        self.shows = dict(state["shows"])
        self.reward_sums = dict(state["reward_sums"])

    def rates(self, shelf_ids: Sequence[str]) -> np.ndarray:
        shows = np.array([self.shows.get(s, 0.0) for s in shelf_ids])
        sums = np.array([self.reward_sums.get(s, 0.0) for s in shelf_ids])
        return (sums + self.prior_mean * self.prior_weight) / (shows + self.prior_weight)

    def learn(self, batch: EventBatch) -> None:
        self._version = None
        ids, inverse = np.unique(batch.action.astype(str), return_inverse=True)
        shows = np.bincount(inverse, minlength=len(ids))
        sums = np.bincount(inverse, weights=batch.reward, minlength=len(ids))
        for shelf_id, n, total in zip(ids.tolist(), shows.tolist(), sums.tolist()):
            self.shows[shelf_id] = self.shows.get(shelf_id, 0.0) + n
            self.reward_sums[shelf_id] = self.reward_sums.get(shelf_id, 0.0) + total

    def slot_model(self, context: Context, shelves: Sequence[Shelf], n_slots: int, baseline: Sequence[str]):
        n = len(shelves)
        rates = self.rates([s.shelf_id for s in shelves])
        order = np.lexsort((np.arange(n), -rates))  # highest rate first, candidate order breaks ties
        priority = np.empty(n)
        priority[order] = np.arange(n)
        return PrioritySlots(priority)


