"""Slate logs and target probabilities in the dense form the estimators use.

A log of n events with K slots each is held as (n, K) arrays, slot 0 (top) first. Where
the estimators need a policy's whole distribution over an event's N candidate shelves,
it is an (n, K, N) array over the event's candidates (zero-padded past an event's last
candidate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bandit.errors import ValidationError


def check_probabilities(name: str, values: np.ndarray, where: np.ndarray | None = None, *, allow_zero: bool) -> None:
    """Every value (where `where` holds) lies in (0, 1], or [0, 1] with `allow_zero`."""
    if values.size and (where is None or where.all()):
        # two reductions decide the common case (NaN fails both comparisons); the masks below only
        # run to name the bad values
        low, high = values.min(), values.max()
        if (low >= 0.0 if allow_zero else low > 0.0) and high <= 1.0 + 1e-9:
            return
    low_ok = values >= 0.0 if allow_zero else values > 0.0
    bad = ~(low_ok & (values <= 1.0 + 1e-9))
    if where is not None:
        bad &= where
    if bad.any():
        first = np.flatnonzero(bad.ravel())[:3]
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValidationError(name, f"probabilities must lie in {interval}", values.ravel()[first].tolist())


def _check_shape(name: str, values: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if values is not None and values.shape != shape:
        raise ValidationError(name, f"must have shape {shape}", values.shape)


def _check_distribution(name: str, values: np.ndarray, candidates: np.ndarray, observed: np.ndarray) -> None:
    """(n, K, N) probabilities over each event's candidates: in [0, 1], none on padding, summing to 1."""
    check_probabilities(name, values, allow_zero=True)
    if np.any((values > 0.0) & (candidates < 0)[:, None, :]):
        raise ValidationError(name, "puts probability on a padding position past the event's candidates")
    totals = values.sum(axis=2)
    off = observed & (np.abs(totals - 1.0) > 1e-4)
    if off.any():
        raise ValidationError(name, "must sum to 1 over the event's candidates at every slot", totals[off][:3].tolist())


def _rows_of(events: np.ndarray | slice):
    """A function taking an optional per-event array to its rows for `events`."""
    return lambda values: None if values is None else values[events]


def _view(cls, source: object, events: slice, per_event: tuple[str, ...], **fields):
    """An instance of a frozen slots dataclass holding `source`'s per-event arrays restricted to a
    slice of events (views, not copies), without the checks of __post_init__ (`source` passed them)."""
    view = object.__new__(cls)
    for name in cls.__slots__:
        value = getattr(source, name)
        if name in per_event and value is not None:
            value = value[events]
        object.__setattr__(view, name, fields.get(name, value))
    return view


def _slot_columns_contiguous(obj: object, names: tuple[str, ...]) -> None:
    """Store (n, K) arrays column-major: each slot's column is contiguous, so per-slot sums and
    products over slots run as contiguous vector operations (several times faster for few slots)."""
    for name in names:
        values = getattr(obj, name)
        if values is not None:
            object.__setattr__(obj, name, np.asfortranarray(values))


@dataclass(frozen=True, slots=True)
class SlateLog:
    """What the logging policy did, per event and slot.

    (n, K): `action` (codes into `action_ids`), `reward`, `logging_prob` (P(shelf at slot k |
    shelves above), None when unknown), `logging_marginal` (P(shelf at slot k), None when
    unknown), `observed` (False where a slot's row is missing, as in the Open Bandit Dataset
    sample). (n, F): `context` (integer codes per context feature, -1 where absent) for the
    reward model. Optional, per candidate: `candidates` (n, N) action codes (-1 = padding),
    `action_position` (n, K) index of the logged shelf in `candidates`, and
    `logging_distribution` (n, K, N): P(candidate at slot k | logged shelves above).
    """

    event_ids: np.ndarray
    action: np.ndarray
    action_ids: np.ndarray
    reward: np.ndarray
    logging_prob: np.ndarray | None
    logging_marginal: np.ndarray | None
    observed: np.ndarray
    context: np.ndarray
    candidates: np.ndarray | None = None
    action_position: np.ndarray | None = None
    logging_distribution: np.ndarray | None = None
    complete: bool = field(init=False)

    def __post_init__(self) -> None:
        _slot_columns_contiguous(self, ("action", "reward", "logging_prob", "logging_marginal", "observed", "action_position"))
        if self.reward.ndim != 2 or self.reward.shape[0] == 0 or self.reward.shape[1] == 0:
            raise ValidationError("reward", "a log needs at least one event with at least one slot", self.reward.shape)
        n, k = self.reward.shape
        for name in ("action", "logging_prob", "logging_marginal", "observed", "action_position"):
            _check_shape(name, getattr(self, name), (n, k))
        _check_shape("event_ids", self.event_ids, (n,))
        if self.context.ndim != 2 or self.context.shape[0] != n:
            raise ValidationError("context", f"must have shape ({n}, n_features)", self.context.shape)
        if not _all_finite(self.reward if self.observed.all() else self.reward[self.observed]):
            raise ValidationError("reward", "rewards must be finite numbers")
        for name in ("logging_prob", "logging_marginal"):
            values = getattr(self, name)
            if values is not None:
                check_probabilities(name, values, self.observed, allow_zero=False)
        per_candidate = (self.candidates, self.action_position)
        if any(v is None for v in per_candidate) and any(v is not None for v in per_candidate):
            raise ValidationError("candidates", "candidates and action_position come together")
        if self.candidates is not None:
            n_candidates = self.candidates.shape[1]
            _check_shape("candidates", self.candidates, (n, n_candidates))
            _check_shape("logging_distribution", self.logging_distribution, (n, k, n_candidates))
            if self.logging_distribution is not None:
                _check_distribution("logging_distribution", self.logging_distribution, self.candidates, self.observed)
        object.__setattr__(self, "complete", bool(self.observed.all()))

    @property
    def n_events(self) -> int:
        return self.reward.shape[0]

    @property
    def n_slots(self) -> int:
        return self.reward.shape[1]

    @property
    def n_actions(self) -> int:
        return len(self.action_ids)

    def rows(self, events: slice) -> SlateLog:
        """The log's events in a slice, as views and without re-checking (for chunked passes)."""
        return _view(SlateLog, self, events, _LOG_PER_EVENT)

    def subset(self, events: np.ndarray | slice) -> SlateLog:
        """The log restricted to some events (an index array or slice over events)."""
        pick = _rows_of(events)
        return SlateLog(
            event_ids=self.event_ids[events],
            action=self.action[events],
            action_ids=self.action_ids,
            reward=self.reward[events],
            logging_prob=pick(self.logging_prob),
            logging_marginal=pick(self.logging_marginal),
            observed=self.observed[events],
            context=self.context[events],
            candidates=pick(self.candidates),
            action_position=pick(self.action_position),
            logging_distribution=pick(self.logging_distribution),
        )


@dataclass(frozen=True, slots=True)
class TargetProbs:
    """What the policy being evaluated would do on the logged events.

    (n, K): `prob` = P(logged shelf at slot k | logged shelves above), `marginal` = P(logged
    shelf at slot k). (n, K, N) over the event's candidates: `conditional_distribution` =
    P(candidate at slot k | logged shelves above) and `marginal_distribution` = P(candidate at
    slot k). Any of them may be None when unknown; estimators say which they need.
    """

    prob: np.ndarray | None = None
    marginal: np.ndarray | None = None
    conditional_distribution: np.ndarray | None = None
    marginal_distribution: np.ndarray | None = None
    name: str = "target"

    def __post_init__(self) -> None:
        _slot_columns_contiguous(self, ("prob", "marginal"))
        for name in ("prob", "marginal", "conditional_distribution", "marginal_distribution"):
            values = getattr(self, name)
            if values is not None:
                check_probabilities(f"{self.name}.{name}", values, allow_zero=True)

    def rows(self, events: slice) -> TargetProbs:
        """The target on a slice of events, as views and without re-checking (for chunked passes)."""
        return _view(TargetProbs, self, events, _TARGET_PER_EVENT)

    def subset(self, events: np.ndarray | slice) -> TargetProbs:
        pick = _rows_of(events)
        return TargetProbs(
            prob=pick(self.prob),
            marginal=pick(self.marginal),
            conditional_distribution=pick(self.conditional_distribution),
            marginal_distribution=pick(self.marginal_distribution),
            name=self.name,
        )


def unchecked(cls, **fields):
    """A SlateLog or TargetProbs without the checks of __post_init__, for a reader that has made
    them already (readers.table_log checks every column from its bounds, taken while converting)."""
    instance = object.__new__(cls)
    for name in cls.__slots__:
        object.__setattr__(instance, name, fields.get(name))
    if cls is SlateLog:
        object.__setattr__(instance, "complete", bool(instance.observed.all()))
    if cls is TargetProbs and instance.name is None:
        object.__setattr__(instance, "name", "target")
    return instance


_LOG_PER_EVENT = (
    "event_ids", "action", "reward", "logging_prob", "logging_marginal", "observed", "context", "candidates",
    "action_position", "logging_distribution",
)
_TARGET_PER_EVENT = ("prob", "marginal", "conditional_distribution", "marginal_distribution")


def _all_finite(values: np.ndarray) -> bool:
    """No NaN or infinity: the min and max (which propagate NaN) decide it without a mask."""
    return values.size == 0 or bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def check_target(log: SlateLog, target: TargetProbs) -> None:
    """The target's arrays match the log's events, slots and candidates."""
    shape = (log.n_events, log.n_slots)
    _check_shape(f"{target.name}.prob", target.prob, shape)
    _check_shape(f"{target.name}.marginal", target.marginal, shape)
    for name in ("conditional_distribution", "marginal_distribution"):
        values = getattr(target, name)
        if values is None:
            continue
        if log.candidates is None:
            raise ValidationError(f"{target.name}.{name}", "needs a log that lists each event's candidate shelves")
        _check_shape(f"{target.name}.{name}", values, (*shape, log.candidates.shape[1]))
        _check_distribution(f"{target.name}.{name}", values, log.candidates, log.observed)


def unsupported_share(log: SlateLog, target: TargetProbs) -> float | None:
    """Share of events where, at some slot and given the logged shelves above, the target gives
    positive probability to a shelf the logger gave zero; None when either distribution is unknown."""
    if log.logging_distribution is None or target.conditional_distribution is None:
        return None
    gap = (target.conditional_distribution > 0.0) & (log.logging_distribution <= 0.0)
    return float(gap.any(axis=(1, 2)).mean())
