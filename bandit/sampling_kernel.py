"""The compiled kernel behind `bandit.sampling`: sampling, per-slot distributions and marginals
of the VW ranker's explorers in one call per request, instead of a dozen numpy calls per slot.

It computes exactly what the numpy implementation in `bandit.sampling` and `bandit.explore`
computes (the reference, which the tests hold it to on the same draws): the same operations in
the same order, including numpy's pairwise summation of a row, so the probabilities and
the chosen shelves come out bit for bit the same. Exponentials are never taken here: numpy
computes them (vectorised, as the reference does) before the call.

Arrays are read flat, each row at an offset, so the inner loops create no array views.

Imported by `bandit.sampling` on first use only (numba takes half a second to import); compiled
code is cached on disk beside this file (numba's `cache=True`), so only the first process after
an install or an edit compiles it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

GREEDY = 0  # EpsilonGreedy
SOFTMAX_PREPARED = 1  # Softmax without a floor: weights exp(-lambda (c - min c)) prepared per slot
SOFTMAX = 2  # Softmax per row (a floor, or no prepared weights): exponentials prepared per cheapest shelf
SQUARECB = 3

OK = 0
FALLBACK = 1  # a case the kernel leaves to the reference (softmax weights that underflowed)

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _block_sum(a, lo, n):
    """numpy's pairwise sum of a block of n <= 128 elements a[lo:lo + n]."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = lo + 8
    stop = lo + n - n % 8
    while i < stop:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < lo + n:
        res += a[i]
        i += 1
    return res


@_jit
def _pairwise_sum(a, lo, n):
    """numpy's sum of a[lo:lo + n] (1-D float64): blocks of at most 128 elements summed 8 ways
    unrolled, longer runs split in two (at a multiple of 8) and the halves added. The recursion
    runs on an explicit stack (numba cannot cache a recursive function)."""
    if n <= 128:
        return _block_sum(a, lo, n)
    frame_lo = np.empty(64, dtype=np.int64)
    frame_n = np.empty(64, dtype=np.int64)
    left = np.empty(64)
    has_left = np.zeros(64, dtype=np.bool_)
    top = 0
    frame_lo[0], frame_n[0], has_left[0] = lo, n, False
    while True:
        size = frame_n[top]
        if size > 128:  # not summed yet: its left half first
            half = size // 2
            half -= half % 8
            top += 1
            frame_lo[top], frame_n[top], has_left[top] = frame_lo[top - 1], half, False
            continue
        value = _block_sum(a, frame_lo[top], size)
        while True:  # hand the finished frame's sum to its parent
            top -= 1
            if top < 0:
                return value
            if has_left[top]:  # that was the right half: the parent is finished too
                value = left[top] + value
                continue
            left[top], has_left[top] = value, True  # that was the left half: now the right one
            half = frame_n[top] // 2
            half -= half % 8
            top += 1
            frame_lo[top], frame_n[top], has_left[top] = frame_lo[top - 1] + half, frame_n[top - 1] - half, False
            break


@_jit
def _row_probs(kind, costs, weights, cheapest, exps, at, n_cheapest, gamma, eps, share, m, avail, out, row, scratch):
    """One row of the explorer's `probs`: the slot's costs `costs[at:at + N]`, the availability
    `avail[row:row + N]` with m shelves available -> `out[row:row + N]`. Returns OK, or FALLBACK
    where the reference would change path.

    SOFTMAX_PREPARED reads its weights at `weights[at:at + N]`. SOFTMAX reads the slot's shelves
    in ascending cost order `cheapest[at:at + N]` and, for each of the first `n_cheapest`, the
    weights exp(-lambda max(c - c_cheapest, 0)) numpy computed: the cheapest available shelf is
    among the first k + 1 when k are taken, and those weights are the reference's own numpy
    expression for it."""
    n = scratch.shape[0]
    if kind == SOFTMAX_PREPARED:
        for j in range(n):
            out[row + j] = weights[at + j] if avail[row + j] else 0.0
        total = _pairwise_sum(out, row, n)
        if total == 0.0:
            return FALLBACK
        for j in range(n):
            out[row + j] = out[row + j] / total
    elif kind == SOFTMAX:
        r = 0
        while not avail[row + cheapest[at + r]]:
            r += 1
        base = ((at // n) * n_cheapest + r) * n
        for j in range(n):
            out[row + j] = exps[base + j] if avail[row + j] else 0.0
        total = _pairwise_sum(out, row, n)
        for j in range(n):
            out[row + j] = out[row + j] / total
        if eps > 0.0:
            _enforce_minimum_probability(out, avail, row, m, eps, cheapest, at, scratch)
    else:
        lowest = np.inf
        a_min = -1
        tied = 0
        for j in range(n):
            if avail[row + j]:
                c = costs[at + j]
                if a_min < 0 or c < lowest:
                    lowest, a_min, tied = c, j, 1
                elif c == lowest:
                    tied += 1
        if kind == GREEDY:
            explore = eps / m
            top = explore + (1.0 - eps) / tied
            for j in range(n):
                if avail[row + j]:
                    out[row + j] = top if costs[at + j] == lowest else explore
                else:
                    out[row + j] = 0.0
        else:  # SQUARECB
            for j in range(n):
                scale = max(costs[at + j] - lowest, 0.0) * gamma + m
                out[row + j] = 1.0 / scale if avail[row + j] else 0.0
            out[row + a_min] = 0.0
            out[row + a_min] = 1.0 - _pairwise_sum(out, row, n)
    if share > 0.0:
        spread = share / m
        for j in range(n):
            out[row + j] = (1.0 - share) * out[row + j] + (spread if avail[row + j] else 0.0)
    return OK


@_jit
def _enforce_minimum_probability(p, avail, row, m, eps, order, at, scratch):
    """explore._enforce_minimum_probability on the row `p[row:row + N]`, in place. Its running
    sums add the available probabilities in descending order: softmax probabilities descend as
    the costs ascend, so the slot's cost order `order[at:at + N]` gives that order without a
    sort; should an exponential's rounding ever break the monotony, the row is sorted instead."""
    n = scratch.shape[0]
    if eps > 0.999:
        for j in range(n):
            p[row + j] = 1.0 / m if avail[row + j] else 0.0
        return
    floor = eps / m
    count = 0
    for i in range(n):
        j = order[at + i]
        if avail[row + j]:
            scratch[count] = p[row + j]
            if count and scratch[count] > scratch[count - 1]:
                count = -1
                break
            count += 1
    if count < 0:  # not monotone: sort (ascending, then reversed) as the reference does
        count = 0
        for j in range(n):
            if avail[row + j]:
                scratch[count] = p[row + j]
                count += 1
        scratch[:count].sort()
        scratch[:count] = scratch[:count][::-1].copy()
    running = 0.0
    rho = 0.0
    rho_sum = scratch[0]  # the reference's running sum at index 0, when nothing is kept
    for i in range(count):
        value = scratch[i]
        running += value
        x = float(i)
        if value > (((m - x) - 1.0) * floor + running - 1.0) / (x + 1.0) + floor:
            rho = x
            rho_sum = running
    tau = (((m - rho) - 1.0) * floor + rho_sum - 1.0) / (rho + 1.0)
    for j in range(n):
        p[row + j] = max(p[row + j] - tau, floor) if avail[row + j] else 0.0


@_jit
def sample(kind, costs, weights, cheapest, exps, gamma, eps, share, uniforms, draws, exact_budget,
           indices, distributions, values, stderr):
    """`bandit.sampling.sample_rankings` for E decisions: costs and weights (K, E, N), for SOFTMAX
    the cost order (K, E, N) and exps (K, E, R, N) (see `_row_probs`; any stand-in otherwise), gamma
    (E,), uniforms (E, K, D). Fills indices (E, K), distributions, values and stderr (E, K, N);
    returns OK, or FALLBACK (outputs unusable) where the reference must do it."""
    n_slots, n_events, n = costs.shape
    n_cheapest = exps.shape[2]
    d = uniforms.shape[2]
    flat_costs, flat_weights = costs.reshape(-1), weights.reshape(-1)
    flat_cheapest, flat_exps = cheapest.reshape(-1), exps.reshape(-1)
    available = np.empty(d * n, dtype=np.bool_)  # each draw's shelves still available
    p = np.empty(n)  # the current draw's distribution (only the first draw's is kept)
    total = np.empty(n)  # each shelf's probability summed over the draws, in draw order
    scratch = np.empty(n)
    floor = (1.0 / draws) * (1.0 - 1.0 / draws) if draws else 0.0
    for e in range(n_events):
        available[:] = True
        for k in range(n_slots):
            m = n - k
            at = (k * n_events + e) * n
            total[:] = 0.0
            for row in range(d):
                base = row * n
                if _row_probs(kind, flat_costs, flat_weights, flat_cheapest, flat_exps, at, n_cheapest, gamma[e], eps,
                              share, m, available[base:base + n], p, 0, scratch) != OK:
                    return FALLBACK
                u = uniforms[e, k, row]
                acc = 0.0
                chosen = 0
                for j in range(n):  # the inverse-CDF draw: how many of the row's cumulative sums are <= u
                    x = p[j]
                    acc += x
                    if acc <= u:
                        chosen += 1
                    total[j] += x
                picked = min(chosen, n - 1)
                if row == 0 and p[picked] <= 0.0:  # round-off: u beyond the row's float sum
                    picked = n - 1
                    for j in range(n - 1, -1, -1):
                        if p[j] > 0.0:
                            picked = j
                            break
                available[base + picked] = False
                if row == 0:
                    indices[e, k] = picked
                    for j in range(n):
                        distributions[e, k, j] = p[j]
            for j in range(n):
                if draws:
                    mean = total[j] / d
                    values[e, k, j] = mean
                    stderr[e, k, j] = math.sqrt(max(mean * (1.0 - mean), floor) / draws)
                else:
                    values[e, k, j] = np.nan
                    stderr[e, k, j] = np.nan
        if _exact(kind, flat_costs, flat_weights, flat_cheapest, flat_exps, n_slots, n_events, n_cheapest, gamma[e],
                  eps, share, exact_budget, e, distributions, values, stderr, scratch) != OK:
            return FALLBACK
    return OK


@_jit
def _exact(kind, costs, weights, cheapest, exps, n_slots, n_events, n_cheapest, gamma, eps, share, exact_budget, e,
           distributions, values, stderr, scratch):
    """`bandit.sampling._exact_marginals_of` for decision e: the slots whose live prefixes times N
    fit `exact_budget` are enumerated, and overwrite the Monte Carlo values (with stderr 0)."""
    n = scratch.shape[0]
    for j in range(n):
        values[e, 0, j] = distributions[e, 0, j]
        stderr[e, 0, j] = 0.0
    if n_slots == 1:
        return OK
    rows = 0
    for j in range(n):
        if distributions[e, 0, j] > 0.0:
            rows += 1
    cols = np.empty(rows, dtype=np.int64)
    prefix = np.empty(rows)  # each live prefix's probability
    i = 0
    for j in range(n):
        if distributions[e, 0, j] > 0.0:
            cols[i] = j
            prefix[i] = distributions[e, 0, j]
            i += 1
    available = np.ones(rows * n, dtype=np.bool_)
    for k in range(1, n_slots):
        if rows == 0 or rows * n > exact_budget:
            break
        for i in range(rows):
            available[i * n + cols[i]] = False
        p = np.empty(rows * n)
        at = (k * n_events + e) * n
        for i in range(rows):
            if _row_probs(kind, costs, weights, cheapest, exps, at, n_cheapest, gamma, eps, share, n - k,
                          available, p, i * n, scratch) != OK:
                return FALLBACK
        # np.add.reduceat over the prefixes: the first row, plus numpy's sum of the others
        column = np.empty(max(rows - 1, 0))
        for j in range(n):
            first = prefix[0] * p[j]
            if rows > 1:
                for i in range(1, rows):
                    column[i - 1] = prefix[i] * p[i * n + j]
                first = first + _pairwise_sum(column, 0, rows - 1)
            values[e, k, j] = first
            stderr[e, k, j] = 0.0
        if k + 1 == n_slots:
            break
        live = 0
        for i in range(rows * n):
            if p[i] > 0.0:
                live += 1
        if live * n > exact_budget:  # the next slot is not exact: its prefixes are not needed
            break
        new_cols = np.empty(live, dtype=np.int64)
        new_prefix = np.empty(live)
        new_available = np.empty(live * n, dtype=np.bool_)
        r = 0
        for i in range(rows):
            for j in range(n):
                if p[i * n + j] > 0.0:
                    new_cols[r] = j
                    new_prefix[r] = prefix[i] * p[i * n + j]
                    new_available[r * n:(r + 1) * n] = available[i * n:(i + 1) * n]
                    r += 1
        rows, cols, prefix, available = live, new_cols, new_prefix, new_available
    return OK
