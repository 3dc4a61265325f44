"""What the champion's exploration buys the launch gate, and what it costs in served value.

A SquareCB champion (the default candidate) serves the simulator's default world (24 shelves,
16 candidates per request, 6 slots, position-based examination) in closed loop and learns every
10 sessions; challengers learn the same logged stream and score each event of the last
--window events just before learning it (`simulator.side_by_side`). On that window the gate's
comparison runs as `service.training.judge.judge` runs it: challenger targets = its progressive
scores, champion targets = its logging probabilities (weights 1), the paired difference
challenger - champion with a 1000-resample bootstrap interval, for every estimator the
progressive scores support. The truth is known: each policy's true value on each scored event.

(a) Under the champion's default exploration (its default uniform_share): per estimator and challenger,
    the worst-slot effective sample size (`ess`, the challenger's; the champion's is n), the
    width of the 95% interval of the difference, whether it covers the true difference, and the
    verdict with that estimator as primary (ship / do not ship / not enough data) next to the
    truth's sign.
(b) The champion with a uniform floor (uniform_share) and with a smaller gamma_scale: the true
    served value over the window (and its share of the editorial-to-oracle gap), and the
    estimators' ESS and coverage for two challengers (B_CHALLENGERS). Challengers are scored with the champion's uniform_share
    (a serving setting: the gate compares both policies as they would serve).

Figures are medians over --seeds seeds (each seed its own world and request stream, shared by
every configuration); runs go to --workers processes. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from bandit.baselines import UniformRandomPolicy
from bandit.config import RankerConfig
from bandit.vw.ranker import VWShelfRanker
from offline_eval.estimators import ESTIMATOR_CLASSES
from offline_eval.gate import GateRule, compare, verdict
from offline_eval.readers import table_log
from offline_eval.slate import TargetProbs
from service.training.candidates import DEFAULT_CANDIDATES
from service.training.judge import SCORED_ESTIMATORS
from simulator.side_by_side import SideBySideRun, run_side_by_side
from simulator.world import World, WorldConfig

ESTIMATORS = tuple(name for name in ("ips", "clipped_ips", "snips", "iips", "snips_iips", "rips", "snips_rips", "pi")
                   if name in SCORED_ESTIMATORS)
CHAMPION = DEFAULT_CANDIDATES[0].config
CHALLENGERS = {c.name: c.config for c in DEFAULT_CANDIDATES[1:]}
CHALLENGERS["no-interactions"] = replace(CHAMPION, interactions=())  # deliberately worse: no personalisation
UNIFORM = "uniform"  # deliberately worse: uniformly random orderings
# part (b) runs six champions per seed: to keep the time down, its challengers are the default
# candidate least like the champion and the uniform one (part (a)'s run has all of them)
B_CHALLENGERS = ("epsilon", UNIFORM)
FLOORS = (0.0, 0.02, 0.05, 0.1, 0.2)
SMALL_GAMMA_SCALE = 1.0
LEARN_EVERY = 10
RULE = GateRule()  # min_ess 100, min_lift 0, max_unsupported 1%, weight band [0.5, 2]


def champion_configs() -> dict[str, RankerConfig]:
    """The champion variants of part (b), by label; 'share=0' is part (a)'s champion."""
    configs = {f"share={s:g}": replace(CHAMPION, uniform_share=s) for s in FLOORS}
    configs[f"gamma_scale={SMALL_GAMMA_SCALE:g}"] = replace(CHAMPION, gamma_scale=SMALL_GAMMA_SCALE)
    return configs


def run_cell(label: str, config: RankerConfig, seed_index: int, base_seed: int, n_sessions: int, window: int) -> dict:
    """One champion configuration on one seed's world: the gate's figures per challenger and estimator."""
    world_ss, request_ss, loop_ss, gate_ss = np.random.SeedSequence(base_seed, spawn_key=(seed_index,)).spawn(4)
    world = World(WorldConfig.default(), np.random.default_rng(world_ss))
    requests = world.draw_requests(n_sessions, np.random.default_rng(request_ss))
    share = config.uniform_share
    champion = VWShelfRanker(replace(config, seed=seed_index))
    challengers = {name: VWShelfRanker(replace(c, uniform_share=share, seed=seed_index)) for name, c in CHALLENGERS.items()}
    challengers[UNIFORM] = UniformRandomPolicy(seed=seed_index)
    if label != "share=0":
        challengers = {name: challengers[name] for name in B_CHALLENGERS}
    started = time.perf_counter()
    run = run_side_by_side(world, champion, challengers, requests, np.random.default_rng(loop_ss),
                           window_events=window, learn_every=LEARN_EVERY)
    gate_rng = np.random.default_rng(gate_ss)
    result = {
        "label": label, "seed": seed_index, "seconds": time.perf_counter() - started,
        "served_value": float(run.champion.true_value.mean()),
        "editorial_value": float(run.editorial_value.mean()),
        "oracle_value": float(run.oracle_value.mean()),
        "challengers": {name: gate_figures(run, name, gate_rng) for name in run.challengers},
    }
    gap = result["oracle_value"] - result["editorial_value"]
    result["gap_closed"] = (result["served_value"] - result["editorial_value"]) / gap
    return result


def gate_figures(run: SideBySideRun, name: str, rng: np.random.Generator) -> dict:
    """Per estimator: challenger ESS (worst slot), the paired difference and its interval, the
    true difference, coverage, and the verdict with that estimator as the primary."""
    n, n_slots = run.reward.shape
    champion, challenger = run.champion, run.challengers[name]
    columns = {
        "event_id": np.repeat(np.arange(n), n_slots), "slot": np.tile(np.arange(n_slots), n),
        "action": np.tile(np.arange(n_slots), n),  # the estimators never read which shelf; only its slot matters here
        "reward": run.reward.ravel(), "logging_prob": champion.prob.ravel(), "logging_marginal": champion.marginal.ravel(),
        "target_prob": challenger.prob.ravel(), "target_marginal": challenger.marginal.ravel(),
    }
    loaded = table_log(columns)
    active = TargetProbs(prob=loaded.log.logging_prob, marginal=loaded.log.logging_marginal, name="champion")
    result = compare(loaded.log, loaded.target, active, rng=rng, estimators=ESTIMATORS, rule=RULE)
    truth = float(challenger.true_value.mean() - champion.true_value.mean())
    out = {"true_difference": truth}
    for est in ESTIMATORS:
        cand, base, diff = result.candidate.estimates[est], result.baseline.estimates[est], result.difference[est]
        decided, _ = verdict(replace(RULE, primary=est), cand, base, diff)
        out[est] = {
            "ess": float(min(cand.ess, base.ess)), "difference": diff.value, "lower": diff.lower, "upper": diff.upper,
            "width": diff.upper - diff.lower, "covered": bool(diff.lower <= truth <= diff.upper), "verdict": decided,
            "mean_weight": cand.mean_weight,
        }
    return out


def correct(decided: str, truth: float) -> str:
    """'right' for ship when better / do not ship when worse, 'wrong' the other way, 'unsure' otherwise."""
    if decided == "ship":
        return "right" if truth > 0 else "wrong"
    if decided == "do not ship":
        return "right" if truth < 0 else "wrong"
    return "unsure"


def med(values) -> float:
    return float(statistics.median(values))


def part_a(cells: list[dict]) -> list[dict]:
    """Rows (challenger, estimator): medians over seeds, coverage and verdict counts."""
    rows = []
    for name in cells[0]["challengers"]:
        for est in ESTIMATORS:
            figures = [c["challengers"][name][est] for c in cells]
            truths = [c["challengers"][name]["true_difference"] for c in cells]
            verdicts = [correct(f["verdict"], t) for f, t in zip(figures, truths)]
            rows.append({
                "challenger": name, "estimator": est, "true_difference": med(truths),
                "difference": med(f["difference"] for f in figures), "ess": med(f["ess"] for f in figures),
                "width": med(f["width"] for f in figures), "covered": sum(f["covered"] for f in figures),
                "right": verdicts.count("right"), "wrong": verdicts.count("wrong"), "unsure": verdicts.count("unsure"),
                "n_seeds": len(cells),
            })
    return rows


def part_b(cells_by_label: dict[str, list[dict]]) -> list[dict]:
    """Rows per champion configuration: served value, gap share, and per estimator the median
    over seeds of the learning challenger's worst-slot ESS and of the uniform one's, and the median
    width, coverage and verdicts over both challengers and all seeds."""
    baseline = med(c["served_value"] for c in cells_by_label["share=0"])
    rows = []
    for label, cells in cells_by_label.items():
        served = med(c["served_value"] for c in cells)
        row = {"champion": label, "served_value": served, "ratio_to_no_floor": served / baseline,
               "gap_closed": med(c["gap_closed"] for c in cells), "estimators": {}}
        for est in ESTIMATORS:
            per = [(c["challengers"][n][est], c["challengers"][n]["true_difference"]) for c in cells for n in B_CHALLENGERS]
            worst = [min(c["challengers"][n][est]["ess"] for n in B_CHALLENGERS if n != UNIFORM) for c in cells]
            verdicts = [correct(f["verdict"], t) for f, t in per]
            row["estimators"][est] = {
                "worst_learner_ess": med(worst), "uniform_ess": med(c["challengers"][UNIFORM][est]["ess"] for c in cells),
                "width": med(f["width"] for f, _ in per), "covered": sum(f["covered"] for f, _ in per), "n": len(per),
                "right": verdicts.count("right"), "wrong": verdicts.count("wrong"),
            }
        rows.append(row)
    return rows


def print_tables(rows_a: list[dict], rows_b: list[dict] | None, args: argparse.Namespace) -> None:
    print(f"(a) default exploration, last {args.window} of {args.sessions} sessions, median of {args.seeds} seeds")
    print(f"{'challenger':16} {'estimator':12} {'true diff':>9} {'estimate':>9} {'ESS':>8} {'width':>8} {'covered':>8} "
          f"{'right/wrong/unsure':>19}")
    for r in rows_a:
        print(f"{r['challenger']:16} {r['estimator']:12} {r['true_difference']:9.4f} {r['difference']:9.4f} {r['ess']:8.0f} "
              f"{r['width']:8.4f} {r['covered']:>4}/{r['n_seeds']:<3} {r['right']:>9}/{r['wrong']}/{r['unsure']}")
    if not rows_b:
        return
    print(f"\n(b) exploration floor: true served value over the last {args.window} sessions, median of {args.seeds} seeds")
    print(f"{'champion':18} {'served':>8} {'vs no floor':>11} {'gap closed':>10}")
    for r in rows_b:
        print(f"{r['champion']:18} {r['served_value']:8.4f} {r['ratio_to_no_floor']:11.4f} {r['gap_closed']:10.1%}")
    print("\n    worst learning challenger's ESS (median over seeds) / uniform challenger's ESS / coverage of all challengers")
    print(f"{'champion':18} " + " ".join(f"{e:>18}" for e in ESTIMATORS))
    for r in rows_b:
        cells = [f"{f['worst_learner_ess']:.0f}/{f['uniform_ess']:.0f}/{f['covered']}:{f['n']}" for f in r["estimators"].values()]
        print(f"{r['champion']:18} " + " ".join(f"{c:>18}" for c in cells))
    print("\n    median interval width of the difference / verdicts right:wrong (the rest: not enough data)")
    for r in rows_b:
        cells = [f"{f['width']:.4f} {f['right']}:{f['wrong']}" for f in r["estimators"].values()]
        print(f"{r['champion']:18} " + " ".join(f"{c:>18}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=12_000, help="champion sessions per run")
    parser.add_argument("--window", type=int, default=6_000, help="the last events the gate judges on")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--part", choices=("a", "ab"), default="ab", help="a: default exploration only")
    parser.add_argument("--quick", action="store_true", help="4,000 sessions, window 2,000, 2 seeds")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.window, args.seeds = 4_000, 2_000, 2
    configs = champion_configs()
    if args.part == "a":
        configs = {"share=0": configs["share=0"]}
    jobs = [(label, config, s, args.seed, args.sessions, args.window) for s in range(args.seeds) for label, config in configs.items()]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        cells = list(pool.map(run_cell, *zip(*jobs)))
    by_label = {label: [c for c in cells if c["label"] == label] for label in configs}
    rows_a = part_a(by_label["share=0"])
    rows_b = part_b(by_label) if args.part == "ab" else None
    print_tables(rows_a, rows_b, args)
    elapsed = time.perf_counter() - started
    print(f"\n{len(jobs)} runs in {elapsed:.0f} s ({args.workers} workers)")
    chosen = f"share={CHAMPION.uniform_share:g}" if rows_b else "share=0"
    value = med(c["served_value"] for c in by_label[chosen])
    baseline = med(c["served_value"] for c in by_label["share=0"])
    print(json.dumps({
        "name": "exploration_floor_served_value", "value": round(value, 5), "unit": "true expected streams per session",
        "baseline": round(baseline, 5), "ratio": round(value / baseline, 4), "chosen": chosen,
        "sessions": args.sessions, "window": args.window, "seeds": args.seeds, "seconds": round(elapsed, 1),
        "estimators": {name: ESTIMATOR_CLASSES[name].assumption for name in ESTIMATORS},
        "part_a": rows_a, "part_b": rows_b,
    }))


if __name__ == "__main__":
    main()
