"""The A/B report's online estimates: ratios of sums with listeners as the units, differences
between arms, and apprentice agreement.

A session is one decision; its reward is the sum over its slots. Arms are assigned per
listener, so a listener's sessions are not independent draws: the reward per session of an
arm is the ratio R / N of its reward sum to its number of sessions, with listeners as the
independent units (clusters; a session without a listener id is its own cluster). Its
standard error is the delta method's,

    se^2 = sum_c psi_c^2 / (C (C - 1)),  psi_c = (R_c - v N_c) / mean_c(N_c),

(`offline_eval.intervals.influence` with one listener per row). Arms hold disjoint listeners,
so the difference of two arms has se^2 = se_a^2 + se_b^2 (two independent samples, Welch),
and every interval is value +- z se with z the normal quantile of the level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from offline_eval.intervals import Ratio, finite_or_none, influence, slot_values


@dataclass(frozen=True, slots=True)
class OnlineEstimate:
    """A value measured on an arm's sessions with its standard error, in total and per slot;
    intervals are value +- z se."""

    value: float
    stderr: float
    z: float
    per_slot: tuple[float, ...] = ()
    per_slot_stderr: tuple[float, ...] = ()

    @property
    def lower(self) -> float:
        return self.value - self.z * self.stderr

    @property
    def upper(self) -> float:
        return self.value + self.z * self.stderr

    def to_dict(self) -> dict:
        slots, slot_se = np.array(self.per_slot), np.array(self.per_slot_stderr)
        return finite_or_none({
            "value": self.value, "stderr": self.stderr, "lower": self.lower, "upper": self.upper,
            "per_slot": slots.tolist(), "per_slot_lower": (slots - self.z * slot_se).tolist(),
            "per_slot_upper": (slots + self.z * slot_se).tolist(),
        })


def ratio_estimate(numerator: np.ndarray, denominator: np.ndarray, z: float) -> OnlineEstimate:
    """sum_c numerator[c, k] / sum_c denominator[c, k] per slot k and their sum, listeners c as the
    units; (C, K) arrays."""
    parts = (Ratio(numerator, denominator),)
    values = slot_values(parts)
    n_clusters = len(numerator)
    if n_clusters < 2:
        return OnlineEstimate(float(values.sum()), math.nan, z, tuple(values.tolist()), (math.nan,) * len(values))
    psi = influence(parts)
    slot_se = psi.std(axis=0, ddof=1) / math.sqrt(n_clusters)
    total_se = float(psi.sum(axis=1).std(ddof=1) / math.sqrt(n_clusters))
    return OnlineEstimate(float(values.sum()), total_se, z, tuple(values.tolist()), tuple(slot_se.tolist()))


def difference(a: OnlineEstimate, b: OnlineEstimate) -> OnlineEstimate:
    """a - b for independent samples: se = sqrt(se_a^2 + se_b^2), per slot likewise."""
    slots = np.array(a.per_slot) - np.array(b.per_slot)
    slot_se = np.hypot(a.per_slot_stderr, b.per_slot_stderr)
    return OnlineEstimate(a.value - b.value, math.hypot(a.stderr, b.stderr), a.z, tuple(slots.tolist()), tuple(slot_se.tolist()))


def group_sums(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """(G, K) column sums of the rows (n, K) of `values` by group code (n,)."""
    n_columns = values.shape[1]
    flat = (codes[:, None] * n_columns + np.arange(n_columns)).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=n_groups * n_columns).reshape(n_groups, n_columns)


def agreement_share(agreed: np.ndarray, compared: np.ndarray, z: float) -> OnlineEstimate:
    """Share of compared slots that agreed, overall and per slot, listeners as units; (C, K) counts."""
    overall = ratio_estimate(agreed.sum(axis=1, keepdims=True), compared.sum(axis=1, keepdims=True), z)
    per_slot = [ratio_estimate(agreed[compared[:, k] > 0, k : k + 1], compared[compared[:, k] > 0, k : k + 1], z)
                for k in range(compared.shape[1]) if compared[:, k].any()]
    return OnlineEstimate(overall.value, overall.stderr, z, tuple(e.value for e in per_slot), tuple(e.stderr for e in per_slot))
