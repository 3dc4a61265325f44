"""Does the deployed loop learn as well as a plain learner? Share of the editorial-to-oracle gap
closed over the last 1,000 of 6,000 sessions, by the simulator's true expected rewards.

- loop: `shelfbandit serve` (LocalService, 127.0.0.1, a fresh data directory) and the training
  loop (TrainingLoop in a thread, default candidates and gate, local Ray with 2 CPUs), both on
  the product's defaults except a 5 s reward window and the publish interval (`--publish-interval`,
  default 5 s: the product's 60 s is for real traffic, this run compresses time); the world's
  listeners come at 40 sessions/s through `POST /v1/rank` and `POST /v1/reward`
  (`shelfbandit.demo.run_loop`, the demo's own harness);
- baseline, in the same run on the same requests: the plain learner (`simulator.peer`: the
  in-process VW CCB ranker, SquareCB, learning after every session with instant feedback,
  rewards drawn from the world; VW's explorer as it is, without the uniform floor the default
  candidates serve with), median over `--peer-repeats` seeds.

Two worlds: `simple` (16 shelves, all candidates, 6 slots, 4 listener segments, position-based
examination, no context effect but the segment's taste, no individual deviation) and the
default world. `ratio` = loop / plain learner; targets: ratio >= 0.95 in both worlds, and the
loop closing >= 0.85 of the gap in the simple world. Everything started is stopped; each loop
run is bounded (`shelfbandit.demo.MAX_SLOWDOWN`). The last line is one JSON object (the
default world's figures first, every world's beside them).

    python bench/learning.py [--sessions 6000] [--rate 40] [--publish-interval 5] [--peer-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from service.training.candidates import DEFAULT_CANDIDATES
from service.training.records import (
    GATE,
    PROMOTED,
    PUBLISH_REFUSED,
    PUBLISHED,
    read_records,
)
from shelfbandit.demo import DemoConfig, run_loop
from shelfbandit.demo_report import session_table
from simulator.peer import PeerConfig, gap_closed, run_peer_learner
from simulator.world import World, WorldConfig

WINDOW = 1000  # the last this many sessions are measured
TARGET_RATIO = 0.95
TARGET_SIMPLE_GAP = 0.85
WORLDS = {
    "simple": WorldConfig.default().updated(n_shelves=16, min_candidates=16, max_candidates=16, n_slots=6, n_segments=4,
                                            click_model="position", context_scale=0.0, individual_taste_sd=0.0),
    "default": WorldConfig.default(),
}


def window_gaps(table, column: str, n_sessions: int) -> list[float]:
    """Gap closed by `column` in successive WINDOW-session stretches."""
    edges = range(0, n_sessions, WINDOW)
    gaps = []
    for lo in edges:
        part = table[(table["session"] >= lo) & (table["session"] < lo + WINDOW)]
        gaps.append(gap_closed(part[column], part["editorial"], part["oracle"]) if len(part) else float("nan"))
    return gaps


def run_world(name: str, world_config: WorldConfig, config: DemoConfig, peer_repeats: int) -> dict:
    world = World(world_config, np.random.default_rng(config.seed))
    requests = world.draw_requests(config.sessions, np.random.default_rng(config.seed + 1))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-learning-{name}-") as tmp:
        data_dir = Path(tmp) / "data"
        run = run_loop(data_dir, world, requests, config, np.random.default_rng(config.seed + 2), quiet=True)
        counts = {kind: len(read_records(data_dir, kind)) for kind in (PUBLISHED, PUBLISH_REFUSED, GATE, PROMOTED)}
    loop_s = time.monotonic() - started
    started = time.monotonic()
    peers = [run_peer_learner(world, requests, np.random.default_rng([config.seed, 4, r])) for r in range(peer_repeats)]
    peer_s = time.monotonic() - started
    tables = [session_table(run.sessions, peer) for peer in peers]
    measured = [t[t["session"] >= config.sessions - WINDOW] for t in tables]
    loop_gap = gap_closed(measured[0]["served"], measured[0]["editorial"], measured[0]["oracle"])
    peer_gaps = [gap_closed(m["peer"], m["editorial"], m["oracle"]) for m in measured]
    peer_gap = statistics.median(peer_gaps)
    loop_curve = window_gaps(tables[0], "served", config.sessions)
    peer_curve = [statistics.median(g) for g in zip(*(window_gaps(t, "peer", config.sessions) for t in tables))]
    tail = measured[0]
    print(f"\nworld {name}: {world_config.n_shelves} shelves ({world_config.min_candidates} candidates) x "
          f"{world_config.n_slots} slots, {world_config.n_segments} segments, {world_config.click_model} examination, "
          f"context_scale {world_config.context_scale:g}, individual_taste_sd {world_config.individual_taste_sd:g}")
    print(f"  loop: {len(run.sessions)} of {config.sessions} sessions served in {loop_s:.0f} s; "
          f"{counts[PUBLISHED]} publications, {counts[PUBLISH_REFUSED]} refused at publishing, "
          f"{counts[GATE]} gate decisions, {counts[PROMOTED]} challengers became champion; plain learner {peer_s:.0f} s")
    header = "  ".join(f"{lo // 1000}-{(lo + WINDOW) // 1000}k" for lo in range(0, config.sessions, WINDOW))
    print(f"  gap closed by stretch of sessions:   {header}")
    print("  learning loop (HTTP + trainer)      " + "  ".join(f"{g:5.2f}" for g in loop_curve))
    print(f"  plain learner (median of {peer_repeats})        " + "  ".join(f"{g:5.2f}" for g in peer_curve))
    print(f"  sessions {config.sessions - WINDOW}-{config.sessions - 1}: true streams per session loop "
          f"{tail['served'].mean():.3f}, plain learner {tail['peer'].mean():.3f} (median run), editorial "
          f"{tail['editorial'].mean():.3f}, oracle {tail['oracle'].mean():.3f}")
    ratio = loop_gap / peer_gap if peer_gap > 0 else float("nan")
    print(f"  gap closed: loop {loop_gap:.3f}, plain learner {peer_gap:.3f} "
          f"(runs {', '.join(f'{g:.3f}' for g in peer_gaps)}); ratio {ratio:.3f} (target >= {TARGET_RATIO})")
    return {"gap_closed": round(loop_gap, 4), "peer_gap_closed": round(peer_gap, 4), "ratio": round(ratio, 4),
            "peer_runs": [round(g, 4) for g in peer_gaps], "loop_curve": [round(g, 4) for g in loop_curve],
            "peer_curve": [round(g, 4) for g in peer_curve], "sessions_served": len(run.sessions),
            "loop_seconds": round(loop_s, 1), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=40.0, help="sessions per second")
    parser.add_argument("--publish-interval", type=float, default=5.0, help="seconds (the product's default is 60)")
    parser.add_argument("--peer-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated, of: " + ", ".join(WORLDS))
    args = parser.parse_args()
    if args.sessions <= WINDOW or args.peer_repeats < 1:
        parser.error(f"--sessions must exceed {WINDOW} and --peer-repeats be at least 1")
    names = [n for n in args.worlds.split(",") if n]
    unknown = sorted(set(names) - set(WORLDS))
    if unknown:
        parser.error(f"unknown worlds {unknown}; known: {', '.join(WORLDS)}")
    config = DemoConfig(sessions=args.sessions, rate=args.rate, reward_window_s=5.0,
                        publish_interval_s=args.publish_interval, num_cpus=2, seed=args.seed)
    champion, peer = DEFAULT_CANDIDATES[0].config.to_dict(), PeerConfig().ranker.to_dict()
    differ = {k: {"plain_learner": peer[k], "champion": champion[k]} for k in champion if peer[k] != champion[k]}
    same = PeerConfig().ranker.model_fields() == DEFAULT_CANDIDATES[0].config.model_fields()
    print(f"loop: reward window {config.reward_window_s:g} s, publish interval {config.publish_interval_s:g} s, "
          f"{config.rate:g} sessions/s, {config.sessions} sessions; the plain learner learns "
          f"{'as' if same else 'NOT as'} the champion ({DEFAULT_CANDIDATES[0].name}) does"
          + (f"; they differ in {differ}" if differ else ""))
    results = {name: run_world(name, WORLDS[name], config, args.peer_repeats) for name in names}
    head = results.get("default") or next(iter(results.values()))
    print("\n" + "  ".join(f"{name}: ratio {r['ratio']:.2f} (loop {r['gap_closed']:.2f} / plain {r['peer_gap_closed']:.2f})"
                           for name, r in results.items()))
    if "simple" in results:
        print(f"simple world: the loop closed {results['simple']['gap_closed']:.2f} of the gap (target >= {TARGET_SIMPLE_GAP})")
    print(json.dumps({
        "name": "learning_loop_gap_closed", "value": head["gap_closed"], "unit": "share of the editorial-to-oracle gap",
        "baseline": head["peer_gap_closed"], "ratio": head["ratio"], "target_ratio": TARGET_RATIO,
        "ratio_min": min(r["ratio"] for r in results.values()), "target_simple_gap_closed": TARGET_SIMPLE_GAP,
        "sessions": config.sessions, "window": [config.sessions - WINDOW, config.sessions - 1],
        "rate": config.rate, "reward_window_s": config.reward_window_s, "publish_interval_s": config.publish_interval_s,
        "peer_repeats": args.peer_repeats, "peer_learns_as_champion": same, "peer_vs_champion_config": differ,
        "worlds": results,
    }))


if __name__ == "__main__":
    main()
