"""Timed publishing: the champion's latest committed model goes live every `interval_s`.

A snapshot is published and activated only after checks that need no statistics, and a
one-sided guardrail:

1. it loads (payload checked against its metadata, VW reads it);
2. its weights are all finite;
3. it ranks a canary request with valid probabilities: every slot's distribution sums to 1,
   every probability lies in [0, 1] and the chosen shelves' in (0, 1], nothing is NaN;
4. guardrail: on the most recent `guardrail_events` events served by the active model or the
   versions published before it, the paired difference snapshot - served (the champion's
   progressive scores against the logged probabilities, the gate's primary estimator, a 95%
   interval) is refused only when its upper end lies below -`max_regression` x the served
   estimate, with an effective sample size of at least `min_ess` for both. Too few events, or
   too small an effective sample (a snapshot that rarely does what the served models did), is
   no evidence of harm: the snapshot is published.

A refused snapshot is recorded (`publish_refused`, with the check and the figures), counted,
kept among the judged models, and the service keeps the model it has. An operator's
activation pins the active pointer (`POST /v1/model/activate`); publishing then pauses until
`POST /v1/model/resume`. After each publication the store keeps the newest `keep_versions`
versions (and the active, previous and arms' ones) for rollback.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.durable import write_atomic
from bandit.errors import ModelFileError, ShelfBanditError, ValidationError
from bandit.policy import Policy
from bandit.registry import load_policy
from bandit.types import Context, Decision, Shelf
from offline_eval.gate import GateResult

CANARY_CONTEXT = Context({"canary": True, "country": "canary", "hour": 12})
CANARY_SHELVES = tuple(Shelf(f"canary-{i}", {"kind": f"kind{i % 3}", "age": i}) for i in range(8))
CANARY_SLOTS = 4
PROBABILITY_TOLERANCE = 1e-6
STATUS_FILE = "publishing.json"


@dataclass(frozen=True, slots=True)
class PublishSettings:
    """How often the champion's snapshot goes live, and the guardrail that may hold it back."""

    interval_s: float = 60.0
    max_regression: float = 0.02  # a share of the served model's estimated value
    guardrail_events: int = 5_000
    guardrail_min_events: int = 100  # fewer: no evidence either way
    min_ess: float = 30.0  # fewer effective events: bootstrap intervals of the weighted estimates are unreliable
    keep_versions: int = 10

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValidationError("interval_s", "must be > 0", self.interval_s)
        if not self.max_regression >= 0:
            raise ValidationError("max_regression", "must be >= 0", self.max_regression)
        if self.guardrail_events < 1:
            raise ValidationError("guardrail_events", "must be at least 1", self.guardrail_events)
        if not 1 <= self.guardrail_min_events <= self.guardrail_events:
            raise ValidationError("guardrail_min_events", f"must lie in [1, guardrail_events ({self.guardrail_events})]", self.guardrail_min_events)
        if not self.min_ess >= 0:
            raise ValidationError("min_ess", "must be >= 0", self.min_ess)
        if self.keep_versions < 2:
            raise ValidationError("keep_versions", "must be at least 2 (the active version and one to roll back to)", self.keep_versions)


class SnapshotRefused(ShelfBanditError):
    """A snapshot failed one of the checks; `check` names it (load, weights, canary, guardrail),
    `figures` holds the guardrail's numbers where it was the guardrail."""

    def __init__(self, check: str, reason: str, figures: dict | None = None) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason
        self.figures = figures


def checked_snapshot(path: str | Path) -> Policy:
    """The snapshot at `path`, loaded, after checks 1-3 of the module docstring; SnapshotRefused otherwise."""
    try:
        policy = load_policy(path)
    except (ModelFileError, ValidationError, OSError) as err:
        raise SnapshotRefused("load", str(err)) from None
    finite = getattr(policy, "finite_weights", None)
    if finite is not None and not finite():
        raise SnapshotRefused("weights", "the model holds a weight that is NaN or infinite")
    try:
        decision = policy.rank(CANARY_CONTEXT, CANARY_SHELVES, CANARY_SLOTS, event_id="canary")
    except Exception as err:  # any failure to rank means the model must not serve
        raise SnapshotRefused("canary", f"ranking the canary request failed ({type(err).__name__}: {err})") from None
    problem = canary_problem(decision)
    if problem:
        raise SnapshotRefused("canary", problem)
    return policy


def canary_problem(decision: Decision) -> str | None:
    """What is wrong with a decision's probabilities, or None."""
    for k, distribution in enumerate(decision.slot_distributions):
        probs = np.array([p for _, p in distribution], dtype=float)
        if not np.isfinite(probs).all() or ((probs < 0) | (probs > 1)).any():
            return f"slot {k} has a probability outside [0, 1] or NaN: {probs.tolist()}"
        if abs(probs.sum() - 1.0) > PROBABILITY_TOLERANCE:
            return f"slot {k}'s probabilities sum to {probs.sum():.6g}, not 1"
    chosen = np.array(decision.slot_probs, dtype=float)
    if not (np.isfinite(chosen).all() and ((chosen > 0) & (chosen <= 1)).all()):
        return f"a chosen shelf's probability lies outside (0, 1]: {chosen.tolist()}"
    return None


def guardrail_refusal(result: GateResult, max_regression: float, min_ess: float) -> str | None:
    """Why the guardrail refuses the snapshot (the upper end of snapshot - served lies below
    -max_regression x the served estimate, with both effective sample sizes at least
    `min_ess`), or None when the evidence does not show it worse."""
    primary = result.rule.primary
    difference = result.difference[primary]
    served = result.baseline.estimates[primary].value
    ess = min(result.candidate.estimates[primary].ess, result.baseline.estimates[primary].ess)
    if not ess >= min_ess:
        return None
    limit = -max_regression * abs(served) if math.isfinite(served) else 0.0
    if math.isfinite(difference.upper) and difference.upper < limit:
        return (f"on {result.candidate.n_events} recent events the snapshot is worse than the served model: "
                f"{primary} difference {difference.value:.4g} [{difference.lower:.4g}, {difference.upper:.4g}], "
                f"upper end below {limit:.4g} (-{max_regression:g} x served {served:.4g})")
    return None


def status_path(training_dir: str | Path) -> Path:
    return Path(training_dir) / STATUS_FILE


def write_status(training_dir: str | Path, status: dict) -> None:
    """The publisher's state for the service's metrics and `doctor` (replaced atomically)."""
    write_atomic(status_path(training_dir), json.dumps({**status, "updated": time.time()}).encode())


def read_status(training_dir: str | Path) -> dict | None:
    """The publisher's last written state, or None when no trainer has written one (or it is unreadable)."""
    try:
        data = json.loads(status_path(training_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
