"""Evaluate a target policy on a log: estimates with intervals and diagnostics.

`evaluate` makes one pass over the log in chunks of events (`CHUNK_EVENTS`): every estimator
runs on each chunk and leaves only sufficient statistics (intervals.EventSums for the value and
the interval, `WeightSums` for the diagnostics), which add up over chunks; normal and bernstein
intervals take a second pass at the values found. Shards of a log evaluated elsewhere
(offline_eval.sharded) leave the same statistics, merged the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from bandit.errors import ValidationError
from offline_eval.estimators import (
    ALIASES,
    ESTIMATOR_CLASSES,
    SHORT_NAMES,
    ClippedIPS,
    Estimator,
    EstimatorInputs,
    PseudoInverse,
    SwitchDR,
    Terms,
    logging_structure,
)
from offline_eval.intervals import (
    MAX_BLOCKS,
    EventSums,
    InfluenceSums,
    Interval,
    Intervals,
    column_sums,
    event_sums,
    finite_or_none,
    influence_sums,
    slot_values,
)
from offline_eval.reward_model import RewardModel, cross_fitted
from offline_eval.slate import SlateLog, TargetProbs, check_target, unsupported_share

# events per chunk of a pass: a chunk's arrays (a few (m, K) float columns each) stay in cache
CHUNK_EVENTS = 1 << 14

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
    return supported_by(inputs.has, options)


def supported_by(has, options: EstimatorOptions | None = None) -> tuple[str, ...]:
    """Short names of the estimators whose needs `has(need)` grants (aliases left out)."""
    options = options or EstimatorOptions()
    return tuple(name for name in ESTIMATOR_CLASSES if all(has(need) for need in make_estimator(name, options).needs))


@dataclass(frozen=True, slots=True)
class EstimatorResult:
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
    estimates: dict[str, EstimatorResult]

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


@dataclass(frozen=True, slots=True)
class WeightSums:
    """Sufficient statistics of an estimator's weights over a set of events (`+` merges two
    disjoint sets): per slot the sum and sum of squares of the weights on observed (event, slot)
    pairs, their maximum and count, and the observed events per slot. `total` is None for an
    estimator without weights (the direct method)."""

    total: np.ndarray | None
    squares: np.ndarray | None
    high: float
    count: int
    observed: np.ndarray

    def __add__(self, other: WeightSums) -> WeightSums:
        if self.total is None:
            return WeightSums(None, None, self.high, self.count + other.count, self.observed + other.observed)
        return WeightSums(self.total + other.total, self.squares + other.squares, max(self.high, other.high),
                          self.count + other.count, self.observed + other.observed)

    def diagnostics(self) -> tuple[float, tuple[float, ...], float | None, float | None]:
        """ESS (worst slot), ESS per slot, max and mean weight over observed (event, slot) pairs."""
        if self.total is None:
            per_slot = self.observed.astype(float)
            return float(per_slot.min()), tuple(per_slot.tolist()), None, None
        with np.errstate(invalid="ignore", divide="ignore"):
            per_slot = np.where(self.squares > 0.0, self.total * self.total / self.squares, 0.0)
            mean = float(self.total.sum() / self.count)
        return float(per_slot.min()), tuple(per_slot.tolist()), float(self.high), mean


def weight_sums(terms: Terms, log: SlateLog, cache: dict | None = None) -> WeightSums:
    """WeightSums of the terms' weights ((n, K), or (n, 1) when one weight serves every slot);
    `cache` (one per set of events) shares them between estimators with the same weights."""
    if cache is None or terms.weights is None:
        return _weight_sums(terms, log)
    key = ("weights", id(terms.weights))
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = (terms.weights, _weight_sums(terms, log))
    return hit[1]


def _weight_sums(terms: Terms, log: SlateLog) -> WeightSums:
    n_slots = log.n_slots
    observed = np.full(n_slots, log.n_events) if log.complete else log.observed.sum(axis=0)
    count = int(observed.sum())
    if terms.weights is None:
        return WeightSums(None, None, -np.inf, count, observed)
    weights = terms.weights
    if not log.complete:
        weights = np.where(log.observed, weights, 0.0)
    if weights.shape[1] == 1 or weights.strides[1] == 0:
        column = weights[:, 0]
        total = np.full(n_slots, column.sum())
        squares = np.full(n_slots, np.einsum("i,i->", column, column))
    else:  # einsum, not BLAS: BLAS threads cost more than they save on a chunk
        total = column_sums(weights)
        squares = np.einsum("ik,ik->k", weights, weights)
    if not len(weights):
        high = -np.inf
    elif log.complete:
        high = float(weights.max())
    else:
        observed_weights = np.broadcast_to(weights, log.observed.shape)[log.observed]
        high = float(observed_weights.max()) if len(observed_weights) else -np.inf
    return WeightSums(total, squares, high, count, observed)


def diagnostics(terms: Terms, log: SlateLog) -> tuple[float, tuple[float, ...], float | None, float | None]:
    """ESS (worst slot), ESS per slot, max and mean weight over observed (event, slot) pairs.
    Weights are (n, K), or (n, 1) when one weight applies to every slot of an event."""
    return weight_sums(terms, log).diagnostics()


@dataclass(frozen=True, slots=True)
class EstimatorSums:
    """One estimator's sufficient statistics over a set of events; `+` merges two disjoint sets."""

    events: EventSums
    weights: WeightSums
    notes: tuple[str, ...] = ()

    def __add__(self, other: EstimatorSums) -> EstimatorSums:
        return EstimatorSums(self.events + other.events, self.weights + other.weights, self.notes)


def event_chunks(n_events: int, size: int = CHUNK_EVENTS) -> Iterator[slice]:
    """Consecutive slices of at most `size` events covering 0..n-1."""
    return (slice(start, min(start + size, n_events)) for start in range(0, n_events, size))


def _whole_log_inputs(inputs: EstimatorInputs, estimators: Sequence[Estimator]) -> EstimatorInputs:
    """The inputs with what an estimator must see of the whole log, not of one chunk (the logger's
    structure, for the pseudoinverse)."""
    if inputs.logger is None and any(isinstance(e, PseudoInverse) for e in estimators):
        return replace(inputs, logger=logging_structure(inputs.log))
    return inputs


def estimator_sums(
    inputs: EstimatorInputs,
    estimators: Sequence[Estimator],
    *,
    block_of: np.ndarray | None = None,
    keep_rows: bool = False,
    max_blocks: int = MAX_BLOCKS,
    chunk_events: int = CHUNK_EVENTS,
) -> list[EstimatorSums]:
    """Every estimator's sufficient statistics, in one pass over the events in chunks: each chunk's
    inputs are read once for all estimators. `block_of` gives each event's bootstrap block;
    `keep_rows` keeps per-event values (the bootstrap of a log of at most max_blocks events)."""
    inputs = _whole_log_inputs(inputs, estimators)
    n_events = inputs.log.n_events
    totals: list[EstimatorSums | None] = [None] * len(estimators)
    for rows in event_chunks(n_events, chunk_events):
        chunk = inputs if rows == slice(0, n_events) else inputs.rows(rows)
        blocks = None if block_of is None else block_of[rows]
        for i, (estimator, total) in enumerate(zip(estimators, totals)):
            terms = estimator.terms(chunk)
            events = event_sums(terms.parts, block_of=blocks, keep_rows=keep_rows, max_blocks=max_blocks,
                                cache=chunk.memo, into=None if total is None else total.events)
            weights = weight_sums(terms, chunk.log, chunk.memo)
            totals[i] = EstimatorSums(events, weights if total is None else total.weights + weights, terms.notes)
    return totals


def estimator_influence(
    inputs: EstimatorInputs,
    estimators: Sequence[Estimator],
    centres: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    chunk_events: int = CHUNK_EVENTS,
) -> list[InfluenceSums]:
    """Every estimator's InfluenceSums at its centre (EventSums.centre of the whole log), in one
    more pass over the events in chunks."""
    inputs = _whole_log_inputs(inputs, estimators)
    n_events = inputs.log.n_events
    totals: list[InfluenceSums | None] = [None] * len(estimators)
    for rows in event_chunks(n_events, chunk_events):
        chunk = inputs if rows == slice(0, n_events) else inputs.rows(rows)
        for i, (estimator, centre) in enumerate(zip(estimators, centres)):
            sums = influence_sums(estimator.terms(chunk).parts, centre)
            totals[i] = sums if totals[i] is None else totals[i] + sums
    return totals


def summarise(
    name: str, estimator: Estimator, notes: tuple[str, ...], weights: WeightSums, interval: Interval,
    unsupported: float | None,
) -> EstimatorResult:
    ess, ess_per_slot, max_weight, mean_weight = weights.diagnostics()
    if mean_weight is not None and not 1.0 / WEIGHT_BAND <= mean_weight <= WEIGHT_BAND and name != "clipped_ips":
        notes = (*notes, f"warning: the mean importance weight is {mean_weight:.3g}, not near 1: the target puts "
                 "much of its mass on what this log rarely or never shows, and the interval understates the uncertainty")
    return EstimatorResult(
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


def resolve_names(estimators: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    """The named estimators, or `default` (those the inputs support) when none are named."""
    names = parse_names(estimators) if estimators is not None else tuple(default)
    if not names:
        raise ValidationError("estimators", "the log and target support no estimator (see the needs in --help)")
    return names


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
    names = resolve_names(estimators, () if estimators is not None else supported(log, target, options))
    chosen = [make_estimator(name, options) for name in names]
    inputs = prepare(log, target, chosen, options, rng)
    intervals = Intervals(ci, level, log.n_events, rng, n_resamples=n_resamples, event_ids=log.event_ids)
    unsupported = unsupported_share(log, target)
    sums = estimator_sums(inputs, chosen, block_of=intervals.block_of(), keep_rows=intervals.keep_rows)
    influence: list[InfluenceSums | None] = [None] * len(chosen)
    if intervals.needs_influence:
        influence = estimator_influence(inputs, chosen, [s.events.centre() for s in sums])
    estimates = {
        name: summarise(name, estimator, s.notes, s.weights, intervals.interval(s.events, psi), unsupported)
        for name, estimator, s, psi in zip(names, chosen, sums, influence)
    }
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
