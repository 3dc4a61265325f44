"""Rows per second of each offline estimator next to a plain numpy pass over the same arrays,
and the end-to-end time to evaluate a slate-table Parquet log next to only reading it.

Rows are (event, slot) pairs: --rows of them (default 10M) in events of --slots slots, with
--candidates shelves per event for the model-based estimators. An estimator's time is what
`evaluate` spends on it without intervals: its formula, per-slot values and diagnostics
(weights, ESS), in one pass over the log in chunks of events (evaluate.estimator_sums). The
model-based ones are timed with their cross-fitted predictions given (at the logged shelf, and
expected under the target), and the cross-fitting is timed on its own line. The plain pass
reads the same arrays once: per slot, sum(target / logging * reward), or for the model-based
ones sum(target / logging * (reward - logged prediction) + expected prediction). End to end:
read the Parquet slate table, check it, and run sips, iips, rips, snips_rips, pi with bootstrap
intervals, as `shelfbandit evaluate --json` does. Medians of --rounds repeats; last line JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline_eval.estimators import ESTIMATOR_CLASSES, EstimatorInputs, ModelPredictions
from offline_eval.evaluate import EstimatorOptions, estimator_sums, evaluate, make_estimator
from offline_eval.readers import read_log
from offline_eval.reward_model import RewardModel, cross_fitted
from offline_eval.slate import SlateLog, TargetProbs

END_TO_END_ESTIMATORS = "sips,iips,rips,snips_rips,pi"


def synthetic(n_rows: int, n_slots: int, n_candidates: int, rng: np.random.Generator) -> EstimatorInputs:
    """A log with random but valid probabilities (the values do not matter for speed)."""
    n = n_rows // n_slots
    shape = (n, n_slots)
    position = np.argsort(rng.random((n, n_candidates)), axis=1)[:, :n_slots]
    distribution = rng.random((n, n_slots, n_candidates))
    distribution /= distribution.sum(axis=2, keepdims=True)
    log = SlateLog(
        event_ids=np.arange(n),
        action=position,
        action_ids=np.array([f"shelf-{i}" for i in range(n_candidates)], dtype=object),
        reward=(rng.random(shape) < 0.2).astype(np.float64),
        logging_prob=rng.uniform(0.2, 1.0, shape),
        logging_marginal=rng.uniform(0.2, 1.0, shape),
        observed=np.ones(shape, dtype=bool),
        context=rng.integers(0, 8, (n, 1)),
        candidates=np.broadcast_to(np.arange(n_candidates), (n, n_candidates)),
        action_position=position,
    )
    target = TargetProbs(
        prob=rng.uniform(0.0, 1.0, shape),
        marginal=rng.uniform(0.0, 1.0, shape),
        conditional_distribution=distribution,
        marginal_distribution=distribution,
    )
    return EstimatorInputs(log, target)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn, rounds: int) -> float:
    return statistics.median(seconds(fn) for _ in range(rounds))


def paired_seconds(fn, baseline, rounds: int) -> tuple[float, float, float]:
    """Medians of fn's and baseline's times, run alternately (the machine is shared and noisy),
    and the median over rounds of baseline time / fn time."""
    pairs = [(seconds(fn), seconds(baseline)) for _ in range(rounds)]
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs), statistics.median(b / a for a, b in pairs)


def plain_pass(target: np.ndarray, logging: np.ndarray, reward: np.ndarray, model: ModelPredictions | None) -> np.ndarray:
    """One numpy pass over the arrays an estimator reads: per slot, the sum of target / logging * reward,
    or of target / logging * (reward - logged prediction) + expected prediction for a model-based one."""
    if model is None:
        return (target / logging * reward).sum(axis=0)
    return (target / logging * (reward - model.logged) + model.expected).sum(axis=0)


def write_table(inputs: EstimatorInputs, path: Path) -> None:
    """The slate table of DESIGN.md as Parquet (integer event ids, dictionary-encoded shelf ids)."""
    log, target = inputs.log, inputs.target
    n, k = log.reward.shape
    table = pa.table({
        "event_id": np.repeat(np.arange(n), k),
        "slot": np.tile(np.arange(k), n),
        "action": pa.DictionaryArray.from_arrays(log.action.ravel().astype(np.int32), log.action_ids.tolist()),
        "reward": log.reward.ravel(),
        "logging_prob": log.logging_prob.ravel(),
        "logging_marginal": log.logging_marginal.ravel(),
        "target_prob": target.prob.ravel(),
        "target_marginal": target.marginal.ravel(),
    })
    pq.write_table(table, path)


def time_estimators(inputs: EstimatorInputs, options: EstimatorOptions, rounds: int) -> dict[str, dict]:
    """Each estimator's rows per second (values and diagnostics, no intervals) beside the plain pass."""
    n_rows = inputs.log.reward.size
    results = {}
    for name in ESTIMATOR_CLASSES:
        estimator = make_estimator(name, options)
        model = inputs.rewards if estimator.uses_rewards else inputs.q_values if estimator.uses_q_values else None
        probs = (inputs.target.marginal, inputs.log.logging_marginal) if "marginal" in estimator.needs else \
            (inputs.target.prob, inputs.log.logging_prob)
        run = partial(estimator_sums, inputs, [estimator])
        took, baseline, ratio = paired_seconds(run, partial(plain_pass, *probs, inputs.log.reward, model), rounds)
        results[name] = {"rows_per_s": n_rows / took, "baseline_rows_per_s": n_rows / baseline, "ratio": ratio}
        print(f"  {name:<12} {n_rows / took / 1e6:8.1f} M rows/s   plain pass {n_rows / baseline / 1e6:8.1f} M rows/s"
              f"   ratio {ratio:5.2f}")
    return results


def time_end_to_end(path: Path, rounds: int, resamples: int) -> tuple[float, float, float, float]:
    """Median seconds to read, check and evaluate the Parquet log and to only read it (pyarrow's
    defaults), the median ratio of the two, and the median seconds of a mapped read
    (memory_map=True, as read_log reads a file)."""

    def end_to_end() -> None:
        loaded = read_log(path)
        evaluate(loaded.log, loaded.target, END_TO_END_ESTIMATORS, rng=np.random.default_rng(0), n_resamples=resamples)

    total, read, ratio = paired_seconds(end_to_end, lambda: pq.read_table(path), rounds)
    mapped = median_seconds(lambda: pq.read_table(path, memory_map=True), rounds)
    return total, read, 1.0 / ratio, mapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="(event, slot) rows")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples end to end")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    inputs = synthetic(args.rows, args.slots, args.candidates, rng)
    n_rows = inputs.log.reward.size
    options = EstimatorOptions(reward_model=RewardModel())
    target = inputs.target
    fit_rewards = partial(cross_fitted, inputs.log, options.reward_model, rng, target.marginal_distribution)
    fit_q = partial(cross_fitted, inputs.log, options.reward_model, rng, target.conditional_distribution, cascade=True)
    fit_seconds = {"rewards": median_seconds(fit_rewards, args.rounds), "q_values": median_seconds(fit_q, args.rounds)}
    inputs = EstimatorInputs(inputs.log, inputs.target, fit_rewards(), fit_q())

    print(f"{n_rows:,} rows = {inputs.log.n_events:,} events x {args.slots} slots, {args.candidates} candidates; "
          f"medians of {args.rounds} rounds")
    results = time_estimators(inputs, options, args.rounds)
    for which, took in fit_seconds.items():
        print(f"  cross-fitted reward model ({which}): {took:.2f} s = {n_rows / took / 1e6:.1f} M rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slate.parquet"
        write_table(inputs, path)
        size_mb = path.stat().st_size / 1e6
        del inputs
        total_seconds, read_seconds, over_read, mapped_seconds = time_end_to_end(path, args.rounds, args.resamples)
    print(f"end to end on a {size_mb:.0f} MB Parquet log ({END_TO_END_ESTIMATORS}, {args.resamples} bootstrap resamples): "
          f"{total_seconds:.2f} s; reading it only: {read_seconds:.2f} s; ratio {over_read:.1f}x "
          f"(a mapped read, as read_log's: {mapped_seconds:.2f} s)")

    worst = min(results, key=lambda name: results[name]["ratio"])
    print(json.dumps({
        "name": "offline_eval_estimators",
        "value": round(results[worst]["rows_per_s"]),
        "unit": "rows/s (slowest estimator)",
        "baseline": round(results[worst]["baseline_rows_per_s"]),
        "ratio": round(results[worst]["ratio"], 3),
        "slowest": worst,
        "rows": n_rows,
        "ratios": {name: round(r["ratio"], 3) for name, r in results.items()},
        "reward_model_seconds": {k: round(v, 3) for k, v in fit_seconds.items()},
        "end_to_end_seconds": round(total_seconds, 3),
        "read_only_seconds": round(read_seconds, 3),
        "mapped_read_seconds": round(mapped_seconds, 3),
        "end_to_end_over_read": round(over_read, 2),
    }))


if __name__ == "__main__":
    main()
