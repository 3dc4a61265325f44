"""The plain learner: the yardstick a deployed loop is measured against.

One in-process VW CCB ranker (`VWShelfRanker`, SquareCB with the default listener x shelf and
slot x shelf interactions) ranks the sessions in order and learns every session's rewards,
drawn from the world, before the next session: no service, no reward window, no trainer, no
publication lag. It is `run_closed_loop` with `learn_every=1` and no reward window, not a
second loop. `gap_closed` is the share of the editorial-to-oracle gap a policy closed:

    gap_closed = (mean served - mean editorial) / (mean oracle - mean editorial)

over the same sessions, by true expected rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.vw.ranker import VWShelfRanker
from simulator.closed_loop import LoopConfig, run_closed_loop
from simulator.world import RequestBatch, World

INSTANT_FEEDBACK = LoopConfig(learn_every=1, reward_window_s=0.0)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """The plain learner's ranker configuration (the champion's default: SquareCB)."""

    ranker: RankerConfig = field(default_factory=lambda: RankerConfig(explorer="squarecb"))

    def __post_init__(self) -> None:
        if not isinstance(self.ranker, RankerConfig):
            raise ValidationError("ranker", "must be a RankerConfig", type(self.ranker).__name__)


def run_peer_learner(
    world: World, requests: RequestBatch, rng: np.random.Generator, config: PeerConfig = PeerConfig()
) -> np.ndarray:
    """True expected reward (B,) of the ranking the plain learner showed in each session.
    `rng` drives its draws and the listeners' streams. The world must not delay rewards."""
    if world.config.delay_mean_s > 0.0:
        raise ValidationError("world.delay_mean_s", "must be 0: the plain learner has instant feedback",
                              world.config.delay_mean_s)
    run = run_closed_loop(world, VWShelfRanker(config.ranker), requests, rng, name="peer", config=INSTANT_FEEDBACK)
    return run.metrics["expected_reward"].to_numpy()


def gap_closed(served: np.ndarray, editorial: np.ndarray, oracle: np.ndarray) -> float:
    """Share of the editorial-to-oracle gap closed (formula in the module docstring) by the
    per-session true expected rewards (B,) of what was served; NaN unless the oracle is above."""
    served, editorial, oracle = (np.asarray(a, dtype=np.float64) for a in (served, editorial, oracle))
    if not served.shape == editorial.shape == oracle.shape or served.ndim != 1 or len(served) == 0:
        raise ValidationError("served/editorial/oracle", "must be non-empty 1-d arrays of one length",
                              (served.shape, editorial.shape, oracle.shape))
    gap = oracle.mean() - editorial.mean()
    return float((served.mean() - editorial.mean()) / gap) if gap > 0 else float("nan")
