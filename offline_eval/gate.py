"""The launch gate: is the candidate better than the baseline on this log, and how sure are we?

Both policies are scored on the same logged events; each estimator gives both values and the
difference candidate - baseline with an interval paired over events (the same bootstrap
resamples, or the linearised per-event differences). The verdict follows `GateRule`:

1. not enough data: on the primary estimator, the effective sample size of either policy is
   below `min_ess`, or either policy puts weight on shelves the logger never could have shown
   in more than `max_unsupported` of the events, or its mean importance weight lies outside
   [1/`weight_band`, `weight_band`] (1 when the log covers it), or the difference interval is
   not finite;
2. ship: the lower end of the difference interval is above `min_lift`;
3. do not ship: the upper end of the difference interval is below `min_lift`;
4. not enough data: otherwise (the interval straddles `min_lift`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.policy import Policy
from bandit.types import LoggedEvent
from offline_eval.estimators import PSEUDOINVERSE
from offline_eval.evaluate import (
    WEIGHT_BAND,
    EstimatorOptions,
    EstimatorResult,
    Evaluation,
    make_estimator,
    parse_names,
    prepare,
    summarise,
    supported,
    weight_sums,
)
from offline_eval.intervals import Interval, Intervals
from offline_eval.readers import LoadedLog, batch_log, dsjson_log
from offline_eval.scoring import score_policy
from offline_eval.slate import SlateLog, TargetProbs, unsupported_share

SHIP, DO_NOT_SHIP, NOT_ENOUGH_DATA = "ship", "do not ship", "not enough data"
GATE_ESTIMATORS = ("ips", "snips", "dr", "iips", "rips", "snips_rips", "cascade_dr", PSEUDOINVERSE)


@dataclass(frozen=True, slots=True)
class GateRule:
    """The verdict rule (see the module docstring)."""

    primary: str = "snips_rips"
    min_lift: float = 0.0
    min_ess: float = 100.0
    max_unsupported: float = 0.01
    weight_band: float = WEIGHT_BAND  # the primary's mean importance weight must lie in [1/band, band]

    def __post_init__(self) -> None:
        if not self.weight_band >= 1.0:
            raise ValidationError("weight_band", "must be >= 1", self.weight_band)
        if not self.min_ess >= 0.0:
            raise ValidationError("min_ess", "must be >= 0", self.min_ess)
        if not 0.0 <= self.max_unsupported <= 1.0:
            raise ValidationError("max_unsupported", "must lie in [0, 1]", self.max_unsupported)
        if not math.isfinite(self.min_lift):
            raise ValidationError("min_lift", "must be a finite number", self.min_lift)


@dataclass(frozen=True, slots=True)
class GateResult:
    """The verdict, why, and every estimate behind it."""

    verdict: str
    reason: str
    rule: GateRule
    candidate: Evaluation
    baseline: Evaluation
    difference: dict[str, Interval]  # candidate - baseline, paired over events

    @property
    def ship(self) -> bool:
        return self.verdict == SHIP

    def to_dict(self) -> dict:
        return {
            "n_events": self.candidate.n_events,
            "n_slots": self.candidate.n_slots,
            "ci": self.candidate.ci,
            "level": self.candidate.level,
            "verdict": self.verdict,
            "reason": self.reason,
            "rule": asdict(self.rule),
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "difference": {name: d.to_dict() for name, d in self.difference.items()},
        }


def verdict(rule: GateRule, candidate: EstimatorResult, baseline: EstimatorResult, difference: Interval) -> tuple[str, str]:
    """Apply the gate rule to the primary estimator's results."""
    for who, estimate in (("candidate", candidate), ("baseline", baseline)):
        if not estimate.ess >= rule.min_ess:
            return NOT_ENOUGH_DATA, f"the {who}'s effective sample size {estimate.ess:.1f} is below min_ess {rule.min_ess:g}"
        share = estimate.unsupported_share
        if share is not None and share > rule.max_unsupported:
            return NOT_ENOUGH_DATA, (
                f"the {who} can show shelves the logger never could have shown in {share:.1%} of events "
                f"(max_unsupported {rule.max_unsupported:.1%}): this log cannot judge it"
            )
        mean = estimate.mean_weight
        if mean is not None and not 1.0 / rule.weight_band <= mean <= rule.weight_band:
            return NOT_ENOUGH_DATA, (
                f"the {who}'s mean importance weight is {mean:.3g}, outside [{1.0 / rule.weight_band:.3g}, "
                f"{rule.weight_band:g}] (it is 1 when the log covers the policy): the log rarely shows what it would"
            )
    low, high = difference.lower, difference.upper
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_ENOUGH_DATA, "the difference has no finite interval"
    interval = f"[{low:.4g}, {high:.4g}]"
    if low > rule.min_lift:
        return SHIP, f"the difference interval {interval} lies above min_lift {rule.min_lift:g}"
    if high < rule.min_lift:
        return DO_NOT_SHIP, f"the difference interval {interval} lies below min_lift {rule.min_lift:g}"
    return NOT_ENOUGH_DATA, f"the difference interval {interval} contains min_lift {rule.min_lift:g}"


LogLike = SlateLog | LoadedLog | EventBatch | Sequence[LoggedEvent]
TargetLike = TargetProbs | Policy


def _as_loaded(log: LogLike) -> LoadedLog:
    if isinstance(log, LoadedLog):
        return log
    if isinstance(log, SlateLog):
        return LoadedLog(log=log)
    if isinstance(log, EventBatch):
        return LoadedLog(log=batch_log(log), batch=log)
    return dsjson_log(log)


def _as_target(target: TargetLike, loaded: LoadedLog, name: str) -> TargetProbs:
    if isinstance(target, TargetProbs):
        return TargetProbs(target.prob, target.marginal, target.conditional_distribution, target.marginal_distribution, name)
    if isinstance(target, Policy):
        if loaded.batch is None:
            raise ValidationError(name, "scoring a policy needs the logged events (an EventBatch or DSJSON log), not a slate table")
        return score_policy(target, loaded.batch, name=name)
    raise ValidationError(name, "must be TargetProbs or a Policy", type(target).__name__)


def compare(
    log: LogLike,
    candidate: TargetLike,
    baseline: TargetLike,
    *,
    rng: np.random.Generator,
    estimators: str | Sequence[str] | None = None,
    rule: GateRule | None = None,
    ci: str = "bootstrap",
    level: float = 0.95,
    n_resamples: int = 1000,
    options: EstimatorOptions | None = None,
) -> GateResult:
    """Score candidate and baseline on the log and apply the launch gate.

    `log`: a SlateLog, LoadedLog, EventBatch or logged events; `candidate`/`baseline`:
    TargetProbs, or Policies (scored on the events). Estimators default to GATE_ESTIMATORS
    that both targets support; the rule's primary estimator is always included.
    """
    rule = rule or GateRule()
    options = options or EstimatorOptions()
    loaded = _as_loaded(log)
    slate = loaded.log
    targets = {"candidate": _as_target(candidate, loaded, "candidate"), "baseline": _as_target(baseline, loaded, "baseline")}
    if estimators is None:
        allowed = set.intersection(*(set(supported(slate, t, options)) for t in targets.values()))
        names = tuple(n for n in GATE_ESTIMATORS if n in allowed)
    else:
        names = parse_names(estimators)
    primary = rule.primary
    names = names if primary in names else (primary, *names)
    chosen = [make_estimator(name, options) for name in names]
    intervals = Intervals(ci, level, slate.n_events, rng, n_resamples=n_resamples, event_ids=slate.event_ids)
    folds = rng.permutation(slate.n_events) % options.reward_model.n_folds
    inputs = {who: prepare(slate, t, chosen, options, rng, folds=folds) for who, t in targets.items()}
    shares = {who: unsupported_share(slate, t) for who, t in targets.items()}
    estimates: dict[str, dict[str, EstimatorResult]] = {"candidate": {}, "baseline": {}}
    difference = {}
    for name, estimator in zip(names, chosen):
        terms = {who: estimator.terms(inputs[who]) for who in targets}
        for who, t in terms.items():
            estimates[who][name] = summarise(name, estimator, t.notes, weight_sums(t, slate), intervals(t.parts), shares[who])
        difference[name] = intervals(terms["candidate"].parts + tuple(p.negated() for p in terms["baseline"].parts))
    decided, reason = verdict(rule, estimates["candidate"][primary], estimates["baseline"][primary], difference[primary])
    evaluations = {
        who: Evaluation(who, slate.n_events, slate.n_slots, ci, level, estimates[who]) for who in targets
    }
    return GateResult(decided, reason, rule, evaluations["candidate"], evaluations["baseline"], difference)
