"""Rankings and learn steps per second of the VW shelf ranker, next to a bare VW Python loop.

20 shelves x 8 slots, about 30 listener features and 8 features per shelf. Two bare loops call
Vowpal Wabbit directly with the same arguments on pre-built example strings: the plain CCB
example (what VW itself would be asked: parse + predict, parse + learn), and the one-pass
layout the ranker scores (one copy of the shelves per slot, so every slot scores every shelf).
Medians of repeated rounds; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import vowpalwabbit

from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.types import Context, LoggedEvent, Outcome, Shelf
from bandit.vw.format import listener_line, shelf_line, slot_line
from bandit.vw.ranker import VWShelfRanker

N_SHELVES, N_SLOTS = 20, 8


def workload(rng: np.random.Generator, n_contexts: int):
    shelves = tuple(
        Shelf(
            f"shelf-{i}",
            {"kind": f"kind{i % 7}", "source": f"src{i % 3}", "mood": f"mood{i % 5}", "lang": f"l{i % 4}",
             "age_days": float(i % 9), "length": 10.0 + i, "popularity": float(rng.random()), "fresh": i % 2 == 0},
        )
        for i in range(N_SHELVES)
    )
    contexts = [
        Context({**{f"taste_{j}": float(rng.random()) for j in range(24)}, "country": f"c{rng.integers(20)}",
                 "platform": ("ios", "android", "web")[rng.integers(3)], "hour": f"h{rng.integers(24)}",
                 "day": f"d{rng.integers(7)}", "tenure_years": float(rng.integers(10)), "premium": bool(rng.integers(2))})
        for _ in range(n_contexts)
    ]
    return shelves, contexts


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=600, help="calls per round")
    parser.add_argument("--explorer", default="epsilon", choices=["epsilon", "softmax", "squarecb"])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shelves, contexts = workload(rng, 64)
    config = RankerConfig(explorer=args.explorer)
    ranker = VWShelfRanker(config)
    bare = vowpalwabbit.Workspace(config.vw_args() + " --quiet")

    predict_lines = [[listener_line(c)] + [shelf_line(s) for s in shelves] + [slot_line(k) for k in range(N_SLOTS)]
                     for c in contexts]
    one_pass_lines = [
        [lines[0]] + [shelf_line(s) for _ in range(N_SLOTS) for s in shelves]
        + [slot_line(k, include=range(k * N_SHELVES, (k + 1) * N_SHELVES)) for k in range(N_SLOTS)]
        for lines in predict_lines
    ]
    decisions = [ranker.rank(c, shelves, N_SLOTS, event_id=f"warm-{i}") for i, c in enumerate(contexts)]
    events = [LoggedEvent(c, shelves, d, Outcome(tuple(rng.random(N_SLOTS).round(1)))) for c, d in zip(contexts, decisions)]
    batches = [EventBatch.from_events([e]) for e in events]
    index = {s.shelf_id: i for i, s in enumerate(shelves)}
    learn_lines = [
        [listener_line(e.context)] + [shelf_line(s) for s in shelves]
        + [slot_line(k, label=(index[s], r, p)) for k, (s, r, p) in
           enumerate(zip(e.decision.shelf_ids, e.outcome.rewards, e.decision.slot_probs))]
        for e in events
    ]
    m = len(contexts)
    for lines in predict_lines:  # both workspaces warm, multi-slot interactions on
        bare.predict(lines)
        bare.learn(learn_lines[0])

    results = {"rank": [], "bare_predict": [], "bare_one_pass": [], "learn": [], "bare_learn": [], "score": []}
    for _ in range(args.rounds):
        results["bare_predict"].append(rate(lambda i: bare.predict(predict_lines[i % m]), args.calls))
        results["bare_one_pass"].append(rate(lambda i: bare.predict(one_pass_lines[i % m]), args.calls))
        results["rank"].append(rate(lambda i: ranker.rank(contexts[i % m], shelves, N_SLOTS, event_id=f"e{i}"), args.calls))
        results["score"].append(rate(lambda i: ranker.score(contexts[i % m], shelves, N_SLOTS), args.calls))
        results["bare_learn"].append(rate(lambda i: bare.learn(learn_lines[i % m]), args.calls))
        results["learn"].append(rate(lambda i: ranker.learn(batches[i % m]), args.calls))
    med = {k: statistics.median(v) for k, v in results.items()}
    rank_ratio = med["rank"] / med["bare_predict"]
    learn_ratio = med["learn"] / med["bare_learn"]
    print(f"explorer {args.explorer}, {N_SHELVES} shelves x {N_SLOTS} slots, medians of {args.rounds} rounds x {args.calls} calls")
    print(f"rank (sampling + marginals) {med['rank']:9.0f}/s   bare VW predict {med['bare_predict']:9.0f}/s   ratio {rank_ratio:.2f}")
    print(f"rank (sampling + marginals) {med['rank']:9.0f}/s   bare VW one-pass {med['bare_one_pass']:8.0f}/s   ratio {med['rank'] / med['bare_one_pass']:.2f}")
    print(f"one-pass VW scoring only    {med['score']:9.0f}/s   bare VW predict {med['bare_predict']:9.0f}/s   ratio {med['score'] / med['bare_predict']:.2f}")
    print(f"learn                       {med['learn']:9.0f}/s   bare VW learn   {med['bare_learn']:9.0f}/s   ratio {learn_ratio:.2f}")
    print(json.dumps({
        "name": "ranker_rank", "value": round(med["rank"], 1), "unit": "rankings/s",
        "baseline": round(med["bare_predict"], 1), "ratio": round(rank_ratio, 3),
        "learn_value": round(med["learn"], 1), "learn_baseline": round(med["bare_learn"], 1),
        "learn_ratio": round(learn_ratio, 3), "score_only_ratio": round(med["score"] / med["bare_predict"], 3),
        "one_pass_baseline": round(med["bare_one_pass"], 1), "one_pass_ratio": round(med["rank"] / med["bare_one_pass"], 3),
        "explorer": args.explorer,
    }))


if __name__ == "__main__":
    main()
