"""Judging a model from progressive scores: a challenger against the champion, a snapshot against the served model.

The challenger gate (configuration changes) judges on every learnable logged event of a
recent window, each with its own logging probabilities: the challenger's targets are its
progressive scores (what it would have done on each event just before learning it), the
champion's are its own, and the difference challenger - champion is paired per event. So the
evidence grows with the log instead of restarting whenever a new model is served.

The publishing guardrail judges on the events the recently published models served: there the
served models' targets are the logging probabilities (every importance weight 1, their
estimate the logged reward), and the snapshot's are the champion's progressive scores.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bandit.errors import ValidationError
from offline_eval.estimators import ESTIMATOR_CLASSES
from offline_eval.evaluate import EstimatorResult
from offline_eval.gate import GateResult, GateRule, compare
from offline_eval.intervals import METHODS, Interval
from offline_eval.readers import table_log
from offline_eval.slate import TargetProbs
from service.join.reader import JoinedLog
from service.training.state import scores_name

SLATE_COLUMNS = ["event_id", "slot", "action", "reward", "logging_prob", "logging_marginal", "model_version", "learn"]
SCORE_COLUMNS = ("target_prob", "target_marginal")
BASELINE_COLUMNS = ("baseline_prob", "baseline_marginal")
# progressive scores hold the logged shelves' conditional and marginal probabilities, not whole distributions
SCORED_NEEDS = frozenset({"complete", "conditional", "marginal"})
SCORED_ESTIMATORS = tuple(name for name, cls in ESTIMATOR_CLASSES.items() if set(cls.needs) <= SCORED_NEEDS)
DEFAULT_ESTIMATOR = "snips_iips"
CACHE_ROWS = 2_000_000  # slate or score rows kept in memory between rounds


@dataclass(frozen=True, slots=True)
class GateSettings:
    """When a challenger is judged against the champion, and by which rule.

    A challenger is judged once both have scored `min_events` learnable events, on the most
    recent `window_events` of them, and again after it has trained `every_events` more events
    (or the champion changed). The primary estimator defaults to item-position IPS
    (`snips_iips`): on a 6-slot page its effective sample size stays in the hundreds where the
    whole-prefix estimators' collapse (docs/training.md, "Choosing the estimator").
    """

    min_events: int = 2_000
    window_events: int = 20_000
    every_events: int = 2_000
    rule: GateRule = field(default_factory=lambda: GateRule(primary=DEFAULT_ESTIMATOR))
    ci: str = "bootstrap"
    level: float = 0.95
    n_resamples: int = 1000

    def __post_init__(self) -> None:
        if self.min_events < 1:
            raise ValidationError("min_events", "must be at least 1", self.min_events)
        if self.window_events < self.min_events:
            raise ValidationError("window_events", f"must be at least min_events ({self.min_events})", self.window_events)
        if self.every_events < 1:
            raise ValidationError("every_events", "must be at least 1", self.every_events)
        if self.ci not in METHODS:
            raise ValidationError("ci", f"must be one of {', '.join(METHODS)}", self.ci)
        if not 0.5 <= self.level < 1.0:
            raise ValidationError("level", "must lie in [0.5, 1)", self.level)
        if self.n_resamples < 100:
            raise ValidationError("n_resamples", "must be at least 100", self.n_resamples)
        if self.rule.primary not in SCORED_ESTIMATORS:
            raise ValidationError("rule.primary", f"must be an estimator the progressive scores support ({', '.join(SCORED_ESTIMATORS)})", self.rule.primary)


def served_by(versions: pd.Series, served: Collection[str]) -> np.ndarray:
    """Rows logged by one of the `served` versions, also while it learned online (logged as `version+n`)."""
    return versions.str.split("+", n=1).str[0].isin(served).to_numpy()


class _PartCache(OrderedDict):
    """Frames by part number, the least recently used dropped beyond CACHE_ROWS rows in all."""

    def get_or_read(self, number: int, read: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        if number in self:
            self.move_to_end(number)
            return self[number]
        frame = self[number] = read()
        while len(self) > 1 and sum(len(f) for f in self.values()) > CACHE_ROWS:
            self.popitem(last=False)
        return frame


class SlateRows:
    """The slate rows of committed parts (each part read once while it stays recent)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.joined = JoinedLog(data_dir)
        self._parts = _PartCache()

    def recent(self, stop_part: int, n_events: int, select: Callable[[pd.DataFrame], np.ndarray]) -> pd.DataFrame:
        """Rows, with a `part` column, of the events `select` keeps in the latest parts before
        `stop_part` that hold at least `n_events` of them (whole parts; see `last_events`)."""
        frames = []
        found = 0
        for number in reversed(range(min(stop_part, self.joined.checkpoint().next_part))):
            frame = self._parts.get_or_read(number, lambda number=number: self.joined.slate_part(number, SLATE_COLUMNS).assign(part=number))
            chosen = frame[select(frame)]
            if len(chosen):
                frames.append(chosen)
                found += chosen["event_id"].nunique()
            if found >= n_events:
                break
        if not frames:
            return pd.DataFrame(columns=[*SLATE_COLUMNS, "part"])
        return pd.concat(frames[::-1], ignore_index=True)


def last_events(rows: pd.DataFrame, n_events: int) -> pd.DataFrame:
    """The rows of the last `n_events` events (rows are in log order)."""
    events = pd.unique(rows["event_id"])
    return rows[rows["event_id"].isin(events[-n_events:])] if len(events) > n_events else rows


class ProgressiveScores:
    """One candidate's progressive scores, per part (a committed part's scores never change)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._parts = _PartCache()

    def attach(self, rows: pd.DataFrame, columns: tuple[str, str] = SCORE_COLUMNS) -> pd.DataFrame:
        """`rows` (whole parts, with a `part` column) with this candidate's conditional and
        marginal scores as `columns`; rows it has no score for are dropped."""
        frames = []
        for number, part_rows in rows.groupby("part", sort=True):
            scores = self._parts.get_or_read(int(number), lambda number=number: pd.read_parquet(self.directory / scores_name(int(number))))
            named = scores.rename(columns=dict(zip(SCORE_COLUMNS, columns)))
            frames.append(part_rows.merge(named, on=["event_id", "slot"], how="inner", validate="one_to_one"))
        if not frames:
            return rows.assign(**{name: pd.Series(dtype=float) for name in columns})
        return pd.concat(frames, ignore_index=True)


def dominant_slot_count(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the events with the most common number of slots (the estimators need one K)."""
    slots = rows.groupby("event_id", sort=False)["slot"].transform("size")
    counts = slots.value_counts()
    return rows if len(counts) == 1 else rows[slots == counts.idxmax()]


def judge(rows: pd.DataFrame, settings: GateSettings, rng: np.random.Generator) -> GateResult:
    """The launch gate on slate rows that carry the judged model's `target_prob`, `target_marginal`.
    Its baseline: the `baseline_prob`, `baseline_marginal` columns where the rows carry them (the
    champion), else the logging probabilities (the model that served the rows)."""
    columns = {name: rows[name].to_numpy() for name in rows.columns if name not in BASELINE_COLUMNS}
    loaded = table_log(columns)
    log = loaded.log
    if BASELINE_COLUMNS[0] in rows:
        baseline_columns = {**columns, **{t: rows[b].to_numpy() for t, b in zip(SCORE_COLUMNS, BASELINE_COLUMNS)}}
        scored = table_log(baseline_columns).target
        baseline = TargetProbs(prob=scored.prob, marginal=scored.marginal, name="champion")
    else:
        baseline = TargetProbs(prob=log.logging_prob, marginal=log.logging_marginal, name="served")
    return compare(log, loaded.target, baseline, rng=rng, rule=settings.rule, ci=settings.ci,
                   level=settings.level, n_resamples=settings.n_resamples)


def _interval(estimate: EstimatorResult | Interval) -> dict:
    return {"value": estimate.value, "lower": estimate.lower, "upper": estimate.upper}


def gate_fields(result: GateResult, baseline: str) -> dict:
    """The gate's verdict and numbers as record fields: the primary estimator's value and
    interval for the judged model, the `baseline` ("champion" or "served") and their paired
    difference, and the same for every estimator."""
    primary = result.rule.primary
    candidate, active = result.candidate.estimates, result.baseline.estimates
    return {
        "n_events": result.candidate.n_events,
        "n_slots": result.candidate.n_slots,
        "estimator": primary,
        "candidate_estimate": _interval(candidate[primary]),
        f"{baseline}_estimate": _interval(active[primary]),
        "difference": _interval(result.difference[primary]),
        "ess": {"candidate": candidate[primary].ess, baseline: active[primary].ess},
        "verdict": result.verdict,
        "reason": result.reason,
        "rule": asdict(result.rule),
        "ci": result.candidate.ci,
        "level": result.candidate.level,
        "estimates": {
            name: {"candidate": _interval(candidate[name]), baseline: _interval(active[name]),
                   "difference": _interval(result.difference[name])}
            for name in candidate
        },
    }
