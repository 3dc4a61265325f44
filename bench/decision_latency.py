"""Benchmark: POST /v1/rank latency at one connection, by page size, against the VW-predict floor.

For each page size (shelves x slots) the service (`shelfbandit serve`, default settings) and
the floor app of bench/decision_api.py (parse the body with the service's schema, then the same
VW model's predict on example lines built once for that size) answer requests one at a time
on one keep-alive connection, alternating service / floor `--repeats` times. Beside each row:
the in-process cost of the ranker's scoring at that size (from the listener terms, as the
service scores; and VW's one pass, as a model learning in process is scored), to show how the
cost grows with shelves x slots.

    python bench/decision_latency.py [--sizes 20x8,50x10,100x10,200x10,200x20] [--seconds 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from decision_api import (
    FLOOR_BODY,
    http_request,
    request_body,
    run_load,
    served_and_learning_rankers,
    start_server,
    stop_server,
)

from service.local import free_port


def scoring_us(n_shelves: int, n_slots: int, calls: int = 50) -> tuple[float, float]:
    """Microseconds of the ranker's scoring of one page of this size, from the listener terms and
    by VW's one pass (medians of 5, the two alternating)."""
    from service.http.convert import rank_inputs
    from service.http.schemas import RankRequest
    from service.settings import Settings

    context, shelves, _ = rank_inputs(RankRequest.model_validate_json(request_body(n_shelves, n_slots)), Settings())
    rankers = served_and_learning_rankers(context, shelves, n_slots)
    runs = ([], [])
    for _ in range(5):
        for policy, out in zip(rankers, runs):
            policy.score(context, shelves, n_slots)
            started = time.perf_counter()
            for _ in range(calls):
                policy.score(context, shelves, n_slots)
            out.append((time.perf_counter() - started) / calls * 1e6)
    return float(np.median(runs[0])), float(np.median(runs[1]))


def one_connection(port: int, n_shelves: int, n_slots: int, seconds: float) -> dict:
    return run_load("closed", port, http_request(port, request_body(n_shelves, n_slots)), concurrency=1, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20x8,50x10,100x10,200x10,200x20", help="comma-separated SHELVESxSLOTS")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "SHELFBANDIT_DATA_DIR": str(data_dir)}
        env.pop("SHELFBANDIT_SETTINGS_JSON", None)
        with open(Path(tmp) / "servers.log", "wb") as log:
            service_port = free_port()
            service = start_server("service", service_port, 1, data_dir, env, log)  # creates the model the floor loads
            try:
                for n_shelves, n_slots in sizes:
                    floor_port = free_port()
                    floor_env = {**env, FLOOR_BODY: request_body(n_shelves, n_slots).decode()}
                    floor = start_server("vw_predict", floor_port, 1, data_dir, floor_env, log)
                    try:
                        for port in (service_port, floor_port):  # warm-up
                            one_connection(port, n_shelves, n_slots, 1.0)
                        runs = {"service": [], "floor": []}
                        for _ in range(args.repeats):
                            runs["service"].append(one_connection(service_port, n_shelves, n_slots, args.seconds))
                            runs["floor"].append(one_connection(floor_port, n_shelves, n_slots, args.seconds))
                    finally:
                        stop_server(floor)
                    terms_us, vw_pass_us = scoring_us(n_shelves, n_slots)
                    row = {"shelves": n_shelves, "slots": n_slots, "scoring_us": terms_us, "vw_pass_us": vw_pass_us}
                    for app, measured in runs.items():
                        for stat in ("p50_ms", "p99_ms"):
                            row[f"{app}_{stat}"] = float(np.median([m[stat] for m in measured]))
                        row[f"{app}_failures"] = sum(m["failures"] for m in measured)
                    rows.append(row)
            finally:
                stop_server(service)
    first = rows[0]
    print(f"POST /v1/rank at one connection, medians of {args.repeats} x {args.seconds:g} s (service and floor alternating)")
    print(f"{'shelves x slots':>15} {'service p50':>11} {'p99':>6} | {'floor p50':>9} {'p99':>6} | {'p50 ratio':>9} "
          f"{'scoring':>10} {'x 1st':>6} {'VW pass':>10} {'x 1st':>6} {'fail':>5}")
    for r in rows:
        print(f"{r['shelves']:>8} x {r['slots']:<4} {r['service_p50_ms']:>11.2f} {r['service_p99_ms']:>6.2f} | "
              f"{r['floor_p50_ms']:>9.2f} {r['floor_p99_ms']:>6.2f} | {r['service_p50_ms'] / r['floor_p50_ms']:>9.2f} "
              f"{r['scoring_us']:>7.0f} us {r['scoring_us'] / first['scoring_us']:>6.1f} "
              f"{r['vw_pass_us']:>7.0f} us {r['vw_pass_us'] / first['vw_pass_us']:>6.1f} "
              f"{r['service_failures'] + r['floor_failures']:>5}")
    print(f"targets: p50 at {first['shelves']} x {first['slots']} <= 1.5 x the floor's; p99 <= 15 ms at 200 x 10")
    print(json.dumps({
        "name": "rank_latency_one_connection",
        "value": round(first["service_p50_ms"], 3),
        "unit": "ms",
        "baseline": round(first["floor_p50_ms"], 3),
        "ratio": round(first["service_p50_ms"] / first["floor_p50_ms"], 3),
        "shelves": first["shelves"],
        "slots": first["slots"],
        "by_size": {f"{r['shelves']}x{r['slots']}": {k: round(v, 3) for k, v in r.items() if k not in ("shelves", "slots")}
                    for r in rows},
    }))


if __name__ == "__main__":
    main()
