"""Closed loop: a policy ranks the world's requests one by one, listeners stream, rewards come
back after their delay, and the policy learns in mini-batches from what has been joined.

Learning follows a joiner: a decision's event (with the rewards that arrived within the reward
window, the default reward 0 elsewhere) becomes available `reward_window_s` after the
decision; before each mini-batch of `learn_every` sessions the policy learns every event
available by then. Metrics use the ground truth: the expected reward of the ranking shown
and of the oracle's ranking for the same request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import pandas as pd

from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.policy import Policy
from bandit.types import LoggedEvent, Outcome
from bandit.vw.format import event_line
from simulator.world import RequestBatch, World, WorldConfig


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """How a closed-loop run learns: mini-batch size, reward window, and the share of the run
    (at its end) that summaries call "last"."""

    learn_every: int = 10
    reward_window_s: float = 0.0
    tail_share: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.learn_every, bool) or not isinstance(self.learn_every, int) or self.learn_every < 1:
            raise ValidationError("learn_every", "must be a positive integer", self.learn_every)
        if not self.reward_window_s >= 0.0:
            raise ValidationError("reward_window_s", "must be >= 0", self.reward_window_s)
        if not 0.0 < self.tail_share <= 1.0:
            raise ValidationError("tail_share", "must lie in (0, 1]", self.tail_share)

    def check_world(self, world_config: WorldConfig) -> None:
        """Delayed rewards need a reward window to arrive in."""
        if world_config.delay_mean_s > 0.0 and self.reward_window_s <= 0.0:
            raise ValidationError(
                "reward_window_s", "must be > 0 when the world delays rewards (delay_mean_s > 0)", self.reward_window_s
            )


def slot_columns(prefix: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slot columns `prefix0`, `prefix1`, ... of a (n, K) array."""
    return {f"{prefix}{k}": values[:, k] for k in range(values.shape[1])}


def reference_columns(world: World, requests: RequestBatch) -> dict[str, np.ndarray]:
    """True expected reward per session of the oracle's and the editorial order's rankings."""
    return {
        "oracle_reward": world.expected_slot_rewards(requests, world.oracle_rankings(requests)).sum(axis=1),
        "editorial_reward": world.expected_slot_rewards(requests, world.editorial_rankings(requests)).sum(axis=1),
    }


def session_metrics(
    name: str, requests: RequestBatch, expected: np.ndarray, streams: np.ndarray, reference: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per session: true expected reward of the ranking shown, the oracle's and the
    editorial order's, regret (oracle - shown) and its running sum, streams, and per slot."""
    expected_reward = expected.sum(axis=1)
    regret = reference["oracle_reward"] - expected_reward
    return pd.DataFrame(
        {
            "policy": name,
            "session": np.arange(len(requests)),
            "time_s": requests.time_s,
            "expected_reward": expected_reward,
            **reference,
            "regret": regret,
            "cumulative_regret": np.cumsum(regret),
            "streams": streams.sum(axis=1),
            **slot_columns("expected_slot_", expected),
            **slot_columns("streams_slot_", streams),
        }
    )


def summarise(metrics: pd.DataFrame, tail_share: float) -> dict[str, float | int | str]:
    """Means over the run and over its last `tail_share`, and the share of the gap between the
    editorial order and the oracle that the policy closed over the last part."""
    n = len(metrics)
    tail = metrics.iloc[n - max(1, round(n * tail_share)) :]
    last = {name: float(tail[name].mean()) for name in ("expected_reward", "oracle_reward", "editorial_reward")}
    gap = last["oracle_reward"] - last["editorial_reward"]
    return {
        "policy": str(metrics["policy"].iloc[0]),
        "sessions": n,
        "expected_reward": float(metrics["expected_reward"].mean()),
        "oracle_reward": float(metrics["oracle_reward"].mean()),
        "expected_reward_last": last["expected_reward"],
        "oracle_reward_last": last["oracle_reward"],
        "editorial_reward_last": last["editorial_reward"],
        "gap_closed_last": (last["expected_reward"] - last["editorial_reward"]) / gap if gap > 0 else float("nan"),
        "regret": float(metrics["cumulative_regret"].iloc[-1]),
        "streams_per_session": float(metrics["streams"].mean()),
    }


@dataclass(frozen=True, slots=True, eq=False)
class RunResult:
    """A closed-loop run: per-session metrics and its summary."""

    metrics: pd.DataFrame
    summary: dict


def run_closed_loop(
    world: World,
    policy: Policy,
    requests: RequestBatch,
    rng: np.random.Generator,
    *,
    name: str = "policy",
    config: LoopConfig = LoopConfig(),
    log: TextIO | None = None,
    progress: Callable[[int], object] | None = None,
) -> RunResult:
    """Run `policy` over `requests` (in order), learning as described in the module docstring.
    `rng` drives the policy's draws and the listeners' streams and delays; `log` receives one
    joined DSJSON line per decision; `progress(n)` is called after every mini-batch."""
    config.check_world(world.config)
    ranking_rng, reward_rng = rng.spawn(2)
    n, n_slots = len(requests), requests.n_slots
    expected = np.empty((n, n_slots))
    streams = np.empty((n, n_slots))
    pending: deque[tuple[float, LoggedEvent]] = deque()
    window = config.reward_window_s
    start_epoch = world.config.start_epoch_s
    for start in range(0, n, config.learn_every):
        block = requests[start : start + config.learn_every]
        now = float(block.time_s[0])
        ready = []
        while pending and pending[0][0] <= now:
            ready.append(pending.popleft()[1])
        if ready:
            policy.learn(EventBatch.from_events(ready))
        sessions = world.requests(block)
        decisions = [
            policy.rank(s.context, s.shelves, n_slots, ranking_rng, event_id=f"{name}-{start + j}", baseline=s.baseline)
            for j, s in enumerate(sessions)
        ]
        shown = world.indices(d.shelf_ids for d in decisions)
        stop = start + len(block)
        expected[start:stop] = world.expected_slot_rewards(block, shown)
        streams[start:stop] = world.sample_rewards(block, shown, reward_rng)
        arrived = (streams[start:stop] > 0.0) & (world.sample_delays(shown.shape, reward_rng) <= window)
        observed = np.where(arrived, streams[start:stop], 0.0)
        for s, decision, time_s, rewards, defaulted in zip(
            sessions, decisions, block.time_s.tolist(), observed.tolist(), (~arrived).tolist()
        ):
            event = LoggedEvent(s.context, s.shelves, decision, Outcome(rewards, defaulted), start_epoch + time_s, s.baseline)
            pending.append((time_s + window, event))
            if log is not None:
                log.write(event_line(event) + "\n")
        if progress is not None:
            progress(len(block))
    metrics = session_metrics(name, requests, expected, streams, reference_columns(world, requests))
    return RunResult(metrics, summarise(metrics, config.tail_share))
