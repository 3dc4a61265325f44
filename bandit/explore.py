"""Exploration rules: per-slot cost vectors -> probabilities over the available shelves.

Each explorer maps one slot's `costs` (N,) and availability masks `available` (B, N) bool to
probabilities (B, N) that are 0 outside `available` and sum to 1 per row; every row has
exactly `n_available` shelves available (the slot index fixes it). They reproduce Vowpal Wabbit's
cb_explore_adf explorers of the same name (greedy, softmax, squarecb), so one VW pass that
scores every shelf for every slot is enough to sample a whole ordering in numpy.

`explorer.slot_model(costs (K, N), gamma)` is the SlotModel of one decision; it prepares what
the explorer needs once per decision (cost ranks, softmax weights) so each slot costs only a
few array operations. `explorer.slot_model(costs (K, E, N), gamma (E,))` is the model of E
decisions at once, whose `probs` takes the decision of each row (`event`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.errors import ValidationError


def _masked(costs: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Costs with unavailable shelves at +inf, and each row's lowest available cost (B, 1)."""
    masked = np.where(available, costs, np.inf)
    return masked, masked.min(axis=1, keepdims=True)


@dataclass(frozen=True, slots=True)
class EpsilonGreedy:
    """p(a) = eps/m + (1 - eps)/t for the t tied cheapest shelves, eps/m for the rest (m available)."""

    epsilon: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValidationError("epsilon", "must lie in [0, 1]", self.epsilon)

    def probs(self, costs: np.ndarray, available: np.ndarray, n_available: int, gamma: float = 0.0) -> np.ndarray:
        masked, lowest = _masked(costs, available)
        best = masked == lowest
        tied = best.sum(axis=1, keepdims=True)
        explore = self.epsilon / n_available
        return np.where(best, explore + (1.0 - self.epsilon) / tied, available * explore)

    def slot_model(self, costs: np.ndarray, gamma: float = 0.0) -> _GreedySlots:
        return _GreedySlots(self, costs)


@dataclass(frozen=True, slots=True)
class Softmax:
    """p(a) ∝ exp(-lambda (c_a - c_min)), then a floor of eps/m as in VW's enforce_minimum_probability."""

    lam: float = 1.0
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not self.lam >= 0.0:
            raise ValidationError("softmax_lambda", "must be >= 0", self.lam)
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValidationError("epsilon", "must lie in [0, 1]", self.epsilon)

    def probs(self, costs: np.ndarray, available: np.ndarray, n_available: int, gamma: float = 0.0) -> np.ndarray:
        _, lowest = _masked(costs, available)
        weights = available * np.exp(-self.lam * np.maximum(costs - lowest, 0.0))
        p = weights / weights.sum(axis=1, keepdims=True)
        if self.epsilon > 0.0:
            p = _enforce_minimum_probability(p, available, n_available, self.epsilon)
        return p

    def slot_model(self, costs: np.ndarray, gamma: float = 0.0) -> _SoftmaxSlots:
        return _SoftmaxSlots(self, costs)


@dataclass(frozen=True, slots=True)
class SquareCB:
    """p(a) = 1 / (m + gamma (c_a - c_min)) for a != a_min; a_min takes the rest (Foster & Rakhlin 2020).

    gamma = gamma_scale * t^gamma_exponent grows with the number t of slots learned; the
    ranker reads the value VW uses from VW's own output.
    """

    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5

    def __post_init__(self) -> None:
        if not self.gamma_scale >= 0.0:
            raise ValidationError("gamma_scale", "must be >= 0", self.gamma_scale)

    def probs(self, costs: np.ndarray, available: np.ndarray, n_available: int, gamma: float = 0.0) -> np.ndarray:
        masked = np.where(available, costs, np.inf)
        rows = np.arange(len(masked))
        a_min = masked.argmin(axis=1)
        scale = np.subtract(costs, masked[rows, a_min][:, None], out=masked)  # c_a - c_min, in place
        np.maximum(scale, 0.0, out=scale)
        scale *= gamma
        scale += n_available
        p = np.divide(available, scale, out=scale)
        p[rows, a_min] = 0.0
        p[rows, a_min] = 1.0 - p.sum(axis=1)
        return p

    def slot_model(self, costs: np.ndarray, gamma: float = 0.0) -> _ExplorerSlots:
        return _ExplorerSlots(self, costs, gamma)


Explorer = EpsilonGreedy | Softmax | SquareCB


class _ExplorerSlots:
    """SlotModel of one decision (costs (K, N), gamma a float), or of E decisions at once (costs
    (K, E, N), gamma (E,)): the explorer applied to slot k's costs. With E decisions, `event` (B,)
    names the decision each row of `available` (B, N) belongs to."""

    __slots__ = ("explorer", "costs", "gamma", "n_shelves")

    def __init__(self, explorer: Explorer, costs: np.ndarray, gamma: float | np.ndarray = 0.0) -> None:
        self.explorer = explorer
        self.costs = costs
        self.gamma = gamma
        self.n_shelves = costs.shape[-1]

    @staticmethod
    def _rows(table: np.ndarray, slot: int, event: np.ndarray | None) -> np.ndarray:
        """Slot k's entry of a per-decision table, for each row (one decision: broadcast)."""
        return table[slot] if event is None else table[slot][event]

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray | None = None) -> np.ndarray:
        gamma = self.gamma if event is None or np.ndim(self.gamma) == 0 else self.gamma[event][:, None]
        return self.explorer.probs(self._rows(self.costs, slot, event), available, self.n_shelves - slot, gamma)


class UniformShare:
    """SlotModel: (1 - share) * the base model's probabilities + share spread evenly over the
    shelves available: every available shelf keeps at least share / m."""

    __slots__ = ("base", "share", "n_shelves")

    def __init__(self, base, share: float) -> None:
        self.base = base
        self.share = share
        self.n_shelves = base.n_shelves

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray | None = None) -> np.ndarray:
        base = self.base.probs(slot, available, event)
        return (1.0 - self.share) * base + available * (self.share / (self.n_shelves - slot))


class _GreedySlots(_ExplorerSlots):
    """Epsilon-greedy with each slot's cost ranks prepared: where a slot has no tied costs the
    best available shelf is the one of lowest rank, found in one pass over the masks."""

    __slots__ = ("rank", "tied")

    def __init__(self, explorer: EpsilonGreedy, costs: np.ndarray) -> None:
        super().__init__(explorer, costs)
        self.rank = np.argsort(np.argsort(costs, axis=-1, kind="stable"), axis=-1)
        ordered = np.sort(costs, axis=-1)
        self.tied = (ordered[..., 1:] == ordered[..., :-1]).any(axis=-1)

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray | None = None) -> np.ndarray:
        if self._rows(self.tied, slot, event).any():
            return super().probs(slot, available, event)
        epsilon = self.explorer.epsilon
        best = np.where(available, self._rows(self.rank, slot, event), self.n_shelves).argmin(axis=1)
        p = available * (epsilon / (self.n_shelves - slot))
        p[np.arange(len(best)), best] += 1.0 - epsilon
        return p


class _SoftmaxSlots(_ExplorerSlots):
    """Softmax with each slot's weights exp(-lambda (c - min c)) prepared once; normalising over
    the available shelves gives the same distribution as VW's softmax over them."""

    __slots__ = ("weights",)

    def __init__(self, explorer: Softmax, costs: np.ndarray) -> None:
        super().__init__(explorer, costs)
        self.weights = np.exp(-explorer.lam * (costs - costs.min(axis=-1, keepdims=True)))

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray | None = None) -> np.ndarray:
        p = available * self._rows(self.weights, slot, event)
        total = p.sum(axis=1, keepdims=True)
        if self.explorer.epsilon > 0.0 or not total.all():  # floor, or weights that underflowed
            return super().probs(slot, available, event)
        return p / total


def _enforce_minimum_probability(p: np.ndarray, available: np.ndarray, m: int, epsilon: float) -> np.ndarray:
    """Raise every available probability to at least eps/m, taking the mass from the largest ones."""
    if epsilon > 0.999:
        return np.where(available, 1.0 / m, 0.0)
    floor = epsilon / m
    ordered = -np.sort(-np.where(available, p, -np.inf), axis=1)
    idx = np.arange(p.shape[1], dtype=np.float64)[None, :]
    running = np.cumsum(np.where(np.isfinite(ordered), ordered, 0.0), axis=1)
    keep = np.isfinite(ordered) & (ordered > ((m - idx - 1.0) * floor + running - 1.0) / (idx + 1.0) + floor)
    rho = np.where(keep, idx, 0.0).max(axis=1, keepdims=True)
    rho_sum = np.take_along_axis(running, rho.astype(np.int64), axis=1)
    tau = ((m - rho - 1.0) * floor + rho_sum - 1.0) / (rho + 1.0)
    return np.where(available, np.maximum(p - tau, floor), 0.0)


def make_explorer(name: str, *, epsilon: float, softmax_lambda: float, gamma_scale: float, gamma_exponent: float):
    """Build the explorer named in a ranker configuration."""
    if name == "epsilon":
        return EpsilonGreedy(epsilon)
    if name == "softmax":
        return Softmax(softmax_lambda, epsilon)
    if name == "squarecb":
        return SquareCB(gamma_scale, gamma_exponent)
    raise ValidationError("explorer", f"must be one of {SUPPORTED_EXPLORERS}", name)


SUPPORTED_EXPLORERS = ("epsilon", "softmax", "squarecb")

UNSUPPORTED_EXPLORERS = {
    "bag": "each bag member's best shelf over the remaining set is not derivable from one score vector, and with "
    "few bags VW reports probability 1.0 for the chosen shelf and 0.0 for the rest, which no inverse-propensity "
    "estimate can use",
    "cover": "the cover policies' choices depend on internal per-policy state that one score vector does not carry",
    "first": "explores only for the first tau events, then reports probability 1.0/0.0 (deterministic)",
    "regcb": "its probabilities depend on cost-range sensitivities, not on one score vector; reports 1.0/0.0 when "
    "one shelf dominates",
    "rnd": "its probabilities come from random-network bonuses that one score vector does not carry",
    "synthcover": "reports 1.0/0.0 for a dominating shelf; depends on internal synthetic-cost state",
    "squarecb --elim": "eliminates shelves with probability 0.0 using cost ranges one score vector does not carry",
}
