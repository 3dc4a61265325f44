"""Log readers: the slate table (Parquet, CSV, pandas DataFrame) and joined DSJSON decision logs.

Every reader returns a `LoadedLog`: the dense `SlateLog`, the target columns when the table
has them, and for DSJSON logs the events themselves (so a policy can be scored on them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.types import Context, LoggedEvent
from bandit.vw.format import parse_event
from offline_eval.slate import SlateLog, TargetProbs, check_probabilities

REQUIRED_COLUMNS = ("event_id", "slot", "action", "reward", "logging_prob")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
DSJSON_SUFFIXES = (".jsonl", ".json", ".dsjson")
CONTEXT_BINS = 8


@dataclass(frozen=True, slots=True)
class LoadedLog:
    """A log as read: dense slate log, target columns if the table had them, events for DSJSON."""

    log: SlateLog
    target: TargetProbs | None = None
    events: tuple[LoggedEvent, ...] | None = None
    batch: EventBatch | None = None


def read_log(source: str | Path | pd.DataFrame, *, progress: bool = False) -> LoadedLog:
    """Read a slate table (Parquet, CSV, DataFrame) or a joined DSJSON log (.jsonl/.json/.dsjson)."""
    if isinstance(source, pd.DataFrame):
        return table_log({name: source[name].to_numpy() for name in source.columns})
    path = Path(source)
    if not path.exists():
        raise ValidationError("log", "file does not exist", str(path))
    suffix = path.suffix.lower()
    if suffix in DSJSON_SUFFIXES:
        return dsjson_log(read_dsjson(path, progress=progress))
    if suffix not in PARQUET_SUFFIXES + CSV_SUFFIXES:
        known = ", ".join(PARQUET_SUFFIXES + CSV_SUFFIXES + DSJSON_SUFFIXES)
        raise ValidationError("log", f"unknown file type (known: {known})", path.name)
    try:
        if suffix in PARQUET_SUFFIXES:
            table = pq.read_table(path)
            return table_log({name: table.column(name) for name in table.column_names})
        frame = pd.read_csv(path)
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        kind = "Parquet" if suffix in PARQUET_SUFFIXES else "CSV"
        raise ValidationError("log", f"cannot be read as {kind} ({type(err).__name__}: {str(err)[:200]})", str(path)) from None
    return table_log({name: frame[name].to_numpy() for name in frame.columns})


def read_dsjson(path: str | Path, *, progress: bool = False) -> list[LoggedEvent]:
    """Joined DSJSON lines -> LoggedEvents; errors name the line."""
    events = []
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            lines = tqdm(handle, desc="reading log", unit=" events", disable=not progress, mininterval=0.5)
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    events.append(parse_event(line))
                except ValidationError as err:
                    raise ValidationError(f"line {number}: {err.field}", err.rule, err.found) from None
    except UnicodeDecodeError:
        raise ValidationError(f"line {number + 1}", "is not UTF-8 text (a DSJSON log is JSON lines)", str(path)) from None
    if not events:
        raise ValidationError("log", "holds no events", str(path))
    return events


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..m-1 and the m distinct values (first-appearance order, or the order of an
    Arrow dictionary's used entries)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if isinstance(values, pa.ChunkedArray):  # one dictionary for all chunks (unifying many is slow)
            values = values.unify_dictionaries().combine_chunks() if pa.types.is_dictionary(values.type) else values.combine_chunks()
        if not pa.types.is_dictionary(values.type):
            values = pc.dictionary_encode(values)
        if values.null_count:
            raise ValidationError("event_id/action", "must not be missing", values.null_count)
        indices = values.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        used = np.zeros(len(values.dictionary), dtype=bool)
        used[indices] = True
        compact = np.cumsum(used) - 1
        return compact[indices], values.dictionary.to_numpy(zero_copy_only=False)[used]
    codes, uniques = pd.factorize(np.asarray(values), use_na_sentinel=True)
    if (codes < 0).any():
        raise ValidationError("event_id/action", "must not be missing", int((codes < 0).sum()))
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _numbers(name: str, values) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(name, "must be numbers", str(np.asarray(values)[:3].tolist())) from None


def table_log(columns: Mapping[str, object]) -> LoadedLog:
    """The slate table of DESIGN.md (one row per (event, slot)) -> dense log and target.

    Rows may come in any order; every event must fill slots 0..K-1 once each, with the same K
    for every event. Optional columns that are absent or have a missing value are unknown.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ValidationError("columns", f"the slate table needs {', '.join(REQUIRED_COLUMNS)}", missing)
    event_codes, event_ids = _codes(columns["event_id"])
    slot = _numbers("slot", columns["slot"])
    if not np.array_equal(slot, np.floor(slot)) or (slot < 0).any():
        raise ValidationError("slot", "must be whole numbers >= 0 (0 = top)", slot[(slot < 0) | (slot != np.floor(slot))][:3].tolist())
    slot = slot.astype(np.int64)
    n_events = len(event_ids)
    if n_events == 0:
        raise ValidationError("log", "holds no events (the slate table has no rows)")
    counts = np.bincount(event_codes, minlength=n_events)
    n_slots = int(counts.max())
    if (counts != n_slots).any():
        short = event_ids[np.flatnonzero(counts != n_slots)[:3]].tolist()
        raise ValidationError("slot", f"every event must fill the same slots 0..K-1 (K = {n_slots} here)", short)
    event_steps = np.diff(event_codes)
    in_order = bool((event_steps >= 0).all() and (np.diff(slot)[event_steps == 0] > 0).all())
    order = None if in_order else np.lexsort((slot, event_codes))
    expected = np.tile(np.arange(n_slots), n_events)
    arranged = slot if order is None else slot[order]
    if not np.array_equal(arranged, expected):
        bad = np.flatnonzero(arranged != expected)[0] // n_slots
        raise ValidationError("slot", "each event needs slots 0..K-1 once each", event_ids[bad])

    def dense(values: np.ndarray) -> np.ndarray:
        return (values if order is None else values[order]).reshape(n_events, n_slots)

    def optional(name: str) -> np.ndarray | None:
        if name not in columns:
            return None
        values = _numbers(name, columns[name])
        return None if np.isnan(values).any() else dense(values)

    action_codes, action_ids = _codes(columns["action"])
    reward = dense(_numbers("reward", columns["reward"]))
    logging_prob = dense(_numbers("logging_prob", columns["logging_prob"]))
    logging_marginal = optional("logging_marginal")
    target_prob, target_marginal = optional("target_prob"), optional("target_marginal")
    _check_target_support("target_prob", target_prob, "logging_prob", logging_prob)
    _check_target_support("target_marginal", target_marginal, "logging_marginal", logging_marginal)
    if np.isnan(logging_prob).all():
        logging_prob = None
    observed = np.ones((n_events, n_slots), dtype=bool)
    log = SlateLog(
        event_ids=event_ids,
        action=dense(action_codes),
        action_ids=action_ids,
        reward=reward,
        logging_prob=logging_prob,
        logging_marginal=logging_marginal,
        observed=observed,
        context=np.empty((n_events, 0), dtype=np.int64),
    )
    has_target = target_prob is not None or target_marginal is not None
    target = TargetProbs(prob=target_prob, marginal=target_marginal) if has_target else None
    return LoadedLog(log=log, target=target)


def _check_target_support(target_name: str, target: np.ndarray | None, logging_name: str, logging: np.ndarray | None) -> None:
    """A logged row with zero logging probability that the target would show is an impossible log."""
    if target is None or logging is None:
        return
    check_probabilities(target_name, target, allow_zero=True)
    bad = (logging == 0.0) & (target > 0.0)
    if bad.any():
        raise ValidationError(
            target_name,
            f"the target puts weight on a shelf with zero {logging_name} (the logger could never have shown it)",
            int(bad.sum()),
        )


def context_codes(contexts: Sequence[Context]) -> np.ndarray:
    """(n, F) integer codes, one column per context feature name (sorted); -1 where absent.

    Strings and booleans are categories; numbers fall into up to CONTEXT_BINS quantile bins.
    """
    n = len(contexts)
    columns: dict[str, list] = {}
    for i, context in enumerate(contexts):
        for name, value in context.features.items():
            columns.setdefault(name, [None] * n)[i] = value
    codes = np.full((n, len(columns)), -1, dtype=np.int64)
    for j, name in enumerate(sorted(columns)):
        values = columns[name]
        present = np.array([v is not None for v in values])
        if all(isinstance(v, float) for v, p in zip(values, present) if p):
            numbers = np.array([v if p else np.nan for v, p in zip(values, present)], dtype=np.float64)
            edges = np.unique(np.nanquantile(numbers, np.linspace(0.0, 1.0, CONTEXT_BINS + 1)[1:-1]))
            codes[present, j] = np.searchsorted(edges, numbers[present], side="right")
        else:
            codes[present, j] = pd.factorize(np.array([str(v) for v, p in zip(values, present) if p], dtype=object))[0]
    return codes


def batch_log(batch: EventBatch, events: Sequence[LoggedEvent] | None = None) -> SlateLog:
    """An EventBatch (one row per (event, slot)) -> dense slate log with candidates and contexts;
    with the batch's `events`, also the logger's distributions over the candidates."""
    counts = np.diff(batch.row_offsets)
    n_slots = int(counts.max())
    if (counts != n_slots).any():
        raise ValidationError("slot", f"every event must fill the same number of slots (found {sorted(set(counts.tolist()))})")
    n_events = batch.n_events
    shelf_counts = np.fromiter((len(s) for s in batch.shelves), dtype=np.int64, count=n_events)
    candidate_ids = [shelf.shelf_id for shelves in batch.shelves for shelf in shelves]
    flat_codes, action_ids = pd.factorize(np.array(candidate_ids, dtype=object))
    candidates = np.full((n_events, int(shelf_counts.max())), -1, dtype=np.int64)
    candidates[np.arange(n_events).repeat(shelf_counts), _positions(shelf_counts)] = flat_codes
    action_position = batch.action_index.reshape(n_events, n_slots)
    marginal = batch.logging_marginal.reshape(n_events, n_slots)
    return SlateLog(
        event_ids=batch.event_ids,
        action=np.take_along_axis(candidates, action_position, axis=1),
        action_ids=np.asarray(action_ids, dtype=object),
        reward=batch.reward.reshape(n_events, n_slots),
        logging_prob=batch.logging_prob.reshape(n_events, n_slots),
        logging_marginal=None if np.isnan(marginal).any() else marginal,
        observed=np.ones((n_events, n_slots), dtype=bool),
        context=context_codes(batch.contexts),
        candidates=candidates,
        action_position=action_position,
        logging_distribution=None if events is None else logging_distributions(events, n_slots, candidates.shape[1]),
    )


def _positions(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def logging_distributions(events: Sequence[LoggedEvent], n_slots: int, n_candidates: int) -> np.ndarray:
    """(n, K, N): the logger's P(candidate at slot k | logged shelves above), from each decision's
    slot distributions (shelves a slot could not show get 0)."""
    event_index, slot_index, position, prob = [], [], [], []
    for i, event in enumerate(events):
        where = {shelf.shelf_id: j for j, shelf in enumerate(event.shelves)}
        for k, distribution in enumerate(event.decision.slot_distributions):
            event_index.extend([i] * len(distribution))
            slot_index.extend([k] * len(distribution))
            position.extend(where[shelf_id] for shelf_id, _ in distribution)
            prob.extend(p for _, p in distribution)
    values = np.zeros((len(events), n_slots, n_candidates))
    values[np.array(event_index), np.array(slot_index), np.array(position)] = prob
    return values


def dsjson_log(events: Sequence[LoggedEvent]) -> LoadedLog:
    """Logged events (as parsed from a joined DSJSON log) -> dense log, keeping the events."""
    events = tuple(events)
    batch = EventBatch.from_events(events)
    return LoadedLog(log=batch_log(batch, events), events=events, batch=batch)


def slate_table(log: SlateLog, target: TargetProbs | None = None) -> pd.DataFrame:
    """The slate table of DESIGN.md (one row per observed (event, slot)), the inverse of `table_log`."""
    n_events, n_slots = log.reward.shape
    rows = log.observed.ravel()
    columns = {
        "event_id": np.repeat(log.event_ids, n_slots),
        "slot": np.tile(np.arange(n_slots), n_events),
        "action": log.action_ids[log.action.ravel()],
        "reward": log.reward.ravel(),
        "logging_prob": np.full(log.reward.size, np.nan) if log.logging_prob is None else log.logging_prob.ravel(),
    }
    optional = {"logging_marginal": log.logging_marginal}
    if target is not None:
        optional |= {"target_prob": target.prob, "target_marginal": target.marginal}
    columns |= {name: values.ravel() for name, values in optional.items() if values is not None}
    return pd.DataFrame({name: values[rows] for name, values in columns.items()})
