"""`shelfbandit evaluate` on a slate log held as Parquet parts: one process against Ray workers.

Writes --rows (default 50M) slate rows (--slots per event) as --parts Parquet parts into a
temporary directory (deleted afterwards), then times, each --rounds times:
- the single-process path, as `shelfbandit evaluate --log DIR --json` runs it: the parts read as
  one pyarrow dataset, checked, and sips, iips, rips, snips_rips, pi with bootstrap intervals;
  each round in a fresh child process, whose peak resident memory is reported against the
  data's size (Parquet on disk, and the Arrow table in memory);
- the Ray path, as `--workers N` runs it (default 2): one task per part on a local Ray with N
  CPUs, sufficient statistics merged on the driver; Ray's start and the workers' first imports
  are timed apart (the first, cold run), the figure is the median of warm runs.
Both must give the same estimates and intervals (checked). Last line JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ESTIMATORS = "sips,iips,rips,snips_rips,pi"


def write_parts(directory: Path, n_rows: int, n_parts: int, n_slots: int, n_shelves: int, seed: int) -> int:
    """n_rows rows of whole events in n_parts parts: integer event ids in order, dictionary-encoded
    shelves, random but valid probabilities (the values do not matter for speed). Returns bytes written."""
    rng = np.random.default_rng(seed)
    n_events = n_rows // n_slots
    edges = np.linspace(0, n_events, n_parts + 1).astype(np.int64)
    shelves = pa.array([f"shelf-{i}" for i in range(n_shelves)])
    for i, (first, stop) in enumerate(itertools.pairwise(edges)):
        n = int(stop - first)
        rows = n * n_slots
        order = np.argsort(rng.random((n, n_shelves)), axis=1)[:, :n_slots].astype(np.int32)
        table = pa.table({
            "event_id": np.repeat(np.arange(first, stop, dtype=np.int64), n_slots),
            "slot": np.tile(np.arange(n_slots, dtype=np.int64), n),
            "action": pa.DictionaryArray.from_arrays(order.ravel(), shelves),
            "reward": (rng.random(rows) < 0.2).astype(np.float64),
            "logging_prob": rng.uniform(0.2, 1.0, rows),
            "logging_marginal": rng.uniform(0.2, 1.0, rows),
            "target_prob": rng.uniform(0.0, 1.0, rows),
            "target_marginal": rng.uniform(0.0, 1.0, rows),
        })
        pq.write_table(table, directory / f"part-{i:05d}.parquet")
    return sum(p.stat().st_size for p in directory.glob("*.parquet"))


def arrow_bytes(directory: Path) -> int:
    """The parts' size as Arrow tables in memory (one part read at a time)."""
    return sum(pq.read_table(path).nbytes for path in sorted(directory.glob("*.parquet")))


def single_process_child(directory: str, resamples: int, seed: int) -> None:
    """One single-process evaluation, timed (imports excluded); prints JSON."""
    from offline_eval.evaluate import evaluate
    from offline_eval.readers import read_log

    started = time.perf_counter()
    loaded = read_log(directory)
    read = time.perf_counter() - started
    evaluation = evaluate(loaded.log, loaded.target, ESTIMATORS, rng=np.random.default_rng(seed), n_resamples=resamples)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "read_and_check_seconds": read, "result": evaluation.to_dict()}))


def single_process(directory: Path, resamples: int, seed: int) -> tuple[dict, int]:
    """Run the single-process evaluation in a fresh child: its output, and the peak RSS in bytes of the
    largest child that has ended so far (ru_maxrss of RUSAGE_CHILDREN; the only children that end
    here are these evaluations, all alike)."""
    done = subprocess.run([sys.executable, __file__, "--child", str(directory), "--resamples", str(resamples),
                           "--seed", str(seed)], capture_output=True, text=True, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return json.loads(done.stdout.strip().splitlines()[-1]), peak


def largest_difference(a: dict, b: dict) -> float:
    """The largest relative difference between two evaluations' numbers."""
    worst = 0.0
    for name, x in a["estimates"].items():
        y = b["estimates"][name]
        for key in ("value", "lower", "upper", "ess", "max_weight", "mean_weight"):
            if x[key] is not None:
                worst = max(worst, abs(x[key] - y[key]) / max(abs(x[key]), 1e-300))
        for key in ("per_slot", "per_slot_lower", "per_slot_upper"):
            worst = max(worst, *(abs(p - q) / max(abs(p), 1e-300) for p, q in zip(x[key], y[key])))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000, help="(event, slot) rows")
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--shelves", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        single_process_child(args.child, args.resamples, args.seed)
        return

    with tempfile.TemporaryDirectory(prefix="evaluate-ray-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        parquet_bytes = write_parts(directory, args.rows, args.parts, args.slots, args.shelves, args.seed)
        print(f"wrote {args.rows:,} rows in {args.parts} parts ({parquet_bytes / 1e6:,.0f} MB Parquet) "
              f"in {time.perf_counter() - started:.0f} s")
        in_memory = arrow_bytes(directory)

        import ray

        from offline_eval.sharded import evaluate_parts

        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray_start = time.perf_counter() - started
        try:
            def on_ray() -> tuple[dict, float]:
                begun = time.perf_counter()
                evaluation = evaluate_parts(str(directory), ESTIMATORS, rng=np.random.default_rng(args.seed),
                                            n_resamples=args.resamples)
                return evaluation.to_dict(), time.perf_counter() - begun

            _, cold = on_ray()
            singles, rays, peaks, reads = [], [], [], []
            for _ in range(args.rounds):  # alternate: the machine is shared and noisy
                output, peak = single_process(directory, args.resamples, args.seed)
                singles.append(output["seconds"])
                reads.append(output["read_and_check_seconds"])
                peaks.append(peak)
                ray_result, seconds = on_ray()
                rays.append(seconds)
        finally:
            ray.shutdown()
    difference = largest_difference(output["result"], ray_result)
    single, distributed = statistics.median(singles), statistics.median(rays)
    ratio = statistics.median(s / r for s, r in zip(singles, rays))
    peak = max(peaks)
    print(f"single process: {single:.2f} s ({statistics.median(reads):.2f} s of it reading and checking), "
          f"peak memory {peak / 1e9:.2f} GB = {peak / in_memory:.2f}x the Arrow table ({in_memory / 1e9:.2f} GB), "
          f"{peak / parquet_bytes:.1f}x the Parquet ({parquet_bytes / 1e9:.2f} GB)")
    print(f"Ray, {args.workers} workers: {distributed:.2f} s (cold run {cold:.2f} s, Ray start {ray_start:.1f} s); "
          f"speed-up {ratio:.2f}x; largest relative difference from the single process {difference:.1e}")
    print(json.dumps({
        "name": "offline_eval_evaluate_ray",
        "value": round(ratio, 3),
        "unit": f"speed-up of {args.workers} Ray workers over one process",
        "rows": args.rows,
        "parts": args.parts,
        "single_process_seconds": round(single, 3),
        "ray_seconds": round(distributed, 3),
        "ray_cold_seconds": round(cold, 3),
        "ray_start_seconds": round(ray_start, 3),
        "workers": args.workers,
        "single_process_peak_bytes": peak,
        "arrow_bytes": in_memory,
        "parquet_bytes": parquet_bytes,
        "peak_over_arrow": round(peak / in_memory, 3),
        "largest_relative_difference": difference,
    }))


if __name__ == "__main__":
    main()
