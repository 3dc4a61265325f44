"""Shared builders for the bandit tests."""

from __future__ import annotations

import numpy as np

from bandit.batch import EventBatch
from bandit.types import Context, LoggedEvent, Outcome, Shelf

KINDS = ("mix", "recent", "new_releases", "podcasts", "charts", "mood")


def catalogue(n: int) -> tuple[Shelf, ...]:
    return tuple(Shelf(f"shelf-{i}", {"kind": KINDS[i % len(KINDS)], "age": float(i % 4)}) for i in range(n))


def context(segment: int = 0) -> Context:
    return Context({"segment": f"s{segment}", "tenure": 1.0 + segment, "premium": segment % 2 == 0})


def train_toward(policy, shelves, n_slots: int, good: dict[int, int], steps: int, seed: int = 0) -> None:
    """Rank and learn `steps` times; slot k earns reward 1 when it shows shelves[good[k]]."""
    rng = np.random.default_rng(seed)
    for t in range(steps):
        ctx = context(int(rng.integers(2)))
        decision = policy.rank(ctx, shelves, n_slots, event_id=f"train-{seed}-{t}")
        rewards = tuple(
            float(k in good and shelf_id == shelves[good[k]].shelf_id) for k, shelf_id in enumerate(decision.shelf_ids)
        )
        policy.learn(EventBatch.from_events([LoggedEvent(ctx, shelves, decision, Outcome(rewards))]))
