"""Confidence intervals over replicate seeds."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows (seeds) of values (n, ...) and its Student-t interval at `level`:
    mean -/+ t_{n-1} * sd / sqrt(n). NaN bounds with a single seed."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    n = len(values)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half
