"""Soak: sustained POST /v1/rank + /v1/reward on one service for a while, with its joiner and a
trainer (`shelfbandit train --follow`, short publish interval) running beside it.

Reports the service's resident memory at start, middle and end (its event index must level
off once it holds `event_memory_s` of decisions), the error count (every answer must be 200)
and the p99 latency of /v1/rank per minute, the first minute being the baseline. Load: a
closed loop of `--concurrency` clients (shelfbandit.client, keep-alive) in this process, bounded in time
and count; each rank is followed by one reward for one of its slots with probability 1/2.

    python bench/soak.py [--seconds 120] [--concurrency 4] [--event-memory 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from service.local import LocalService, stop_group
from shelfbandit.client import AsyncDecisionClient, ClientError, RetryPolicy

MAX_REQUESTS = 1_000_000  # on top of the time bound
SAMPLE_EVERY_S = 5.0


def candidates(n_shelves: int) -> list[dict]:
    return [{"id": f"shelf-{i}", "features": {"kind": f"kind-{i % 6}", "age_days": i % 9}} for i in range(n_shelves)]


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in a process group (the service and its uvicorn workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields after the name: state, ppid, pgrp, ...
                continue
            with open(f"/proc/{entry}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


async def client_loop(url: str, deadline: float, samples: list, errors: list, seed: int, n_shelves: int, n_slots: int,
                      budget: list[int]) -> None:
    """One closed-loop backend: rank, and reward half of the decisions, through the client library
    (no retries and no fallback, so every failure is counted as an error)."""
    rng = random.Random(seed)
    shelves = candidates(n_shelves)
    async with AsyncDecisionClient(url, timeout_s=10.0, retry=RetryPolicy(max_attempts=1)) as client:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            listener = rng.randrange(10_000)
            started = time.perf_counter()
            try:
                decision = await client.rank(shelves, n_slots, user={"country": "SE", "platform": "ios", "hour": listener % 24},
                                             listener_id=f"listener-{listener}")
            except ClientError as err:
                errors.append(("rank", type(err).__name__))
                continue
            samples.append((time.monotonic(), time.perf_counter() - started))
            if rng.random() < 0.5:
                try:
                    await client.reward(decision, 1.0, slot=rng.randrange(n_slots))
                except ClientError as err:
                    errors.append(("reward", type(err).__name__))


async def sample_memory(pgid: int, deadline: float, curve: list) -> None:
    started = time.monotonic()
    while True:
        curve.append((time.monotonic() - started, group_rss_bytes(pgid)))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(SAMPLE_EVERY_S, max(0.0, deadline - time.monotonic())))


async def load(url: str, pgid: int, args) -> tuple[float, list, list, list]:
    samples, errors, curve, budget = [], [], [], [MAX_REQUESTS]
    started = time.monotonic()
    deadline = started + args.seconds
    clients = [client_loop(url, deadline, samples, errors, seed, args.shelves, args.slots, budget)
               for seed in range(args.concurrency)]
    await asyncio.gather(sample_memory(pgid, deadline, curve), *clients)
    return started, samples, errors, curve


def per_minute_p99(samples: list, started: float, seconds: float) -> list[tuple[int, int, float]]:
    """(minute, n requests, p99 ms) of each minute of the run (a last partial minute, if any,
    counts with the one before it unless it is at least half a minute long)."""
    times = np.array([t for t, _ in samples]) - started
    latencies = np.array([s for _, s in samples]) * 1e3
    n_minutes = max(1, round(seconds / 60))
    minutes = np.minimum((times // 60).astype(int), n_minutes - 1)
    return [(m, int((minutes == m).sum()), float(np.percentile(latencies[minutes == m], 99)))
            for m in np.unique(minutes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--event-memory", type=float, default=20.0, help="the service's event_memory_s")
    parser.add_argument("--publish-interval", type=float, default=15.0)
    parser.add_argument("--shelves", type=int, default=20)
    parser.add_argument("--slots", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        data = Path(tmp) / "data"
        settings = {"reward_window_s": 5.0, "join_grace_s": 0.5, "join_interval_s": 1.0,
                    "event_memory_s": args.event_memory, "model_poll_s": 1.0}
        service = LocalService(data, settings).start()
        trainer = None
        try:
            with open(Path(tmp) / "trainer.log", "ab") as trainer_log:
                trainer = subprocess.Popen(
                    [sys.executable, "-c", "from shelfbandit.cli import main; main()", "train", "--data-dir", str(data), "--follow",
                     "--num-cpus", "1", "--interval", "1", "--publish-interval", str(args.publish_interval), "--json"],
                    stdout=trainer_log, stderr=trainer_log, start_new_session=True,
                )
            started, samples, errors, curve = asyncio.run(load(service.url, service.process.pid, args))
            metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        finally:
            if trainer is not None:
                stop_group(trainer, grace_s=60.0)
            service.stop()

    def counter(name: str) -> float:
        return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))

    mb = [(round(t), rss / 2**20) for t, rss in curve]
    middle = mb[len(mb) // 2]
    print(f"soak: {args.seconds:g} s, {args.concurrency} clients, {args.shelves} shelves x {args.slots} slots, "
          f"event_memory_s={args.event_memory:g}, reward window 5 s, trainer publishing every {args.publish_interval:g} s")
    print(f"requests: {len(samples)} ranks; errors: {len(errors)} {sorted(set(map(str, errors)))[:5]}")
    print(f"joined events: {counter('shelfbandit_joined_events_total'):.0f}, model swaps: {counter('shelfbandit_model_swaps_total'):.0f}, "
          f"background failures: {counter('shelfbandit_background_failures_total'):.0f}")
    print("resident memory (MiB) every ~5 s: " + " ".join(f"{t}s:{m:.0f}" for t, m in mb))
    print(f"resident memory: start {mb[0][1]:.0f} MiB, middle ({middle[0]} s) {middle[1]:.0f} MiB, end {mb[-1][1]:.0f} MiB")
    minutes = per_minute_p99(samples, started, args.seconds)
    baseline = minutes[0][2]
    for minute, n, p99 in minutes:
        print(f"minute {minute}: {n} ranks, p99 {p99:.1f} ms ({p99 / baseline:.2f}x the first minute)")
    last = minutes[-1][2]
    print(json.dumps({
        "name": "soak_rank_p99_last_minute", "value": round(last, 2), "unit": "ms",
        "baseline": round(baseline, 2), "ratio": round(last / baseline, 3),
        "errors": len(errors), "n_ranks": len(samples),
        "rss_mib": {"start": round(mb[0][1], 1), "middle": round(middle[1], 1), "end": round(mb[-1][1], 1)},
        "rss_end_over_middle": round(mb[-1][1] / middle[1], 3),
    }))


if __name__ == "__main__":
    main()
