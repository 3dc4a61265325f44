"""A/B arms without a server: the configuration's rules, the traffic split, stickiness, the
apprentice agreement, the A/B report's statistics (hand-computed values and coverage in the
simulator's world), offline estimates, the commands, and VW reading the new log fields."""

import json
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bandit.baselines import EditorialPolicy
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.explore import EpsilonGreedy
from bandit.types import Context, Outcome
from bandit.vw.format import join_record
from bandit.vw.ranker import VWShelfRanker
from service.eventlog.lines import ServedBy, decision_line
from service.experiments.ab_estimates import OnlineEstimate
from service.experiments.ab_input import parse_since
from service.experiments.ab_report import ab_report
from service.experiments.arms import ArmsConfig, ArmsFile, hash_unit
from service.experiments.live import top_choice_agreement
from service.experiments.offline_estimates import OfflineEstimate, OfflineEstimates, compare_offline, record_offline_estimate
from service.join.joiner import JoinConfig, Joiner
from service.join.reader import JoinedLog
from service.layout import DataPaths
from shelfbandit.cli import cli
from simulator.world import World, WorldConfig
from tests.service_support import catalogue, write_segment

SPLIT = {"salt": "spring", "arms": [
    {"name": "champion", "share": 0.85, "policy": "active"},
    {"name": "challenger", "share": 0.10, "policy": "uniform"},
    {"name": "holdout", "share": 0.05, "policy": "editorial", "mode": "logging-only"},
]}
Z95 = NormalDist().inv_cdf(0.975)


def listener_ids(n: int, seed: int) -> list[str]:
    return [f"listener-{i:016x}" for i in np.random.default_rng(seed).integers(0, 2**62, size=n).tolist()]


def arms_of(config: ArmsConfig, keys: list[str]) -> np.ndarray:
    return np.array([config.arm_index(key) for key in keys])


# -- configuration -------------------------------------------------------------------------------
def arms(*items, **top):
    return {"arms": list(items), **top}


INVALID = [
    ("not json", "arms config: must be valid JSON"),
    (json.dumps([1, 2]), "arms config: must be a JSON object"),
    (arms(), "arms: needs 1 to 16 arms"),
    (arms(*({"name": f"a{i}", "share": 1 / 17} for i in range(17))), "arms: needs 1 to 16 arms"),
    (arms({"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}), "arms: the shares must sum to 1 (found 0.9)"),
    (arms({"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}), "arms: arm names must be unique (found ['a'])"),
    (arms({"name": "Champion", "share": 1.0}), "arms[0].name: an arm name is 1-64 of a-z"),
    (arms({"name": "a", "share": -0.1}, {"name": "b", "share": 1.1}), "arms[0].share: must be a number in [0, 1]"),
    (arms({"name": "a", "share": "1"}), "arms[0].share: must be a number in [0, 1]"),
    (arms({"name": "a", "share": True}), "arms[0].share: must be a number in [0, 1]"),
    (arms({"name": "a", "share": 1.0, "policy": "best model!"}),
     "arms[0].policy: must be 'active', one of editorial, uniform, popularity, or a stored model version"),
    (arms({"name": "a", "share": 1.0, "mode": "shadow"}), "arms[0].mode: must be one of online, apprentice, logging-only"),
    (arms({"name": "a", "share": 1.0, "policy": "editorial", "mode": "apprentice"}), "arms[0].policy: an apprentice arm serves the editorial order"),
    (arms({"name": "a", "share": 1.0, "weight": 2}), "arms[0]: unknown fields (known: name, share, policy, mode) (found ['weight'])"),
    (arms({"name": "a"}), "arms[0].share: is required"),
    (arms({"name": "a", "share": 1.0}, control="a"), "arms config: unknown fields (known: salt, arms) (found ['control'])"),
    (arms({"name": "a", "share": 1.0}, salt="x" * 129), "salt: must be a string of at most 128 characters"),
    ({"arms": "a"}, "arms: must be a list of arms"),
]


@pytest.mark.parametrize("config, message", INVALID)
def test_an_invalid_arms_configuration_is_refused_naming_the_field(config, message):
    text = config if isinstance(config, str) else json.dumps(config)
    with pytest.raises(ValidationError) as refused:
        ArmsConfig.from_json(text)
    assert str(refused.value).startswith(message)


def test_a_configuration_round_trips_through_its_file(tmp_path):
    config = ArmsConfig.from_dict(SPLIT)
    assert [(a.name, a.share, a.policy, a.mode, a.learn) for a in config.arms] == [
        ("champion", 0.85, "active", "online", True), ("challenger", 0.10, "uniform", "online", True),
        ("holdout", 0.05, "editorial", "logging-only", False)]
    file = ArmsFile(tmp_path)
    assert file.read() is None
    file.write(config)
    assert file.read() == config
    assert file.clear() and file.read() is None and not file.clear()
    assert ArmsConfig.default().names == ("main",)


# -- the traffic split ---------------------------------------------------------------------------
def test_the_traffic_split_holds_within_sampling_error_over_10000_listeners():
    config = ArmsConfig.from_dict(SPLIT)
    n = 10_000
    counts = np.bincount(arms_of(config, listener_ids(n, seed=1)), minlength=3)
    for arm, count in zip(config.arms, counts):
        expected, sd = n * arm.share, math.sqrt(n * arm.share * (1 - arm.share))
        assert abs(count - expected) <= 4 * sd, (arm.name, count, expected, sd)
    # the hash's unit values are uniform on [0, 1): Kolmogorov-Smirnov distance within its 0.1% critical value
    u = np.sort([hash_unit("spring", key) for key in listener_ids(n, seed=2)])
    ks = max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n)


def test_a_listener_stays_in_one_arm_and_only_the_shares_moved_move_listeners():
    keys = listener_ids(10_000, seed=3)
    config = ArmsConfig.from_dict(SPLIT)
    first = arms_of(config, keys)
    # the same shares under new policies and modes (a reload that does not change the split): nobody moves
    repolicied = ArmsConfig.from_dict({"salt": "spring", "arms": [
        {"name": "champion", "share": 0.85, "policy": "vw-0123456789ab"},
        {"name": "challenger", "share": 0.10, "policy": "active", "mode": "apprentice"},
        {"name": "holdout", "share": 0.05, "policy": "popularity"},
    ]})
    assert (arms_of(repolicied, keys) == first).all()
    assert (arms_of(ArmsConfig.from_json(config.to_json()), keys) == first).all()
    # ramping the challenger from 10% to 15% at the champion's expense moves only champion -> challenger
    ramped = ArmsConfig.from_dict({"salt": "spring", "arms": [
        {"name": "champion", "share": 0.80}, {"name": "challenger", "share": 0.15}, {"name": "holdout", "share": 0.05}]})
    after = arms_of(ramped, keys)
    moved = first != after
    assert set(zip(first[moved].tolist(), after[moved].tolist())) == {(0, 1)}
    assert abs(moved.mean() - 0.05) <= 4 * math.sqrt(0.05 * 0.95 / len(keys))
    # a new salt reshuffles: about 1 - sum(share^2) of the listeners change arm
    reshuffled = arms_of(ArmsConfig.from_dict({**SPLIT, "salt": "autumn"}), keys)
    p_change = 1 - sum(a.share**2 for a in config.arms)
    assert abs((reshuffled != first).mean() - p_change) <= 4 * math.sqrt(p_change * (1 - p_change) / len(keys))


def test_an_arm_with_share_zero_gets_nobody():
    config = ArmsConfig.from_dict(arms({"name": "a", "share": 0.0}, {"name": "b", "share": 1.0}, {"name": "c", "share": 0.0}))
    assert set(arms_of(config, listener_ids(2000, seed=4)).tolist()) == {1}


# -- apprentice agreement ------------------------------------------------------------------------
def test_the_top_choice_agreement_follows_the_model_given_the_shelves_above():
    # epsilon-greedy over costs: slot 0 prefers shelf 2, slot 1 prefers shelf 2 then shelf 0,
    # slot 2 is indifferent between shelves 1 and 3 (a tie)
    costs = np.array([[0.5, 0.9, -1.0, 0.1], [0.0, 0.5, -1.0, 0.7], [0.9, 0.2, 0.9, 0.2]])
    model = EpsilonGreedy(0.2).slot_model(costs)
    assert top_choice_agreement(model, np.array([2, 0, 1])).tolist() == [True, True, False]  # slot 2: a tie is no agreement
    assert top_choice_agreement(model, np.array([0, 2, 3])).tolist() == [False, True, False]
    assert top_choice_agreement(model, np.array([2, 1, 3])).tolist() == [True, False, True]  # slot 2: shelf 0 or 3 left
    editorial = EditorialPolicy().slot_model(Context(), catalogue(4), 3, ("shelf-3", "shelf-1", "shelf-0"))
    assert top_choice_agreement(editorial, np.array([3, 1, 0])).tolist() == [True, True, True]


# -- the A/B report: hand-computed values --------------------------------------------------------
def slate_rows(sessions: list[tuple[str, str | None, list[float]]], **columns) -> pd.DataFrame:
    """(arm, listener id, rewards per slot) per session -> slate table rows."""
    rows = []
    for i, (arm, listener, rewards) in enumerate(sessions):
        for k, reward in enumerate(rewards):
            rows.append({"event_id": f"e{i}", "slot": k, "action": f"s{k}", "reward": reward, "logging_prob": 1.0,
                         "timestamp": 1000.0 + i, "model_version": f"{arm}-v", "listener_id": listener, "arm": arm,
                         "arm_mode": "online", "learn": True, "agreement": None,
                         **{name: values[i][k] for name, values in columns.items()}})
    return pd.DataFrame(rows)


def test_the_report_on_a_tiny_log_matches_the_hand_computation():
    slates = slate_rows([
        ("a", "x", [1.0, 0.0]), ("a", "x", [0.0, 0.0]), ("a", "y", [1.0, 1.0]),
        ("b", "z", [0.0, 0.0]), ("b", "w", [0.0, 1.0]), ("b", None, [1.0, 0.0]),
    ])
    report = ab_report(slates)
    a, b = report.arm("a"), report.arm("b")
    assert report.control == "a" and (a.n_sessions, a.n_listeners, b.n_sessions, b.n_listeners) == (3, 2, 3, 3)
    # a: listener sums R = (1, 2), sessions N = (2, 1): v = 1; psi = (R - v N) / mean N = (-2/3, 2/3);
    # se^2 = var(psi) / 2 = (8/9) / 2
    assert a.reward.value == pytest.approx(1.0) and a.reward.stderr == pytest.approx(2 / 3)
    assert a.reward.per_slot == pytest.approx((2 / 3, 1 / 3))
    # b: three units (the session without a listener is its own) R = (0, 1, 1): v = 2/3, se^2 = (1/3) / 3
    assert b.reward.value == pytest.approx(2 / 3) and b.reward.stderr == pytest.approx(1 / 3)
    # b - a: -1/3, se = sqrt(4/9 + 1/9)
    assert b.difference.value == pytest.approx(-1 / 3) and b.difference.stderr == pytest.approx(math.sqrt(5) / 3)
    assert b.difference.lower == pytest.approx(-1 / 3 - Z95 * math.sqrt(5) / 3)
    assert a.difference is None and a.agreement is None and a.offline is None
    assert ab_report(slates, control="b").arm("a").difference.value == pytest.approx(1 / 3)
    assert ab_report(slates, since=1002.0).n_sessions == 4
    with pytest.raises(ValidationError, match="control: is not an arm"):
        ab_report(slates, control="c")


def test_apprentice_agreement_is_the_share_of_compared_slots_per_listener_unit():
    agreement = [[True, False], [True, True], [False, False]]
    slates = slate_rows([("app", "x", [0.0, 0.0]), ("app", "x", [1.0, 0.0]), ("app", "y", [0.0, 0.0])], agreement=agreement)
    result = ab_report(slates).arm("app").agreement
    # x: 3 of 4 slots agreed, y: 0 of 2 -> 3/6; psi = (agreed - v compared) / mean compared = (1/3, -1/3)
    assert result.value == pytest.approx(0.5) and result.stderr == pytest.approx(math.sqrt((2 / 9) / 2))
    assert result.per_slot == pytest.approx((2 / 3, 1 / 3))


def test_offline_and_online_are_compared_by_interval_and_z_score():
    online = OnlineEstimate(0.5, 0.05, Z95)
    agreeing = compare_offline(online, OfflineEstimate(0.45, 0.40, 0.50, 0.95, "snips_rips", "test"), Z95)
    assert agreeing.inside and agreeing.difference == pytest.approx(0.05) and agreeing.consistent
    off = compare_offline(online, OfflineEstimate(0.30, 0.25, 0.35, 0.95, "snips_rips", "test"), Z95)
    offline_se = 0.10 / (2 * Z95)
    assert not off.inside and off.z_score == pytest.approx(0.2 / math.hypot(0.05, offline_se)) and not off.consistent


def test_since_accepts_epoch_seconds_iso_times_and_durations():
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2024-01-01T00:00:00Z") == 1_704_067_200.0 == parse_since("2024-01-01T00:00:00")
    assert parse_since("24h", now=100_000.0) == 100_000.0 - 86_400.0
    with pytest.raises(ValidationError, match="since: must be epoch seconds"):
        parse_since("yesterday")


# -- the A/B report: coverage in the simulator's world -------------------------------------------
def test_the_report_intervals_cover_the_true_difference_at_their_level():
    """Editorial against oracle rankings in the default world: 300 experiments of 2,000 sessions,
    each with its own salt (a new random split of the listeners), realised streams drawn by the
    world. The truth is the mean expected reward per session over 400,000 sessions."""
    world = World(WorldConfig.default(), np.random.default_rng(11))
    rng = np.random.default_rng(12)
    population = world.draw_requests(400_000, rng)
    true_editorial = world.expected_slot_rewards(population, world.editorial_rankings(population)).sum(axis=1).mean()
    true_oracle = world.expected_slot_rewards(population, world.oracle_rankings(population)).sum(axis=1).mean()
    truth = true_oracle - true_editorial
    n_experiments, n_sessions, level = 300, 2000, 0.95
    covered = covered_editorial = 0
    z_scores = []
    for experiment in range(n_experiments):
        batch = world.draw_requests(n_sessions, rng)
        config = ArmsConfig.from_dict({"salt": f"experiment-{experiment}", "arms": [
            {"name": "editorial", "share": 0.5}, {"name": "oracle", "share": 0.5}]})
        listeners = np.unique(batch.listener)
        arm_of_listener = np.zeros(world.config.n_listeners, dtype=np.int64)
        arm_of_listener[listeners] = arms_of(config, [world.listener_ids[i] for i in listeners.tolist()])
        arm = arm_of_listener[batch.listener]
        rankings = np.where(arm[:, None] == 1, world.oracle_rankings(batch), world.editorial_rankings(batch))
        streams = world.sample_rewards(batch, rankings, rng)
        n_slots = streams.shape[1]
        slates = pd.DataFrame({
            "event_id": np.repeat(np.arange(n_sessions), n_slots), "slot": np.tile(np.arange(n_slots), n_sessions),
            "reward": streams.ravel(), "timestamp": 0.0, "model_version": "v", "arm_mode": "online", "agreement": None,
            "arm": np.repeat(np.array(config.names)[arm], n_slots),
            "listener_id": np.repeat(np.array(world.listener_ids, dtype=object)[batch.listener], n_slots),
        })
        report = ab_report(slates, order=["editorial", "oracle"], level=level)
        difference = report.arm("oracle").difference
        covered += difference.lower <= truth <= difference.upper
        editorial = report.arm("editorial").reward
        covered_editorial += editorial.lower <= true_editorial <= editorial.upper
        z_scores.append((difference.value - truth) / difference.stderr)
    tolerance = 3 * math.sqrt(level * (1 - level) / n_experiments)  # 3 binomial standard errors: 0.038
    assert abs(covered / n_experiments - level) <= tolerance, covered
    assert abs(covered_editorial / n_experiments - level) <= tolerance, covered_editorial
    # the standard errors are not inflated either: the z-scores have unit spread (chi-square bound on their variance)
    assert 0.80 <= np.std(z_scores) <= 1.20


# -- offline estimates ----------------------------------------------------------------------------
EVALUATE_OUTPUT = {
    "n_events": 3000, "level": 0.9, "verdict": "ship", "rule": {"primary": "snips_rips"},
    "candidate": {"target": "candidate", "estimates": {
        "rips": {"value": 0.80, "lower": 0.70, "upper": 0.90},
        "snips_rips": {"value": 0.61, "lower": 0.55, "upper": 0.67}}},
    "baseline": {"estimates": {"snips_rips": {"value": 0.5, "lower": 0.45, "upper": 0.55}}},
}


def test_offline_estimates_come_from_the_estimates_file_and_the_trainer_records(tmp_path):
    records = tmp_path / "training" / "records.jsonl"
    records.parent.mkdir()
    gate = {"record": "gate", "time": 1.7e9, "candidate": "squarecb", "active_version": "vw-000000000000", "estimator": "snips_rips",
            "level": 0.95, "active_estimate": {"value": 0.1, "lower": 0.0, "upper": 0.2}, "verdict": "ship"}
    records.write_text("\n".join([
        json.dumps({**gate, "candidate_version": "vw-dddddddddddd", "candidate_estimate": {"value": 0.7, "lower": 0.6, "upper": 0.8}}),
        json.dumps({**gate, "candidate_version": "vw-dddddddddddd", "candidate_estimate": {"value": 0.72, "lower": 0.65, "upper": 0.79}}),
        json.dumps({"record": "promoted", "version": "vw-dddddddddddd", "activated": True, "difference": {"value": 0.1, "lower": 0.05, "upper": 0.15}}),
        json.dumps({"record": "gate", "candidate_version": "vw-aaaaaaaaaaaa", "candidate_estimate": {"value": 0.4, "lower": 0.3, "upper": 0.5}}),
        "not json at all",
        json.dumps({"record": "refused", "version": "vw-bbbbbbbbbbbb", "reason": "no estimate here"}),
        json.dumps(["a", "list"]),
        json.dumps({"version": "vw-cccccccccccc", **EVALUATE_OUTPUT}),
    ]) + "\n")
    record_offline_estimate(tmp_path, OfflineEstimate(0.2, 0.1, 0.3, 0.95, "ips", "test"), arm="holdout", version=None)
    record_offline_estimate(tmp_path, OfflineEstimate(0.45, 0.35, 0.55, 0.95, "dr", "test"), arm=None, version="vw-aaaaaaaaaaaa")
    found = OfflineEstimates(tmp_path)
    assert found.unreadable_records == 1
    assert found.find("holdout", "vw-zzz").value == 0.2
    assert found.find("champion", "vw-aaaaaaaaaaaa").estimator == "dr"  # the estimates file wins over the trainer's
    cccc = found.find("champion", "vw-cccccccccccc")
    assert (cccc.value, cccc.estimator, cccc.level, cccc.source) == (0.61, "snips_rips", 0.9, "training/records.jsonl")
    assert found.find("champion", "vw-bbbbbbbbbbbb") is None and found.find("champion", None) is None
    # a trainer's gate records: the last estimate of the candidate before its promotion; the
    # promotion record's difference is not an estimate of the version's value
    promoted = found.find("champion", "vw-dddddddddddd")
    assert (promoted.value, promoted.lower, promoted.upper, promoted.estimator, promoted.recorded_at) == (0.72, 0.65, 0.79, "snips_rips", 1.7e9)
    assert found.find("champion", "vw-000000000000") is None
    with pytest.raises(ValidationError, match="name the arm or the model version"):
        record_offline_estimate(tmp_path, cccc, arm=None, version=None)


# -- commands on a joined data directory ---------------------------------------------------------
def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def joined_data_dir(root, config: ArmsConfig, n: int = 60):
    """Decisions served by each arm's policy (VW for `active`), rewards on slot 0 for the first
    arm's listeners, joined by the joiner."""
    paths = DataPaths(root)
    ranker = VWShelfRanker(RankerConfig(epsilon=0.3, seed=0))
    shelves = catalogue(5)
    lines, rewards = [], []
    for i in range(n):
        listener = f"listener-{i % 20}"
        arm = config.arms[config.arm_index(listener)]
        policy = ranker if arm.policy == "active" and arm.mode != "apprentice" else EditorialPolicy()
        context = Context({"segment": f"s{i % 3}"}, listener)
        decision = policy.rank(context, shelves, 2, event_id=f"ev-{i:03d}", baseline=("shelf-4", "shelf-3"))
        agreement = (True, False) if arm.mode == "apprentice" else None
        served_by = ServedBy(arm.name, arm.mode, arm.learn, agreement, "vw-x" if agreement else None)
        lines.append(decision_line(context, shelves, decision, timestamp=1_700_000_000.0 + i, baseline=("shelf-4", "shelf-3"), served_by=served_by))
        if arm is config.arms[0]:
            rewards.append(json.dumps({"event_id": decision.event_id, "slot": 0, "value": 1.0, "reward_id": None,
                                       "received": 1_700_000_000.5 + i, "decided": 1_700_000_000.0 + i}).encode() + b"\n")
    write_segment(paths.decisions, "decisions", lines, 1)
    write_segment(paths.rewards, "rewards", rewards, 2)
    ArmsFile(root).write(config)
    with Joiner(root, JoinConfig(60.0, grace_s=0.0)) as joiner:
        joiner.run_once()
    return paths


def test_ab_report_command_writes_the_report_and_the_plot_and_ends_in_json(tmp_path):
    config = ArmsConfig.from_dict({"salt": "cli", "arms": [
        {"name": "champion", "share": 0.5}, {"name": "holdout", "share": 0.3, "policy": "editorial", "mode": "logging-only"},
        {"name": "apprentice", "share": 0.2, "policy": "active", "mode": "apprentice"}]})
    joined_data_dir(tmp_path / "data", config)
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text("progress lines...\n" + json.dumps(EVALUATE_OUTPUT) + "\n")
    recorded = run_cli("arms", "record-estimate", "--data-dir", tmp_path / "data", "--arm", "holdout", evaluation)
    assert recorded.exit_code == 0 and "snips_rips 0.61 [0.55, 0.67]" in recorded.output
    result = run_cli("ab-report", "--data-dir", tmp_path / "data", "--out", tmp_path / "report", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    by_arm = {a["arm"]: a for a in summary["arms"]}
    assert summary["control"] == "champion" and list(by_arm) == ["champion", "holdout", "apprentice"]
    assert sum(a["sessions"] for a in summary["arms"]) == summary["n_sessions"] == 60
    assert by_arm["champion"]["reward_per_session"]["value"] == 1.0  # every champion session was rewarded at slot 0
    assert by_arm["holdout"]["reward_per_session"]["value"] == 0.0
    assert by_arm["holdout"]["difference_vs_control"]["value"] == -1.0
    assert by_arm["holdout"]["modes"] == ["logging-only"] and by_arm["holdout"]["model_versions"] == {"editorial": by_arm["holdout"]["sessions"]}
    assert by_arm["holdout"]["offline"]["inside"] is False and by_arm["holdout"]["offline"]["difference"] == pytest.approx(-0.61)
    assert by_arm["apprentice"]["agreement"]["value"] == 0.5 and by_arm["apprentice"]["agreement"]["per_slot"] == [1.0, 0.0]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| holdout | 0.61 [0.55, 0.67] | snips_rips |" in report and "## Apprentice agreement" in report
    assert (tmp_path / "report" / "ab_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    slates = JoinedLog(tmp_path / "data").slate_table()
    assert set(slates.groupby("arm")["learn"].unique().map(tuple)) == {(True,), (False,)}
    assert (slates["learn"] == (slates["arm"] != "holdout")).all()


def test_arms_commands_show_set_and_clear_the_configuration(tmp_path):
    data_dir = tmp_path / "data"
    assert json.loads(run_cli("arms", "show", "--data-dir", data_dir, "--json").output)["source"] == "default"
    good = tmp_path / "arms.json"
    good.write_text(json.dumps(SPLIT))
    assert run_cli("arms", "set", "--data-dir", data_dir, good).exit_code == 0
    shown = json.loads(run_cli("arms", "show", "--data-dir", data_dir, "--json").output.splitlines()[-1])
    assert shown == {"source": "file", **ArmsConfig.from_dict(SPLIT).to_dict()}
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(arms({"name": "a", "share": 1.0, "policy": "vw-0123456789ab"})))
    refused = CliRunner().invoke(cli, ["arms", "set", "--data-dir", str(data_dir), str(pinned)])
    assert isinstance(refused.exception, ValidationError) and "arms[0].policy: no model 'vw-0123456789ab'" in str(refused.exception)
    assert ArmsFile(data_dir).read() == ArmsConfig.from_dict(SPLIT)  # unchanged
    assert "arms cleared" in run_cli("arms", "clear", "--data-dir", data_dir).output
    assert ArmsFile(data_dir).read() is None
    for command in (["arms", "show"], ["arms", "set"], ["ab-report"]):
        helped = run_cli(*command, "--help")
        assert helped.exit_code == 0 and "--data-dir" in helped.output
    assert "--json" in run_cli("ab-report", "--help").output and "--out" in run_cli("ab-report", "--help").output
    empty = CliRunner().invoke(cli, ["ab-report", "--data-dir", str(tmp_path / "nothing")])
    assert isinstance(empty.exception, ValidationError) and "has no joined events yet" in str(empty.exception)


def test_vw_learns_a_joined_part_holding_the_arm_fields(tmp_path):
    """VW's own DSJSON reader ignores `_arm`, `_arm_mode`, `_learn`, `_agreement` and `_learner_version`."""
    config = ArmsConfig.from_dict({"arms": [{"name": "on", "share": 0.5}, {"name": "app", "share": 0.5, "mode": "apprentice"}]})
    paths = joined_data_dir(tmp_path, config, n=40)
    [part] = JoinedLog(tmp_path).parts()
    records = [json.loads(line) for line in part.jsonl.read_text().splitlines()]
    assert {(r["_arm"], r["_arm_mode"], r["_learn"], "_agreement" in r) for r in records} == {("on", "online", True, False), ("app", "apprentice", True, True)}
    assert VWShelfRanker(RankerConfig(seed=1)).learn_file(part.jsonl) == 40
    assert paths.root == tmp_path


def test_a_logged_decision_keeps_its_arm_fields_through_the_join():
    ranker = VWShelfRanker(RankerConfig(epsilon=0.3))
    shelves = catalogue(4)
    decision = ranker.rank(Context({"a": "b"}, "listener-1"), shelves, 2, event_id="e1")
    served_by = ServedBy("challenger", "logging-only", False)
    record = json.loads(decision_line(Context({"a": "b"}, "listener-1"), shelves, decision, timestamp=1.0, baseline=(), served_by=served_by))
    joined = join_record(record, Outcome((1.0, 0.0)))
    assert (joined["_arm"], joined["_arm_mode"], joined["_learn"], joined["_listener_id"]) == ("challenger", "logging-only", False, "listener-1")
    assert "_agreement" not in joined


# -- the worker's arms: start-up refusal and the popularity baseline ----------------------------------
def experiment_for(root):
    from service.experiments.live import Experiment
    from service.models.active import ActiveModel
    from service.models.store import ModelStore
    from service.ops.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    store = ModelStore(DataPaths(root).models)
    return Experiment(root, store, ActiveModel(store, metrics), metrics, poll_s=60.0), metrics


def test_a_worker_starting_with_an_invalid_arms_file_serves_the_default_arm_and_says_why(tmp_path):
    ArmsFile(tmp_path).path.write_text(json.dumps(arms({"name": "a", "share": 1.0, "policy": "vw-0123456789ab"})))
    experiment, metrics = experiment_for(tmp_path)
    experiment.start()
    try:
        assert experiment.current.config == ArmsConfig.default() and experiment.current.source == "default"
        assert experiment.refused.reason.startswith("arms[0].policy: no model 'vw-0123456789ab' in the store")
        assert metrics.registry.get_sample_value("shelfbandit_arms_config_refused") == 1.0
        ArmsFile(tmp_path).write(ArmsConfig.from_dict(SPLIT))
        experiment.poll_once()
        assert experiment.current.config == ArmsConfig.from_dict(SPLIT) and experiment.refused is None
        assert metrics.registry.get_sample_value("shelfbandit_arm_share", {"arm": "challenger", "mode": "online"}) == 0.10
    finally:
        experiment.stop()


def test_the_popularity_arm_ranks_by_the_joined_reward_rate_leaving_out_logging_only_events(tmp_path):
    config = ArmsConfig.from_dict({"arms": [
        {"name": "popular", "share": 0.5, "policy": "popularity"},
        {"name": "holdout", "share": 0.5, "policy": "editorial", "mode": "logging-only"}]})
    joined_data_dir(tmp_path, config, n=60)  # editorial (shelf-4 first) served everywhere; only the first arm's slot 0 rewarded
    experiment, _ = experiment_for(tmp_path)
    experiment.poll_once()
    policy = experiment.policy_of(experiment.current, config.arms[0])
    slates = JoinedLog(tmp_path).slate_table()
    learnable = slates[slates["learn"]]
    assert policy.shows == learnable.groupby("action")["reward"].size().astype(float).to_dict()
    assert policy.reward_sums["shelf-4"] == learnable[learnable["action"] == "shelf-4"]["reward"].sum() > 0
    assert policy.rank(Context(), catalogue(5), 2, event_id="p").shelf_ids[0] == "shelf-4"
    assert experiment.popularity.refresh() is policy  # no new part: the same fitted policy
