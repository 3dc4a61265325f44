"""The reward model of the direct method and the doubly robust estimators, cross-fitted.

Per slot k, an additive ridge model over the shelf and each context feature,
q_k(x, a) = b_k + alpha_k[a] + sum_f beta_kf[x_f], fitted by backfitting (Hastie & Tibshirani).
Cross-fitting: events fall into `n_folds` folds at random; each fold's predictions come from
models fitted on the other folds only, so no event is scored by a model that learned from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.errors import ValidationError
from offline_eval.estimators import ModelPredictions
from offline_eval.slate import SlateLog


@dataclass(frozen=True, slots=True)
class RewardModel:
    """Configuration: ridge penalty, backfitting sweeps, cross-fitting folds."""

    ridge: float = 1.0
    n_iterations: int = 4
    n_folds: int = 3

    def __post_init__(self) -> None:
        if not self.ridge > 0.0:
            raise ValidationError("ridge", "must be > 0 (shelves a fold never showed need it)", self.ridge)
        if self.n_iterations < 1:
            raise ValidationError("n_iterations", "must be at least 1", self.n_iterations)
        if self.n_folds < 2:
            raise ValidationError("n_folds", "cross-fitting needs at least 2 folds", self.n_folds)


@dataclass(frozen=True, slots=True)
class SlotFit:
    """One slot's fitted additive model: intercept, per-shelf effects (A,), per-feature effects."""

    intercept: float
    action_effect: np.ndarray
    context_effects: tuple[np.ndarray, ...]

    def predict(self, candidates: np.ndarray, context: np.ndarray) -> np.ndarray:
        """(m, N) predictions for candidate codes (m, N) (-1 = padding, predicted 0) and contexts (m, F)."""
        shift = self.intercept + sum(
            (effect[context[:, f] + 1] for f, effect in enumerate(self.context_effects)), np.zeros(len(context))
        )
        values = shift[:, None] + self.action_effect[np.maximum(candidates, 0)]
        return np.where(candidates >= 0, values, 0.0)


def fit_slot(
    model: RewardModel, action: np.ndarray, context: np.ndarray, target: np.ndarray, n_actions: int, n_values: tuple[int, ...]
) -> SlotFit:
    """Backfit target ~ b + alpha[action] + sum_f beta_f[context_f]: each sweep sets every effect to
    sum(partial residual) / (count + ridge) over its rows, one factor at a time."""
    if len(target) == 0:
        return SlotFit(0.0, np.zeros(n_actions), tuple(np.zeros(v + 1) for v in n_values))
    intercept = float(target.mean())
    keys = [action, *(context[:, f] + 1 for f in range(context.shape[1]))]
    sizes = [n_actions, *(v + 1 for v in n_values)]
    effects = [np.zeros(size) for size in sizes]
    residual = target - intercept
    for _ in range(model.n_iterations):
        for j, (key, size) in enumerate(zip(keys, sizes)):
            partial = residual + effects[j][key]
            effects[j] = np.bincount(key, weights=partial, minlength=size) / (np.bincount(key, minlength=size) + model.ridge)
            residual = partial - effects[j][key]
    return SlotFit(intercept, effects[0], tuple(effects[1:]))


def cross_fitted(
    log: SlateLog,
    model: RewardModel,
    rng: np.random.Generator,
    distribution: np.ndarray,
    *,
    cascade: bool = False,
    folds: np.ndarray | None = None,
) -> ModelPredictions:
    """Cross-fitted predictions at the logged shelves and in expectation under `distribution`
    (n, K, N), a target's distribution over each event's candidates at each slot.

    Immediate reward (cascade False): q_k(x, a) ~ E[r_k | x, a at k].
    Cascade (Kiyohara et al. 2022), with `distribution` the target's P(a at k | x, logged shelves
    above): Q_k(x, a) ~ E[r_k + V_{k+1} | x, a at k], fitted from the last slot up, where
    V_{k+1} = sum_a P(a at k+1 | x, logged shelves above) Q_{k+1}(x, a) along the logged prefix.
    `folds` (n,) fixes each event's fold (else drawn from `rng`).
    """
    if log.candidates is None:
        raise ValidationError("log", "the reward model needs each event's candidate shelves")
    n, n_slots = log.n_events, log.n_slots
    if folds is None:
        folds = rng.permutation(n) % model.n_folds
    n_values = tuple(int(log.context[:, f].max(initial=-1)) + 1 for f in range(log.context.shape[1]))
    logged = np.zeros((n, n_slots), order="F")
    expected = np.zeros((n, n_slots), order="F")
    for fold in np.unique(folds):
        held_out = folds == fold
        train = ~held_out
        scored = np.ones(n, dtype=bool) if cascade else held_out  # the cascade needs V_{k+1} on train events too
        future = np.zeros(n)
        for k in reversed(range(n_slots)):
            rows = train & log.observed[:, k]
            fit = fit_slot(
                model, log.action[rows, k], log.context[rows], log.reward[rows, k] + future[rows], log.n_actions, n_values
            )
            predictions = fit.predict(log.candidates[scored], log.context[scored])
            slot_expected = np.einsum("ic,ic->i", distribution[scored, k], predictions)
            slot_logged = predictions[np.arange(len(predictions)), log.action_position[scored, k]]
            logged[held_out, k] = slot_logged[held_out[scored]]
            expected[held_out, k] = slot_expected[held_out[scored]]
            if cascade:
                future = slot_expected
    return ModelPredictions(logged, expected)
