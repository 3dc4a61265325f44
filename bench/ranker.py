"""Rankings and learn steps per second of the VW shelf ranker against the bare VW Python loop,
in the same run, with where a ranking's time goes.

Workload: 20 shelves x 8 slots, about 30 listener features and 8 features per shelf. The bare
loop calls Vowpal Wabbit directly with the ranker's VW arguments on pre-built example strings:
`predict` of the plain CCB example (what VW's own CCB does: parse, then score 20 + 19 + ... + 13
(slot, shelf) pairs) and `learn` of the labelled one. The ranker and the bare workspace learn
the same events in the same order (the ranker's own decisions), so they stay the same model and
score the same costs (checked, to float32 rounding). The ranker ranks as the service's does: a
saved model, whose costs come from its listener terms (bandit/vw/listener_terms.py); the
breakdown also times a model that has learned since it was saved, which VW's pass scores.

Timing: rounds of interleaved blocks (bare, ranker, ranker, bare) of --calls calls each; each
round gives a ratio (the bare loop's time over the ranker's, for the same calls), and the figure
is the median over rounds, so load that drifts during the run cancels out. The ratio is given
by the wall clock (the target's measure) and by this thread's CPU time, which other processes
on a shared machine disturb much less. Targets: rank >= 0.8x the bare predict loop
(aim 1.0x), learn >= 0.9x.

The breakdown times one decision's parts in CPU time, interleaved the same way: the scoring of
every shelf at every slot (`score`: from the listener terms; VW's one pass for comparison), the slot model,
sampling with conditional probabilities and marginals (the compiled kernel, and the numpy
reference for comparison), the seeded generator, building the Decision, and the other checks
of `rank`. The last line is JSON.

    .venv/bin/python bench/ranker.py [--explorer epsilon|softmax|squarecb] [--rounds 21 --calls 50]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pylibvw
import vowpalwabbit
from vowpalwabbit.pyvw import Example

from bandit import sampling
from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.policy import build_decision
from bandit.sampling import event_rng, sample_ranking
from bandit.types import Context, LoggedEvent, Outcome, Shelf
from bandit.vw.format import listener_line, shelf_line, slot_line
from bandit.vw.ranker import CCB, VWShelfRanker

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


class Counter:
    """Calls fn(i) with i counting on across blocks, so every block sees new examples."""

    def __init__(self, fn) -> None:
        self.fn, self.i = fn, 0

    def block(self, n: int) -> tuple[float, float]:
        """Seconds of wall clock and of this thread's CPU for n calls."""
        wall, cpu = time.perf_counter(), time.thread_time()
        for i in range(self.i, self.i + n):
            self.fn(i)
        self.i += n
        return time.perf_counter() - wall, time.thread_time() - cpu


def paired(bare: Counter, ours: Counter, rounds: int, calls: int) -> dict[str, float]:
    """Medians over rounds of blocks (bare, ours, ours, bare): bare time / our time, by the wall
    clock and by CPU time (what a shared machine's other load disturbs least), and the calls
    per second of each by the wall clock."""
    ratios, cpu_ratios, bare_rates, our_rates = [], [], [], []
    for _ in range(rounds):
        a1 = bare.block(calls)
        b1, b2 = ours.block(calls), ours.block(calls)
        a2 = bare.block(calls)
        ratios.append((a1[0] + a2[0]) / (b1[0] + b2[0]))
        cpu_ratios.append((a1[1] + a2[1]) / (b1[1] + b2[1]))
        bare_rates.append(2 * calls / (a1[0] + a2[0]))
        our_rates.append(2 * calls / (b1[0] + b2[0]))
    return {"ratio": statistics.median(ratios), "cpu_ratio": statistics.median(cpu_ratios),
            "bare": statistics.median(bare_rates), "ours": statistics.median(our_rates)}


def per_call_us(fns: dict, rounds: int, calls: int) -> dict[str, float]:
    """Median CPU microseconds per call of each fn(i), blocks of the fns interleaved round by round."""
    counters = {name: Counter(fn) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, counter in counters.items():
            times[name].append(counter.block(calls)[1] / calls * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=50, help="calls per block")
    parser.add_argument("--explorer", default="epsilon", choices=["epsilon", "softmax", "squarecb"])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shelves, contexts = workload(rng, 64)
    config = RankerConfig(explorer=args.explorer)
    ranker = VWShelfRanker(config)
    bare = vowpalwabbit.Workspace(config.vw_args() + " --quiet")
    index = {s.shelf_id: i for i, s in enumerate(shelves)}
    m = len(contexts)
    predict_lines = [[listener_line(c)] + [shelf_line(s) for s in shelves] + [slot_line(k) for k in range(N_SLOTS)]
                     for c in contexts]

    # logged events from the ranker's own decisions, which both learn in the same order
    n_events = 2 * args.rounds * args.calls + 600
    events, learn_lines = [], []
    warm = VWShelfRanker(config)
    for i in range(n_events):
        context = contexts[i % m]
        decision = warm.rank(context, shelves, N_SLOTS, event_id=f"log-{i}")
        rewards = tuple(float(rng.random() < 0.2 + 0.1 * (index[s] % 4)) for s in decision.shelf_ids)
        events.append(EventBatch.from_events([LoggedEvent(context, shelves, decision, Outcome(rewards))]))
        learn_lines.append(
            [listener_line(context)] + [shelf_line(s) for s in shelves]
            + [slot_line(k, label=(index[s], r, p)) for k, (s, r, p) in
               enumerate(zip(decision.shelf_ids, rewards, decision.slot_probs))]
        )
        if i < 600:
            warm.learn(events[-1])
    for i in range(600):  # both learn the first 600 events: a trained model, multi-slot interactions on
        ranker.learn(events[i])
        bare.learn(learn_lines[i])
    tmp = tempfile.TemporaryDirectory()
    ranker.save(Path(tmp.name) / "model")  # as the service serves it
    learning_ranker = VWShelfRanker.load(Path(tmp.name) / "model")
    learning_ranker.learn(events[600])  # a model that learns in process: scored by VW's pass

    gc.freeze()  # the thousands of pre-built events above: out of the collector's way for both loops
    rank = Counter(lambda i: ranker.rank(contexts[i % m], shelves, N_SLOTS, event_id=f"e{i}"))
    bare_predict = Counter(lambda i: bare.predict(predict_lines[i % m]))
    learn = Counter(lambda i: ranker.learn(events[600 + i]))
    bare_learn = Counter(lambda i: bare.learn(learn_lines[600 + i]))
    for counter in (rank, bare_predict):  # warm: caches, the compiled kernel
        counter.block(2 * m)
    ranking = paired(bare_predict, rank, args.rounds, args.calls)

    # one decision's parts, on the model as served
    scored = [ranker.score(c, shelves, N_SLOTS) for c in contexts]
    models = [ranker.slot_models(costs[:, None], None if pdf is None else pdf[None], single=True) for costs, pdf in scored]
    draws, budget = config.marginal_draws, config.exact_budget
    # (the fallbacks let this file measure a tree from before the compiled kernel, for comparison)
    kernel = getattr(sampling, "sampling_kernel", lambda: None)()
    reference_rankings = getattr(sampling, "sample_rankings_reference", sampling.sample_rankings)

    def reference(i):
        uniforms = event_rng(0, f"s{i}").random((N_SLOTS, max(draws, 1), 1))[None]
        reference_rankings(sampling._One(models[i % m]), uniforms, draws=draws, exact_budget=budget)

    samples = [sample_ranking(models[i], N_SLOTS, event_rng(0, f"d{i}"), draws=draws, exact_budget=budget) for i in range(m)]
    parts = per_call_us({
        "bare VW predict (parse + CCB predict)": lambda i: bare.predict(predict_lines[i % m]),
        "rank": lambda i: ranker.rank(contexts[i % m], shelves, N_SLOTS, event_id=f"p{i}"),
        "rank, a model learning in process": lambda i: learning_ranker.rank(contexts[i % m], shelves, N_SLOTS,
                                                                            event_id=f"q{i}"),
        "scoring (score)": lambda i: ranker.score(contexts[i % m], shelves, N_SLOTS),
        "VW one-pass scoring (its score)": lambda i: learning_ranker.score(contexts[i % m], shelves, N_SLOTS),
        "  of which VW predict_multi": _predict_multi_only(ranker, contexts, shelves),
        "slot model": lambda i: ranker.slot_models(scored[i % m][0][:, None], None if scored[i % m][1] is None
                                                   else scored[i % m][1][None], single=True),
        "seeded generator (event_rng)": lambda i: event_rng(0, f"g{i}"),
        "sampling + marginals": lambda i: sample_ranking(models[i % m], N_SLOTS, event_rng(0, f"s{i}"),
                                                         draws=draws, exact_budget=budget),
        "sampling + marginals, numpy reference": reference,
        "Decision (policy.build_decision)": lambda i: build_decision(
            f"b{i}", ranker.model_version, shelves, samples[i % m][0], samples[i % m][1].values, samples[i % m][1].stderr),
    }, args.rounds, args.calls)
    parts["sampling + marginals"] -= parts["seeded generator (event_rng)"]
    parts["sampling + marginals, numpy reference"] -= parts["seeded generator (event_rng)"]
    inside = in_rank(ranker, contexts, shelves, args.rounds * args.calls)

    # the two models are the same one: the ranker's costs are the bare workspace's one-pass costs
    # (to float32 rounding: VW adds each pair's products in float32, the listener terms in float64)
    expected = [_one_pass_costs(bare, c, shelves) for c in contexts]
    same = all(np.allclose(ranker.score(c, shelves, N_SLOTS)[0], e, rtol=0.0, atol=1e-5 * max(1.0, np.abs(e).max()))
               for c, e in zip(contexts, expected))
    learning = paired(bare_learn, learn, args.rounds, args.calls)
    tmp.cleanup()

    print(f"explorer {args.explorer}, {N_SHELVES} shelves x {N_SLOTS} slots, medians of {args.rounds} rounds of "
          f"paired blocks of {args.calls} calls; sampling kernel: {'compiled' if kernel else 'numpy reference'}")
    print(f"rank   {ranking['ours']:8.0f}/s   bare VW predict {ranking['bare']:8.0f}/s   ratio {ranking['ratio']:.2f} "
          f"(CPU time {ranking['cpu_ratio']:.2f})   target 0.8, aim 1.0")
    print(f"learn  {learning['ours']:8.0f}/s   bare VW learn   {learning['bare']:8.0f}/s   ratio {learning['ratio']:.2f} "
          f"(CPU time {learning['cpu_ratio']:.2f})   target 0.9")
    print(f"the same model in both (costs to 1e-5 of the largest): {same}")
    print("one decision, CPU microseconds: each part timed apart (warm caches), and inside `rank`:")
    for name, value in parts.items():
        print(f"  {value:8.1f}  {inside[name]:8.1f}  {name}" if name in inside else f"  {value:8.1f}            {name}")
    print(f"            {inside['other (checks)']:8.1f}  other (checks)")
    print(json.dumps({
        "name": "ranker_rank", "value": round(ranking["ours"], 1), "unit": "rankings/s",
        "baseline": round(ranking["bare"], 1), "ratio": round(ranking["ratio"], 3),
        "cpu_ratio": round(ranking["cpu_ratio"], 3), "learn_value": round(learning["ours"], 1),
        "learn_baseline": round(learning["bare"], 1), "learn_ratio": round(learning["ratio"], 3),
        "learn_cpu_ratio": round(learning["cpu_ratio"], 3), "explorer": args.explorer, "same_model": same,
        "sampling_kernel": bool(kernel), "per_decision_cpu_us": {k.strip(): round(v, 1) for k, v in parts.items()},
        "per_decision_in_rank_cpu_us": {k: round(v, 1) for k, v in inside.items()},
    }))


def in_rank(ranker: VWShelfRanker, contexts, shelves, calls: int) -> dict[str, float]:
    """Mean CPU microseconds of each part of `rank` as it runs inside `rank` (each part runs
    right after the one before it, so after VW's predict too): the parts are wrapped in timers
    for `calls` rankings, then restored."""
    import bandit.policy as policy_module

    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.thread_time() - start
        return wrapper

    patched = {"event_rng": "seeded generator (event_rng)", "sample_ranking": "sampling + marginals",
               "build_decision": "Decision (policy.build_decision)"}
    originals = {name: getattr(policy_module, name) for name in patched}
    for name, label in patched.items():
        setattr(policy_module, name, timed(label, originals[name]))
    ranker.score = timed("scoring (score)", ranker.score)
    ranker.slot_models = timed("slot model", ranker.slot_models)
    try:
        start = time.thread_time()
        for i in range(calls):
            ranker.rank(contexts[i % len(contexts)], shelves, N_SLOTS, event_id=f"in-{i}")
        total = time.thread_time() - start
    finally:
        for name, fn in originals.items():
            setattr(policy_module, name, fn)
        del ranker.score, ranker.slot_models
    out = {"rank": total / calls * 1e6} | {name: value / calls * 1e6 for name, value in spent.items()}
    out["other (checks)"] = out["rank"] - sum(value for name, value in out.items() if name != "rank")
    return out


def _predict_multi_only(ranker: VWShelfRanker, contexts, shelves):
    """VW's predict of the one-pass layout alone, on pre-parsed listener examples."""
    vw = ranker.workspace
    if hasattr(ranker, "_layout"):
        actions, slots = ranker._layout(tuple(shelves), N_SLOTS)
    else:
        copies = [ranker._shelf_examples_for(shelf, N_SLOTS) for shelf in shelves]
        actions = [copy[k] for k in range(N_SLOTS) for copy in copies]
        slots = ranker._slot_examples[(len(shelves), N_SLOTS)]
    shared = [Example(vw, listener_line(c), CCB) for c in contexts]
    return lambda i: pylibvw.vw.predict_multi(vw, [shared[i % len(shared)], *actions, *slots])


def _one_pass_costs(vw: vowpalwabbit.Workspace, context: Context, shelves) -> np.ndarray:
    lines = [listener_line(context)] + [shelf_line(s) for _ in range(N_SLOTS) for s in shelves] + [
        slot_line(k, include=range(k * N_SHELVES, (k + 1) * N_SHELVES)) for k in range(N_SLOTS)]
    examples = [Example(vw, line, CCB) for line in lines]
    pylibvw.vw.predict_multi(vw, examples)
    return np.array([e.get_partial_prediction() for e in examples[1:1 + N_SHELVES * N_SLOTS]]).reshape(N_SLOTS, N_SHELVES)


if __name__ == "__main__":
    main()
