"""`shelfbandit demo`: the ranker learning in a small simulated world, end to end."""

from __future__ import annotations

import json

import click
import numpy as np
from tqdm import tqdm

from bandit.baselines import EditorialPolicy, UniformRandomPolicy
from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.types import Context, LoggedEvent, Outcome, Shelf
from bandit.vw.ranker import VWShelfRanker

SEGMENTS = ("commuter", "night_owl", "gym", "podcast_fan")
KINDS = ("mix", "new_releases", "podcasts", "charts", "workout", "chill", "recent", "editorial")


def _world(rng: np.random.Generator, n_shelves: int):
    kinds = [KINDS[i % len(KINDS)] for i in range(n_shelves)]
    shelves = tuple(Shelf(f"{kind}-{i}", {"kind": kind}) for i, kind in enumerate(kinds))
    appeal = rng.uniform(0.0, 0.25, size=(len(SEGMENTS), n_shelves))
    favourite = rng.integers(0, n_shelves, size=len(SEGMENTS))
    appeal[np.arange(len(SEGMENTS)), favourite] += 0.55
    return shelves, np.clip(appeal, 0.0, 0.95)


@click.command()
@click.option("--sessions", default=3000, show_default=True, help="Listener sessions to simulate.")
@click.option("--shelves", "n_shelves", default=12, show_default=True, help="Candidate shelves per request.")
@click.option("--slots", default=4, show_default=True, help="Slots on the home page.")
@click.option("--seed", default=7, show_default=True, help="Seed of the world and of every policy.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def demo(sessions: int, n_shelves: int, slots: int, seed: int, as_json: bool) -> None:
    """Run the VW ranker, the editorial order and uniform random side by side in a small
    world with position bias, learning after every session; print the reward per session."""
    rng = np.random.default_rng(seed)
    shelves, appeal = _world(rng, n_shelves)
    examination = 1.0 / (1.0 + np.arange(slots))
    policies = {
        "vw_ranker": VWShelfRanker(RankerConfig(explorer="squarecb", seed=seed)),
        "editorial": EditorialPolicy([s.shelf_id for s in shelves], seed=seed),
        "uniform": UniformRandomPolicy(seed=seed),
    }
    position = {s.shelf_id: i for i, s in enumerate(shelves)}
    tail = max(1, sessions // 5)
    totals = {name: [] for name in policies}
    oracle = []
    for t in tqdm(range(sessions), desc="sessions", disable=as_json, mininterval=0.5):
        segment = int(rng.integers(len(SEGMENTS)))
        context = Context({"segment": SEGMENTS[segment]})
        best = np.sort(appeal[segment])[::-1][:slots]
        oracle.append(float(examination @ best))
        for name, policy in policies.items():
            decision = policy.rank(context, shelves, slots, event_id=f"{name}-{t}")
            click_prob = examination * appeal[segment, [position[s] for s in decision.shelf_ids]]
            rewards = (rng.random(slots) < click_prob).astype(float)
            totals[name].append(float(click_prob.sum()))
            policy.learn(EventBatch.from_events([LoggedEvent(context, shelves, decision, Outcome(tuple(rewards)))]))
    last = {name: float(np.mean(values[-tail:])) for name, values in totals.items()}
    oracle_reward = float(np.mean(oracle[-tail:]))
    gap = oracle_reward - last["editorial"]
    summary = {
        "sessions": sessions,
        "policy_reward": last["vw_ranker"],
        "baseline_reward": last["editorial"],
        "random_reward": last["uniform"],
        "oracle_reward": oracle_reward,
        "gap_closed": (last["vw_ranker"] - last["editorial"]) / gap if gap > 0 else float("nan"),
    }
    if not as_json:
        click.echo(f"true expected streams per session over the last {tail} sessions:")
        for name in ("vw_ranker", "editorial", "uniform"):
            click.echo(f"  {name:<10} {last[name]:.4f}")
        click.echo(f"  {'oracle':<10} {oracle_reward:.4f}")
    click.echo(json.dumps(summary))
