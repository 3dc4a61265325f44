"""Champion and challengers on one stream: the champion serves the world's requests and learns
them in mini-batches; each challenger learns the same logged events and, over the last
`window_events` of the run, scores every event just before learning it (its progressive
scores, as the trainer writes them), with the ground truth of every policy on every scored event.

Per mini-batch of `learn_every` sessions: the champion ranks them (one slot model per request,
the ranking and its logging probabilities and marginals as `Policy.rank` draws them), the
world gives rewards at once (the world must not delay rewards), the challengers score the
logged rankings (as `offline_eval.scoring.score_policy`: conditional probability of the logged
shelf given the logged ones above, marginal seeded by (challenger seed, event id)), then
everyone learns the batch.

The true value of a policy on one request is sum_k E[r_k] under its distribution over
rankings: for the position-based click model, sum_k theta_k sum_a P(a at k) attraction(a) from
the same marginals the policy reports (exact for the leading slots, Rao-Blackwellised Monte
Carlo beyond); for other click models `click_models.slot_model_value` with its own draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.policy import Policy, build_decision
from bandit.sampling import event_rng, logged_distributions, marginals, sample_ranking
from bandit.types import LoggedEvent, Outcome
from simulator.click_models import slot_model_value
from simulator.world import RequestBatch, World


@dataclass(frozen=True, slots=True, eq=False)
class WindowScores:
    """One policy on the window's events (n, K): the probabilities of the logged shelves
    (conditional on the logged shelves above, and marginal) and its true value per event (n,)."""

    prob: np.ndarray
    marginal: np.ndarray
    true_value: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class SideBySideRun:
    """The window of a side-by-side run: the logged rewards (n, K), the champion's logging
    probabilities (`champion`, its own progressive scores: it serves and learns the same
    state), each challenger's scores by name, and per event the true expected reward of the
    editorial order and of the oracle (n,). `served_value` (n_sessions,) is the true value of
    the champion's distribution on every request of the run."""

    reward: np.ndarray
    champion: WindowScores
    challengers: dict[str, WindowScores]
    editorial_value: np.ndarray
    oracle_value: np.ndarray
    served_value: np.ndarray


def _true_value(world: World, model, attraction: np.ndarray, marg: np.ndarray, n_slots: int, rng: np.random.Generator) -> float:
    if world.click.name == "position":
        return float(world.click.examination[:n_slots] @ (marg @ attraction))
    return float(slot_model_value(model, attraction, world.click, n_slots, rng, draws=32, exact_budget=0)[0].sum())


def run_side_by_side(
    world: World,
    champion: Policy,
    challengers: dict[str, Policy],
    requests: RequestBatch,
    rng: np.random.Generator,
    *,
    window_events: int,
    learn_every: int = 10,
) -> SideBySideRun:
    """Run the champion over `requests` in order with the challengers beside it (module docstring).
    `rng` drives the champion's draws and the listeners' streams."""
    n, n_slots = len(requests), requests.n_slots
    if not 1 <= window_events <= n:
        raise ValidationError("window_events", f"must lie in [1, {n}] (the run has {n} sessions)", window_events)
    if isinstance(learn_every, bool) or not isinstance(learn_every, int) or learn_every < 1:
        raise ValidationError("learn_every", "must be a positive integer", learn_every)
    if world.config.delay_mean_s > 0.0:
        raise ValidationError("delay_mean_s", "must be 0: the side-by-side loop learns every reward at once", world.config.delay_mean_s)
    ranking_rng, reward_rng, value_rng = rng.spawn(3)
    first = n - window_events
    slots = np.arange(n_slots)
    reward = np.empty((window_events, n_slots))
    scores = {name: [np.empty((window_events, n_slots)), np.empty((window_events, n_slots)), np.empty(window_events)]
              for name in ("champion", *challengers)}
    served_value = np.empty(n)
    candidates = requests.candidate_indices()
    start_epoch = world.config.start_epoch_s
    for start in range(0, n, learn_every):
        block = requests[start : start + learn_every]
        sessions = world.requests(block)
        decisions, models = [], []
        for j, s in enumerate(sessions):
            i = start + j
            model = champion.slot_model(s.context, s.shelves, n_slots, s.baseline)
            ranking, marg = sample_ranking(model, n_slots, ranking_rng, draws=champion.marginal_draws, exact_budget=champion.exact_budget)
            decision = build_decision(f"ev-{i}", champion.model_version, s.shelves, ranking, marg.values, marg.stderr)
            attraction = block.attraction[j, candidates[i, : len(s.shelves)]]
            served_value[i] = _true_value(world, model, attraction, marg.values, n_slots, value_rng)
            decisions.append(decision)
            models.append((ranking.indices, attraction))
        shown = world.indices(d.shelf_ids for d in decisions)
        streams = world.sample_rewards(block, shown, reward_rng)
        for j, (s, decision) in enumerate(zip(sessions, decisions)):
            w = start + j - first
            if w < 0:
                continue
            indices, attraction = models[j]
            reward[w] = streams[j]
            champ = scores["champion"]
            champ[0][w], champ[1][w], champ[2][w] = decision.slot_probs, decision.slot_marginals, served_value[start + j]
            for name, policy in challengers.items():
                model = policy.slot_model(s.context, s.shelves, n_slots, s.baseline)
                prob = logged_distributions(model, indices)[slots, indices]
                marg = marginals(model, n_slots, event_rng(policy.seed, decision.event_id),
                                 draws=policy.marginal_draws, exact_budget=policy.exact_budget).values
                row = scores[name]
                row[0][w], row[1][w] = prob, marg[slots, indices]
                row[2][w] = _true_value(world, model, attraction, marg, n_slots, value_rng)
        events = [
            LoggedEvent(s.context, s.shelves, d, Outcome(r, (False,) * n_slots), start_epoch + t, s.baseline)
            for s, d, r, t in zip(sessions, decisions, streams.tolist(), block.time_s.tolist())
        ]
        batch = EventBatch.from_events(events)
        champion.learn(batch)
        for policy in challengers.values():
            policy.learn(batch)
    window = requests[first:]
    editorial = world.expected_slot_rewards(window, world.editorial_rankings(window)).sum(axis=1)
    oracle = world.expected_slot_rewards(window, world.oracle_rankings(window)).sum(axis=1)
    packed = {name: WindowScores(*columns) for name, columns in scores.items()}
    return SideBySideRun(reward, packed.pop("champion"), packed, editorial, oracle, served_value)
