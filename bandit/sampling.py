"""Sequential slot sampling, conditional probabilities of logged orderings, and marginals.

A `SlotModel` gives, for slot k and a batch of availability masks (B, N), the policy's
probabilities (B, N) of each shelf for that slot. Everything else (sampling an ordering with
the project's seeded generator, the probability of a logged ordering, the marginal
probability of each shelf at each slot) is derived from it in numpy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bandit.errors import ValidationError


class SlotModel(Protocol):
    """The per-slot distribution of one decision: slot k, available (B, N) -> probabilities (B, N).
    Every row of `available` at slot k has exactly N - k shelves available."""

    n_shelves: int

    def probs(self, slot: int, available: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class SampledRanking:
    """An ordering drawn from a SlotModel: shelf indices, per-slot conditional probabilities and
    each slot's full distribution over the shelves still available (`distributions[k]` has N entries)."""

    indices: np.ndarray
    slot_probs: np.ndarray
    distributions: np.ndarray


@dataclass(frozen=True, slots=True)
class Marginals:
    """P(shelf i at slot k) for all i and k (K, N), and the standard error of each (0 where exact)."""

    values: np.ndarray
    stderr: np.ndarray


def event_rng(seed: int, event_id: str) -> np.random.Generator:
    """A generator determined by (seed, event_id): the same pair always gives the same draws."""
    key = hashlib.blake2b(f"{int(seed)}/{event_id}".encode("utf-8"), digest_size=16).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(key, "little")))


def _draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row of p (B, N) (rows sum to 1) with uniforms u (B, 1) in [0, 1)."""
    chosen = (p.cumsum(axis=1) <= u).sum(axis=1)
    return np.minimum(chosen, p.shape[1] - 1, out=chosen)


def sample_ranking(
    model: SlotModel, n_slots: int, rng: np.random.Generator, *, draws: int, exact_budget: int
) -> tuple[SampledRanking, Marginals]:
    """Draw an ordering slot by slot from `model` with `rng`, and the marginals of every shelf at
    every slot (see `marginals`). The ordering is the first of `draws` simultaneous draws; the
    others only serve the Monte Carlo part of the marginals. With `draws` = 0 there is no
    Monte Carlo: marginals beyond the exact slots are NaN (unknown)."""
    if draws == 1 or draws < 0:
        raise ValidationError("marginal_draws", "must be 0 (exact marginals only) or at least 2", draws)
    n = model.n_shelves
    rows = np.arange(max(draws, 1))
    available = np.ones((len(rows), n), dtype=bool)
    probs = np.empty((n_slots, len(rows), n))
    chosen = np.empty((n_slots, len(rows)), dtype=np.int64)
    uniforms = rng.random((n_slots, len(rows), 1))
    for k in range(n_slots):
        p = probs[k] = model.probs(k, available)
        picked = chosen[k] = _draw(p, uniforms[k])
        if p[0, picked[0]] <= 0.0:  # round-off: u beyond the row's float sum
            picked[0] = chosen[k, 0] = np.flatnonzero(p[0])[-1]
        available[rows, picked] = False
    indices = chosen[:, 0].copy()
    distributions = probs[:, 0, :].copy()
    slot_probs = distributions[np.arange(n_slots), indices]
    if draws:
        mean = probs.mean(axis=1)
        # Each draw's value lies in [0, 1] with mean v, so its variance is at most v (1 - v): a
        # bound that, unlike the sample variance, also covers rare prefixes no draw visited.
        floor = (1.0 / draws) * (1.0 - 1.0 / draws)
        stderr = np.sqrt(np.maximum(mean * (1.0 - mean), floor) / draws)
    else:
        mean = np.full((n_slots, n), np.nan)
        stderr = np.full((n_slots, n), np.nan)
    exact, n_exact = _exact_marginals(model, n_slots, exact_budget, distributions[0])
    mean[:n_exact] = exact[:n_exact]
    stderr[:n_exact] = 0.0
    return SampledRanking(indices, slot_probs, distributions), Marginals(mean, stderr)


def _exact_marginals(
    model: SlotModel, n_slots: int, exact_budget: int, first_slot: np.ndarray
) -> tuple[np.ndarray, int]:
    """Exact P(shelf at slot) for the leading slots while the live prefixes times N fit `exact_budget`.
    Slot 0 (`first_slot`, every shelf available) is exact already and costs nothing more."""
    n = model.n_shelves
    values = np.zeros((n_slots, n))
    values[0] = first_slot
    live = np.flatnonzero(first_slot > 0.0)
    if n_slots == 1 or len(live) * n > exact_budget:
        return values, 1
    weights = first_slot[live]
    available = np.ones((len(live), n), dtype=bool)
    available[np.arange(len(live)), live] = False
    k = 1
    while True:
        p = model.probs(k, available)
        values[k] = weights @ p
        k += 1
        if k == n_slots:
            return values, k
        live_rows, cols = np.nonzero(p > 0.0)
        if len(cols) * n > exact_budget:
            return values, k
        weights = weights[live_rows] * p[live_rows, cols]
        available = available[live_rows]
        available[np.arange(len(cols)), cols] = False


def logged_distributions(model: SlotModel, indices: np.ndarray) -> np.ndarray:
    """(K, N): P(shelf at slot k | shelves indices[:k] above it) under `model`, for every shelf."""
    n_slots = len(indices)
    available = np.ones((n_slots, model.n_shelves), dtype=bool)
    for k in range(1, n_slots):
        available[k:, indices[k - 1]] = False
    return np.concatenate([model.probs(k, available[k : k + 1]) for k in range(n_slots)])


def logged_probabilities(model: SlotModel, indices: np.ndarray) -> np.ndarray:
    """P(indices[k] at slot k | indices[:k] above it) under `model`, for each k."""
    return logged_distributions(model, indices)[np.arange(len(indices)), indices]


def marginals(
    model: SlotModel, n_slots: int, rng: np.random.Generator, *, draws: int, exact_budget: int
) -> Marginals:
    """P(shelf at slot) for every shelf and slot.

    Exact by enumerating the prefixes with non-zero probability while their count times N
    stays within `exact_budget`; beyond that, a Rao-Blackwellised Monte Carlo estimate: the
    mean over `draws` sampled prefixes of the slot's conditional distribution, with the stated
    error sqrt(v (1 - v) / draws), an upper bound on its standard error (each draw's value lies
    in [0, 1]).
    """
    return sample_ranking(model, n_slots, rng, draws=draws, exact_budget=exact_budget)[1]
