"""Judging a challenger against the active model on the events the active model served.

On those events the active model's value is the logged reward: its target probabilities are
the logging probabilities, so every importance weight is 1 and the difference challenger -
active is paired per event. The challenger's target probabilities are its progressive scores
(what it would have done on each event just before learning it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bandit.errors import ValidationError
from offline_eval.estimators import ESTIMATOR_CLASSES
from offline_eval.evaluate import Estimate
from offline_eval.gate import GateResult, GateRule, compare
from offline_eval.intervals import METHODS, Interval
from offline_eval.readers import table_log
from offline_eval.slate import TargetProbs
from service.joiner import JoinedLog
from service.training.state import scores_name

SLATE_COLUMNS = ["event_id", "slot", "action", "reward", "logging_prob", "logging_marginal", "model_version"]
# progressive scores hold the logged shelves' conditional and marginal probabilities, not whole distributions
SCORED_NEEDS = frozenset({"complete", "conditional", "marginal"})
SCORED_ESTIMATORS = tuple(name for name, cls in ESTIMATOR_CLASSES.items() if SCORED_NEEDS >= set(cls.needs))


@dataclass(frozen=True, slots=True)
class GateSettings:
    """When a challenger is judged, and by which rule.

    A challenger is judged once `min_events` events served by the active model have been
    scored by it, on the most recent `window_events` of them, and again only after it has
    trained `every_events` more events (or the active model changed).
    """

    min_events: int = 500
    window_events: int = 20_000
    every_events: int = 500
    rule: GateRule = field(default_factory=GateRule)
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


def served_by(versions: pd.Series, version: str) -> np.ndarray:
    """Rows logged by `version`, also while it learned online (logged as `version+n`)."""
    return ((versions == version) | versions.str.startswith(version + "+")).to_numpy()


class OnPolicyEvents:
    """Slate rows of the events one model version served, per committed part (read once, cached)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.joined = JoinedLog(data_dir)
        self._version: str | None = None
        self._parts: dict[int, pd.DataFrame] = {}

    def rows(self, version: str, stop_part: int, window_events: int) -> pd.DataFrame:
        """Rows, with a `part` column, of the events `version` served in the latest parts before
        `stop_part` that hold at least `window_events` of them (whole parts; see `last_events`)."""
        if version != self._version:
            self._version, self._parts = version, {}
        frames = []
        n_events = 0
        for part in reversed(self.joined.parts(0)[:stop_part]):
            if part.number not in self._parts:
                slate = pd.read_parquet(part.slates, columns=SLATE_COLUMNS)
                self._parts[part.number] = slate[served_by(slate["model_version"], version)].assign(part=part.number)
            frame = self._parts[part.number]
            if len(frame):
                frames.append(frame)
                n_events += frame["event_id"].nunique()
            if n_events >= window_events:
                break
        if not frames:
            return pd.DataFrame(columns=[*SLATE_COLUMNS, "part"])
        return pd.concat(frames[::-1], ignore_index=True)


def last_events(rows: pd.DataFrame, n_events: int) -> pd.DataFrame:
    """The rows of the last `n_events` events (rows are in log order)."""
    events = pd.unique(rows["event_id"])
    return rows[rows["event_id"].isin(events[-n_events:])] if len(events) > n_events else rows


class ProgressiveScores:
    """One candidate's progressive scores joined to on-policy slate rows, per part (cached for
    the current active version: a committed part's scores never change)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._version: str | None = None
        self._parts: dict[int, pd.DataFrame] = {}

    def attach(self, rows: pd.DataFrame, version: str) -> pd.DataFrame:
        """`rows` (whole parts, with a `part` column) plus `target_prob` and `target_marginal`."""
        if version != self._version:
            self._version, self._parts = version, {}
        frames = []
        for number, part_rows in rows.groupby("part", sort=True):
            if number not in self._parts:
                scores = pd.read_parquet(self.directory / scores_name(number))
                self._parts[number] = part_rows.merge(scores, on=["event_id", "slot"], how="inner", validate="one_to_one")
            frames.append(self._parts[number])
        return pd.concat(frames, ignore_index=True)


def dominant_slot_count(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the events with the most common number of slots (the estimators need one K)."""
    slots = rows.groupby("event_id", sort=False)["slot"].transform("size")
    counts = slots.value_counts()
    return rows if len(counts) == 1 else rows[slots == counts.idxmax()]


def judge(rows: pd.DataFrame, settings: GateSettings, rng: np.random.Generator) -> GateResult:
    """The launch gate on slate rows that carry the challenger's `target_prob`, `target_marginal`;
    the active model's targets are the logging probabilities."""
    loaded = table_log({name: rows[name].to_numpy() for name in rows.columns})
    log = loaded.log
    active = TargetProbs(prob=log.logging_prob, marginal=log.logging_marginal, name="active")
    return compare(log, loaded.target, active, rng=rng, rule=settings.rule, ci=settings.ci,
                   level=settings.level, n_resamples=settings.n_resamples)


def _interval(estimate: Estimate | Interval) -> dict:
    return {"value": estimate.value, "lower": estimate.lower, "upper": estimate.upper}


def gate_fields(result: GateResult) -> dict:
    """The gate's verdict and numbers as record fields: the primary estimator's value and
    interval for both models and their paired difference, and the same for every estimator."""
    primary = result.rule.primary
    candidate, active = result.candidate.estimates, result.baseline.estimates
    return {
        "n_events": result.candidate.n_events,
        "n_slots": result.candidate.n_slots,
        "estimator": primary,
        "candidate_estimate": _interval(candidate[primary]),
        "active_estimate": _interval(active[primary]),
        "difference": _interval(result.difference[primary]),
        "ess": {"candidate": candidate[primary].ess, "active": active[primary].ess},
        "verdict": result.verdict,
        "reason": result.reason,
        "rule": asdict(result.rule),
        "ci": result.candidate.ci,
        "level": result.candidate.level,
        "estimates": {
            name: {"candidate": _interval(candidate[name]), "active": _interval(active[name]),
                   "difference": _interval(result.difference[name])}
            for name in candidate
        },
    }
