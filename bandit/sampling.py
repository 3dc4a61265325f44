"""Sequential slot sampling, conditional probabilities of logged orderings, and marginals.

A `SlotModel` gives, for slot k and a batch of availability masks (B, N), the policy's
probabilities (B, N) of each shelf for that slot. Everything else (sampling an ordering with
the project's seeded generator, the probability of a logged ordering, the marginal
probability of each shelf at each slot) is derived from it in numpy. The same derivations run
for E decisions at once (`sample_rankings`, `logged_distributions_of`) on a model whose
`probs(slot, available, event)` also takes the decision of each row; the one-decision
functions are those with E = 1.

That numpy code is the reference. A model that describes itself to the compiled kernel
(`kernel_spec()`, the VW ranker's explorers) is sampled by `bandit.sampling_kernel` instead:
the same draws, the same operations in the same order, in one call per request rather than a
dozen numpy calls per slot. Without numba (or with SHELFBANDIT_SAMPLING_KERNEL=0 in the
environment) everything runs on the reference.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from bandit.errors import ValidationError
from bandit.explore import KERNEL_SOFTMAX, softmax_exps


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
    """A generator determined by (seed, event_id): the same pair always gives the same draws.

    numpy's Philox keyed by the pair's 128-bit hash, exactly `Philox(key=int.from_bytes(hash,
    "little"))`; the key is handed over as the seed sequence's state, because `Philox(key=...)`
    also draws a seed sequence from the operating system's entropy it then discards (two
    thirds of its cost)."""
    key = hashlib.blake2b(f"{int(seed)}/{event_id}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.Philox(_PhiloxKey(np.frombuffer(key, dtype="<u8"))))


class _PhiloxKey(ISeedSequence):
    """A seed sequence whose state is a given Philox key (two little-endian 64-bit words)."""

    __slots__ = ("words",)

    def __init__(self, words: np.ndarray) -> None:
        self.words = words

    def generate_state(self, n_words: int, dtype=np.uint32) -> np.ndarray:
        if n_words != 2 or np.dtype(dtype) != np.uint64:
            raise ValueError("a Philox key is two 64-bit words")
        return self.words


def _draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row of p (B, N) (rows sum to 1) with uniforms u (B, 1) in [0, 1)."""
    chosen = (p.cumsum(axis=1) <= u).sum(axis=1)
    return np.minimum(chosen, p.shape[1] - 1, out=chosen)


class _One:
    """One decision's SlotModel as a model of E = 1 decisions (it ignores `event`)."""

    __slots__ = ("model", "n_shelves")

    def __init__(self, model: SlotModel) -> None:
        self.model = model
        self.n_shelves = model.n_shelves

    def probs(self, slot: int, available: np.ndarray, event: np.ndarray) -> np.ndarray:
        return self.model.probs(slot, available)


def event_uniforms(seed: int, event_ids, n_slots: int, draws: int) -> np.ndarray:
    """(E, K, max(draws, 1), 1): the uniforms `sample_ranking` draws for each event from
    `event_rng(seed, event_id)` (one generator per event: the same event always gets the same)."""
    shape = (n_slots, max(draws, 1), 1)
    return np.stack([event_rng(seed, str(event_id)).random(shape) for event_id in event_ids])


def sample_ranking(
    model: SlotModel, n_slots: int, rng: np.random.Generator, *, draws: int, exact_budget: int
) -> tuple[SampledRanking, Marginals]:
    """Draw an ordering slot by slot from `model` with `rng`, and the marginals of every shelf at
    every slot (see `marginals`). The ordering is the first of `draws` simultaneous draws; the
    others only serve the Monte Carlo part of the marginals. With `draws` = 0 there is no
    Monte Carlo: marginals beyond the exact slots are NaN (unknown)."""
    _check_draws(draws)
    uniforms = rng.random((n_slots, max(draws, 1), 1))[None]
    indices, distributions, marg = sample_rankings(_One(model), uniforms, draws=draws, exact_budget=exact_budget)
    slot_probs = distributions[0][np.arange(n_slots), indices[0]]
    return SampledRanking(indices[0], slot_probs, distributions[0]), Marginals(marg.values[0], marg.stderr[0])


def _check_draws(draws: int) -> None:
    if draws == 1 or draws < 0:
        raise ValidationError("marginal_draws", "must be 0 (exact marginals only) or at least 2", draws)


def sample_rankings(
    model, uniforms: np.ndarray, *, draws: int, exact_budget: int
) -> tuple[np.ndarray, np.ndarray, Marginals]:
    """`sample_ranking` for E decisions at once: `model.probs(slot, available (B, N), event (B,))`
    gives row b the distribution of decision event[b]; `uniforms` (E, K, max(draws, 1), 1).
    Returns the orderings (E, K), their slots' distributions (E, K, N) and the marginals (E, K, N)."""
    _check_draws(draws)
    fast = _kernel_sample_rankings(model, uniforms, draws, exact_budget)
    if fast is not None:
        return fast
    return sample_rankings_reference(model, uniforms, draws=draws, exact_budget=exact_budget)


def sample_rankings_reference(
    model, uniforms: np.ndarray, *, draws: int, exact_budget: int
) -> tuple[np.ndarray, np.ndarray, Marginals]:
    """`sample_rankings` in numpy, from `model.probs` alone: the reference of the compiled kernel."""
    _check_draws(draws)
    n_events, n_slots, d, _ = uniforms.shape
    n = model.n_shelves
    event = np.repeat(np.arange(n_events), d)
    rows = np.arange(n_events * d)
    first = np.arange(n_events) * d  # each decision's sampled ordering; the other rows serve Monte Carlo
    available = np.ones((len(rows), n), dtype=bool)
    distributions = np.empty((n_events, n_slots, n))
    mean = np.empty((n_events, n_slots, n))
    indices = np.empty((n_events, n_slots), dtype=np.int64)
    u = uniforms.transpose(1, 0, 2, 3).reshape(n_slots, len(rows), 1)
    for k in range(n_slots):
        p = model.probs(k, available, event)
        picked = _draw(p, u[k])
        off = first[p[first, picked[first]] <= 0.0]  # round-off: u beyond the row's float sum
        if len(off):
            picked[off] = n - 1 - np.argmax(p[off, ::-1] > 0.0, axis=1)
        available[rows, picked] = False
        indices[:, k] = picked[first]
        distributions[:, k] = p[first]
        if draws:
            mean[:, k] = p.reshape(n_events, d, n).mean(axis=1)
    if draws:
        # Each draw's value lies in [0, 1] with mean v, so its variance is at most v (1 - v): a
        # bound that, unlike the sample variance, also covers rare prefixes no draw visited.
        floor = (1.0 / draws) * (1.0 - 1.0 / draws)
        stderr = np.sqrt(np.maximum(mean * (1.0 - mean), floor) / draws)
    else:
        mean = np.full((n_events, n_slots, n), np.nan)
        stderr = np.full((n_events, n_slots, n), np.nan)
    exact, n_exact = _exact_marginals_of(model, n_slots, exact_budget, distributions[:, 0])
    known = np.arange(n_slots)[None, :] < n_exact[:, None]
    mean[known] = exact[known]
    stderr[known] = 0.0
    return indices, distributions, Marginals(mean, stderr)


_KERNEL_STATE: dict = {}
_KERNEL_LOCK = threading.Lock()


def sampling_kernel():
    """The compiled `bandit.sampling_kernel` module, or None (numba missing or switched off)."""
    try:
        return _KERNEL_STATE["module"]
    except KeyError:
        pass
    with _KERNEL_LOCK:
        if "module" not in _KERNEL_STATE:
            module = None
            if os.environ.get("SHELFBANDIT_SAMPLING_KERNEL", "1") != "0":
                try:
                    from bandit import sampling_kernel as module
                except ImportError:  # numba not installed: the numpy reference does it all
                    module = None
            _KERNEL_STATE["module"] = module
    return _KERNEL_STATE["module"]


KERNEL_CHUNK = 256  # decisions per kernel call (bounds the softmax tables of a large batch)
_NO_ORDER = np.zeros((1, 1, 1), dtype=np.int64)
_NO_EXPS = np.zeros((1, 1, 1, 1))


def _kernel_sample_rankings(model, uniforms: np.ndarray, draws: int, exact_budget: int):
    """`sample_rankings` by the compiled kernel, or None where the reference must do it."""
    spec_of = getattr(model.model if isinstance(model, _One) else model, "kernel_spec", None)
    if spec_of is None:
        return None
    spec = spec_of()
    if spec is None:
        return None
    n_slots, n_events, n = spec.costs.shape
    if uniforms.shape[:2] != (n_events, n_slots) or not np.isfinite(spec.costs).all():
        return None  # the reference defines what non-finite costs give
    kernel = sampling_kernel()
    if kernel is None:
        return None
    indices = np.empty((n_events, n_slots), dtype=np.int64)
    distributions = np.empty((n_events, n_slots, n))
    values = np.empty((n_events, n_slots, n))
    stderr = np.empty((n_events, n_slots, n))
    uniforms = np.ascontiguousarray(uniforms[..., 0])
    for start in range(0, n_events, KERNEL_CHUNK):  # decisions are independent: chunks give the same
        part = slice(start, min(start + KERNEL_CHUNK, n_events))
        costs, weights = spec.costs, spec.weights
        if n_events > KERNEL_CHUNK:
            costs, weights = np.ascontiguousarray(costs[:, part]), np.ascontiguousarray(weights[:, part])
        order, exps = softmax_exps(spec.lam, costs) if spec.kind == KERNEL_SOFTMAX else (_NO_ORDER, _NO_EXPS)
        try:
            status = kernel.sample(
                spec.kind, costs, weights, order, exps, spec.gamma[part], spec.epsilon, spec.share, uniforms[part],
                int(draws), int(exact_budget), indices[part], distributions[part], values[part], stderr[part],
            )
        except Exception as err:  # numba could not compile it here: the reference from now on
            _KERNEL_STATE["module"] = None
            warnings.warn(f"bandit.sampling_kernel failed ({err!r}); sampling runs on the numpy reference", RuntimeWarning, stacklevel=2)
            return None
        if status != kernel.OK:
            return None
    return indices, distributions, Marginals(values, stderr)


def _segment_sum(x: np.ndarray, owner: np.ndarray, n_events: int) -> np.ndarray:
    """Sum of the rows of x (R, N) per owner (R,) sorted ascending -> (n_events, N), in row order."""
    out = np.zeros((n_events, x.shape[1]))
    if len(owner):
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        out[owner[starts]] = np.add.reduceat(x, starts, axis=0)
    return out


def _exact_marginals(model: SlotModel, n_slots: int, exact_budget: int, first_slot: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact P(shelf at slot) (K, N) of one decision for the leading slots while the live prefixes
    times N fit `exact_budget`, and how many slots that is."""
    values, n_exact = _exact_marginals_of(_One(model), n_slots, exact_budget, np.asarray(first_slot)[None])
    return values[0], int(n_exact[0])


def _exact_marginals_of(model, n_slots: int, exact_budget: int, first_slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact P(shelf at slot) (E, K, N) for each decision's leading slots while its live prefixes
    times N fit `exact_budget`, and how many slots that is (E,). Slot 0 (`first_slot` (E, N),
    every shelf available) is exact already and costs nothing more."""
    n_events, n = first_slot.shape
    values = np.zeros((n_events, n_slots, n))
    values[:, 0] = first_slot
    n_exact = np.ones(n_events, dtype=np.int64)
    if n_slots == 1:
        return values, n_exact
    owner, cols = np.nonzero(first_slot > 0.0)  # live prefixes: their decision, their last shelf
    weights = first_slot[owner, cols]
    available = np.ones((len(owner), n), dtype=bool)
    for k in range(1, n_slots):
        within = np.bincount(owner, minlength=n_events)[owner] * n <= exact_budget
        owner, cols, weights, available = owner[within], cols[within], weights[within], available[within]
        available[np.arange(len(cols)), cols] = False
        if not len(owner):
            break
        p = model.probs(k, available, owner)
        values[:, k] = _segment_sum(weights[:, None] * p, owner, n_events)
        n_exact[owner] = k + 1
        if k + 1 == n_slots:
            break
        rows, cols = np.nonzero(p > 0.0)
        owner, weights, available = owner[rows], weights[rows] * p[rows, cols], available[rows]
    return values, n_exact

def logged_distributions(model: SlotModel, indices: np.ndarray) -> np.ndarray:
    """(K, N): P(shelf at slot k | shelves indices[:k] above it) under `model`, for every shelf."""
    return logged_distributions_of(_One(model), np.asarray(indices)[None])[0]


def logged_distributions_of(model, indices: np.ndarray) -> np.ndarray:
    """`logged_distributions` for E decisions at once: indices (E, K) -> (E, K, N); `model.probs`
    takes the decision of each row (`event`)."""
    n_events, n_slots = indices.shape
    events = np.arange(n_events)
    available = np.ones((n_events, n_slots, model.n_shelves), dtype=bool)
    for k in range(1, n_slots):
        available[events[:, None], np.arange(k, n_slots)[None, :], indices[:, k - 1 : k]] = False
    return np.stack([model.probs(k, available[:, k], events) for k in range(n_slots)], axis=1)


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
