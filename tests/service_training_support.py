"""A small synthetic world for the trainer tests: listeners in segments, shelves with a per-segment
appeal, position-based examination. Decisions come from a real policy, are logged as the service
logs them, rewarded, and joined by the real joiner into committed parts."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.policy import Policy
from bandit.types import Context, Shelf
from service.eventlog.lines import decision_line, reward_line
from service.join.joiner import JoinConfig, Joiner
from service.layout import DataPaths
from tests.service_support import write_segment

WINDOW_S = 60.0
# simulated time lies in the past: the joiner skips reward segments older than its watermark by mtime
T0 = time.time() - 1e7
BATCH_SPACING_S = 10_000.0
_batches = itertools.count(1)


@dataclass(frozen=True)
class TinyWorld:
    """`appeal[segment, shelf]`: stream probability once examined; slot k is examined with 1 / (1 + k)."""

    appeal: np.ndarray
    n_slots: int

    @classmethod
    def strong(cls, rng: np.random.Generator, n_segments: int = 4, n_shelves: int = 6, n_slots: int = 2) -> TinyWorld:
        """Each segment streams from two favourite shelves (0.8) and rarely from the rest (0.05)."""
        appeal = np.full((n_segments, n_shelves), 0.05)
        for segment in range(n_segments):
            appeal[segment, rng.choice(n_shelves, size=2, replace=False)] = 0.8
        return cls(appeal, n_slots)

    @property
    def shelves(self) -> tuple[Shelf, ...]:
        return tuple(Shelf(f"shelf-{i}", {"kind": f"kind{i % 3}"}) for i in range(self.appeal.shape[1]))

    def context(self, segment: int) -> Context:
        return Context({"segment": f"seg{segment}"})

    def value(self, rankings: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """Expected reward per session of rankings (n, K) of shelf indices."""
        theta = 1.0 / (1.0 + np.arange(self.n_slots))
        return (self.appeal[segments[:, None], rankings] * theta).sum(axis=1)


def log_and_join(data_dir: Path, world: TinyWorld, policy: Policy, n_events: int, part_size: int,
                 rng: np.random.Generator, prefix: str) -> list[str]:
    """`n_events` decisions of `policy` logged and rewarded, then joined into parts of `part_size`
    events by the real joiner; returns the event ids."""
    paths = DataPaths(data_dir)
    shelves = world.shelves
    index = {shelf.shelf_id: i for i, shelf in enumerate(shelves)}
    segments = rng.integers(0, world.appeal.shape[0], size=n_events)
    examined = rng.random((n_events, world.n_slots))
    streamed = rng.random((n_events, world.n_slots))
    theta = 1.0 / (1.0 + np.arange(world.n_slots))
    number = next(_batches)
    start = T0 + number * BATCH_SPACING_S
    decisions, rewards, ids = [], [], []
    for i, segment in enumerate(segments):
        context = world.context(int(segment))
        decision = policy.rank(context, shelves, world.n_slots, event_id=f"{prefix}-{i:06d}")
        when = start + i * 0.01
        decisions.append(decision_line(context, shelves, decision, timestamp=when, baseline=()))
        shown = np.array([index[s] for s in decision.shelf_ids])
        hits = (examined[i] < theta) & (streamed[i] < world.appeal[segment, shown])
        rewards.extend(reward_line(decision.event_id, int(k), 1.0, None, received=when + 1.0, decided=when) for k in np.flatnonzero(hits))
        ids.append(decision.event_id)
    write_segment(paths.decisions, "decisions", decisions, time.time_ns())
    write_segment(paths.rewards, "rewards", rewards, time.time_ns())
    joiner = Joiner(data_dir, JoinConfig(WINDOW_S, max_events_per_part=part_size), clock=lambda: start + n_events * 0.01 + 10 * WINDOW_S)
    with joiner:
        while joiner.run_once().more_ready:
            pass
    return ids
