"""Logging mode: decision logs at scale from a vectorised logging policy, in the slate table of
DESIGN.md (one row per (event, slot)), with exact logging probabilities and, when asked, the
probabilities a second (target) policy gives the logged rankings.

`SlatePolicy` scores every shelf for every request with a table indexed by the request's
context id (one row when context-free; a sum of per-feature weights when linear) and turns
the scores into a distribution over rankings by one of three rules:

- uniform: p_k = 1 / (n - k); marginal 1 / n.
- epsilon: with probability 1 - eps the greedy ranking g (scores decreasing), else a uniformly
  random one. P(prefix r_<=k) = (1 - eps) [r_<=k = g_<=k] + eps prod_{j<=k} 1/(n - j);
  p_k = P(r_<=k) / P(r_<k); marginal (1 - eps) [g_k = i] + eps / n.
- softmax: Plackett-Luce with w_i = exp(s_i / T): p_k = w_{r_k} / (sum_i w_i - sum_{j<k} w_{r_j});
  marginals by Rao-Blackwellised Monte Carlo (slot 0 exact).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bandit.errors import ValidationError
from bandit.policy import Policy
from simulator.world import PolicyValue, RequestBatch, World

SLATE_RULES = ("uniform", "epsilon", "softmax")
CHUNK_EVENTS = 8192  # requests per vectorised step: small enough to stay in cache
MARGINAL_DRAWS = 32


@dataclass(frozen=True, slots=True, eq=False)
class SlatePolicy:
    """A vectorised ranking policy: `scores` (n_contexts, C) or (1, C) when context-free,
    turned into rankings by `rule` (see the module docstring)."""

    rule: str
    scores: np.ndarray
    epsilon: float = 0.0
    temperature: float = 1.0
    marginal_draws: int = MARGINAL_DRAWS

    def __post_init__(self) -> None:
        if self.rule not in SLATE_RULES:
            raise ValidationError("rule", f"must be one of {', '.join(SLATE_RULES)}", self.rule)
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValidationError("epsilon", "must lie in [0, 1]", self.epsilon)
        if not self.temperature > 0.0:
            raise ValidationError("temperature", "must be > 0", self.temperature)
        if self.marginal_draws < 1:
            raise ValidationError("marginal_draws", "must be at least 1", self.marginal_draws)
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 2 or not np.isfinite(scores).all():
            raise ValidationError("scores", "must be a finite (n_contexts or 1, n_shelves) array", scores.shape)
        object.__setattr__(self, "scores", scores)

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def uniform(cls, world: World) -> SlatePolicy:
        return cls("uniform", np.zeros((1, world.config.n_shelves)))

    @classmethod
    def editorial(cls, world: World, epsilon: float = 0.0) -> SlatePolicy:
        """Context-free: the editorial order, explored uniformly with probability epsilon."""
        return cls("epsilon", -world.editorial_rank[None, :].astype(np.float64), epsilon=epsilon)

    @classmethod
    def linear(
        cls, world: World, rule: str, rng: np.random.Generator, *, noise_sd: float = 0.0, epsilon: float = 0.0,
        temperature: float = 1.0,
    ) -> SlatePolicy:
        """Linear in the one-hot context: the world's own observable logit weights plus
        N(0, noise_sd^2) noise on every (feature, shelf) weight (noise makes a worse policy)."""
        weights = world.context_weights + rng.normal(0.0, noise_sd, size=world.context_weights.shape)
        scores = world.config.base_logit + world.catalogue.appeal + world.context_table(weights)
        return cls(rule, scores, epsilon=epsilon, temperature=temperature)

    @classmethod
    def from_spec(cls, world: World, spec: str, rng: np.random.Generator) -> SlatePolicy:
        """`uniform`, `editorial[:epsilon=E]`, `epsilon[:epsilon=E,noise=S]` or
        `softmax[:temperature=T,noise=S]` (the last two linear in the context)."""
        kind, _, options = spec.partition(":")
        values = _options(options, spec)
        allowed = {"uniform": set(), "editorial": {"epsilon"}, "epsilon": {"epsilon", "noise"}, "softmax": {"temperature", "noise"}}
        if kind not in allowed:
            raise ValidationError("policy", f"must be one of {', '.join(allowed)}", spec)
        unknown = sorted(set(values) - allowed[kind])
        if unknown:
            raise ValidationError("policy", f"'{kind}' takes only {', '.join(sorted(allowed[kind])) or 'no options'}", unknown)
        if kind == "uniform":
            return cls.uniform(world)
        if kind == "editorial":
            return cls.editorial(world, values.get("epsilon", 0.1))
        return cls.linear(
            world, kind, rng, noise_sd=values.get("noise", 0.0), epsilon=values.get("epsilon", 0.1),
            temperature=values.get("temperature", 1.0),
        )

    # -- vectorised maths ------------------------------------------------------------------------
    @property
    def context_free(self) -> bool:
        return len(self.scores) == 1

    def scored(self, batch: RequestBatch) -> ScoredRequests:
        """This policy on a batch of requests, its scores (and greedy rankings) computed once."""
        if self.rule == "uniform":
            return ScoredRequests(self, batch, None, None)
        table = self.scores[0] if self.context_free else np.take(self.scores, batch.context_id, axis=0)
        scores = np.where(batch.candidate_mask, table, -np.inf)
        return ScoredRequests(self, batch, scores, _top_k(scores, batch.n_slots) if self.rule == "epsilon" else None)

    def sample(self, batch: RequestBatch, rng: np.random.Generator) -> np.ndarray:
        """Rankings (B, K) as catalogue indices."""
        return self.scored(batch).sample(rng)

    def conditional_probs(self, batch: RequestBatch, rankings: np.ndarray) -> np.ndarray:
        """P(r_k at slot k | r_<k above) (B, K) for rankings (B, K)."""
        return self.scored(batch).conditional_probs(rankings)

    def marginal_probs(self, batch: RequestBatch, rankings: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """P(r_k at slot k) (B, K): exact for uniform and epsilon, Monte Carlo for softmax."""
        return self.scored(batch).marginal_probs(rankings, rng)

    def value(self, world: World, batch: RequestBatch, rng: np.random.Generator, *, draws: int = 64) -> PolicyValue:
        """True value on these requests: exact for a deterministic policy, else the mean over
        `draws` sampled rankings per request of their exact expected reward."""
        deterministic = self.rule == "epsilon" and self.epsilon == 0.0
        n_draws = 1 if deterministic else draws
        per_slot = np.stack([world.expected_slot_rewards(batch, self.sample(batch, rng)) for _ in range(n_draws)])
        totals = per_slot.sum(axis=2)  # (draws, B)
        per_request = totals.mean(axis=0)
        n = len(batch)
        mc_variance = totals.var(axis=0, ddof=1) / n_draws if n_draws > 1 else np.zeros(n)
        return PolicyValue(
            value=float(per_request.mean()),
            stderr=float(np.sqrt(mc_variance.sum()) / n),
            per_slot=tuple(per_slot.mean(axis=(0, 1)).tolist()),
            population_stderr=float(per_request.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            exact=deterministic,
            n_requests=n,
        )


@dataclass(frozen=True, slots=True, eq=False)
class ScoredRequests:
    """A SlatePolicy on one batch: `scores` (B, C) with non-candidates at -inf (None for
    uniform) and, for epsilon, the `greedy` rankings (B, K)."""

    policy: SlatePolicy
    batch: RequestBatch
    scores: np.ndarray | None
    greedy: np.ndarray | None

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Rankings (B, K) as catalogue indices."""
        batch, policy = self.batch, self.policy
        if policy.rule == "uniform":
            return _top_k(_uniform_keys(batch, rng), batch.n_slots)
        if policy.rule == "softmax":
            return _top_k(self.scores / policy.temperature + rng.gumbel(size=self.scores.shape), batch.n_slots)
        rankings = self.greedy.copy()
        explore = rng.random(len(batch)) < policy.epsilon
        if explore.any():
            rankings[explore] = _top_k(_uniform_keys(batch[explore], rng), batch.n_slots)
        return rankings

    def conditional_probs(self, rankings: np.ndarray) -> np.ndarray:
        """P(r_k at slot k | r_<k above) (B, K) for rankings (B, K)."""
        n = self.batch.n_candidates[:, None].astype(np.float64)
        slots = np.arange(rankings.shape[1])
        if self.policy.rule == "uniform":
            return np.broadcast_to(1.0 / (n - slots), rankings.shape).copy()
        if self.policy.rule == "softmax":
            w = self._plackett_luce_weights()
            chosen = np.take_along_axis(w, rankings, axis=1)
            return chosen / _remaining(w.sum(axis=1), chosen)
        epsilon = self.policy.epsilon
        uniform_prefix = np.cumprod(1.0 / (n - slots), axis=1)
        matches = np.logical_and.accumulate(rankings == self.greedy[:, : rankings.shape[1]], axis=1)
        prefix = (1.0 - epsilon) * matches + epsilon * uniform_prefix
        above = np.concatenate((np.ones((len(prefix), 1)), prefix[:, :-1]), axis=1)
        if epsilon > 0.0:
            return prefix / above
        # a deterministic policy still ranks the shelves left below a prefix it would not show
        return np.where(above > 0.0, prefix / np.where(above > 0.0, above, 1.0), _best_remaining(self.scores, rankings))

    def marginal_probs(self, rankings: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """P(r_k at slot k) (B, K), exact for uniform and epsilon, Rao-Blackwellised Monte Carlo
        over `marginal_draws` sampled prefixes for softmax (slot 0 exact)."""
        n = self.batch.n_candidates[:, None].astype(np.float64)
        if self.policy.rule == "uniform":
            return np.broadcast_to(1.0 / n, rankings.shape).copy()
        if self.policy.rule == "epsilon":
            greedy = self.greedy[:, : rankings.shape[1]]
            return (1.0 - self.policy.epsilon) * (rankings == greedy) + self.policy.epsilon / n
        w = self._plackett_luce_weights()
        total = w.sum(axis=1)
        chosen = np.take_along_axis(w, rankings, axis=1)
        below = np.tri(rankings.shape[1], k=-1, dtype=bool)  # below[k, j]: slot j lies above slot k
        estimate = np.zeros(rankings.shape)
        for _ in range(self.policy.marginal_draws):
            drawn = self.sample(rng)
            taken = ((rankings[:, :, None] == drawn[:, None, :]) & below).any(axis=2)
            estimate += np.where(taken, 0.0, chosen / _remaining(total, np.take_along_axis(w, drawn, axis=1)))
        estimate /= self.policy.marginal_draws
        estimate[:, 0] = chosen[:, 0] / total
        return estimate

    def _plackett_luce_weights(self) -> np.ndarray:
        scores = self.scores / self.policy.temperature
        return np.exp(scores - scores.max(axis=1, keepdims=True))


def _options(text: str, spec: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        key, sep, raw = item.partition("=")
        try:
            values[key.strip()] = float(raw)
        except ValueError:
            raise ValidationError("policy", "options are key=number pairs separated by commas", spec) from None
        if not sep:
            raise ValidationError("policy", "options are key=number pairs separated by commas", spec)
    return values


def _uniform_keys(batch: RequestBatch, rng: np.random.Generator) -> np.ndarray:
    return np.where(batch.candidate_mask, rng.random(batch.candidate_mask.shape), -np.inf)


def _top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices (B, k) of the k largest keys per row, largest first."""
    return np.argsort(-keys, axis=1)[:, :k]


def _best_remaining(scores: np.ndarray, rankings: np.ndarray) -> np.ndarray:
    """1.0 where r_k has the highest score among the shelves not placed above it, else 0.0 (B, K)."""
    ranked = np.take_along_axis(scores, rankings, axis=1)
    higher = (scores[:, None, :] > ranked[:, :, None]).sum(axis=2)  # candidates scoring above r_k
    placed_higher = (ranked[:, None, :] > ranked[:, :, None]) & np.tri(rankings.shape[1], k=-1, dtype=bool)
    return (higher == placed_higher.sum(axis=2)).astype(np.float64)


def _remaining(total: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """total - the weight already placed above each slot (exclusive cumulative sum) (B, K)."""
    above = np.cumsum(chosen, axis=1) - chosen
    return total[:, None] - above


def _policy_probs(
    policy: Policy, world: World, batch: RequestBatch, rankings: np.ndarray, event_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Conditional and marginal probabilities (B, K) of logged rankings under any bandit Policy
    (one slot_model call per request), each event's marginals drawn as offline evaluation
    draws them for its id (`Policy.scores`)."""
    position = np.cumsum(batch.candidate_mask, axis=1) - 1  # catalogue index -> candidate position
    logged = np.take_along_axis(position, rankings, axis=1)
    slots = np.arange(rankings.shape[1])
    conditional = np.empty(rankings.shape)
    marginal = np.empty(rankings.shape)
    for i, request in enumerate(world.requests(batch)):
        distributions, marg = policy.scores(request.context, request.shelves, request.baseline, logged[i], str(event_ids[i]))
        conditional[i] = distributions[slots, logged[i]]
        marginal[i] = marg.values[slots, logged[i]]
    return conditional, marginal


def iter_slate_log(
    world: World,
    logging_policy: SlatePolicy,
    n_events: int,
    rng: np.random.Generator,
    *,
    target: SlatePolicy | Policy | None = None,
    chunk_events: int = CHUNK_EVENTS,
) -> Iterator[pd.DataFrame]:
    """The slate table in chunks of `chunk_events` events (columns event_id, slot, action,
    reward, logging_prob, logging_marginal, and target_prob, target_marginal with a target).
    A bandit Policy as target costs one slot_model call per event."""
    if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 1:
        raise ValidationError("n_events", "must be a positive integer", n_events)
    if chunk_events < 1:
        raise ValidationError("chunk_events", "must be at least 1", chunk_events)
    if target is not None and not isinstance(target, (SlatePolicy, Policy)):
        raise ValidationError("target", "must be a SlatePolicy or a bandit Policy", type(target).__name__)
    actions = pd.CategoricalDtype(world.shelf_ids)
    n_slots = world.config.n_slots
    start_s = 0.0
    for first in range(0, n_events, chunk_events):
        batch = world.draw_requests(min(chunk_events, n_events - first), rng, start_s=start_s)
        start_s = float(batch.time_s[-1])
        logging = logging_policy.scored(batch)
        rankings = logging.sample(rng)
        event_ids = np.arange(first, first + len(batch), dtype=np.int64)
        columns = {
            "event_id": np.repeat(event_ids, n_slots),
            "slot": np.tile(np.arange(n_slots, dtype=np.int64), len(batch)),
            "action": pd.Categorical.from_codes(rankings.ravel(), dtype=actions),
            "reward": world.sample_rewards(batch, rankings, rng).ravel(),
            "logging_prob": logging.conditional_probs(rankings).ravel(),
            "logging_marginal": logging.marginal_probs(rankings, rng).ravel(),
        }
        if isinstance(target, SlatePolicy):
            scored = target.scored(batch)
            columns["target_prob"] = scored.conditional_probs(rankings).ravel()
            columns["target_marginal"] = scored.marginal_probs(rankings, rng).ravel()
        elif target is not None:
            conditional, marginal = _policy_probs(target, world, batch, rankings, event_ids)
            columns["target_prob"] = conditional.ravel()
            columns["target_marginal"] = marginal.ravel()
        yield pd.DataFrame(columns, copy=False)


def generate_slate_log(*args, **kwargs) -> pd.DataFrame:
    """The whole slate table as one DataFrame (same arguments as iter_slate_log)."""
    chunks = list(iter_slate_log(*args, **kwargs))
    columns = {}
    for name, column in chunks[0].items():
        if isinstance(column.dtype, pd.CategoricalDtype):
            codes = np.concatenate([chunk[name].cat.codes.to_numpy() for chunk in chunks])
            columns[name] = pd.Categorical.from_codes(codes, dtype=column.dtype)
        else:
            columns[name] = np.concatenate([chunk[name].to_numpy() for chunk in chunks])
    return pd.DataFrame(columns, copy=False)
