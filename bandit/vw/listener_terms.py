"""A fixed model's costs of a page as an affine function of the listener's features.

VW's score of a (slot, shelf) pair is a sum of weight x feature-value products. When no
interaction crosses the listener's namespace with itself, every product holds at most one
listener feature, so the score is affine in each listener feature's value:

    costs(x) = base + sum_t x_t * term_t,    term_t = (costs(feature t alone, at s) - base) / s

where `base` is the page's costs with no listener feature. A pair's score does not depend on
the page's other shelves or slots, so `base` and each term are kept per (feature, shelf) as a
vector over slots: a page is gathered from them, and the shelves a feature's term lacks cost
one VW pass over those shelves alone (a "probe"). A request then costs one (T, K*N) product instead
of a VW pass over K*N pairs of 30-odd listener features each, and its costs do not depend on
what was scored before.

Precision: a probe is VW's float32 sum base + s * term, so the term it gives is off by about
2^-24 (|term| + |base| / s), and a request multiplies that by the feature's value x. The probe's
value s = 2^40 is at least any value a feature may take (1e12), so the error stays within
VW's own float32 rounding of x * term and of the base. (At s = 1, a feature valued 1e6 was off
by 0.025; at s = 2^20, one valued 9e11 by 0.03.) The products are VW's; they are added in
float64 where VW adds them in float32, so costs agree with VW's pass to float32 rounding.

Memory: a request is for the terms only if its (T + 1) rows of K*N values, with an overhead of
ENTRY_OVERHEAD values a row, fit in `request_floats` (`fits`); larger ones are VW's to score.
So a page holds a whole request's rows, and a request never evicts its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PROBE_VALUE = float(2**40)
BASE = ""  # the base's key among the features' names
ENTRY_OVERHEAD = 40  # a kept array's Python and dict overhead, in float64 values (about 320 bytes)


def is_affine_in_listener(interactions: Sequence[str]) -> bool:
    """Whether costs are affine in the listener's features: no interaction names the listener twice."""
    return all(term.split("*").count("listener") <= 1 for term in interactions)


class _Page:
    """One page's rows (K*N,), slot-major, by feature name; at most `capacity` kept."""

    def __init__(self, shelves: tuple[Any, ...], n_slots: int, capacity: int) -> None:
        self.shelves, self.n_slots, self.capacity = shelves, n_slots, capacity
        self.rows: OrderedDict[str, np.ndarray] = OrderedDict()


class ListenerTerms:
    """The listener terms of one fixed model. `probe(shelves, n_slots, name, value)` is VW's
    costs (K*N,) of the page for the listener with the one feature `name` at `value` (none for
    BASE). Kept: `max_pages` pages (least recently used out first), each with the rows of up to
    `request_floats` values (least recently used out first), and about `max_floats` per-shelf
    values (emptied when a request finds it over): at most 2 MiB a page and 16 MiB the store,
    overheads counted."""

    def __init__(self, probe: Callable[[tuple, int, str, float], np.ndarray], *, max_pages: int = 32,
                 request_floats: int = 1 << 18, max_floats: int = 1 << 21) -> None:
        self._probe = probe
        self.max_pages, self.request_floats, self.max_floats = max_pages, request_floats, max_floats
        self._pages: OrderedDict[tuple, _Page] = OrderedDict()
        self._by_shelf: dict[str, dict[Any, np.ndarray]] = {}  # name -> shelf -> (slots,)
        self._n_floats = 0

    def fits(self, n_names: int, n_shelves: int, n_slots: int) -> bool:
        """Whether a request of n_names listener features on this page shape is for the terms."""
        return (n_names + 1) * (n_shelves * n_slots + ENTRY_OVERHEAD) <= self.request_floats

    def costs(self, shelves: tuple[Any, ...], n_slots: int, names: Sequence[str], values: Sequence[float]) -> np.ndarray | None:
        """Costs (K, N) of the page for the listener whose VW features are `names` at `values`;
        None for a request too large for the terms (`fits`)."""
        if not self.fits(len(names), len(shelves), n_slots):
            return None
        if self._n_floats > self.max_floats:
            self._by_shelf.clear()
            self._n_floats = 0
        page = self._page(shelves, n_slots)
        base = self._row(page, BASE)
        if not names:
            return base.reshape(n_slots, len(shelves)).copy()
        rows = [self._row(page, name) for name in names]
        return (base + np.asarray(values, dtype=np.float64) @ np.vstack(rows)).reshape(n_slots, len(shelves))

    def recent(self, max_pages: int) -> list[tuple[tuple[Any, ...], int, list[str]]]:
        """The `max_pages` pages used last, newest first, with the names of their rows."""
        return [(page.shelves, page.n_slots, list(page.rows)) for page in list(reversed(self._pages.values()))[:max_pages]]

    def warm(self, pages: Sequence[tuple[tuple[Any, ...], int, Sequence[str]]], deadline: float) -> None:
        """Find the rows of `pages` (as `recent` lists them) until time.monotonic() passes `deadline`."""
        for shelves, n_slots, names in pages:
            page = self._page(shelves, n_slots)
            for name in names[: page.capacity]:
                if time.monotonic() > deadline:
                    return
                self._row(page, name)

    def _page(self, shelves: tuple[Any, ...], n_slots: int) -> _Page:
        key = (shelves, n_slots)
        page = self._pages.get(key)
        if page is None:
            capacity = max(1, self.request_floats // (n_slots * len(shelves) + ENTRY_OVERHEAD))
            page = self._pages[key] = _Page(shelves, n_slots, capacity)
            if len(self._pages) > self.max_pages:
                self._pages.popitem(last=False)
        else:
            self._pages.move_to_end(key)
        return page

    def _row(self, page: _Page, name: str) -> np.ndarray:
        row = page.rows.get(name)
        if row is not None:
            page.rows.move_to_end(name)
            return row
        row = page.rows[name] = self._gathered(page.shelves, page.n_slots, name)
        if len(page.rows) > page.capacity:
            page.rows.popitem(last=False)
        return row

    def _gathered(self, shelves: tuple[Any, ...], n_slots: int, name: str) -> np.ndarray:
        """The row (K*N,) of `name` over these shelves from the per-shelf store, the shelves it
        lacks (or holds for fewer slots) probed first, together."""
        by_shelf = self._by_shelf.setdefault(name, {})
        missing = tuple(s for s in shelves if s not in by_shelf or len(by_shelf[s]) < n_slots)
        if missing:
            if name == BASE:
                row = self._probe(missing, n_slots, BASE, 0.0)
            else:
                base = self._gathered(missing, n_slots, BASE)
                row = (self._probe(missing, n_slots, name, PROBE_VALUE) - base) / PROBE_VALUE
            table = row.reshape(n_slots, len(missing))
            for j, shelf in enumerate(missing):
                kept = by_shelf.get(shelf)
                by_shelf[shelf] = table[:, j].copy()
                self._n_floats += n_slots + ENTRY_OVERHEAD if kept is None else n_slots - len(kept)
            if len(missing) == len(shelves):
                return row
        return np.stack([by_shelf[s][:n_slots] for s in shelves], axis=1).ravel()
