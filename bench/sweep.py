"""Sweep speed-up: the same grid on a local Ray with 2 workers against 1 worker (target >= 1.7x),
next to what two processes of plain CPU work gain on this machine at the same time.

Ray is started before the clock runs (about 5 s here, paid once per sweep whatever its size);
the clock covers building the shared inputs, every cell and writing the results. Fresh output
directories each time, so no cell is skipped. Medians of repeats, 1- and 2-worker runs
interleaved; the last line is one JSON object.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import ray

from simulator.policies import PolicySpec
from simulator.sweep import SweepGrid, WorldSpec, run_sweep

GRID = SweepGrid(
    policies=(PolicySpec.parse("vw:explorer=squarecb"), PolicySpec.parse("vw:explorer=epsilon")),
    worlds=(WorldSpec.parse("default"), WorldSpec.parse("click_model=cascade")),
    seeds=2,
    sessions=4000,
)
REPEATS = 3
SPIN = 20_000_000  # pure-Python work for the machine's own 2-process speed-up, measured beside


def spin(_: int) -> None:
    total = 0
    for i in range(SPIN):
        total += i


def machine_speedup() -> float:
    """What two processes of plain CPU work gain over one right now (other load on the host shows here)."""
    from multiprocessing import get_context

    with get_context("spawn").Pool(2) as pool:
        pool.map(spin, [0, 1])  # start both processes before the clock
        start = time.perf_counter()
        pool.map(spin, [0], chunksize=1)
        pool.map(spin, [1], chunksize=1)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        pool.map(spin, [0, 1], chunksize=1)
        return serial / (time.perf_counter() - start)


def timed_sweep(workers: int) -> float:
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            run_sweep(GRID, out, workers=workers, progress=False)
            return time.perf_counter() - start
    finally:
        ray.shutdown()


def main() -> None:
    import simulator.plots  # noqa: F401  imported once here, so no timed run pays for it alone

    one, two, machine = [], [], []
    for _ in range(REPEATS):
        one.append(timed_sweep(1))
        two.append(timed_sweep(2))
        machine.append(machine_speedup())
    one_s, two_s = statistics.median(one), statistics.median(two)
    cells = len(GRID.cells())
    print(f"grid: {cells} cells of {GRID.sessions} sessions (VW rankers, 2 worlds, 2 seeds)")
    print(f"1 worker:  {one_s:6.2f} s  ({cells / one_s:.2f} cells/s)  runs {[round(t, 2) for t in one]}")
    print(f"2 workers: {two_s:6.2f} s  ({cells / two_s:.2f} cells/s)  runs {[round(t, 2) for t in two]}")
    print(f"speed-up {one_s / two_s:.2f}x (target >= 1.7x)")
    machine_s = statistics.median(machine)
    print(f"plain 2-process CPU work on this machine meanwhile: {machine_s:.2f}x  runs {[round(m, 2) for m in machine]}")
    print(json.dumps({"name": "sweep_speedup_2_workers", "value": round(cells / two_s, 3), "unit": "cells/s",
                      "baseline": round(cells / one_s, 3), "ratio": round(one_s / two_s, 3), "target_ratio": 1.7,
                      "machine_2_process_speedup": round(machine_s, 3)}))


if __name__ == "__main__":
    main()
