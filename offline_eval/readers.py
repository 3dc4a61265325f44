"""Log readers: the slate table (Parquet, CSV, pandas DataFrame) and joined DSJSON decision logs.

Every reader returns a `LoadedLog`: the dense `SlateLog`, the target columns when the table
has them, and for DSJSON logs the events themselves (so a policy can be scored on them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.types import Context, LoggedEvent
from bandit.vw.format import parse_event
from offline_eval.slate import SlateLog, TargetProbs, check_probabilities, unchecked

REQUIRED_COLUMNS = ("event_id", "slot", "action", "reward", "logging_prob")
OPTIONAL_COLUMNS = ("logging_marginal", "target_prob", "target_marginal")
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
    """Read a slate table (Parquet, CSV, DataFrame), a directory (or URI, e.g. s3://bucket/log/)
    of slate-table Parquet parts, or a joined DSJSON log (.jsonl/.json/.dsjson)."""
    if isinstance(source, pd.DataFrame):
        return table_log({name: source[name].to_numpy() for name in source.columns})
    if _is_uri(source) or Path(source).is_dir():
        return table_log(read_parts(slate_parts(source)), release=True)
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
        if suffix in PARQUET_SUFFIXES:  # mapped: the file's pages are decoded in place, not copied first
            return table_log(_columns(pq.read_table(path, memory_map=True)), release=True)
        frame = pd.read_csv(path)
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        kind = "Parquet" if suffix in PARQUET_SUFFIXES else "CSV"
        raise ValidationError("log", f"cannot be read as {kind} ({type(err).__name__}: {str(err)[:200]})", str(path)) from None
    return table_log({name: frame[name].to_numpy() for name in frame.columns})


@dataclass(frozen=True, slots=True)
class SlateParts:
    """The Parquet parts of a slate-table log held as a directory (or an object-store prefix):
    their paths in sorted order (the log's event order), the filesystem they live on, and each
    part's row count (from its footer)."""

    source: str
    files: tuple[str, ...]
    filesystem: object | None
    rows: tuple[int, ...]

    def dataset(self, files: Sequence[str] | None = None) -> ds.Dataset:
        """The parts (or some of them) as one pyarrow dataset, rows in part order."""
        return ds.dataset(list(self.files if files is None else files), format="parquet", filesystem=self.filesystem)


def _is_uri(source) -> bool:
    return isinstance(source, str) and "://" in source


def _hidden(path: str, root: str) -> bool:
    """Hidden or private by pyarrow's rule: a path component under the root starting with '.' or '_'."""
    relative = path[len(root):].lstrip("/") if path.startswith(root) else path
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def slate_parts(source: str | Path) -> SlateParts:
    """The Parquet parts (.parquet, .pq; hidden '.'/'_' files skipped) under a directory or URI."""
    if not _is_uri(source) and not Path(source).is_dir():
        raise ValidationError("log", "is not a directory of Parquet parts", str(source))
    try:
        if _is_uri(source):
            filesystem, root = pafs.FileSystem.from_uri(str(source))
        else:  # mapped files, as read_log maps a single file
            filesystem, root = pafs.LocalFileSystem(use_mmap=True), str(Path(source).resolve())
        root = root.rstrip("/")
        listing = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(
            info.path for info in listing
            if info.type == pafs.FileType.File and info.path.lower().endswith(PARQUET_SUFFIXES) and not _hidden(info.path, root)
        )
        if not files:
            raise ValidationError("log", "holds no Parquet parts (.parquet, .pq)", str(source))
        dataset = ds.dataset(files, format="parquet", filesystem=filesystem)
        rows = tuple(fragment.metadata.num_rows for fragment in dataset.get_fragments())
    except (pa.ArrowException, OSError) as err:
        raise ValidationError("log", f"cannot be read as Parquet parts ({type(err).__name__}: {str(err)[:200]})", str(source)) from None
    return SlateParts(str(source), tuple(files), filesystem, rows)


def read_parts(parts: SlateParts, files: Sequence[str] | None = None) -> dict[str, pa.ChunkedArray]:
    """The slate-table columns of the parts (or some of them) read as one dataset, rows in part
    order (other columns are not read)."""
    try:
        dataset = parts.dataset(files)
        wanted = [name for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in dataset.schema.names]
        table = dataset.to_table(columns=wanted)
    except (pa.ArrowException, OSError) as err:
        raise ValidationError("log", f"cannot be read as Parquet parts ({type(err).__name__}: {str(err)[:200]})", parts.source) from None
    return _columns(table)


def _columns(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    """A table's columns by name; the table itself is not kept (dropping a column frees it)."""
    return {name: table.column(name) for name in table.column_names}


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


def _codes(values, *, pieces: bool = False) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """Integer codes 0..m-1 and the m distinct values (first-appearance order, or the order of an
    Arrow dictionary's used entries). With `pieces`, the codes of an Arrow dictionary column come
    as one array per chunk (no concatenated copy)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if isinstance(values, pa.ChunkedArray) and pa.types.is_dictionary(values.type):
            values = values.unify_dictionaries()  # one dictionary for all chunks, indices per chunk
            chunks = values.chunks
        elif isinstance(values, pa.ChunkedArray):
            values = pc.dictionary_encode(values.combine_chunks())
            chunks = [values]
        else:
            values = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
            chunks = [values]
        if values.null_count:
            raise ValidationError("event_id/action", "must not be missing", values.null_count)
        dictionary = chunks[0].dictionary if chunks else pa.array([])
        indices = [chunk.indices.to_numpy(zero_copy_only=False) for chunk in chunks]
        used = np.zeros(len(dictionary), dtype=bool)
        for piece in indices:
            used |= np.bincount(piece, minlength=len(dictionary)) > 0
        uniques = dictionary.to_numpy(zero_copy_only=False)
        if not used.all():
            compact = np.cumsum(used) - 1
            indices = [compact[piece] for piece in indices]
            uniques = uniques[used]
        if not pieces:
            indices = (indices[0] if len(indices) == 1 else np.concatenate(indices)).astype(np.int64)
        return indices, uniques
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


def _pieces(values) -> list[np.ndarray]:
    """A column as numpy pieces in row order: an Arrow column's chunks (zero-copy where Arrow allows),
    a list of pieces as given, or the array itself."""
    if isinstance(values, pa.ChunkedArray):
        return [chunk.to_numpy(zero_copy_only=False) for chunk in values.chunks]
    if isinstance(values, pa.Array):
        return [values.to_numpy(zero_copy_only=False)]
    if isinstance(values, list):
        return values
    return [np.asarray(values)]


# events per block of a copy or check: a block of each piece stays in cache while it is transposed
_BLOCK_EVENTS = 8192


def _event_blocks(pieces: list[np.ndarray], n_slots: int, size: int = _BLOCK_EVENTS) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first event, first slot, block) covering every row of a column whose rows come event by
    event with slots 0..K-1 in order: a block is an (m, w) row-major view of m events' slots
    first..first+w-1 (w = K but where a piece starts or ends inside an event), at most `size`
    events long."""
    start = 0
    for piece in pieces:
        offset = 0
        head = (-start) % n_slots  # rows that finish an event begun in the previous piece
        if head and len(piece):
            stray = piece[: min(head, len(piece))]
            yield start // n_slots, start % n_slots, stray.reshape(1, -1)
            offset = len(stray)
        whole = (len(piece) - offset) // n_slots
        body = piece[offset : offset + whole * n_slots].reshape(whole, n_slots)
        first_event = (start + offset) // n_slots
        for b in range(0, whole, size):
            yield first_event + b, 0, body[b : b + size]
        tail = piece[offset + whole * n_slots :]
        if len(tail):
            yield first_event + whole, 0, tail.reshape(1, -1)
        start += len(piece)


def _slot_major(name: str, values, n_events: int, n_slots: int, dtype=np.float64,
                bounds: dict | None = None) -> np.ndarray:
    """(n, K) column-major array of a column whose rows come event by event, slots 0..K-1 in order,
    transposed block by block (a block read once from memory, written slot column by slot column).
    With `bounds`, also records bounds[name] = (min, max) (NaN if any value is), taken from each
    block while it is in cache rather than in two more passes."""
    out = np.empty((n_events, n_slots), dtype=dtype, order="F")
    pieces = _pieces(values)
    lows, highs = [], []
    try:
        for event, slot, block in _event_blocks(pieces, n_slots):
            target = out[event : event + len(block), slot : slot + block.shape[1]]
            target[...] = block
            if bounds is not None:
                lows.append(target.min())
                highs.append(target.max())
    except (TypeError, ValueError):
        raise ValidationError(name, "must be numbers", str(pieces[0][:3].tolist())) from None
    if bounds is not None and lows:
        bounds[name] = (np.min(lows), np.max(highs))
    return out


def _integer_pieces(values) -> list[np.ndarray] | None:
    """An integer column without missing values as numpy pieces, else None."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return _pieces(values) if pa.types.is_integer(values.type) and not values.null_count else None
    array = np.asarray(values)
    return [array] if array.dtype.kind in "iu" else None


def _grouped_layout(columns: Mapping[str, object]) -> tuple[np.ndarray, int] | None:
    """(event ids, K) when the table's rows come event by event with slots 0..K-1 in order and
    integer event ids that increase from event to event (as `simulate-log` writes them): the
    layout is then known without factorising ids or sorting rows, checked block by block with no
    copy of the columns. Else None (the general path sorts it out, or says what is wrong)."""
    ids, slot = _integer_pieces(columns["event_id"]), _integer_pieces(columns["slot"])
    if ids is None or slot is None:
        return None
    n_rows = sum(len(piece) for piece in slot)
    if not n_rows:
        return None
    n_slots = max(int(piece.max()) for piece in slot if len(piece)) + 1
    if n_slots < 1 or n_rows % n_slots:
        return None
    slots = np.arange(n_slots)
    whole_pieces = max(n_rows, 1)  # checks read each piece whole: no cache to keep, fewer calls
    if any((block != slots[first : first + block.shape[1]]).any() for _, first, block in _event_blocks(slot, n_slots, whole_pieces)):
        return None
    event_ids = np.empty(n_rows // n_slots, dtype=np.int64)
    blocks = list(_event_blocks(ids, n_slots, whole_pieces))
    for event, first, block in blocks:
        if first == 0:
            event_ids[event : event + len(block)] = block[:, 0]
    for event, _, block in blocks:
        if (block != event_ids[event : event + len(block), None]).any():
            return None
    if not (event_ids[1:] > event_ids[:-1]).all():
        return None
    return event_ids, n_slots


class _Bounds:
    """Each converted column's (min, max), from the conversion where it gave them, else computed
    once (NaN if any value is NaN: min and max propagate it)."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[float, float]] = {}

    def __call__(self, name: str, values: np.ndarray) -> tuple[float, float]:
        if name not in self.known:
            self.known[name] = (values.min(), values.max())
        return self.known[name]

    def probabilities(self, name: str, values: np.ndarray | None, *, allow_zero: bool, label: str | None = None) -> None:
        """check_probabilities (its error naming `label`, default the column), decided by the
        bounds when they are in range."""
        if values is None:
            return
        low, high = self(name, values)
        if not ((low >= 0.0 if allow_zero else low > 0.0) and high <= 1.0 + 1e-9):
            check_probabilities(label or name, values, allow_zero=allow_zero)

    def finite(self, name: str, values: np.ndarray) -> None:
        low, high = self(name, values)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValidationError(name, "rewards must be finite numbers")


def table_log(columns: Mapping[str, object], *, release: bool = False) -> LoadedLog:
    """The slate table of DESIGN.md (one row per (event, slot)) -> dense log and target.

    Rows may come in any order; every event must fill slots 0..K-1 once each, with the same K
    for every event. Optional columns that are absent or have a missing value are unknown.
    With `release`, the caller gives `columns` (a dict) up: each column is dropped from it once
    converted, so the table and the dense log are not held in full at once.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ValidationError("columns", f"the slate table needs {', '.join(REQUIRED_COLUMNS)}", missing)
    grouped = _grouped_layout(columns)
    bounds = _Bounds()
    if grouped is not None:
        event_ids, n_slots = grouped
        n_events = len(event_ids)

        def dense(name: str, values, dtype=np.float64) -> np.ndarray:
            return _slot_major(name, values, n_events, n_slots, dtype, bounds.known if dtype == np.float64 else None)
    else:
        event_ids, n_slots, order = _arrange(columns)
        n_events = len(event_ids)

        def dense(name: str, values, dtype=np.float64) -> np.ndarray:
            values = _numbers(name, values) if dtype == np.float64 else values
            return np.asfortranarray((values if order is None else values[order]).reshape(n_events, n_slots))

    def column(name: str):
        return columns.pop(name) if release else columns[name]

    def give_back() -> None:
        """Return the memory of the Arrow columns released so far to the system (Arrow's allocator
        keeps freed pages), so the table and the dense log are not both held in full."""
        if release:
            pa.default_memory_pool().release_unused()

    def take(name: str) -> np.ndarray:
        values = dense(name, column(name))
        give_back()
        return values

    def optional(name: str) -> np.ndarray | None:
        """An optional column; any missing value makes it unknown (None)."""
        if name not in columns:
            return None
        values = take(name)
        return None if np.isnan(bounds(name, values)[0]) else values

    if release:
        columns.pop("event_id")
        columns.pop("slot")
    action_codes, action_ids = _codes(column("action"), pieces=grouped is not None)
    action = dense("action", action_codes, np.int64)
    del action_codes
    give_back()
    reward = take("reward")
    logging_prob = take("logging_prob")
    logging_marginal = optional("logging_marginal")
    target_prob, target_marginal = optional("target_prob"), optional("target_marginal")
    _check_target_support("target_prob", target_prob, "logging_prob", logging_prob, bounds)
    _check_target_support("target_marginal", target_marginal, "logging_marginal", logging_marginal, bounds)
    if np.isnan(bounds("logging_prob", logging_prob)[0]) and np.isnan(logging_prob).all():
        logging_prob = None
    # SlateLog's and TargetProbs' checks, in their order, from the bounds: every slot of every
    # event is observed, and the arrays are (n, K) column-major by construction
    bounds.finite("reward", reward)
    bounds.probabilities("logging_prob", logging_prob, allow_zero=False)
    bounds.probabilities("logging_marginal", logging_marginal, allow_zero=False)
    bounds.probabilities("target_prob", target_prob, allow_zero=True, label="target.prob")
    bounds.probabilities("target_marginal", target_marginal, allow_zero=True, label="target.marginal")
    log = unchecked(
        SlateLog,
        event_ids=event_ids,
        action=action,
        action_ids=action_ids,
        reward=reward,
        logging_prob=logging_prob,
        logging_marginal=logging_marginal,
        observed=np.ones((n_events, n_slots), dtype=bool, order="F"),
        context=np.empty((n_events, 0), dtype=np.int64),
    )
    has_target = target_prob is not None or target_marginal is not None
    target = unchecked(TargetProbs, prob=target_prob, marginal=target_marginal) if has_target else None
    return LoadedLog(log=log, target=target)


def _arrange(columns: Mapping[str, object]) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Event ids (in the order of their first row), K, and the row order that puts the table event
    by event with slots 0..K-1 (None when it already is); refuses events that do not fill 0..K-1."""
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
    return event_ids, n_slots, order


def _check_target_support(target_name: str, target: np.ndarray | None, logging_name: str, logging: np.ndarray | None,
                          bounds: _Bounds | None = None) -> None:
    """A logged row with zero logging probability that the target would show is an impossible log."""
    if target is None or logging is None:
        return
    bounds = bounds or _Bounds()
    bounds.probabilities(target_name, target, allow_zero=True)
    if bounds(logging_name, logging)[0] > 0.0:  # no zero logging probability anywhere (NaN compares False)
        return
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
