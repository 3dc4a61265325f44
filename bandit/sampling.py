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
    """The per-slot distribution of one decision: slot k, available (B, N) -> probabilities (B, N)."""

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
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=16).digest()
    words = np.frombuffer(digest, dtype=np.uint32)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words.tolist()])))


def _draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row of p (B, N) with uniforms u (B,); never picks a zero-probability shelf."""
    cdf = np.cumsum(p, axis=1)
    target = u * cdf[:, -1]
    chosen = (cdf <= target[:, None]).sum(axis=1)
    chosen = np.minimum(chosen, p.shape[1] - 1)
    # guard against round-off landing on a trailing zero-probability column
    bad = p[np.arange(len(chosen)), chosen] <= 0.0
    if bad.any():
        chosen[bad] = p[bad].argmax(axis=1)
    return chosen


def sample_ranking(
    model: SlotModel, n_slots: int, rng: np.random.Generator, *, draws: int, exact_budget: int
) -> tuple[SampledRanking, Marginals]:
    """Draw an ordering slot by slot from `model` with `rng`, and the marginals of every shelf at
    every slot (see `marginals`). The ordering is the first of `draws` simultaneous draws; the
    others only serve the Monte Carlo part of the marginals."""
    if draws < 2:
        raise ValidationError("marginal_draws", "must be at least 2", draws)
    n = model.n_shelves
    available = np.ones((draws, n), dtype=bool)
    rows = np.arange(draws)
    indices = np.empty(n_slots, dtype=np.int64)
    slot_probs = np.empty(n_slots)
    distributions = np.empty((n_slots, n))
    sums = np.empty((n_slots, n))
    squares = np.empty((n_slots, n))
    uniforms = rng.random((n_slots, draws))
    ones = np.ones(draws)
    for k in range(n_slots):
        p = model.probs(k, available)
        chosen = _draw(p, uniforms[k])
        indices[k] = chosen[0]
        slot_probs[k] = p[0, chosen[0]]
        distributions[k] = p[0]
        sums[k] = ones @ p
        squares[k] = ones @ (p * p)
        available[rows, chosen] = False
    mean = sums / draws
    stderr = np.sqrt(np.maximum(squares - draws * mean * mean, 0.0) / ((draws - 1) * draws))
    stderr[0] = 0.0  # every draw sees all shelves at slot 0: exact
    exact, n_exact = _exact_marginals(model, n_slots, exact_budget)
    mean[:n_exact] = exact[:n_exact]
    stderr[:n_exact] = 0.0
    return SampledRanking(indices, slot_probs, distributions), Marginals(mean, stderr)


def _is_deterministic(model: SlotModel) -> bool:
    return bool((model.probs(0, np.ones((1, model.n_shelves), dtype=bool)) == 1.0).any())


def _exact_marginals(model: SlotModel, n_slots: int, exact_budget: int) -> tuple[np.ndarray, int]:
    """Exact P(shelf at slot) for the leading slots whose live prefixes times N fit `exact_budget`."""
    n = model.n_shelves
    values = np.zeros((n_slots, n))
    available = np.ones((1, n), dtype=bool)
    weights = np.ones(1)
    k = 0
    # slot 0 is exact in the Monte Carlo pass already; enumerate only if slot 1 fits too
    if n * n > exact_budget and not _is_deterministic(model):
        return values, 0
    while k < n_slots and len(weights) * n <= exact_budget:
        p = model.probs(k, available)
        values[k] = weights @ p
        k += 1
        if k == n_slots:
            break
        live_rows, cols = np.nonzero(p > 0.0)
        weights = weights[live_rows] * p[live_rows, cols]
        available = available[live_rows]
        available[np.arange(len(cols)), cols] = False
    return values, k


def logged_probabilities(model: SlotModel, indices: np.ndarray) -> np.ndarray:
    """P(indices[k] at slot k | indices[:k] above it) under `model`, for each k."""
    n_slots = len(indices)
    available = np.ones((n_slots, model.n_shelves), dtype=bool)
    for k in range(1, n_slots):
        available[k:, indices[k - 1]] = False
    return np.array([model.probs(k, available[k : k + 1])[0, indices[k]] for k in range(n_slots)])


def marginals(
    model: SlotModel, n_slots: int, rng: np.random.Generator, *, draws: int, exact_budget: int
) -> Marginals:
    """P(shelf at slot) for every shelf and slot.

    Exact by enumerating the prefixes with non-zero probability while their count times N
    stays within `exact_budget`; beyond that, a Rao-Blackwellised Monte Carlo estimate: the
    mean over `draws` sampled prefixes of the slot's conditional distribution, with standard
    error std / sqrt(draws).
    """
    return sample_ranking(model, n_slots, rng, draws=draws, exact_budget=exact_budget)[1]
