"""Exploration rules: per-slot cost vectors -> probabilities over the available shelves.

Each explorer maps one slot's `costs` (N,) and availability masks `available` (B, N) bool to
probabilities (B, N) that are 0 outside `available` and sum to 1 per row; every row has
exactly `n_available` shelves available (the slot index fixes it). They reproduce Vowpal Wabbit's
cb_explore_adf explorers of the same name (greedy, softmax, squarecb), so one VW pass that
scores every shelf for every slot is enough to sample a whole ordering in numpy.

`explorer.slot_model(costs (K, N), gamma)` is the SlotModel of one decision; it prepares what
the explorer needs once per decision (cost ranks, softmax weights; on first use) so each slot
costs only a few array operations. `explorer.slot_model(costs (K, E, N), gamma (E,))` is the
model of E decisions at once, whose `probs` takes the decision of each row (`event`).

`kernel_spec()` describes a slot model to the compiled kernel of `bandit.sampling`, which
samples, conditions and marginalises a whole request in one call; `probs` stays the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bandit.errors import ValidationError

# the explorer kinds of bandit.sampling_kernel (kept here so the kernel is imported only when used)
KERNEL_GREEDY, KERNEL_SOFTMAX_PREPARED, KERNEL_SOFTMAX, KERNEL_SQUARECB = 0, 1, 2, 3


class KernelSpec(NamedTuple):
    """A slot model as the compiled kernel reads it (see `bandit.sampling_kernel.sample`): costs
    and prepared softmax weights (K, E, N) C-contiguous float64, gamma (E,), epsilon, lambda and
    the uniform share."""

    kind: int
    costs: np.ndarray
    weights: np.ndarray
    gamma: np.ndarray
    epsilon: float
    lam: float
    share: float


def softmax_exps(lam: float, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For costs (K, E, N): each slot's shelves in ascending cost order (K, E, N) and, for its K
    cheapest (at most k < K are taken above slot k, so the cheapest available one is among its
    first k + 1), the weights Softmax.probs computes when the cheapest available cost is theirs,
    exp(-lam max(c - c_cheapest, 0)) (K, E, K, N): the same numpy expression."""
    n_slots = costs.shape[0]
    order = np.argsort(costs, axis=-1, kind="stable")
    lowest = np.take_along_axis(costs, order[..., :n_slots], axis=-1)
    exps = np.exp(-lam * np.maximum(costs[:, :, None, :] - lowest[..., None], 0.0))
    return np.ascontiguousarray(order), exps


def _per_event(table: np.ndarray) -> np.ndarray:
    """A per-decision table (K, N) or (K, E, N) as (K, E, N) contiguous float64."""
    table = np.asarray(table, dtype=np.float64)
    return np.ascontiguousarray(table[:, None, :] if table.ndim == 2 else table)


def _gammas(gamma, costs: np.ndarray) -> np.ndarray:
    """gamma (a float, or one per decision) as (E,) float64."""
    if isinstance(gamma, (int, float)):
        return np.full(costs.shape[1], float(gamma))
    return np.ascontiguousarray(gamma, dtype=np.float64).reshape(costs.shape[1])


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

    __slots__ = ("costs", "explorer", "gamma", "n_shelves")

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

    def kernel_spec(self) -> KernelSpec | None:
        """What the compiled kernel needs to reproduce `probs`, or None where it cannot."""
        costs = _per_event(self.costs)
        explorer = self.explorer
        if isinstance(explorer, EpsilonGreedy):
            kind, epsilon, lam = KERNEL_GREEDY, explorer.epsilon, 0.0
        elif isinstance(explorer, Softmax):
            kind, epsilon, lam = KERNEL_SOFTMAX, explorer.epsilon, explorer.lam
        elif isinstance(explorer, SquareCB):
            kind, epsilon, lam = KERNEL_SQUARECB, 0.0, 0.0
        else:
            return None
        return KernelSpec(kind, costs, costs, _gammas(self.gamma, costs), float(epsilon), float(lam), 0.0)


class UniformShare:
    """SlotModel: (1 - share) * the base model's probabilities + share spread evenly over the
    shelves available: every available shelf keeps at least share / m."""

    __slots__ = ("base", "n_shelves", "share")

    def __init__(self, base, share: float) -> None:
        self.base = base
        self.share = share
        self.n_shelves = base.n_shelves

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray | None = None) -> np.ndarray:
        base = self.base.probs(slot, available, event)
        return (1.0 - self.share) * base + available * (self.share / (self.n_shelves - slot))

    def kernel_spec(self) -> KernelSpec | None:
        spec = getattr(self.base, "kernel_spec", lambda: None)()
        if spec is None or spec.share or not self.share > 0.0:
            return None
        return spec._replace(share=float(self.share))


class _GreedySlots(_ExplorerSlots):
    """Epsilon-greedy with each slot's cost ranks prepared: where a slot has no tied costs the
    best available shelf is the one of lowest rank, found in one pass over the masks."""

    __slots__ = ("_rank", "_tied")

    def __init__(self, explorer: EpsilonGreedy, costs: np.ndarray) -> None:
        super().__init__(explorer, costs)
        self._rank = self._tied = None

    def _prepare(self) -> None:
        self._rank = np.argsort(np.argsort(self.costs, axis=-1, kind="stable"), axis=-1)
        ordered = np.sort(self.costs, axis=-1)
        self._tied = (ordered[..., 1:] == ordered[..., :-1]).any(axis=-1)

    @property
    def rank(self) -> np.ndarray:
        if self._rank is None:
            self._prepare()
        return self._rank

    @property
    def tied(self) -> np.ndarray:
        if self._tied is None:
            self._prepare()
        return self._tied

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

    __slots__ = ("_weights",)

    def __init__(self, explorer: Softmax, costs: np.ndarray) -> None:
        super().__init__(explorer, costs)
        self._weights = None

    @property
    def weights(self) -> np.ndarray:
        if self._weights is None:
            self._weights = np.exp(-self.explorer.lam * (self.costs - self.costs.min(axis=-1, keepdims=True)))
        return self._weights

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray | None = None) -> np.ndarray:
        if self.explorer.epsilon > 0.0:  # the floor: VW's rule over the available shelves
            return super().probs(slot, available, event)
        p = available * self._rows(self.weights, slot, event)
        total = p.sum(axis=1, keepdims=True)
        if not total.all():  # weights that underflowed
            return super().probs(slot, available, event)
        return p / total

    def kernel_spec(self) -> KernelSpec | None:
        if self.explorer.epsilon > 0.0:
            return super().kernel_spec()
        costs = _per_event(self.costs)
        return KernelSpec(KERNEL_SOFTMAX_PREPARED, costs, _per_event(self.weights), _gammas(0.0, costs), 0.0,
                          float(self.explorer.lam), 0.0)


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
