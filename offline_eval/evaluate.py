"""Evaluate a target policy on a log: estimates with intervals and diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bandit.errors import ValidationError
from offline_eval.estimators import (
    ALIASES,
    ESTIMATOR_CLASSES,
    SHORT_NAMES,
    ClippedIPS,
    Estimator,
    EstimatorInputs,
    SwitchDR,
    Terms,
)
from offline_eval.intervals import Interval, Intervals, column_sums, finite_or_none, slot_values
from offline_eval.reward_model import RewardModel, cross_fitted
from offline_eval.slate import SlateLog, TargetProbs, check_target, unsupported_share


# importance weights average 1 over a log that covers the target; a mean outside
# [1/WEIGHT_BAND, WEIGHT_BAND] says the target lives where the log rarely goes
WEIGHT_BAND = 2.0

@dataclass(frozen=True, slots=True)
class EstimatorOptions:
    """Estimator settings: IPS clip M, switch-DR threshold tau, and the reward model."""

    clip: float = 100.0
    switch_threshold: float = 100.0
    reward_model: RewardModel = field(default_factory=RewardModel)

    def __post_init__(self) -> None:
        ClippedIPS(self.clip)
        SwitchDR(self.switch_threshold)


def make_estimator(name: str, options: EstimatorOptions) -> Estimator:
    """The estimator with a short name (see SHORT_NAMES)."""
    key = ALIASES.get(name, name)
    if key not in ESTIMATOR_CLASSES:
        raise ValidationError("estimators", f"unknown estimator (known: {', '.join(SHORT_NAMES)})", name)
    if key == ClippedIPS.name:
        return ClippedIPS(options.clip)
    if key == SwitchDR.name:
        return SwitchDR(options.switch_threshold)
    return ESTIMATOR_CLASSES[key]()


def parse_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """'a,b' or a sequence -> distinct short names in order."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if not names:
        raise ValidationError("estimators", "name at least one estimator", text)
    return tuple(dict.fromkeys(names))


def supported(log: SlateLog, target: TargetProbs, options: EstimatorOptions | None = None) -> tuple[str, ...]:
    """Short names of the estimators the log and target allow (aliases left out)."""
    inputs = EstimatorInputs(log, target)
    options = options or EstimatorOptions()
    return tuple(name for name in ESTIMATOR_CLASSES if all(inputs.has(need) for need in make_estimator(name, options).needs))


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's value with its interval, per-slot values and diagnostics.

    ess: effective sample size (sum w)^2 / sum w^2 of the weights on the worst slot (n for the
    direct method); max_weight and mean_weight over observed (event, slot) pairs;
    unsupported_share: share of events where the target can show a shelf the logger could not
    (None when the log does not carry the logger's distributions).
    """

    name: str
    value: float
    lower: float
    upper: float
    per_slot: tuple[float, ...]
    per_slot_lower: tuple[float, ...]
    per_slot_upper: tuple[float, ...]
    ess: float
    ess_per_slot: tuple[float, ...]
    max_weight: float | None
    mean_weight: float | None
    unsupported_share: float | None
    assumption: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "per_slot": list(self.per_slot),
            "per_slot_lower": list(self.per_slot_lower),
            "per_slot_upper": list(self.per_slot_upper),
            "ess": self.ess,
            "ess_per_slot": list(self.ess_per_slot),
            "max_weight": self.max_weight,
            "mean_weight": self.mean_weight,
            "unsupported_share": self.unsupported_share,
            "assumption": self.assumption,
            "notes": list(self.notes),
        }
        return finite_or_none(out)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every requested estimate of one target on one log."""

    target: str
    n_events: int
    n_slots: int
    ci: str
    level: float
    estimates: dict[str, Estimate]

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "n_events": self.n_events,
            "n_slots": self.n_slots,
            "ci": self.ci,
            "level": self.level,
            "estimates": {name: estimate.to_dict() for name, estimate in self.estimates.items()},
        }


def prepare(
    log: SlateLog,
    target: TargetProbs,
    estimators: Sequence[Estimator],
    options: EstimatorOptions,
    rng: np.random.Generator,
    *,
    folds: np.ndarray | None = None,
) -> EstimatorInputs:
    """Check the estimators' needs and fit the cross-fitted reward models they use."""
    check_target(log, target)
    bare = EstimatorInputs(log, target)
    for estimator in estimators:
        estimator.check(bare)
    if folds is None and any(e.uses_rewards or e.uses_q_values for e in estimators):
        folds = rng.permutation(log.n_events) % options.reward_model.n_folds
    rewards = q_values = None
    if any(e.uses_rewards for e in estimators):
        rewards = cross_fitted(log, options.reward_model, rng, target.marginal_distribution, folds=folds)
    if any(e.uses_q_values for e in estimators):
        q_values = cross_fitted(log, options.reward_model, rng, target.conditional_distribution, cascade=True, folds=folds)
    return EstimatorInputs(log, target, rewards, q_values)


def diagnostics(terms: Terms, log: SlateLog) -> tuple[float, tuple[float, ...], float | None, float | None]:
    """ESS (worst slot), ESS per slot, max and mean weight over observed (event, slot) pairs.
    Weights are (n, K), or (n, 1) when one weight applies to every slot of an event."""
    if terms.weights is None:
        per_slot = log.observed.sum(axis=0).astype(float)
        return float(per_slot.min()), tuple(per_slot.tolist()), None, None
    weights = terms.weights
    if not log.complete:
        weights = np.where(log.observed, weights, 0.0)
    total = column_sums(weights)
    squares = np.einsum("ik,ik->k", weights, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_slot = np.broadcast_to(np.where(squares > 0.0, total * total / squares, 0.0), (log.n_slots,))
    if log.complete:
        max_weight, mean_weight = float(weights.max()), float(total.sum() / weights.size)
    else:
        observed = weights[log.observed]
        max_weight, mean_weight = float(observed.max()), float(observed.mean())
    return float(per_slot.min()), tuple(per_slot.tolist()), max_weight, mean_weight


def summarise(
    name: str, estimator: Estimator, terms: Terms, interval: Interval, log: SlateLog, unsupported: float | None
) -> Estimate:
    ess, ess_per_slot, max_weight, mean_weight = diagnostics(terms, log)
    notes = terms.notes
    if mean_weight is not None and not 1.0 / WEIGHT_BAND <= mean_weight <= WEIGHT_BAND and name != "clipped_ips":
        notes = (*notes, f"warning: the mean importance weight is {mean_weight:.3g}, not near 1: the target puts "
                 "much of its mass on what this log rarely or never shows, and the interval understates the uncertainty")
    return Estimate(
        name=name,
        value=interval.value,
        lower=interval.lower,
        upper=interval.upper,
        per_slot=tuple(interval.slot_values.tolist()),
        per_slot_lower=tuple(interval.slot_lower.tolist()),
        per_slot_upper=tuple(interval.slot_upper.tolist()),
        ess=ess,
        ess_per_slot=ess_per_slot,
        max_weight=max_weight,
        mean_weight=mean_weight,
        unsupported_share=unsupported,
        assumption=estimator.assumption,
        notes=notes,
    )


def evaluate(
    log: SlateLog,
    target: TargetProbs,
    estimators: str | Sequence[str] | None = None,
    *,
    rng: np.random.Generator,
    ci: str = "bootstrap",
    level: float = 0.95,
    n_resamples: int = 1000,
    options: EstimatorOptions | None = None,
) -> Evaluation:
    """Estimate the target's value on the log with every named estimator (default: all it supports).
    `rng` drives cross-fitting folds and bootstrap resampling."""
    options = options or EstimatorOptions()
    names = parse_names(estimators) if estimators is not None else supported(log, target, options)
    if not names:
        raise ValidationError("estimators", "the log and target support no estimator (see the needs in --help)")
    chosen = [make_estimator(name, options) for name in names]
    inputs = prepare(log, target, chosen, options, rng)
    intervals = Intervals(ci, level, log.n_events, rng, n_resamples=n_resamples)
    unsupported = unsupported_share(log, target)
    estimates = {}
    for name, estimator in zip(names, chosen):
        terms = estimator.terms(inputs)
        estimates[name] = summarise(name, estimator, terms, intervals(terms.parts), log, unsupported)
    return Evaluation(target.name, log.n_events, log.n_slots, ci, level, estimates)


def point_estimates(
    log: SlateLog,
    target: TargetProbs,
    estimators: str | Sequence[str],
    *,
    rng: np.random.Generator,
    options: EstimatorOptions | None = None,
) -> dict[str, np.ndarray]:
    """Per-slot values (K,) of each named estimator, without intervals or diagnostics."""
    options = options or EstimatorOptions()
    names = parse_names(estimators)
    chosen = [make_estimator(name, options) for name in names]
    inputs = prepare(log, target, chosen, options, rng)
    return {name: slot_values(estimator.terms(inputs).parts) for name, estimator in zip(names, chosen)}
