"""Confidence intervals over events: bootstrap, normal approximation, empirical Bernstein bound.

Every estimate is a sum of ratios of event sums (`Ratio`): slot k's value is
sum_j c_j * (sum_i a_jik) / (sum_i b_jik). Plain means have b = 1 on observed slots,
self-normalised estimators have b = the weights. The total value is the sum over slots.
A difference of two estimates on the same events is again such a sum (coefficients -1),
so one machinery gives paired intervals for a candidate minus a baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from bandit.errors import ValidationError

METHODS = ("bootstrap", "normal", "bernstein")
MAX_BLOCKS = 4096


@dataclass(frozen=True, slots=True)
class Ratio:
    """coefficient * sum_i numerator[i, k] / sum_i denominator[i, k], per slot k; arrays (n, K).
    A denominator of None stands for 1 at every event and slot (a plain mean)."""

    numerator: np.ndarray
    denominator: np.ndarray | None
    coefficient: float = 1.0

    def negated(self) -> Ratio:
        return Ratio(self.numerator, self.denominator, -self.coefficient)

    def dense_denominator(self) -> np.ndarray:
        return np.ones(self.numerator.shape) if self.denominator is None else self.denominator

    def denominator_sums(self) -> np.ndarray:
        if self.denominator is None:
            return np.full(self.numerator.shape[1], float(len(self.numerator)))
        return column_sums(self.denominator)


def column_sums(values: np.ndarray) -> np.ndarray:
    """(K,) sums over the rows of an (n, K) array: a broadcast column is summed once, a row-major
    array by one BLAS product (its sum(axis=0) is a slow strided reduction)."""
    if values.strides[1] == 0:
        return np.full(values.shape[1], values[:, 0].sum())
    if values.flags.f_contiguous:
        return values.sum(axis=0)
    return np.ones(len(values)) @ values


Parts = tuple[Ratio, ...]


@dataclass(frozen=True, slots=True)
class Interval:
    """Value and interval of the total and of each slot."""

    value: float
    lower: float
    upper: float
    slot_values: np.ndarray
    slot_lower: np.ndarray
    slot_upper: np.ndarray

    def to_dict(self) -> dict:
        return finite_or_none({
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "per_slot": self.slot_values.tolist(),
            "per_slot_lower": self.slot_lower.tolist(),
            "per_slot_upper": self.slot_upper.tolist(),
        })


def finite_or_none(value):
    """Replace NaN and infinities (not JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def slot_values(parts: Parts) -> np.ndarray:
    """(K,) value of each slot: sum_j c_j sum_i a_jik / sum_i b_jik (NaN where a denominator sums to 0)."""
    total = 0.0
    for part in parts:
        den = part.denominator_sums()
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total + part.coefficient * np.where(den != 0.0, column_sums(part.numerator) / den, np.nan)
    return total


def influence(parts: Parts) -> np.ndarray:
    """(n, K) linearised contribution of each event: sum_j c_j (a_jik - v_jk b_jik) / mean_i b_jik."""
    psi = 0.0
    for part in parts:
        n = len(part.numerator)
        mean_den = part.denominator_sums() / n
        with np.errstate(invalid="ignore", divide="ignore"):
            value = column_sums(part.numerator) / n / mean_den
            psi = psi + part.coefficient * (part.numerator - value * part.dense_denominator()) / mean_den
    return psi


def normal_quantile(level: float) -> float:
    """z such that a standard normal lies in [-z, z] with probability `level`."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValidationError("level", "must lie strictly between 0 and 1", level)
    return level


class Intervals:
    """Interval maker for one evaluation. For the bootstrap, the resampling of events is drawn once
    (from `rng`) and shared by every estimate it scores, so differences are paired over events."""

    def __init__(
        self,
        method: str,
        level: float,
        n_events: int,
        rng: np.random.Generator,
        *,
        n_resamples: int = 1000,
        max_blocks: int = MAX_BLOCKS,
    ) -> None:
        if method not in METHODS:
            raise ValidationError("ci", f"must be one of {', '.join(METHODS)}", method)
        if n_resamples < 10:
            raise ValidationError("resamples", "must be at least 10", n_resamples)
        self.method = method
        self.level = check_level(level)
        self.n_events = n_events
        self.n_resamples = n_resamples
        self._rng = rng
        self._max_blocks = max_blocks
        self._counts: np.ndarray | None = None
        self._block_of: np.ndarray | None = None

    def __call__(self, parts: Parts) -> Interval:
        values = slot_values(parts)
        if self.method == "bootstrap":
            slot_low, slot_high, low, high = self._bootstrap(parts)
        else:
            psi = influence(parts)
            slot_half = self._half_width(psi)
            half = self._half_width(psi.sum(axis=1, keepdims=True))[0]
            slot_low, slot_high = values - slot_half, values + slot_half
            low, high = values.sum() - half, values.sum() + half
        return Interval(float(values.sum()), float(low), float(high), values, slot_low, slot_high)

    def _half_width(self, psi: np.ndarray) -> np.ndarray:
        """Half-widths per column of the (n, m) linearised contributions."""
        n = len(psi)
        if n < 2:
            return np.full(psi.shape[1], np.inf)
        variance = psi.var(axis=0, ddof=1)
        if self.method == "normal":
            return normal_quantile(self.level) * np.sqrt(variance / n)
        # Maurer & Pontil (2009), Thm 4, two-sided: sqrt(2 V ln(4/d) / n) + 7 b ln(4/d) / (3 (n - 1)),
        # with the observed range of the per-event values as b.
        log_term = math.log(4.0 / (1.0 - self.level))
        spread = psi.max(axis=0) - psi.min(axis=0)
        return np.sqrt(2.0 * variance * log_term / n) + 7.0 * spread * log_term / (3.0 * (n - 1))

    def _resampling(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Multinomial counts (B, G) over G blocks of events, and each event's block (None: one event
        per block). With more than `max_blocks` events they fall into blocks at random, and a
        block's sum is resampled as one unit."""
        if self._counts is None:
            n_blocks = min(self.n_events, self._max_blocks)
            if n_blocks < self.n_events:
                self._block_of = self._rng.permutation(self.n_events) % n_blocks
            counts = self._rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=self.n_resamples)
            self._counts = counts.astype(np.float64)
        return self._counts, self._block_of

    def _bootstrap(self, parts: Parts) -> tuple[np.ndarray, np.ndarray, float, float]:
        counts, block_of = self._resampling()
        arrays = [a for part in parts for a in (part.numerator, part.dense_denominator())]
        if block_of is None:
            columns = np.concatenate(arrays, axis=1)
        else:  # per-column sums by block (each slot's column is contiguous)
            columns = np.stack(
                [np.bincount(block_of, weights=a[:, k], minlength=counts.shape[1]) for a in arrays for k in range(a.shape[1])],
                axis=1,
            )
        sums = counts @ columns
        n_slots = parts[0].numerator.shape[1]
        replicates = 0.0
        for j, part in enumerate(parts):
            num = sums[:, 2 * j * n_slots : (2 * j + 1) * n_slots]
            den = sums[:, (2 * j + 1) * n_slots : (2 * j + 2) * n_slots]
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates = replicates + part.coefficient * np.where(den != 0.0, num / den, np.nan)
        alpha = 1.0 - self.level
        quantiles = [alpha / 2.0, 1.0 - alpha / 2.0]
        slot_low, slot_high = np.nanquantile(replicates, quantiles, axis=0)
        low, high = np.nanquantile(replicates.sum(axis=1), quantiles)
        return slot_low, slot_high, float(low), float(high)
