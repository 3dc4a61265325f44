"""Click models: how listeners examine the slots of a home page, and the exact expected reward
of a ranking or of a policy's distribution over rankings.

With attraction a_k (the stream probability of the shelf at slot k once examined) and
examination profile theta_k (non-increasing):

- position-based: slot k is examined with probability theta_k, independently of the others;
  E[r_k] = theta_k a_k.
- cascade: the listener scans down from the top, moves from slot k-1 to k with probability
  theta_k / theta_{k-1} and stops after streaming; E[r_k] = theta_k a_k prod_{j<k} (1 - a_j).

In both models the best ranking puts the candidates in decreasing order of attraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.errors import ValidationError
from bandit.sampling import SlotModel

CLICK_MODELS = ("position", "cascade")


@dataclass(frozen=True, slots=True, eq=False)
class ClickModel:
    """A click model over K slots: `name` in CLICK_MODELS, `examination` theta (K,)."""

    name: str
    examination: np.ndarray

    def __post_init__(self) -> None:
        if self.name not in CLICK_MODELS:
            raise ValidationError("click_model", f"must be one of {', '.join(CLICK_MODELS)}", self.name)
        theta = np.asarray(self.examination, dtype=np.float64)
        if theta.ndim != 1 or len(theta) == 0 or not (theta > 0.0).all() or not (theta <= 1.0).all():
            raise ValidationError("examination", "needs one probability in (0, 1] per slot", self.examination)
        if (np.diff(theta) > 0).any():
            raise ValidationError("examination", "must not increase down the page", theta.tolist())
        object.__setattr__(self, "examination", theta)

    @property
    def n_slots(self) -> int:
        return len(self.examination)

    @property
    def stops_after_stream(self) -> bool:
        return self.name == "cascade"

    def expected(self, attraction: np.ndarray) -> np.ndarray:
        """E[r_k] (B, K) for the attractions (B, K) of the shelves in slot order."""
        expected = attraction * self.examination[: attraction.shape[1]]
        if self.stops_after_stream:
            not_yet = np.ones_like(attraction)
            np.cumprod(1.0 - attraction[:, :-1], axis=1, out=not_yet[:, 1:])
            expected *= not_yet
        return expected

    def realise(self, attraction: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Streams (B, K) in {0, 1} from attractions (B, K) and uniforms (2, B, K): the first
        decide examination, the second attraction."""
        theta = self.examination[: attraction.shape[1]]
        attracted = uniforms[1] < attraction
        if not self.stops_after_stream:
            return ((uniforms[0] < theta) & attracted).astype(np.float64)
        moves_on = uniforms[0] < theta / np.concatenate(([1.0], theta[:-1]))
        examined = np.logical_and.accumulate(moves_on, axis=1)
        examined[:, 1:] &= np.logical_and.accumulate(~attracted[:, :-1], axis=1)
        return (examined & attracted).astype(np.float64)

    def sample(self, attraction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Streams (B, K) drawn with `rng`."""
        return self.realise(attraction, rng.random((2, *attraction.shape)))


def slot_model_value(
    model: SlotModel,
    attraction: np.ndarray,
    click: ClickModel,
    n_slots: int,
    rng: np.random.Generator,
    *,
    draws: int,
    exact_budget: int,
) -> tuple[np.ndarray, float, bool]:
    """Expected reward per slot (K,) of a policy's distribution over rankings for one request
    with candidate attractions (N,); also the Monte Carlo variance of their sum and whether
    the value is exact.

    Exact by enumerating the prefixes with non-zero probability while their count times N
    stays within `exact_budget`; otherwise a Rao-Blackwellised Monte Carlo mean over `draws`
    sampled prefixes: slot k contributes theta_k * reach(prefix) * sum_i p_k(i | prefix) a_i,
    where reach is prod (1 - a_j) over the prefix under cascade and 1 under position-based.
    """
    exact = _enumerated_value(model, attraction, click, n_slots, exact_budget)
    if exact is not None:
        return exact, 0.0, True
    n = len(attraction)
    theta = click.examination
    available = np.ones((draws, n), dtype=bool)
    reach = np.ones(draws)
    rows = np.arange(draws)
    values = np.empty((draws, n_slots))
    uniforms = 1.0 - rng.random((n_slots, draws))  # in (0, 1]: never lands on a zero-probability shelf
    for k in range(n_slots):
        p = model.probs(k, available)
        values[:, k] = theta[k] * reach * (p @ attraction)
        cdf = np.cumsum(p, axis=1)
        chosen = np.minimum((cdf < (uniforms[k] * cdf[:, -1])[:, None]).sum(axis=1), n - 1)
        if click.stops_after_stream:
            reach *= 1.0 - attraction[chosen]
        available[rows, chosen] = False
    totals = values.sum(axis=1)
    return values.mean(axis=0), float(totals.var(ddof=1) / draws), False


def _enumerated_value(
    model: SlotModel, attraction: np.ndarray, click: ClickModel, n_slots: int, exact_budget: int
) -> np.ndarray | None:
    """Exact per-slot values by enumerating live prefixes, or None when they exceed the budget."""
    n = len(attraction)
    values = np.empty(n_slots)
    available = np.ones((1, n), dtype=bool)
    weights = np.ones(1)  # probability of each live prefix, times its reach under cascade
    for k in range(n_slots):
        p = model.probs(k, available)
        values[k] = click.examination[k] * (weights @ (p @ attraction))
        if k == n_slots - 1:
            break
        live_rows, cols = np.nonzero(p > 0.0)
        if len(live_rows) * n > exact_budget:
            return None
        weights = weights[live_rows] * p[live_rows, cols]
        if click.stops_after_stream:
            weights *= 1.0 - attraction[cols]
        available = available[live_rows]
        available[np.arange(len(cols)), cols] = False
    return values
