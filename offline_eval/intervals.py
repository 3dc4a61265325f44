"""Confidence intervals over events: bootstrap, normal approximation, empirical Bernstein bound.

Every estimate is a sum of ratios of event sums (`Ratio`): slot k's value is
sum_j c_j * (sum_i a_jik) / (sum_i b_jik). Plain means have b = 1 on observed slots,
self-normalised estimators have b = the weights. The total value is the sum over slots.
A difference of two estimates on the same events is again such a sum (coefficients -1),
so one machinery gives paired intervals for a candidate minus a baseline.

Every interval is finished from sufficient statistics that add up exactly over any split of
the events (chunks of one pass, or shards of a log evaluated on other processes):
- `EventSums`: the column sums of every part's numerator and denominator, and for the bootstrap
  their sums per block of events (or per event, for logs of at most `max_blocks` events);
- `InfluenceSums`: sum, sum of squares, minimum and maximum of the linearised per-event
  contributions (normal and bernstein; a second pass, once the values are known).

The bootstrap resamples blocks of events, and an event's block is keyed by the event itself:
block = h(key XOR id) mod G, with h a 64-bit mixer (splitmix64's finaliser) of the event id
and `key` the first draw from the rng; the B x G resampling counts are the next draws. A seed
therefore gives the same intervals however the log is split, ordered or sharded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

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

    def denominator_sums(self) -> np.ndarray:
        if self.denominator is None:
            return np.full(self.numerator.shape[1], float(len(self.numerator)))
        return column_sums(self.denominator)


def column_sums(values: np.ndarray) -> np.ndarray:
    """(K,) sums over the rows of an (n, K) array: a broadcast column is summed once, contiguous
    columns (column-major arrays and their row slices) by numpy's pairwise sum, a row-major array
    by one BLAS product (its sum(axis=0) is a slow strided reduction)."""
    if values.strides[1] == 0:
        return np.full(values.shape[1], values[:, 0].sum())
    if values.strides[0] == values.itemsize or values.shape[1] == 1:
        return values.sum(axis=0)
    return np.ones(len(values)) @ values


Parts = tuple[Ratio, ...]


# -- the bootstrap's blocks, keyed by event ------------------------------------------------------

_SHIFT_30, _SHIFT_27, _SHIFT_31 = np.uint64(30), np.uint64(27), np.uint64(31)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (a bijection that scatters every bit)."""
    x ^= x >> _SHIFT_30
    x *= _MIX_1
    x ^= x >> _SHIFT_27
    x *= _MIX_2
    x ^= x >> _SHIFT_31
    return x


def event_hashes(event_ids: np.ndarray) -> np.ndarray:
    """A uint64 per event id, the same in every process: integer ids by value (whatever their
    integer dtype, or Python ints in an object array), any other id by pandas' stable hash of it."""
    ids = np.asarray(event_ids)
    if ids.dtype.kind == "O" and len(ids) and pd.api.types.infer_dtype(ids, skipna=False) == "integer":
        ids = ids.astype(np.int64)
    if ids.dtype.kind in "iub":
        return ids.astype(np.uint64)  # a copy; negative ids wrap, the same from any integer width
    return pd.util.hash_array(ids.astype(object), categorize=False)


def event_blocks(event_ids: np.ndarray, key: int, n_blocks: int) -> np.ndarray:
    """Each event's bootstrap block in [0, n_blocks): h(key XOR hash(id)) mod n_blocks."""
    hashed = event_hashes(event_ids)
    hashed ^= np.uint64(key)
    _mix64(hashed)
    if n_blocks & (n_blocks - 1) == 0:  # a power of two: the low bits (the mixer scatters every bit)
        hashed &= np.uint64(n_blocks - 1)
    else:
        hashed %= np.uint64(n_blocks)
    return hashed.view(np.intp)


class Resampling:
    """The bootstrap's draws for one evaluation, in a fixed order: first the key of the events'
    blocks (`key`), then the B x G resampling counts (`counts`), G = min(n events, max_blocks).
    Each block is drawn G times with replacement: counts are multinomial(G, 1/G) per resample."""

    def __init__(self, rng: np.random.Generator, n_resamples: int, max_blocks: int = MAX_BLOCKS) -> None:
        if n_resamples < 10:
            raise ValidationError("resamples", "must be at least 10", n_resamples)
        self.n_resamples = n_resamples
        self.max_blocks = max_blocks
        self._rng = rng
        self._key: int | None = None
        self._counts: np.ndarray | None = None

    @property
    def key(self) -> int:
        if self._key is None:
            self._key = int(self._rng.integers(0, 2**63 - 1, dtype=np.int64))
        return self._key

    def block_of(self, event_ids: np.ndarray) -> np.ndarray:
        return event_blocks(event_ids, self.key, self.max_blocks)

    def counts(self, n_events: int) -> np.ndarray:
        """(B, G) float counts; drawn on the first call (after the key), the same array afterwards."""
        n_blocks = min(n_events, self.max_blocks)
        _ = self.key
        if self._counts is None:
            draws = self._rng.integers(0, n_blocks, size=(self.n_resamples, n_blocks))
            counts = np.empty((self.n_resamples, n_blocks))
            for b, row in enumerate(draws):  # a bincount per resample stays in cache
                counts[b] = np.bincount(row, minlength=n_blocks)
            self._counts = counts
        elif self._counts.shape[1] != n_blocks:
            raise ValueError(f"resampling drawn for {self._counts.shape[1]} blocks, asked for {n_blocks}")
        return self._counts


# -- sufficient statistics -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EventSums:
    """Sufficient statistics of a sum of P Ratios over a set of events; `+` merges two disjoint sets.

    sums: (2P, K), row 2j part j's numerator column sums, row 2j + 1 its denominator's.
    blocks: (2P, K, max_blocks) the same sums by bootstrap block (None when not asked for).
    rows: (n, 2P, K) the same per event, in log order, kept while n <= max_blocks (the bootstrap
    then resamples events themselves), else None.
    """

    n_events: int
    coefficients: tuple[float, ...]
    sums: np.ndarray
    blocks: np.ndarray | None
    rows: np.ndarray | None
    max_blocks: int = MAX_BLOCKS

    def __add__(self, other: EventSums) -> EventSums:
        if self.coefficients != other.coefficients or self.sums.shape != other.sums.shape:
            raise ValueError("sums of different estimates do not merge")
        n_events = self.n_events + other.n_events
        blocks = None if self.blocks is None or other.blocks is None else self.blocks + other.blocks
        rows = None
        if self.rows is not None and other.rows is not None and n_events <= self.max_blocks:
            rows = np.concatenate([self.rows, other.rows])
        return EventSums(n_events, self.coefficients, self.sums + other.sums, blocks, rows, self.max_blocks)

    @property
    def values(self) -> np.ndarray:
        """(K,) value of each slot: sum_j c_j sum_i a_jik / sum_i b_jik (NaN where a denominator sums to 0)."""
        return _ratio_values(self.sums, self.coefficients)

    def centre(self) -> tuple[np.ndarray, np.ndarray]:
        """Each part's value (P, K) and mean denominator (P, K): where the linearisation is taken."""
        numerators, denominators = self.sums[0::2], self.sums[1::2]
        with np.errstate(invalid="ignore", divide="ignore"):
            return numerators / denominators, denominators / self.n_events


def _ratio_values(sums: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """sum_j c_j num_j / den_j over the part axis (-2) of (..., 2P, K) sums; NaN where den is 0."""
    total = 0.0
    for j, coefficient in enumerate(coefficients):
        num, den = sums[..., 2 * j, :], sums[..., 2 * j + 1, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total + coefficient * np.where(den != 0.0, num / den, np.nan)
    return total


def _array_sums(array: np.ndarray, n_slots: int, block_of: np.ndarray | None, max_blocks: int,
                cache: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An (n, K) or (n, 1) array's column sums (K,) and, with `block_of`, its sums by block (K, G)
    or (1, G); remembered in `cache` for the same array object (an estimator and its
    self-normalised form share their numerator)."""
    hit = None if cache is None else cache.get(("sums", id(array)))
    if hit is not None:
        return hit[1], hit[2]
    single = array.shape[1] == 1 or array.strides[1] == 0
    sums = np.full(n_slots, array[:, 0].sum()) if single else column_sums(array)
    blocks = None
    if block_of is not None:  # (K, G), or (1, G): each slot's block sums contiguous
        if single:
            blocks = np.bincount(block_of, weights=array[:, 0], minlength=max_blocks)[None, :]
        else:
            blocks = np.empty((n_slots, max_blocks))
            for k in range(n_slots):
                blocks[k] = np.bincount(block_of, weights=array[:, k], minlength=max_blocks)
    if cache is not None:
        cache[("sums", id(array))] = (array, sums, blocks)  # the array is kept so its id stays its own
    return sums, blocks


def event_sums(parts: Parts, *, block_of: np.ndarray | None = None, keep_rows: bool = False,
               max_blocks: int = MAX_BLOCKS, cache: dict | None = None, into: EventSums | None = None) -> EventSums:
    """The sufficient statistics of `parts` over their events; `block_of` (n,) gives each event's
    bootstrap block (None: no block sums); `keep_rows` keeps the per-event values. `cache` (one
    per set of events) shares sums between estimates made of the same arrays. `into`: a running
    total (of earlier, disjoint events) that these sums are added to in place, and returned."""
    n, n_slots = parts[0].numerator.shape
    rows = np.empty((n, 2 * len(parts), n_slots)) if keep_rows and n <= max_blocks else None
    if into is not None and (rows is not None or into.rows is not None):
        return into + event_sums(parts, block_of=block_of, keep_rows=keep_rows, max_blocks=max_blocks, cache=cache)
    fresh = into is None
    sums = np.zeros((2 * len(parts), n_slots)) if fresh else into.sums
    blocks = (np.zeros((2 * len(parts), n_slots, max_blocks)) if fresh else into.blocks) if block_of is not None else None
    for j, part in enumerate(parts):
        num, den = part.numerator, part.denominator
        num_sums, num_blocks = _array_sums(num, n_slots, block_of, max_blocks, cache)
        sums[2 * j] += num_sums
        if blocks is not None:
            blocks[2 * j] += num_blocks
        if den is None:
            sums[2 * j + 1] += n
            if blocks is not None:
                key = ("sizes", id(block_of))
                hit = None if cache is None else cache.get(key)
                if hit is None:
                    hit = (block_of, np.bincount(block_of, minlength=max_blocks).astype(np.float64)[None, :])
                    if cache is not None:
                        cache[key] = hit
                blocks[2 * j + 1] += hit[1]
        else:
            den_sums, den_blocks = _array_sums(den, n_slots, block_of, max_blocks, cache)
            sums[2 * j + 1] += den_sums
            if blocks is not None:
                blocks[2 * j + 1] += den_blocks
        if rows is not None:
            rows[:, 2 * j] = num
            rows[:, 2 * j + 1] = 1.0 if den is None else den
    total = n if fresh else into.n_events + n
    return EventSums(total, tuple(float(p.coefficient) for p in parts), sums, blocks, rows, max_blocks)


@dataclass(frozen=True, slots=True)
class InfluenceSums:
    """Sum, sum of squares, minimum and maximum of the linearised per-event contributions psi,
    per slot and (last entry) for the total over slots; `+` merges two disjoint sets of events."""

    n_events: int
    total: np.ndarray
    squares: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __add__(self, other: InfluenceSums) -> InfluenceSums:
        return InfluenceSums(
            self.n_events + other.n_events, self.total + other.total, self.squares + other.squares,
            np.minimum(self.low, other.low), np.maximum(self.high, other.high),
        )

    def variance(self) -> np.ndarray:
        """The sample variance (ddof 1) of psi per column (psi sums to ~0 at the centre, so the
        one-pass formula loses nothing)."""
        n = self.n_events
        return np.maximum(self.squares - self.total * self.total / n, 0.0) / (n - 1)


def contributions(parts: Parts, centre: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, K) psi_ik = sum_j c_j (a_jik - v_jk b_jik) / mean_i b_jik at the given centre (v, mean b)."""
    values, mean_dens = centre
    psi = 0.0
    for j, part in enumerate(parts):
        with np.errstate(invalid="ignore", divide="ignore"):
            value, mean_den = values[j], mean_dens[j]
            centred = part.numerator - value if part.denominator is None else part.numerator - value * part.denominator
            psi = psi + (part.coefficient / mean_den) * centred
    return psi


def influence_sums(parts: Parts, centre: tuple[np.ndarray, np.ndarray]) -> InfluenceSums:
    """InfluenceSums of the parts' events at `centre` (see EventSums.centre)."""
    psi = contributions(parts, centre)
    psi = np.concatenate([psi, psi.sum(axis=1, keepdims=True)], axis=1)
    if not len(psi):
        empty = np.zeros(psi.shape[1])
        return InfluenceSums(0, empty, empty, empty + np.inf, empty - np.inf)
    return InfluenceSums(len(psi), column_sums(psi), np.einsum("ik,ik->k", psi, psi), psi.min(axis=0), psi.max(axis=0))


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
    return contributions(parts, event_sums(parts).centre())


def normal_quantile(level: float) -> float:
    """z such that a standard normal lies in [-z, z] with probability `level`."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValidationError("level", "must lie strictly between 0 and 1", level)
    return level


def half_widths(influence: InfluenceSums, method: str, level: float) -> np.ndarray:
    """Half-widths per column (slots, then the total) of the normal or empirical Bernstein interval."""
    n = influence.n_events
    if n < 2:
        return np.full(len(influence.total), np.inf)
    variance = influence.variance()
    if method == "normal":
        return normal_quantile(level) * np.sqrt(variance / n)
    # Maurer & Pontil (2009), Thm 4, two-sided: sqrt(2 V ln(4/d) / n) + 7 b ln(4/d) / (3 (n - 1)),
    # with the observed range of the per-event values as b.
    log_term = math.log(4.0 / (1.0 - level))
    spread = influence.high - influence.low
    return np.sqrt(2.0 * variance * log_term / n) + 7.0 * spread * log_term / (3.0 * (n - 1))


def bootstrap_bounds(sums: EventSums, counts: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Percentile bounds per slot and of the total: the replicates are counts (B, G) times the
    sums by block (or by event, for at most max_blocks events)."""
    if sums.n_events <= sums.max_blocks:  # (n, 2P, K): the events themselves
        units = None if sums.rows is None else sums.rows.reshape(len(sums.rows), -1)
    else:  # (2P, K, G) block sums, as (G, 2P K)
        units = None if sums.blocks is None else sums.blocks.reshape(-1, sums.blocks.shape[-1]).T
    if units is None:
        raise ValueError("the bootstrap needs the sums by block (or by event for small logs)")
    if counts.shape[1] != len(units):
        raise ValueError(f"{counts.shape[1]} resampling counts for {len(units)} units")
    totals = (counts @ units).reshape(len(counts), *sums.sums.shape)
    replicates = _ratio_values(totals, sums.coefficients)
    alpha = 1.0 - level
    quantiles = [alpha / 2.0, 1.0 - alpha / 2.0]
    slot_low, slot_high = np.nanquantile(replicates, quantiles, axis=0)
    low, high = np.nanquantile(replicates.sum(axis=1), quantiles)
    return slot_low, slot_high, float(low), float(high)


def interval_of(sums: EventSums, method: str, level: float, *, resampling: Resampling | None = None,
                influence: InfluenceSums | None = None) -> Interval:
    """The interval from sufficient statistics: the bootstrap's from `sums` and the resampling,
    the others from the influence sums."""
    values = sums.values
    if method == "bootstrap":
        slot_low, slot_high, low, high = bootstrap_bounds(sums, resampling.counts(sums.n_events), level)
    else:
        half = half_widths(influence, method, level)
        slot_low, slot_high = values - half[:-1], values + half[:-1]
        low, high = values.sum() - half[-1], values.sum() + half[-1]
    return Interval(float(values.sum()), float(low), float(high), values, slot_low, slot_high)


class Intervals:
    """Interval maker for one evaluation. For the bootstrap, the resampling is drawn once (from
    `rng`, see Resampling) and shared by every estimate it scores, so differences are paired over
    events. `event_ids` key the events' blocks (default: their positions 0..n-1)."""

    def __init__(
        self,
        method: str,
        level: float,
        n_events: int,
        rng: np.random.Generator,
        *,
        n_resamples: int = 1000,
        max_blocks: int = MAX_BLOCKS,
        event_ids: np.ndarray | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValidationError("ci", f"must be one of {', '.join(METHODS)}", method)
        self.method = method
        self.level = check_level(level)
        self.n_events = n_events
        self.n_resamples = n_resamples
        self.max_blocks = max_blocks
        self.resampling = Resampling(rng, n_resamples, max_blocks)
        self._event_ids = event_ids
        self._block_of: np.ndarray | None = None

    @property
    def needs_influence(self) -> bool:
        """normal and bernstein need a second pass over the events, at the values' centre."""
        return self.method != "bootstrap"

    def block_of(self) -> np.ndarray | None:
        """Each event's bootstrap block, for the bootstrap over more than max_blocks events (else None)."""
        if self.method != "bootstrap" or self.n_events <= self.max_blocks:
            return None
        if self._block_of is None:
            ids = np.arange(self.n_events) if self._event_ids is None else self._event_ids
            self._block_of = self.resampling.block_of(ids)
        return self._block_of

    @property
    def keep_rows(self) -> bool:
        return self.method == "bootstrap" and self.n_events <= self.max_blocks

    def sums(self, parts: Parts) -> EventSums:
        return event_sums(parts, block_of=self.block_of(), keep_rows=self.keep_rows, max_blocks=self.max_blocks)

    def interval(self, sums: EventSums, influence: InfluenceSums | None = None) -> Interval:
        return interval_of(sums, self.method, self.level, resampling=self.resampling, influence=influence)

    def __call__(self, parts: Parts) -> Interval:
        sums = self.sums(parts)
        influence = influence_sums(parts, sums.centre()) if self.needs_influence else None
        return self.interval(sums, influence)
