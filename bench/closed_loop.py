"""Simulator throughput.

1. Closed loop: sessions per second of `run_closed_loop` with the VW ranker (SquareCB),
   decision log written, against the bare ranker loop (rank every request, learn every
   mini-batch, nothing else) on the same requests in the same run. Target >= 0.7x.
2. Logging mode: (event, slot) rows per second of the slate table for a context-free
   (uniform) and a linear (epsilon-greedy) logging policy, against the target of 1M rows/s.

Medians of repeats; the last line is one JSON object.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.types import LoggedEvent, Outcome
from bandit.vw.ranker import VWShelfRanker
from simulator.closed_loop import LoopConfig, run_closed_loop
from simulator.logging_mode import SlatePolicy, generate_slate_log
from simulator.world import World, WorldConfig

SESSIONS = 1500
LEARN_EVERY = 10
REPEATS = 3
LOG_EVENTS = 400_000
LOGGING_TARGET = 1_000_000.0


def ranker() -> VWShelfRanker:
    return VWShelfRanker(RankerConfig(explorer="squarecb", seed=1))


def bare_loop(world: World, requests) -> float:
    """Seconds for rank + learn on every request, with nothing the simulator adds."""
    policy = ranker()
    sessions = world.requests(requests)
    no_reward = Outcome((0.0,) * requests.n_slots)
    start = time.perf_counter()
    events = []
    for i, s in enumerate(sessions):
        decision = policy.rank(s.context, s.shelves, requests.n_slots, event_id=f"bare-{i}", baseline=s.baseline)
        events.append(LoggedEvent(s.context, s.shelves, decision, no_reward))
        if len(events) == LEARN_EVERY:
            policy.learn(EventBatch.from_events(events))
            events = []
    return time.perf_counter() - start


def closed_loop(world: World, requests, directory: Path) -> float:
    with open(directory / "decisions.jsonl", "w") as log:
        start = time.perf_counter()
        run_closed_loop(world, ranker(), requests, np.random.default_rng(2), config=LoopConfig(learn_every=LEARN_EVERY), log=log)
        return time.perf_counter() - start


def logging_rate(world: World, policy: SlatePolicy) -> float:
    start = time.perf_counter()
    table = generate_slate_log(world, policy, LOG_EVENTS, np.random.default_rng(3))
    return len(table) / (time.perf_counter() - start)


def main() -> None:
    world = World(WorldConfig.default(), np.random.default_rng(0))
    requests = world.draw_requests(SESSIONS, np.random.default_rng(1))
    bare, loop = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(REPEATS):  # interleaved so that load changes hit both alike
            bare.append(SESSIONS / bare_loop(world, requests))
            loop.append(SESSIONS / closed_loop(world, requests, Path(tmp)))
    bare_rate, loop_rate = statistics.median(bare), statistics.median(loop)
    print(f"closed loop (VW SquareCB, log written): {loop_rate:8.0f} sessions/s")
    print(f"bare ranker loop (rank + learn):         {bare_rate:8.0f} sessions/s")
    print(f"ratio {loop_rate / bare_rate:.2f} (target >= 0.7)")
    uniform = statistics.median(logging_rate(world, SlatePolicy.uniform(world)) for _ in range(REPEATS))
    linear = statistics.median(
        logging_rate(world, SlatePolicy.linear(world, "epsilon", np.random.default_rng(4), epsilon=0.1))
        for _ in range(REPEATS)
    )
    print(f"logging mode, uniform (context-free):   {uniform / 1e6:6.2f}M rows/s (target >= 1M)")
    print(f"logging mode, epsilon-greedy (linear):  {linear / 1e6:6.2f}M rows/s (target >= 1M)")
    print(
        json.dumps(
            {
                "name": "simulator_closed_loop_sessions_per_s",
                "value": round(loop_rate, 1),
                "unit": "sessions/s",
                "baseline": round(bare_rate, 1),
                "ratio": round(loop_rate / bare_rate, 3),
                "target_ratio": 0.7,
                "logging_rows_per_s_uniform": round(uniform),
                "logging_rows_per_s_linear": round(linear),
                "logging_baseline_rows_per_s": LOGGING_TARGET,
                "logging_ratio_linear": round(linear / LOGGING_TARGET, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
