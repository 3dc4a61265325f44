"""The launch gate (Python API and `shelfbandit evaluate`), on logs whose true values are known."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bandit.baselines import EditorialPolicy, UniformRandomPolicy
from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.vw.format import event_line
from bandit.vw.ranker import VWShelfRanker
from offline_eval.estimators import SHORT_NAMES
from offline_eval.evaluate import EstimatorResult
from offline_eval.gate import DO_NOT_SHIP, NOT_ENOUGH_DATA, SHIP, GateRule, compare, verdict
from offline_eval.intervals import Interval
from offline_eval.readers import slate_table
from tests.offline_eval_synth import PlackettLuce, draw_log, shelf_world_events, small_world, true_values

BIN = Path(sys.executable).parent / "shelfbandit"
RAMP = np.linspace(-1.0, 1.0, 5)
GOOD = PlackettLuce(np.stack([1.5 * RAMP, RAMP]))  # prefers the high-lift shelves
BAD = PlackettLuce(np.stack([-1.5 * RAMP, -RAMP]))
UNIFORM = PlackettLuce(np.zeros((2, 5)))


def logged(candidate, baseline, n_events, seed):
    """A uniform log with both targets' probabilities (the draws do not depend on the targets)."""
    world = small_world("cascade")
    log, cand = draw_log(world, UNIFORM, candidate, n_events, np.random.default_rng(seed))
    _, base = draw_log(world, UNIFORM, baseline, n_events, np.random.default_rng(seed))
    return world, log, cand, base


@pytest.mark.parametrize("candidate,baseline,expected", [(GOOD, BAD, SHIP), (BAD, GOOD, DO_NOT_SHIP)])
def test_the_gate_follows_the_true_difference(candidate, baseline, expected):
    world, log, cand, base = logged(candidate, baseline, 3000, seed=11)
    assert (true_values(world, candidate).sum() > true_values(world, baseline).sum()) == (expected == SHIP)
    result = compare(log, cand, base, rng=np.random.default_rng(0))
    assert result.verdict == expected, result.reason
    assert result.ship == (expected == SHIP)
    primary = result.difference["snips_rips"]
    assert primary.value == pytest.approx(result.candidate.estimates["snips_rips"].value - result.baseline.estimates["snips_rips"].value)
    assert set(result.difference) == set(result.candidate.estimates) == set(result.baseline.estimates)


def test_a_small_log_is_not_enough_data():
    _, log, cand, base = logged(GOOD, BAD, 60, seed=12)
    result = compare(log, cand, base, rng=np.random.default_rng(0))
    assert result.verdict == NOT_ENOUGH_DATA
    assert "effective sample size" in result.reason


def test_the_difference_is_paired_over_events():
    _, log, cand, _ = logged(GOOD, BAD, 500, seed=13)
    for ci in ("bootstrap", "normal"):
        result = compare(log, cand, cand, rng=np.random.default_rng(0), ci=ci)
        for d in result.difference.values():
            assert d.value == 0.0 and d.lower == 0.0 and d.upper == 0.0
        assert result.verdict == NOT_ENOUGH_DATA


def test_a_target_the_logger_could_not_have_shown_is_not_judged():
    events = shelf_world_events(EditorialPolicy(["shelf-2", "shelf-3", "shelf-4"]), 300, np.random.default_rng(1))
    result = compare(events, UniformRandomPolicy(), EditorialPolicy(["shelf-2", "shelf-3", "shelf-4"]),
                     rng=np.random.default_rng(0), rule=GateRule(min_ess=0.0))
    assert result.verdict == NOT_ENOUGH_DATA
    assert "never could have shown in 100.0% of events" in result.reason


def test_a_trainer_can_ask_the_gate_with_policies_on_a_batch():
    batch = EventBatch.from_events(shelf_world_events(UniformRandomPolicy(seed=1), 400, np.random.default_rng(5)))
    ranker = VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.1, seed=1))
    ranker.learn(batch)
    result = compare(batch, ranker, UniformRandomPolicy(), rng=np.random.default_rng(0), estimators="rips,snips_rips,cascade_dr")
    assert list(result.difference) == ["rips", "snips_rips", "cascade_dr"]
    # a batch does not carry the logger's slot distributions (logged events do): support is unknown
    assert result.candidate.estimates["rips"].unsupported_share is None


def difference(value, lower, upper) -> Interval:
    return Interval(value, lower, upper, np.array([value]), np.array([lower]), np.array([upper]))


def estimate(ess=500.0, unsupported=0.0, mean_weight=1.0) -> EstimatorResult:
    return EstimatorResult("x", 1.0, 0.9, 1.1, (1.0,), (0.9,), (1.1,), ess, (ess,), 2.0, mean_weight, unsupported, "")


RULES = [
    ("clearly better", estimate(), estimate(), difference(0.2, 0.1, 0.3), SHIP),
    ("clearly worse", estimate(), estimate(), difference(-0.2, -0.3, -0.1), DO_NOT_SHIP),
    ("straddles", estimate(), estimate(), difference(0.0, -0.1, 0.1), NOT_ENOUGH_DATA),
    ("better but below the lift", estimate(), estimate(), difference(0.04, 0.01, 0.07), NOT_ENOUGH_DATA),
    ("candidate ESS too small", estimate(ess=50.0), estimate(), difference(0.2, 0.1, 0.3), NOT_ENOUGH_DATA),
    ("baseline unsupported", estimate(), estimate(unsupported=0.2), difference(0.2, 0.1, 0.3), NOT_ENOUGH_DATA),
    ("no finite interval", estimate(), estimate(), difference(0.2, float("nan"), 0.3), NOT_ENOUGH_DATA),
    ("candidate mostly off the log", estimate(mean_weight=0.2), estimate(), difference(0.2, 0.1, 0.3), NOT_ENOUGH_DATA),
    ("candidate weights too heavy", estimate(mean_weight=3.0), estimate(), difference(0.2, 0.1, 0.3), NOT_ENOUGH_DATA),
    ("mean weight within the band", estimate(mean_weight=0.6), estimate(), difference(0.2, 0.1, 0.3), SHIP),
]


@pytest.mark.parametrize("case,cand,base,diff,expected", RULES, ids=[r[0] for r in RULES])
def test_verdict_rule(case, cand, base, diff, expected):
    min_lift = 0.05 if case == "better but below the lift" else 0.0
    assert verdict(GateRule(min_lift=min_lift), cand, base, diff)[0] == expected


# -- the command line, as a user runs it -------------------------------------------------------

def run(*args):
    result = subprocess.run([str(BIN), "evaluate", *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_help_documents_every_estimator_and_the_verdict_rule():
    result = run("--help")
    assert result.returncode == 0
    for name in SHORT_NAMES:
        assert f"  {name} " in result.stdout, name
    assert "do not ship" in result.stdout and "--min-lift" in result.stdout


def test_slate_table_json(tmp_path):
    _, log, cand, _ = logged(GOOD, BAD, 800, seed=14)
    slate_table(log, cand).to_parquet(tmp_path / "log.parquet")
    result = run("--log", str(tmp_path / "log.parquet"), "--estimators", "sips,iips,rips,snips_rips,pi",
                 "--ci", "bootstrap", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["n_events"] == 800
    assert list(payload["estimates"]) == ["sips", "iips", "rips", "snips_rips", "pi"]
    rips = payload["estimates"]["rips"]
    assert rips["lower"] <= rips["value"] <= rips["upper"] and len(rips["per_slot"]) == 3 and rips["ess"] > 0
    assert sum(rips["per_slot"]) == pytest.approx(rips["value"])
    assert "linear reward" in payload["estimates"]["pi"]["assumption"]
    assert any("uniform over orderings" in note for note in payload["estimates"]["pi"]["notes"])


def test_launch_gate_on_a_decision_log_writes_a_report(tmp_path):
    events = shelf_world_events(UniformRandomPolicy(seed=1), 1500, np.random.default_rng(6))
    (tmp_path / "joined.jsonl").write_text("".join(event_line(e) + "\n" for e in events))
    ranker = VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.3, seed=2))
    ranker.learn(EventBatch.from_events(shelf_world_events(UniformRandomPolicy(seed=2), 1500, np.random.default_rng(7))))
    ranker.save(tmp_path / "candidate.vw")
    result = run("--log", str(tmp_path / "joined.jsonl"), "--candidate", str(tmp_path / "candidate.vw"),
                 "--baseline", "uniform", "--out", str(tmp_path / "report"), "--json", "--resamples", "300")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["verdict"] in (SHIP, DO_NOT_SHIP, NOT_ENOUGH_DATA)
    assert payload["rule"]["primary"] == "snips_rips"
    assert set(payload["difference"]) == set(payload["candidate"]["estimates"])
    assert payload["candidate"]["estimates"]["snips_rips"]["unsupported_share"] == 0.0
    report = Path(payload["report"]).read_text()
    assert f"## Verdict: {payload['verdict']}" in report and "estimates.png" in report
    assert (tmp_path / "report" / "estimates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["--log", "absent.parquet"], "error: log: file does not exist"),
    (["--log", "{table}", "--baseline", "uniform"], "error: --baseline: needs --candidate"),
    (["--log", "{table}", "--candidate", "uniform"], "error: --candidate: scoring a policy needs a joined DSJSON log"),
    (["--log", "{table}", "--estimators", "rips,nope"], "error: estimators: unknown estimator"),
    (["--log", "{table}", "--level", "1.5"], "error: level: must lie strictly between 0 and 1"),
])
def test_errors_are_one_clear_line(tmp_path, args, message):
    _, log, cand, _ = logged(GOOD, BAD, 50, seed=15)
    slate_table(log, cand).to_csv(tmp_path / "log.csv", index=False)
    result = run(*[a.replace("{table}", str(tmp_path / "log.csv")) for a in args])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr


BROKEN_FILES = [
    ("header.csv", b"event_id,slot,action,reward,logging_prob\n", "error: log: holds no events"),
    ("empty.csv", b"", "error: log: cannot be read as CSV"),
    ("fake.parquet", b"not a parquet file", "error: log: cannot be read as Parquet"),
    ("latin.jsonl", b"{\"EventId\": \"caf\xe9\"}\n", "error: line 1: is not UTF-8 text"),
]


def _joined_line(**changes) -> bytes:
    from bandit.types import Context, LoggedEvent, Outcome, Shelf

    shelves = (Shelf("a"), Shelf("b"))
    decision = UniformRandomPolicy().rank(Context(), shelves, 1, event_id="e1")
    record = json.loads(event_line(LoggedEvent(Context(), shelves, decision, Outcome((1.0,)))))
    return (json.dumps({**record, **changes}) + "\n").encode()


BROKEN_FILES += [
    ("clock.jsonl", _joined_line(Timestamp="yesterday"), "error: line 1: line: malformed CCB DSJSON"),
    ("cost.jsonl", _joined_line(_outcomes=[{"_id": "0", "_a": [0, 1], "_p": [0.5, 0.5], "_label_cost": "high"}]),
     "error: line 1: line: malformed CCB DSJSON"),
]


@pytest.mark.parametrize("name,content,message", BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_a_broken_log_file_is_one_clear_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    result = run("--log", str(tmp_path / name), "--json")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr


def test_a_target_the_log_rarely_shows_is_not_enough_data_and_says_so():
    """A uniform log of 6-slot orderings and a target that shows one ordering 80% of the time: no
    logged slate is that ordering, so every observed slate weight is the target's exploration
    share, ESS equals n and the interval is narrow, but around a wrong value; only the mean
    importance weight shows it."""
    from offline_eval.readers import read_log
    from simulator.logging_mode import SlatePolicy, generate_slate_log
    from simulator.world import World, WorldConfig

    world = World(WorldConfig.default(), np.random.default_rng(0))
    table = generate_slate_log(world, SlatePolicy.uniform(world), 3000, np.random.default_rng(1),
                               target=SlatePolicy.editorial(world, epsilon=0.2))
    loaded = read_log(table)
    baseline = type(loaded.target)(prob=loaded.log.logging_prob, marginal=loaded.log.logging_marginal, name="baseline")
    result = compare(loaded.log, loaded.target, baseline, rng=np.random.default_rng(0), estimators="ips",
                     rule=GateRule(primary="ips"))
    ips = result.candidate.estimates["ips"]
    assert ips.mean_weight == pytest.approx(0.2) and ips.ess > 0.99 * 3000
    assert any(note.startswith("warning: the mean importance weight") for note in ips.notes)
    assert result.verdict == NOT_ENOUGH_DATA and "mean importance weight is 0.2" in result.reason
