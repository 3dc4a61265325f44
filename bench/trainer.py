"""Trainer worker speed: one worker's full step (read, progressive scoring, learning, commit) against
VW's bare Python learn loop on the same joined data (target >= 0.8x), its phases beside it, and two
candidates on 2 workers against the same two one after the other (target >= 1.6x).

Data: the simulator's default world (16 of 24 shelves per request, 6 slots), decisions of an
epsilon-greedy VW ranker logged as the service logs them, rewards from the world, joined into
parts by the real joiner. Every figure is a median of repeats; each repeat trains fresh
candidate state from the first part.

- bare loop: `vowpalwabbit.Workspace("<the candidate's VW args> --dsjson")`, then for every joined
  line `parse`, `learn`, `finish_example` (files read inside the clock);
- full step: the whole `train` call seen from the driver (reading each part, the VW pass that
  scores every event with the model as it stands and then learns it, the target probabilities
  from those scores, writing them, committing, Ray's call overhead): the events per second one
  trainer keeps up with, one event per decision served;
- its phases, timed inside the worker running as a Ray actor: `read`, `learn` (the VW pass, which
  scores as well), `score` (target probabilities and marginals of the whole part in numpy, and
  the scores file), `commit` (model files, journal, pointer, each fsynced).

Beside the 2-worker speed-up, the same comparison for plain Ray tasks running the bare loop
shows what two processes of VW learning gain on this machine at that moment (the machine has
2 cores shared with other work).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import vowpalwabbit

from bandit.config import RankerConfig
from bandit.vw.ranker import VWShelfRanker
from service.eventlog.lines import decision_line, reward_line
from service.join.joiner import JoinConfig, Joiner
from service.join.reader import JoinedLog
from service.layout import DataPaths
from service.training.candidates import Candidate
from service.training.worker import CandidateTrainer
from simulator.world import World, WorldConfig

N_EVENTS = 8_000
PART_EVENTS = 2_000
REPEATS = 5
WINDOW_S = 60.0
CANDIDATES = (
    RankerConfig(explorer="squarecb"),
    RankerConfig(explorer="epsilon", epsilon=0.05),
)


def joined_data(data_dir: Path, seed: int = 0) -> None:
    """N_EVENTS decisions of the default world, logged, rewarded and joined into parts."""
    rng = np.random.default_rng(seed)
    world = World(WorldConfig.default(), rng)
    batch = world.draw_requests(N_EVENTS, rng)
    ranker = VWShelfRanker(RankerConfig(epsilon=0.2, seed=seed))
    start = time.time() - 1e6  # in the past: the joiner treats every decision as ready
    decisions, rankings, times = [], [], start + batch.time_s
    for i, request in enumerate(world.requests(batch)):
        decision = ranker.rank(request.context, request.shelves, batch.n_slots, event_id=f"ev-{i:07d}")
        decisions.append(decision_line(request.context, request.shelves, decision, timestamp=times[i], baseline=request.baseline))
        rankings.append(decision.shelf_ids)
    streams = world.sample_rewards(batch, world.indices(rankings), rng)
    events, slots = np.nonzero(streams)
    rewards = [reward_line(f"ev-{i:07d}", int(k), 1.0, None, received=times[i] + 1.0, decided=times[i]) for i, k in zip(events, slots)]
    paths = DataPaths(data_dir)
    for directory, kind, lines in ((paths.decisions, "decisions", decisions), (paths.rewards, "rewards", rewards)):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{kind}-{1:019d}-1.jsonl").write_bytes(b"".join(lines))
    with Joiner(data_dir, JoinConfig(WINDOW_S, max_events_per_part=PART_EVENTS), clock=lambda: times[-1] + 10 * WINDOW_S) as joiner:
        while joiner.run_once().more_ready:
            pass


def bare_loop(paths: list[Path], config: RankerConfig) -> float:
    """Seconds for VW's Python loop to parse and learn every joined line."""
    workspace = vowpalwabbit.Workspace(f"{config.vw_args()} --dsjson --quiet")
    start = time.perf_counter()
    for path in paths:
        with open(path) as handle:
            for line in handle:
                example = workspace.parse(line)
                workspace.learn(example)
                workspace.finish_example(example)
    elapsed = time.perf_counter() - start
    workspace.finish()
    return elapsed


def fresh_actors(trainer, data_dir: Path, tag: str) -> list:
    """One actor per candidate with new state (started and answering before any clock runs)."""
    actors = [trainer.remote(str(data_dir), Candidate(f"c{i}-{tag}", config)) for i, config in enumerate(CANDIDATES)]
    ray.get([actor.status.remote() for actor in actors])
    return actors


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    try:
        data_dir = work / "data"
        started = time.perf_counter()
        joined_data(data_dir)
        parts = JoinedLog(data_dir).parts()
        n_events = sum(part.jsonl.read_bytes().count(b"\n") for part in parts)
        print(f"data: {n_events} events in {len(parts)} parts (16 shelves x 6 slots), made in {time.perf_counter() - started:.1f} s")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        trainer = ray.remote(num_cpus=1)(CandidateTrainer)
        plain = ray.remote(num_cpus=1)(bare_loop)
        files = [p.jsonl for p in parts]
        ray.get([plain.remote(files[:1], CANDIDATES[0]) for _ in range(2)])  # start two worker processes
        bare, step, step_phases, serial, parallel, machine = [], [], [], [], [], []
        for repeat in range(REPEATS):
            bare.append(bare_loop(files, CANDIDATES[0]))
            first, second = fresh_actors(trainer, data_dir, f"one-{repeat}")
            clock = time.perf_counter()
            result = ray.get(first.train.remote())
            step.append(time.perf_counter() - clock)
            step_phases.append(result["seconds"])
            ray.get(second.train.remote())  # one after the other: one worker busy at a time
            serial.append(time.perf_counter() - clock)
            ray.kill(first), ray.kill(second)
            both = fresh_actors(trainer, data_dir, f"two-{repeat}")
            clock = time.perf_counter()
            ray.get([actor.train.remote() for actor in both])
            parallel.append(time.perf_counter() - clock)
            for actor in both:
                ray.kill(actor)
            clock = time.perf_counter()
            ray.get(plain.remote(files, CANDIDATES[0]))
            ray.get(plain.remote(files, CANDIDATES[1]))
            one_by_one = time.perf_counter() - clock
            clock = time.perf_counter()
            ray.get([plain.remote(files, config) for config in CANDIDATES])
            machine.append(one_by_one / (time.perf_counter() - clock))
            phases = {k: round(v, 2) for k, v in result["seconds"].items()}
            print(f"repeat {repeat}: bare {bare[-1]:.2f} s, worker phases {phases}, 2 candidates one after the other "
                  f"{serial[-1]:.2f} s, side by side {parallel[-1]:.2f} s; plain VW tasks side by side {machine[-1]:.2f}x")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: n_events / statistics.median(values) for name, values in (("bare", bare), ("step", step))}
    phases = {name: statistics.median(r[name] for r in step_phases) for name in step_phases[0]}
    speedup = statistics.median(serial) / statistics.median(parallel)
    ratio = rate["step"] / rate["bare"]
    print(f"medians of {REPEATS} repeats, {n_events} events, candidate {CANDIDATES[0].explorer}:")
    print(f"bare VW Python loop (parse + learn per line):  {rate['bare']:8.0f} events/s  (1.00x, baseline)")
    print(f"worker full step (read + score + learn + commit): {rate['step']:8.0f} events/s  ({ratio:.2f}x, target >= 0.8x)")
    print("  phases, s per run: " + ", ".join(f"{name} {value:.2f}" for name, value in phases.items())
          + f" (bare loop {statistics.median(bare):.2f})")
    print(f"2 candidates on 2 workers vs one after the other: {speedup:.2f}x (target >= 1.6x); "
          f"{2 * n_events / statistics.median(parallel):.0f} vs {2 * n_events / statistics.median(serial):.0f} events/s")
    print(f"plain VW learning in 2 Ray tasks vs one after the other, meanwhile: {statistics.median(machine):.2f}x")
    print(json.dumps({
        "name": "trainer_full_step", "value": round(rate["step"], 1), "unit": "events/s",
        "baseline": round(rate["bare"], 1), "ratio": round(ratio, 3), "target_ratio": 0.8,
        "phases_s": {name: round(value, 3) for name, value in phases.items()},
        "two_workers_speedup": round(speedup, 3), "two_workers_target": 1.6,
        "plain_vw_two_task_speedup": round(statistics.median(machine), 3), "n_events": n_events, "repeats": REPEATS,
    }))

if __name__ == "__main__":
    main()
