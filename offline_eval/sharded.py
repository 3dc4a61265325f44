"""Evaluation of a slate-table log held as Parquet parts, shard by shard on Ray tasks.

A shard is one part (or a run of consecutive small parts). Each Ray task reads its shard, checks
it as `table_log` checks a whole table, runs every estimator over it in chunks and returns only
sufficient statistics (evaluate.EstimatorSums: column sums, the bootstrap's block sums, weight
sums), a few hundred kilobytes whatever the shard's size. The driver merges them in part order,
checks what needs the whole log (the same number of slots everywhere, no event in two parts,
which estimators every part supports, the logger's structure) and finishes the intervals exactly
as the single-process path does: the same estimates (up to the order of floating-point sums) and,
for a seed, the same intervals, because an event's bootstrap block is keyed by the event id and
not by its position (see intervals.Resampling). Normal and bernstein intervals take a second
round of tasks, at the merged values.

Every event's rows must lie in one part (a writer that flushes whole events keeps them so); an
event split across parts is refused, as is an event id found in two parts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from bandit.errors import ValidationError
from offline_eval.estimators import NEEDS, EstimatorInputs, LoggerStructure, PseudoInverse, logging_structure
from offline_eval.evaluate import (
    EstimatorOptions,
    EstimatorSums,
    Evaluation,
    estimator_influence,
    estimator_sums,
    make_estimator,
    parse_names,
    resolve_names,
    summarise,
    supported_by,
)
from offline_eval.intervals import MAX_BLOCKS, InfluenceSums, Resampling, check_level, event_blocks, interval_of
from offline_eval.readers import SlateParts, read_parts, slate_parts, table_log
from offline_eval.slate import TargetProbs

# consecutive parts smaller than this many rows share a shard (a task per tiny file costs more than it does)
SHARD_ROWS = 1_000_000
TABLE_NEEDS = ("complete", "conditional", "marginal")


def shards(parts: SlateParts, min_rows: int | None = None) -> list[tuple[str, ...]]:
    """Consecutive runs of parts, each of at least `min_rows` rows (the last may be short) or one
    part; by default min(SHARD_ROWS, an eighth of the log), so a small log still spreads."""
    if min_rows is None:
        min_rows = min(SHARD_ROWS, max(1, sum(parts.rows) // 8))
    out: list[tuple[str, ...]] = []
    current: list[str] = []
    rows = 0
    for path, count in zip(parts.files, parts.rows):
        current.append(path)
        rows += count
        if rows >= min_rows:
            out.append(tuple(current))
            current, rows = [], 0
    if current:
        out.append(tuple(current))
    return out


@dataclass(frozen=True, slots=True)
class ShardSums:
    """What one shard leaves for the driver."""

    n_events: int
    n_slots: int
    has: dict[str, bool]  # which estimator needs the shard meets (see estimators.NEEDS)
    logging_prob_known: bool
    logger: LoggerStructure | None  # the logger's structure, when the shard runs the pseudoinverse
    sums: dict[str, EstimatorSums]  # every candidate estimator the shard supports
    id_range: tuple[int, int] | None  # (min, max) of integer event ids; None for other ids


def _shard_inputs(parts: SlateParts, files: Sequence[str]) -> EstimatorInputs:
    loaded = table_log(read_parts(parts, files), release=True)
    if loaded.target is None:
        raise ValidationError("--log", f"part {files[0]} has no target_prob/target_marginal columns")
    return EstimatorInputs(loaded.log, loaded.target)


def _single_threaded_arrow() -> None:
    """One Arrow thread per task: a worker is one CPU of the cluster's, the tasks are the parallelism."""
    import pyarrow as pa

    pa.set_cpu_count(1)


def shard_sums(
    parts: SlateParts, files: Sequence[str], names: Sequence[str], options: EstimatorOptions,
    key: int | None, max_blocks: int = MAX_BLOCKS, keep_ids: bool = False,
) -> tuple[ShardSums, np.ndarray | None]:
    """A shard's sufficient statistics for the named estimators it supports (block sums keyed by
    `key` for the bootstrap; None: no bootstrap), and its event ids for the duplicate check
    (None for integer ids, whose range is in the sums, unless `keep_ids`)."""
    inputs = _shard_inputs(parts, files)
    log = inputs.log
    chosen = [make_estimator(name, options) for name in names]
    kept = [(name, e) for name, e in zip(names, chosen) if all(inputs.has(need) for need in e.needs)]
    needs_logger = any(isinstance(e, PseudoInverse) for _, e in kept)
    logger = logging_structure(log) if needs_logger else None
    inputs = EstimatorInputs(log, inputs.target, logger=logger)
    block_of = None if key is None else event_blocks(log.event_ids, key, max_blocks)
    sums = estimator_sums(inputs, [e for _, e in kept], block_of=block_of, keep_rows=key is not None,
                          max_blocks=max_blocks) if kept else []
    ids = log.event_ids
    id_range = (int(ids.min()), int(ids.max())) if ids.dtype.kind in "iu" else None
    if id_range is not None and not keep_ids:
        ids = None  # integer ids: their ranges show no overlap, or the driver asks again (shard_ids)
    result = ShardSums(
        n_events=log.n_events,
        n_slots=log.n_slots,
        has={need: inputs.has(need) for need in TABLE_NEEDS},
        logging_prob_known=log.logging_prob is not None,
        logger=logger,
        sums={name: s for (name, _), s in zip(kept, sums)},
        id_range=id_range,
    )
    return result, ids


def shard_influence(
    parts: SlateParts, files: Sequence[str], names: Sequence[str], options: EstimatorOptions,
    centres: Sequence[tuple[np.ndarray, np.ndarray]], logger: LoggerStructure | None,
) -> list[InfluenceSums]:
    """A shard's InfluenceSums of the named estimators at the whole log's centres."""
    inputs = _shard_inputs(parts, files)
    inputs = EstimatorInputs(inputs.log, inputs.target, logger=logger)
    return estimator_influence(inputs, [make_estimator(name, options) for name in names], centres)


def shard_ids(parts: SlateParts, files: Sequence[str]) -> np.ndarray:
    """A shard's event ids (for the duplicate check when integer id ranges overlap)."""
    return _shard_inputs(parts, files).log.event_ids


# -- running shards: Ray tasks, or in this process ------------------------------------------------

class LocalRunner:
    """Shards one after another in this process (the reference the Ray path is tested against)."""

    def sums(self, calls: Sequence[tuple]) -> list[tuple[ShardSums, np.ndarray | None]]:
        return [shard_sums(*args) for args in calls]

    def ids(self, calls: Sequence[tuple]) -> list[np.ndarray]:
        return [shard_ids(*args) for args in calls]

    def influence(self, calls: Sequence[tuple]) -> list[list[InfluenceSums]]:
        return [shard_influence(*args) for args in calls]


@dataclass(frozen=True, slots=True)
class _Refused:
    """A shard's ValidationError as a value (Ray cannot rebuild the exception on the driver)."""

    field: str
    rule: str
    found: object

    def raise_(self):
        raise ValidationError(self.field, self.rule, self.found)


def _shard_task(work, *args):
    """`work(*args)` for one shard on a Ray worker: Arrow single-threaded, a refusal returned as a value."""
    _single_threaded_arrow()
    try:
        return work(*args)
    except ValidationError as err:
        return _Refused(err.field, err.rule, err.found)


_REMOTE: dict[str, object] = {}


def _remote(fn):
    """The Ray remote function of a task (made once per process: Ray exports it on creation)."""
    import ray

    if fn.__name__ not in _REMOTE:
        _REMOTE[fn.__name__] = ray.remote(num_cpus=1)(fn)
    return _REMOTE[fn.__name__]


def _raise_refusals(results: Sequence) -> list:
    for result in results:
        if isinstance(result, _Refused):
            result.raise_()
    return list(results)


class RayRunner:
    """One Ray task per shard, one CPU each (call inside `ray_session`)."""

    def _run(self, work, calls: Sequence[tuple]) -> list:
        import ray

        remote = _remote(_shard_task)
        return _raise_refusals(ray.get([remote.remote(work, *args) for args in calls]))

    def sums(self, calls: Sequence[tuple]) -> list[tuple[ShardSums, np.ndarray | None]]:
        return self._run(shard_sums, calls)

    def ids(self, calls: Sequence[tuple]) -> list[np.ndarray]:
        return self._run(shard_ids, calls)

    def influence(self, calls: Sequence[tuple]) -> list[list[InfluenceSums]]:
        return self._run(shard_influence, calls)


@contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[None]:
    """Ray for the evaluation: the one already running in this process, a cluster at `address`, or
    a local Ray with `workers` CPUs (all the machine's when None), shut down afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address is not None:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


# -- the driver -------------------------------------------------------------------------------------

class _Needs:
    """The needs every shard meets, in the form Estimator.check asks for."""

    def __init__(self, has: dict[str, bool]) -> None:
        self._has = has

    def has(self, need: str) -> bool:
        return self._has.get(need, False)


def _merge_checks(results: Sequence[ShardSums], id_arrays: Callable[[], list[np.ndarray]]) -> None:
    """What only the whole log shows: one number of slots, logging_prob known in every part or none,
    no event id in two parts."""
    slots = {r.n_slots for r in results}
    if len(slots) > 1:
        raise ValidationError("slot", f"every event must fill the same slots 0..K-1 (the parts have K = {sorted(slots)})")
    known = {r.logging_prob_known for r in results}
    if len(known) > 1:
        raise ValidationError("logging_prob", "probabilities must lie in (0, 1] (missing in some parts only)")
    ranges = [r.id_range for r in results]
    if all(r is not None for r in ranges):
        ordered = sorted(ranges)
        if all(a[1] < b[0] for a, b in itertools.pairwise(ordered)):
            return
    ids = id_arrays()
    if any(a.dtype.kind == "O" for a in ids):
        ids = [a.astype(object) for a in ids]
    values, counts = np.unique(np.concatenate(ids), return_counts=True)
    if (counts > 1).any():
        raise ValidationError("event_id", "an event's rows must lie in one part; found in more than one",
                              values[counts > 1][:3].tolist())


def evaluate_parts(
    source: str | SlateParts,
    estimators: str | Sequence[str] | None = None,
    *,
    rng: np.random.Generator,
    ci: str = "bootstrap",
    level: float = 0.95,
    n_resamples: int = 1000,
    options: EstimatorOptions | None = None,
    runner: LocalRunner | RayRunner | None = None,
    shard_rows: int | None = None,
    max_blocks: int = MAX_BLOCKS,
) -> Evaluation:
    """Evaluate the target columns of a slate-table log held as Parquet parts, shard by shard on
    `runner` (Ray tasks by default; call inside `ray_session`). The same result as
    `evaluate(read_log(source).log, ...)` with the same rng (see the module docstring)."""
    options = options or EstimatorOptions()
    runner = runner or RayRunner()
    check_level(level)
    requested = None if estimators is None else parse_names(estimators)
    for name in requested or ():  # unknown names, and needs no slate table meets, fail before any task runs
        for need in make_estimator(name, options).needs:
            if need not in TABLE_NEEDS:
                raise ValidationError("estimators", f"'{make_estimator(name, options).name}' needs {NEEDS[need]}")
    if ci not in ("bootstrap", "normal", "bernstein"):
        raise ValidationError("ci", "must be one of bootstrap, normal, bernstein", ci)
    parts = source if isinstance(source, SlateParts) else slate_parts(source)
    groups = shards(parts, shard_rows)
    resampling = Resampling(rng, n_resamples, max_blocks)
    key = resampling.key if ci == "bootstrap" else None
    candidates = requested if requested is not None else tuple(supported_by(lambda need: need in TABLE_NEEDS, options))
    outputs = runner.sums([(parts, files, candidates, options, key, max_blocks) for files in groups])
    results = [result for result, _ in outputs]

    def id_arrays() -> list[np.ndarray]:
        missing = [files for files, (_, ids) in zip(groups, outputs) if ids is None]
        fetched = iter(runner.ids([(parts, files) for files in missing]) if missing else [])
        return [next(fetched) if ids is None else ids for _, ids in outputs]

    _merge_checks(results, id_arrays)
    has = {need: all(r.has[need] for r in results) for need in TABLE_NEEDS}
    needs = _Needs(has)
    names = resolve_names(requested, () if requested is not None else supported_by(needs.has, options))
    chosen = [make_estimator(name, options) for name in names]
    for estimator in chosen:
        estimator.check(needs)
    merged = {}
    for name in names:
        total = results[0].sums[name]
        for result in results[1:]:
            total = total + result.sums[name]
        merged[name] = total
    loggers = [r.logger for r in results if r.logger is not None]
    logger = None
    if loggers and len(loggers) == len(results):
        logger = loggers[0]
        for other in loggers[1:]:
            logger = logger.merged(other)
    influence: dict[str, InfluenceSums | None] = dict.fromkeys(names)
    if ci != "bootstrap":
        centres = [merged[name].events.centre() for name in names]
        rounds = runner.influence([(parts, files, names, options, centres, logger) for files in groups])
        for i, name in enumerate(names):
            total = rounds[0][i]
            for other in rounds[1:]:
                total = total + other[i]
            influence[name] = total
    n_events = sum(r.n_events for r in results)
    estimates = {}
    for name, estimator in zip(names, chosen):
        sums = merged[name]
        notes = PseudoInverse.notes(logger, False) if isinstance(estimator, PseudoInverse) else sums.notes
        interval = interval_of(sums.events, ci, level, resampling=resampling, influence=influence[name])
        estimates[name] = summarise(name, estimator, notes, sums.weights, interval, None)
    return Evaluation(TargetProbs().name, n_events, results[0].n_slots, ci, level, estimates)

