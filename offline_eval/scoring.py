"""Scoring a policy on a logged event batch: the target probabilities the estimators need.

For every logged event, one `slot_model` call (one VW pass for the VW ranker) gives the
policy's distribution at each slot given the logged shelves above it, and its marginals
(exact or Monte Carlo, as `bandit.sampling.marginals`, seeded by (policy seed, event id)).
`logged_scores` does the same for many events at once from one SlotModel of all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bandit.baselines import EditorialPolicy, PopularityPolicy, UniformRandomPolicy
from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.jsonfile import read_json_file
from bandit.policy import Policy
from bandit.registry import load_policy
from bandit.sampling import event_uniforms, logged_distributions_of, sample_rankings
from bandit.vw.ranker import VWShelfRanker
from offline_eval.slate import TargetProbs

NAMED_BASELINES = {"uniform": UniformRandomPolicy, "editorial": EditorialPolicy}
LEARNING_BASELINES = {"popularity": PopularityPolicy}
PROGRESSIVE_PREFIX = "vw:"


class _Scores:
    """Accumulates per-event distributions into padded (n, K, N) arrays."""

    def __init__(self, n_events: int, n_slots: int, n_candidates: int) -> None:
        self.conditional = np.zeros((n_events, n_slots, n_candidates))
        self.marginal = np.zeros((n_events, n_slots, n_candidates))

    def add(self, i: int, policy: Policy, batch: EventBatch, event: int) -> None:
        conditional, marg = policy.event_scores(batch, event)
        n_shelves = len(batch.shelves[event])
        self.conditional[i, :, :n_shelves] = conditional
        self.marginal[i, :, :n_shelves] = marg.values

    def target(self, action_position: np.ndarray, name: str) -> TargetProbs:
        logged = action_position[:, :, None]
        return TargetProbs(
            prob=np.take_along_axis(self.conditional, logged, axis=2)[:, :, 0],
            marginal=np.take_along_axis(self.marginal, logged, axis=2)[:, :, 0],
            conditional_distribution=self.conditional,
            marginal_distribution=self.marginal,
            name=name,
        )


def logged_scores(
    model, action_index: np.ndarray, event_ids, *, seed: int, draws: int, exact_budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """E decisions of K slots under one SlotModel of all of them (`probs(slot, available, event)`),
    logged shelves `action_index` (E, K): target_prob (E, K) = P(logged shelf at slot k | logged
    shelves above) and target_marginal (E, K) = P(logged shelf at slot k), the marginals exact or
    Monte Carlo with each event's draws seeded by (seed, event id), as `rank` draws them."""
    n_slots = action_index.shape[1]
    conditional = logged_distributions_of(model, action_index)
    uniforms = event_uniforms(seed, event_ids, n_slots, draws)
    marginal = sample_rankings(model, uniforms, draws=draws, exact_budget=exact_budget)[2].values
    logged = action_index[:, :, None]
    return np.take_along_axis(conditional, logged, axis=2)[:, :, 0], np.take_along_axis(marginal, logged, axis=2)[:, :, 0]


def _shape(batch: EventBatch) -> tuple[int, int]:
    counts = np.diff(batch.row_offsets)
    if (counts != counts[0]).any():
        raise ValidationError("slot", f"every event must fill the same number of slots (found {sorted(set(counts.tolist()))})")
    return int(counts[0]), max(len(s) for s in batch.shelves)


def score_policy(policy: Policy, batch: EventBatch, *, name: str = "target", progress: bool = False) -> TargetProbs:
    """The policy's probabilities on every logged event (it does not learn)."""
    n_slots, n_candidates = _shape(batch)
    scores = _Scores(batch.n_events, n_slots, n_candidates)
    for i in tqdm(range(batch.n_events), desc=f"scoring {name}", disable=not progress, mininterval=0.5):
        scores.add(i, policy, batch, i)
    return scores.target(batch.action_index.reshape(batch.n_events, n_slots), name)


def event_slice(batch: EventBatch, start: int, stop: int) -> EventBatch:
    """Events start..stop-1 of a batch, as a batch."""
    first, last = int(batch.row_offsets[start]), int(batch.row_offsets[stop])
    rows = slice(first, last)
    return EventBatch(
        event_ids=batch.event_ids[start:stop],
        contexts=batch.contexts[start:stop],
        shelves=batch.shelves[start:stop],
        baselines=batch.baselines[start:stop],
        row_offsets=batch.row_offsets[start : stop + 1] - first,
        row_event=batch.row_event[rows] - start,
        slot=batch.slot[rows],
        action=batch.action[rows],
        action_index=batch.action_index[rows],
        reward=batch.reward[rows],
        logging_prob=batch.logging_prob[rows],
        logging_marginal=batch.logging_marginal[rows],
    )


def progressive_scores(
    policy: Policy, batch: EventBatch, *, warmup: int = 0, name: str = "target", progress: bool = False
) -> TargetProbs:
    """Progressive validation: for each event in log order, score it with the policy as it stands,
    then let the policy learn it. The first `warmup` events are learned only; the result covers
    events warmup..n-1 and estimates the value of the learning policy over that stretch."""
    if not 0 <= warmup < batch.n_events:
        raise ValidationError("warmup", f"must lie in [0, {batch.n_events - 1}] (the log has {batch.n_events} events)", warmup)
    n_slots, n_candidates = _shape(batch)
    if warmup:
        policy.learn(event_slice(batch, 0, warmup))
    scores = _Scores(batch.n_events - warmup, n_slots, n_candidates)
    for i in tqdm(range(warmup, batch.n_events), desc=f"progressive {name}", disable=not progress, mininterval=0.5):
        scores.add(i - warmup, policy, batch, i)
        policy.learn(event_slice(batch, i, i + 1))
    return scores.target(batch.action_index[batch.row_offsets[warmup] :].reshape(-1, n_slots), name)


@dataclass(frozen=True, slots=True)
class PolicyScorer:
    """A policy named on the `evaluate` command line, resolved (`resolve_policy`), and how its
    probabilities on a logged batch are had: a fixed policy scored once per event, or a learning
    one scored progressively. (simulator.policies.PolicySpec is the other kind of policy name: a
    declarative KIND:key=value spec built afresh for a simulated world and a seed.)"""

    label: str
    make: Callable[[], Policy]
    progressive: bool

    def score(self, batch: EventBatch, *, warmup: int = 0, name: str = "target", progress: bool = False) -> TargetProbs:
        """Target probabilities on events warmup..n-1 (a learning policy learns the first `warmup` first)."""
        if self.progressive:
            return progressive_scores(self.make(), batch, warmup=warmup, name=name, progress=progress)
        evaluated = event_slice(batch, warmup, batch.n_events) if warmup else batch
        return score_policy(self.make(), evaluated, name=name, progress=progress)


def resolve_policy(spec: str) -> PolicyScorer:
    """'uniform' | 'editorial' (fixed baselines), 'popularity' (learns, progressive), a saved policy
    file, or 'vw:CONFIG.json' (a RankerConfig as JSON, trained progressively on the log)."""
    if spec in NAMED_BASELINES:
        return PolicyScorer(spec, NAMED_BASELINES[spec], progressive=False)
    if spec in LEARNING_BASELINES:
        return PolicyScorer(spec, LEARNING_BASELINES[spec], progressive=True)
    if spec.startswith(PROGRESSIVE_PREFIX):
        path = Path(spec[len(PROGRESSIVE_PREFIX) :])
        data = read_json_file(path, "policy")
        if not isinstance(data, dict):
            raise ValidationError("policy", "configuration must be a JSON object of RankerConfig fields", str(path))
        config = RankerConfig.from_dict(data)
        return PolicyScorer(f"vw {config.config_id()} (progressive)", lambda: VWShelfRanker(config), progressive=True)
    path = Path(spec)
    if not path.exists():
        known = ", ".join([*NAMED_BASELINES, *LEARNING_BASELINES])
        raise ValidationError("policy", f"not a saved policy file, {known}, or vw:CONFIG.json", spec)
    policy = load_policy(path)
    return PolicyScorer(f"{path.name} ({policy.model_version})", lambda: policy, progressive=False)
