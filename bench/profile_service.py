"""Where a decision's time goes: the service sampled by py-spy under the decision bench's load.

Starts `shelfbandit serve` (default settings, one worker), drives it with the closed loop of
bench/decision_api.py (20 shelves x 8 slots, concurrency 16) and, meanwhile, samples it with
py-spy (`--gil --idle --threads`: a sample names the thread holding the GIL, if one does).
Each sample goes to the innermost frame that names a part of a request; the table gives each
part's share of the samples and its microseconds of GIL per request. A part's absolute cost
is inflated by py-spy's own load on the machine; the shares are the figures to compare.

    python bench/profile_service.py [--seconds 15] [--rate 200] [--raw profile.txt]

Needs py-spy (`pip install -e '.[bench]'`, which `make bench` does) and the right to trace
the process (root, or ptrace permitted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from decision_api import http_request, request_body, run_load, start_server, stop_server

from service.local import free_port

# (part, markers): a sample belongs to the first part, scanning from its innermost frame
# outwards, one of whose markers its frame contains
PARTS = (
    ("scoring (listener terms; VW on a probe)", ("VWShelfRanker.score",)),
    ("sampling, conditional probabilities and marginals", ("sample_ranking", "slot_models", "event_rng")),
    ("Decision (build and validate)", ("build_decision",)),
    ("decision log line (DSJSON + JSON)", ("decision_line",)),
    ("log writes and fsyncs (committer)", ("SegmentWriter._commit_step", "SegmentWriter._write_now")),
    ("body parse (pydantic)", ("parsed_body",)),
    ("conversion to bandit types", ("rank_inputs",)),
    ("A/B arm assignment", ("LiveArms.choose", "ArmsConfig.arm_index", "hash_unit")),
    ("access log line", ("logging/__init__.py", "service/logs.py")),
    ("metrics (prometheus_client)", ("ServiceMetrics.", "prometheus_client/")),
    ("event index and kept answers", ("EventIndex.", "_served")),
    ("answer JSON", ("ranking_json",)),
    ("hand-offs between threads", ("concurrent/futures/", "loop_bridge.py", "threading.py")),
    ("rank's checks and bookkeeping", ("Policy.rank", "Service._decide", "Service._rank_and_log", "SegmentWriter.submit")),
    ("HTTP: uvicorn, httptools, ASGI", ("uvicorn/", "starlette/", "fastapi/", "ObserveAndLimit", "DecisionApp", "routes/rank.py",
                                        "Service.rank")),
    ("joiner", ("service/join/",)),
    ("model and arms pollers", ("service/models/", "service/experiments/", "supervisor.py")),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop")),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, markers in PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "other"


def read_samples(path: Path) -> tuple[Counter, Counter]:
    """(part -> samples, thread -> samples) from py-spy's raw output (`frames... count` lines)."""
    parts, threads = Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        parts[part_of(frames[1:])] += int(count)
        threads[thread.rstrip("_0123456789") or thread] += int(count)
    return parts, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long py-spy samples")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw samples here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        data_dir, raw = Path(tmp) / "data", args.raw or Path(tmp) / "raw.txt"
        env = {**os.environ, "SHELFBANDIT_DATA_DIR": str(data_dir)}
        env.pop("SHELFBANDIT_SETTINGS_JSON", None)
        port = free_port()
        request = http_request(port, request_body(20, 8))
        with open(Path(tmp) / "server.log", "wb") as log:
            server = start_server("service", port, 1, data_dir, env, log)
            try:
                run_load("closed", port, request, concurrency=args.concurrency, seconds=3.0)  # warm-up
                with ThreadPoolExecutor(1) as waiting:  # run_load's own process makes the load
                    load = waiting.submit(run_load, "closed", port, request, concurrency=args.concurrency, seconds=args.seconds + 4.0)
                    time.sleep(2.0)
                    subprocess.run([py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate),
                                    "--duration", str(int(args.seconds)), "--gil", "--idle", "--threads",
                                    "--format", "raw", "--output", str(raw), "--nonblocking"],
                                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.seconds + 60)
                    loaded = load.result(timeout=args.seconds + 60)
            finally:
                stop_server(server)
        parts, threads = read_samples(raw)
    held = sum(parts.values())
    possible = args.rate * int(args.seconds)
    requests = loaded["rps"] * int(args.seconds)
    print(f"POST /v1/rank, 20 shelves x 8 slots, concurrency {args.concurrency}, {loaded['rps']:.0f} req/s while sampled "
          f"({loaded['failures']} failed); some thread held the GIL in {held / possible:.0%} of {possible} samples")
    print("by thread: " + ", ".join(f"{name} {n / held:.0%}" for name, n in threads.most_common()))
    print(f"{'part of a request':<52} {'share':>6} {'us/request':>11}")
    for part, n in parts.most_common():
        print(f"{part:<52} {n / held:>6.1%} {n / args.rate / requests * 1e6:>11.0f}")
    print(json.dumps({
        "name": "service_gil_profile", "value": round(held / args.rate / requests * 1e6, 1), "unit": "us GIL/request",
        "baseline": round(1e6 / loaded["rps"], 1), "ratio": round(held / args.rate / requests * loaded["rps"], 3),
        "parts": {part: round(n / held, 4) for part, n in parts.most_common()},
    }))


if __name__ == "__main__":
    main()
