"""Closed-loop runs: learning against the ground truth, delayed feedback, the decision log and
the `simulate` / `simulate-log` commands."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bandit.baselines import UniformRandomPolicy
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.vw.format import encode_features, parse_event
from bandit.vw.ranker import VWShelfRanker
from shelfbandit.cli import cli
from simulator.closed_loop import LoopConfig, run_closed_loop
from simulator.policies import PolicySpec
from simulator.world import World, WorldConfig

SESSIONS = 2500
TAIL = 1000
Z = 3.3  # one-sided 99.95%: a seeded run fails only if the effect were not there


@pytest.fixture(scope="module")
def learning_runs():
    world = World(WorldConfig.default(), np.random.default_rng(101))
    requests = world.draw_requests(SESSIONS, np.random.default_rng(102))
    runs = {}
    for spec in ("vw:explorer=squarecb", "uniform", "editorial", "oracle"):
        policy = PolicySpec.parse(spec).build(world, 5)
        runs[spec] = run_closed_loop(world, policy, requests, np.random.default_rng(103), name=spec).metrics
    return runs


@pytest.mark.parametrize("baseline", ["uniform", "editorial"])
def test_the_vw_ranker_learns_to_beat_the_baselines(learning_runs, baseline):
    """Paired on the same last 1000 requests, by true expected reward: the mean difference
    exceeds Z standard errors of the paired differences."""
    learner = learning_runs["vw:explorer=squarecb"]["expected_reward"].to_numpy()[-TAIL:]
    other = learning_runs[baseline]["expected_reward"].to_numpy()[-TAIL:]
    difference = learner - other
    assert difference.mean() - Z * difference.std(ddof=1) / np.sqrt(TAIL) > 0


def test_the_oracle_is_never_beaten(learning_runs):
    for name, metrics in learning_runs.items():
        assert (metrics["expected_reward"] <= metrics["oracle_reward"] + 1e-12).all(), name
    oracle = learning_runs["oracle"]
    assert np.abs(oracle["regret"]).max() < 1e-12
    assert np.array_equal(oracle["expected_reward"], oracle["oracle_reward"])


def test_editorial_runs_match_the_world_s_editorial_ranking(learning_runs):
    editorial = learning_runs["editorial"]
    assert np.allclose(editorial["expected_reward"], editorial["editorial_reward"])


class Recorder(UniformRandomPolicy):
    """Uniform random that remembers how many sessions it had ranked when it learned each event."""

    def __init__(self):
        super().__init__(seed=0)
        self.learned = {}  # event id -> sessions ranked before the learn call
        self.ranked = 0

    def rank(self, *args, **kwargs):
        self.ranked += 1
        return super().rank(*args, **kwargs)

    def learn(self, batch):
        for event_id in batch.event_ids:
            assert event_id not in self.learned  # nothing learned twice
            self.learned[event_id] = self.ranked


def test_delayed_rewards_are_learned_when_their_window_closes_and_late_ones_default():
    world = World(WorldConfig(delay_mean_s=120.0, sessions_per_hour=600.0), np.random.default_rng(1))
    n, learn_every, window = 600, 7, 300.0
    requests = world.draw_requests(n, np.random.default_rng(2))
    policy = Recorder()
    log = io.StringIO()
    config = LoopConfig(learn_every=learn_every, reward_window_s=window)
    result = run_closed_loop(world, policy, requests, np.random.default_rng(3), config=config, log=log)
    events = [parse_event(line) for line in log.getvalue().splitlines()]
    assert len(events) == n
    block_starts = np.arange(0, n, learn_every)
    for i, event in enumerate(events):
        closes = event.timestamp - world.config.start_epoch_s + window
        # learned before the first mini-batch that starts once its window has closed, if any
        due = block_starts[requests.time_s[block_starts] >= closes]
        assert policy.learned.get(event.event_id) == (int(due[0]) if len(due) else None), i
    streams = result.metrics["streams"].sum()
    observed = sum(sum(e.outcome.rewards) for e in events)
    # exponential delays with mean 120 s miss a 300 s window with probability exp(-2.5)
    late = 1 - observed / streams
    assert abs(late - np.exp(-2.5)) < 5 * np.sqrt(np.exp(-2.5) * (1 - np.exp(-2.5)) / streams)
    assert all(d for e in events for r, d in zip(e.outcome.rewards, e.outcome.defaulted) if r == 0.0)


def test_the_decision_log_is_dsjson_that_vw_s_own_reader_trains_on(tmp_path):
    world = World(WorldConfig.default(), np.random.default_rng(4))
    requests = world.draw_requests(150, np.random.default_rng(5))
    path = tmp_path / "decisions.jsonl"
    with open(path, "w") as log:
        ranker = VWShelfRanker(RankerConfig(explorer="squarecb"))
        result = run_closed_loop(world, ranker, requests, np.random.default_rng(6), log=log)
    lines = path.read_text().splitlines()
    events = [parse_event(line) for line in lines]
    assert [e.event_id for e in events] == [f"policy-{i}" for i in range(150)]
    streams = np.array([e.outcome.rewards for e in events])
    assert np.array_equal(streams, result.metrics[[f"streams_slot_{k}" for k in range(6)]].to_numpy())
    for event, request in zip(events, world.requests(requests)):  # booleans come back as VW tokens
        assert encode_features(event.context.features) == encode_features(request.context.features)
        assert event.context.listener_id == request.context.listener_id and event.baseline == request.baseline
    assert VWShelfRanker(RankerConfig()).learn_file(path) == 150


def test_loop_configs_are_checked():
    with pytest.raises(ValidationError, match="learn_every: must be a positive integer"):
        LoopConfig(learn_every=0)
    with pytest.raises(ValidationError, match="reward_window_s: must be >= 0"):
        LoopConfig(reward_window_s=-1.0)
    world = World(WorldConfig(delay_mean_s=60.0), np.random.default_rng(0))
    with pytest.raises(ValidationError, match="reward_window_s: must be > 0 when the world delays rewards"):
        run_closed_loop(world, UniformRandomPolicy(), world.draw_requests(5, np.random.default_rng(0)), np.random.default_rng(0))


@pytest.mark.parametrize("spec, message", [
    ("bandit", "policy: kind must be one of vw, uniform, editorial, popularity, oracle, model"),
    ("vw:explorer=bag", "explorer: must be one of epsilon, softmax, squarecb"),
    ("vw:epsilon=2", "epsilon: must lie in [0, 1]"),
    ("editorial:order=x", "policy: unknown options for 'editorial' (known: none)"),
    ("vw:explorer", "policy: options are key=value pairs"),
    ("model", "policy: 'model' needs path=FILE"),
])
def test_bad_policy_specs_fail_clearly(spec, message):
    with pytest.raises(ValidationError) as err:
        PolicySpec.parse(spec)
    assert str(err.value).startswith(message)


def test_policy_specs_carry_vw_options():
    spec = PolicySpec.parse("vw:explorer=squarecb,gamma_scale=5,interactions=listener*shelf")
    config = spec.ranker_config(3)
    assert (config.explorer, config.gamma_scale, config.interactions, config.seed) == ("squarecb", 5, ("listener*shelf",), 3)
    both = PolicySpec.parse("vw:interactions=listener*shelf+slot*shelf").ranker_config(0)
    assert both.interactions == ("listener*shelf", "slot*shelf")


def test_simulate_command_writes_metrics_log_plot_and_json(tmp_path):
    out = tmp_path / "sim"
    result = CliRunner().invoke(cli, ["simulate", "--sessions", "120", "--policy", "vw:explorer=squarecb", "--policy", "oracle",
                                      "--world", "n_segments=4,click_model=cascade", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["policies"]) == {"vw:explorer=squarecb", "oracle"}
    assert summary["policies"]["oracle"]["regret"] == pytest.approx(0.0, abs=1e-9)
    assert summary["world"]["click_model"] == "cascade"
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(metrics) == 240 and {"expected_reward", "oracle_reward", "cumulative_regret", "expected_slot_5"} <= set(metrics)
    assert (out / "simulate.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "decisions-oracle.jsonl").read_text().splitlines()) == 120


def test_simulate_log_command_writes_the_slate_table(tmp_path):
    out = tmp_path / "log.parquet"
    result = CliRunner().invoke(cli, ["simulate-log", "--events", "3000", "--policy", "editorial:epsilon=0.3",
                                      "--target", "softmax:temperature=0.5", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    table = pd.read_parquet(out)
    assert summary["rows"] == len(table) == 18000
    assert {"target_prob", "target_marginal"} <= set(table)
    assert summary["target_value"]["value"] > summary["logging_value"]["value"]  # the world's own logits rank better


@pytest.mark.parametrize("args, message", [
    (["simulate", "--sessions", "0"], "error: sessions: must be at least 1"),
    (["simulate", "--world", "click_model=dbn"], "error: click_model: must be one of position, cascade"),
    (["simulate", "--world", "n_slots=30"], "error: n_slots: must not exceed min_candidates (16)"),
    (["simulate", "--world-config", "{config}"], "error: --world-config: is not valid JSON"),
    (["simulate-log", "--policy", "greedy"], "error: policy: must be one of uniform, editorial, epsilon, softmax"),
    (["sweep", "--grid", "{config}"], "error: --grid: is not valid JSON"),
])
def test_command_errors_are_one_clear_line(tmp_path, args, message):
    """Through the installed entry point: exit status 2, one line on stderr, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "bad.json"
    config.write_text("{not json")
    args = [a.replace("{config}", str(config)) for a in args]
    binary = Path(sys.executable).parent / "shelfbandit"
    result = subprocess.run([str(binary), *args, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr


def test_simulate_reads_a_world_config_file(tmp_path):
    config = tmp_path / "world.json"
    config.write_text(json.dumps({"n_shelves": 12, "min_candidates": 8, "max_candidates": 12, "n_slots": 4}))
    result = CliRunner().invoke(cli, ["simulate", "--sessions", "40", "--policy", "uniform", "--world-config", str(config),
                                      "--world", "click_model=cascade", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    world = json.loads(result.stdout.strip().splitlines()[-1])["world"]
    assert (world["n_shelves"], world["n_slots"], world["click_model"]) == (12, 4, "cascade")
    assert "expected_slot_3" in pd.read_parquet(tmp_path / "out" / "metrics.parquet")
