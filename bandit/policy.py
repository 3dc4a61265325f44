"""Policy: the interface every shelf-ordering policy implements, and what they share.

A policy only has to say, for one request, how it distributes each slot over the shelves
still available (`slot_model`); ranking with a seeded generator, the probability of a
logged ordering and the marginal probabilities follow from that in `bandit.sampling`.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.sampling import Marginals, SampledRanking, SlotModel, event_rng, logged_distributions, marginals, sample_ranking
from bandit.types import Context, Decision, Shelf, check_shelves, check_slots

SAMPLING_OVERRIDES = ("seed", "marginal_draws", "exact_budget")


def check_overrides(overrides: dict) -> dict:
    """The overrides a loaded policy may take (SAMPLING_OVERRIDES); ValidationError names any other."""
    for name in overrides:
        if name not in SAMPLING_OVERRIDES:
            raise ValidationError(name, f"is not a setting a loaded policy may override (one of {', '.join(SAMPLING_OVERRIDES)})")
    return dict(overrides)


class Policy(ABC):
    """Orders N candidate shelves into K slots and reports the probabilities of what it chose."""

    kind: str = "policy"
    seed: int = 0
    marginal_draws: int = 32
    exact_budget: int = 2048

    @property
    @abstractmethod
    def model_version(self) -> str:
        """Identifies the learned state that made a decision."""

    @abstractmethod
    def slot_model(self, context: Context, shelves: Sequence[Shelf], n_slots: int, baseline: Sequence[str]) -> SlotModel:
        """The per-slot distributions of this policy for one request."""

    def learn(self, batch: EventBatch) -> None:  # noqa: B027 (a policy that does not learn keeps this no-op)
        """Update from logged events (policies that do not learn ignore it)."""

    def warm_like(self, serving: Policy, budget_s: float) -> None:  # noqa: B027 (nothing to warm: this no-op)
        """Before taking over from `serving`, prepare for the requests it served, for at most
        `budget_s` seconds (policies without caches ignore it)."""

    @abstractmethod
    def save(self, path: str | Path) -> str:
        """Write the policy to `path` (plus `path`.json metadata); return its version id."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, **overrides) -> Policy:
        """Read a policy `save` wrote; `overrides` may set the sampling settings (SAMPLING_OVERRIDES)."""

    def rank(
        self,
        context: Context,
        shelves: Sequence[Shelf],
        n_slots: int,
        rng: np.random.Generator | None = None,
        *,
        event_id: str | None = None,
        baseline: Sequence[str] = (),
    ) -> Decision:
        """Order `shelves` into `n_slots` slots. Without `rng`, draws are seeded by (seed, event_id)."""
        shelves = tuple(shelves)
        positions = check_shelves(shelves)
        check_slots(n_slots, len(shelves))
        if not isinstance(context, Context):
            raise ValidationError("context", "must be a Context", type(context).__name__)
        baseline = check_baseline(baseline, positions)
        event_id = event_id or uuid.uuid4().hex
        rng = rng if rng is not None else event_rng(self.seed, event_id)
        model = self.slot_model(context, shelves, n_slots, baseline)
        ranking, marg = sample_ranking(model, n_slots, rng, draws=self.marginal_draws, exact_budget=self.exact_budget)
        return build_decision(event_id, self.model_version, shelves, ranking, marg.values, marg.stderr)

    def scores(
        self, context: Context, shelves: Sequence[Shelf], baseline: Sequence[str], logged: np.ndarray, event_id: str, *,
        with_marginals: bool = True,
    ) -> tuple[np.ndarray, Marginals | None]:
        """One logged decision under this policy, the shelves at positions `logged` (K,) shown:
        (K, N) P(shelf at slot k | the logged shelves above it), and the marginals P(shelf at
        slot k) drawn as `rank` draws them for `event_id` (seeded by (seed, event id)). The one
        scoring of a policy on a log: offline evaluation and the simulator's logs use it."""
        model = self.slot_model(context, shelves, len(logged), baseline)
        conditional = logged_distributions(model, logged)
        if not with_marginals:
            return conditional, None
        rng = event_rng(self.seed, event_id)
        return conditional, marginals(model, len(logged), rng, draws=self.marginal_draws, exact_budget=self.exact_budget)

    def event_scores(self, batch: EventBatch, event: int, *, with_marginals: bool = True) -> tuple[np.ndarray, Marginals | None]:
        """`scores` of logged event `event` of `batch`."""
        rows = batch.event_rows(event)
        return self.scores(batch.contexts[event], batch.shelves[event], batch.baselines[event], batch.action_index[rows],
                           str(batch.event_ids[event]), with_marginals=with_marginals)

    def probabilities(self, batch: EventBatch) -> np.ndarray:
        """P(logged shelf at its slot | logged shelves above it) under this policy, one per row."""
        out = np.empty(batch.n_rows)
        for i in range(batch.n_events):
            rows = batch.event_rows(i)
            conditional, _ = self.event_scores(batch, i, with_marginals=False)
            out[rows] = conditional[np.arange(rows.stop - rows.start), batch.action_index[rows]]
        return out

    def marginal_probabilities(self, batch: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        """P(logged shelf at its slot) under this policy, and its standard error, one per row."""
        values = np.empty(batch.n_rows)
        stderr = np.empty(batch.n_rows)
        for i in range(batch.n_events):
            rows = batch.event_rows(i)
            _, marg = self.event_scores(batch, i)
            picked = (np.arange(rows.stop - rows.start), batch.action_index[rows])
            values[rows], stderr[rows] = marg.values[picked], marg.stderr[picked]
        return values, stderr


def check_baseline(baseline: Sequence[str], positions: dict[str, int]) -> tuple[str, ...]:
    """An editorial order must list distinct candidate shelf ids."""
    baseline = tuple(baseline or ())
    unknown = [s for s in baseline if s not in positions]
    if unknown:
        raise ValidationError("baseline", "must list only candidate shelf ids", unknown)
    if len(set(baseline)) != len(baseline):
        raise ValidationError("baseline", "must not list a shelf twice", baseline)
    return baseline


def build_decision(
    event_id: str,
    model_version: str,
    shelves: Sequence[Shelf],
    ranking: SampledRanking,
    marginal_values: np.ndarray,
    marginal_stderr: np.ndarray,
) -> Decision:
    """A Decision from a sampled ranking and the (K, N) marginals."""
    shelf_ids = [s.shelf_id for s in shelves]
    chosen = ranking.indices.tolist()
    # each slot's shelves with positive probability in candidate order, the chosen one swapped
    # with the first (plain lists: for the K x N of a page, cheaper than numpy's per-call overhead)
    distributions = []
    for c, row in zip(chosen, ranking.distributions.tolist()):
        if not row[c] > 0.0:
            raise ValueError(f"a shelf of probability {row[c]} was drawn")
        listed = [pair for pair in zip(shelf_ids, row) if pair[1] > 0.0]
        at = len([p for p in row[:c] if p > 0.0])  # the chosen one's place among them
        listed[0], listed[at] = listed[at], listed[0]
        distributions.append(tuple(listed))
    picked = (np.arange(len(chosen)), ranking.indices)
    return Decision(
        event_id=event_id,
        model_version=model_version,
        shelf_ids=tuple(shelf_ids[c] for c in chosen),
        slot_probs=tuple(ranking.slot_probs.tolist()),
        slot_marginals=tuple(marginal_values[picked].tolist()),
        marginal_stderr=tuple(marginal_stderr[picked].tolist()),
        slot_distributions=tuple(distributions),
    )
