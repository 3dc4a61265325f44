"""The joiner: readiness after the window, default rewards, aggregation, exactly-once output,
and VW training on what it writes."""

import json

import numpy as np
import pandas as pd
import pylibvw
import pytest
import vowpalwabbit
from vowpalwabbit.pyvw import Example, LabelType

from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.types import LoggedEvent, Outcome
from bandit.vw.format import epoch_seconds, listener_line, shelf_line, slot_line
from bandit.vw.ranker import VWShelfRanker
from offline_eval.readers import read_dsjson, read_log
from service.join.joiner import JoinConfig, Joiner, JoinerBusy
from service.join.parts import Checkpoint
from service.join.reader import JoinedLog
from service.join.rewards import slot_rewards
from service.layout import DataPaths
from tests.service_support import logged_decisions, reward, write_segment

T0 = 1_800_000_000.0
WINDOW = 60.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def joined_records(data_dir) -> list[dict]:
    return [json.loads(line) for part in JoinedLog(data_dir).parts() for line in part.jsonl.read_text().splitlines()]


def test_an_event_is_joined_after_its_window_with_its_rewards_and_the_default(tmp_path):
    paths = DataPaths(tmp_path)
    ids, lines, decisions, _shelves = logged_decisions(1, T0, 1.0, n_slots=3)
    write_segment(paths.decisions, "decisions", lines, 1)
    event = ids[0]
    write_segment(paths.rewards, "rewards", [
        reward(event, 0, 1.0, T0 + 5, T0),
        reward(event, 0, 4.0, T0 + 9, T0),   # later: ignored under "earliest"
        reward(event, 2, 0.5, T0 + 59, T0),  # inside the window
        reward(event, 1, 9.0, T0 + 61, T0),  # after the window: never counts (slot 1 has no other reward)
        reward(event, 3, 7.0, T0 + 1, T0),   # a slot the decision did not have: ignored
        reward("never-decided", 0, 7.0, T0 + 1, T0),
    ], 2)
    clock = Clock(T0 + WINDOW + 1.0)  # window passed, grace (2 s) not yet
    joiner = Joiner(tmp_path, JoinConfig(WINDOW, grace_s=2.0, default_reward=-0.25), clock=clock)
    with joiner:
        assert joiner.run_once().n_events == 0
        clock.now = T0 + WINDOW + 2.0
        report = joiner.run_once()
    assert (report.part, report.n_events, report.n_slots, report.n_default_slots) == (0, 1, 3, 1)
    [record] = joined_records(tmp_path)
    logged = json.loads(lines[0])
    assert [slot["_label_cost"] for slot in record["_outcomes"]] == [-1.0, 0.25, -0.5]
    assert record["_defaulted"] == [False, True, False]
    for key in logged:
        if key != "_outcomes":
            assert record[key] == logged[key], key
    assert [{k: v for k, v in slot.items() if k != "_label_cost"} for slot in record["_outcomes"]] == logged["_outcomes"]
    slate = JoinedLog(tmp_path).slate_table()
    _, decision = decisions[0]
    assert slate["event_id"].tolist() == [event] * 3
    assert slate["slot"].tolist() == [0, 1, 2]
    assert slate["action"].tolist() == list(decision.shelf_ids)
    assert slate["reward"].tolist() == [1.0, -0.25, 0.5]
    assert slate["logging_prob"].tolist() == list(decision.slot_probs)
    assert slate["logging_marginal"].tolist() == list(decision.slot_marginals)
    assert slate["defaulted"].tolist() == [False, True, False]
    assert slate["model_version"].tolist() == [decision.model_version] * 3


def test_a_decision_whose_marginals_were_not_estimated_is_joined_read_and_learned(tmp_path):
    """`marginal_draws=0`: marginals beyond the exact slots are NaN, logged as null; the joiner,
    the DSJSON and slate-table readers and VW all take them."""
    paths = DataPaths(tmp_path)
    config = RankerConfig(epsilon=0.3, marginal_draws=0)
    ids, lines, decisions, _ = logged_decisions(4, T0, 1.0, n_shelves=60, n_slots=6, config=config)
    write_segment(paths.decisions, "decisions", lines, 1)
    write_segment(paths.rewards, "rewards", [reward(ids[0], 5, 1.0, T0 + 1, T0)], 2)
    with Joiner(tmp_path, JoinConfig(WINDOW), clock=Clock(T0 + 1000)) as joiner:
        assert joiner.run_once().n_events == 4
    records = joined_records(tmp_path)
    assert all(None in r["_marginals"] for r in records)
    [part] = JoinedLog(tmp_path).parts()
    events = read_dsjson(part.jsonl)
    for event, (_, decision) in zip(events, decisions):
        assert np.array_equal(event.decision.slot_marginals, decision.slot_marginals, equal_nan=True)
    slate = JoinedLog(tmp_path).slate_table()
    expected = np.concatenate([d.slot_marginals for _, d in decisions])
    assert np.isnan(expected).any() and np.array_equal(slate["logging_marginal"].to_numpy(), expected, equal_nan=True)
    assert slate["reward"].tolist()[5] == 1.0
    assert read_log(part.slates).log.logging_marginal is None is read_log(part.jsonl).log.logging_marginal  # unknown
    assert VWShelfRanker(config).learn_file(part.jsonl) == 4


def _rewards(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["event_id", "slot", "value", "reward_id", "received"])
    frame["seq"] = np.arange(len(frame))
    return frame


@pytest.mark.parametrize(
    "aggregation, rows, expected",
    [
        # earliest: the first by arrival time; identical repeats change nothing
        ("earliest", [("e", 0, 2.0, None, 3.0), ("e", 0, 1.0, None, 1.0), ("e", 0, 1.0, None, 1.0)], 1.0),
        ("earliest", [("e", 0, 1.0, None, 5.0), ("e", 0, 7.0, None, 5.0)], 1.0),  # tie: the one written first
        # sum: everything, but a repeated reward id once
        ("sum", [("e", 0, 1.0, "a", 1.0), ("e", 0, 1.0, "a", 2.0), ("e", 0, 2.0, "b", 3.0), ("e", 0, 0.5, None, 4.0)], 3.5),
        ("sum", [("e", 0, 1.0, None, 1.0), ("e", 0, 1.0, None, 2.0)], 2.0),  # without ids a repeat is a second reward
        # a repeated reward id keeps its first value under earliest too
        ("earliest", [("e", 0, 3.0, "a", 1.0), ("e", 0, 9.0, "a", 0.5)], 9.0),
    ],
)
def test_slot_reward_aggregation(aggregation, rows, expected):
    assert slot_rewards(_rewards(rows), aggregation).to_dict() == {("e", 0): expected}


def test_sum_aggregation_end_to_end(tmp_path):
    paths = DataPaths(tmp_path)
    ids, lines, _, _ = logged_decisions(1, T0, 1.0, n_slots=2)
    write_segment(paths.decisions, "decisions", lines, 1)
    e = ids[0]
    write_segment(paths.rewards, "rewards", [
        reward(e, 1, 1.0, T0 + 1, T0, "r1"), reward(e, 1, 1.0, T0 + 2, T0, "r1"), reward(e, 1, 0.5, T0 + 3, T0),
    ], 2)
    with Joiner(tmp_path, JoinConfig(WINDOW, aggregation="sum"), clock=Clock(T0 + 100)) as joiner:
        joiner.run_once()
    [record] = joined_records(tmp_path)
    assert [s["_label_cost"] for s in record["_outcomes"]] == [-0.0, -1.5]


def test_exactly_once_across_reruns_restarts_and_a_crash_before_the_checkpoint(tmp_path, monkeypatch):
    paths = DataPaths(tmp_path)
    ids_a, lines_a, _, _ = logged_decisions(40, T0, 3.0, seed=1)
    ids_b, lines_b, _, _ = logged_decisions(40, T0 + 1.5, 3.0, seed=2)
    segment_a = write_segment(paths.decisions, "decisions", lines_a[:25], 1, pid=11)
    write_segment(paths.decisions, "decisions", lines_b, 2, pid=12)
    config = JoinConfig(WINDOW, grace_s=0.0, max_events_per_part=7)
    clock = Clock(T0 + WINDOW + 30)
    with Joiner(tmp_path, config, clock=clock) as joiner:
        joiner.run_once()
        joiner.run_once()  # a re-run at the same time adds only what the budget left
    # a writer appends more to its segment, then the joiner crashes between part and checkpoint
    with open(segment_a, "ab") as handle:
        handle.writelines(lines_a[25:])
    clock.now = T0 + WINDOW + 70
    joiner = Joiner(tmp_path, config, clock=clock)
    with joiner:
        def crash(self, path):
            raise OSError("disk vanished")

        monkeypatch.setattr(Checkpoint, "write", crash)
        with pytest.raises(OSError):
            joiner.run_once()
        monkeypatch.undo()
    assert (paths.joined / "part-00000002.jsonl").exists()  # the uncommitted part is on disk...
    assert len(JoinedLog(tmp_path).parts()) == 2  # ...but not committed
    clock.now = T0 + 10_000
    for _ in range(3):  # restarts; the last ones find nothing new
        with Joiner(tmp_path, config, clock=clock) as joiner:
            while joiner.run_once().more_ready:
                pass
    joined = [r["EventId"] for r in joined_records(tmp_path)]
    assert sorted(joined) == sorted(ids_a + ids_b)
    assert len(joined) == len(set(joined))
    slate = JoinedLog(tmp_path).slate_table()
    assert sorted(slate["event_id"].unique()) == sorted(ids_a + ids_b)
    assert len(slate) == 3 * len(joined)
    assert Checkpoint.read(paths.joined / "checkpoint.json").n_events == 80


def test_within_a_part_events_are_in_decision_time_order(tmp_path):
    paths = DataPaths(tmp_path)
    _ids_a, lines_a, _, _ = logged_decisions(5, T0 + 0.5, 1.0, seed=3)
    _ids_b, lines_b, _, _ = logged_decisions(5, T0, 1.0, seed=4)
    write_segment(paths.decisions, "decisions", lines_a, 1, pid=1)
    write_segment(paths.decisions, "decisions", lines_b, 2, pid=2)
    with Joiner(tmp_path, JoinConfig(WINDOW), clock=Clock(T0 + 1000)) as joiner:
        joiner.run_once()
    times = [epoch_seconds(r["Timestamp"]) for r in joined_records(tmp_path)]
    assert times == sorted(times) and len(times) == 10


def test_a_repeated_event_id_is_joined_once_and_the_repeat_is_set_aside(tmp_path):
    paths = DataPaths(tmp_path)
    _ids, lines, _, _ = logged_decisions(2, T0, 1.0)
    write_segment(paths.decisions, "decisions", [lines[0], lines[1], lines[0], b"{not json\n"], 1)
    with Joiner(tmp_path, JoinConfig(WINDOW), clock=Clock(T0 + 1000)) as joiner:
        report = joiner.run_once()
    assert (report.n_events, report.n_rejected) == (2, 2)
    reasons = [json.loads(line)["reason"] for line in (paths.joined / "rejected.jsonl").read_text().splitlines()]
    assert sorted(reasons) == ["repeated event id", "unreadable decision line"]


def test_an_incomplete_last_line_waits(tmp_path):
    paths = DataPaths(tmp_path)
    ids, lines, _, _ = logged_decisions(2, T0, 1.0)
    segment = write_segment(paths.decisions, "decisions", [lines[0], lines[1][:40]], 1)
    with Joiner(tmp_path, JoinConfig(WINDOW), clock=Clock(T0 + 1000)) as joiner:
        assert joiner.run_once().n_events == 1
        with open(segment, "ab") as handle:
            handle.write(lines[1][40:])
        assert joiner.run_once().n_events == 1
    assert [r["EventId"] for r in joined_records(tmp_path)] == ids


def test_one_joiner_per_data_directory(tmp_path):
    first = Joiner(tmp_path, JoinConfig(WINDOW))
    second = Joiner(tmp_path, JoinConfig(WINDOW))
    assert first.acquire()
    assert not second.acquire()
    with pytest.raises(JoinerBusy), second:
        pass
    first.release()
    assert second.acquire()
    second.release()


def test_lag_is_reported_while_a_backlog_remains(tmp_path):
    paths = DataPaths(tmp_path)
    _, lines, _, _ = logged_decisions(10, T0, 1.0)
    write_segment(paths.decisions, "decisions", lines, 1)
    with Joiner(tmp_path, JoinConfig(WINDOW, grace_s=0.0, max_events_per_part=4), clock=Clock(T0 + WINDOW + 100)) as joiner:
        first = joiner.run_once()
        assert first.more_ready and first.lag_s == pytest.approx(100 - 4.0)  # the 5th event, decided at T0 + 4
        while joiner.run_once().more_ready:
            pass
        assert joiner.run_once().lag_s == 0.0


def test_vw_trains_on_the_joined_log_as_on_the_events_it_holds(tmp_path):
    """VW's own DSJSON parser, fed the joined part, learns the model the ranker learns from the
    same decisions and rewards given as events."""
    paths = DataPaths(tmp_path)
    ids, lines, decisions, shelves = logged_decisions(30, T0, 1.0, n_shelves=4, n_slots=2, seed=6)
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, size=(30, 2)).astype(float)
    reward_lines = [reward(ids[i], k, rewards[i, k], T0 + i + 1, T0 + i) for i in range(30) for k in range(2) if rewards[i, k]]
    write_segment(paths.decisions, "decisions", lines, 1)
    write_segment(paths.rewards, "rewards", reward_lines, 2)
    with Joiner(tmp_path, JoinConfig(WINDOW), clock=Clock(T0 + 1000)) as joiner:
        joiner.run_once()
    [part] = JoinedLog(tmp_path).parts()

    native = vowpalwabbit.Workspace("--ccb_explore_adf --dsjson --quiet")  # parses every line
    for line in part.jsonl.read_text().splitlines():
        examples = native.parse(line)
        assert len(examples) == 1 + 4 + 2
        native.learn(examples)
        native.finish_example(examples)

    trained = vowpalwabbit.Workspace(RankerConfig().vw_args() + " --dsjson --quiet")
    for line in part.jsonl.read_text().splitlines():
        examples = trained.parse(line)
        trained.learn(examples)
        trained.finish_example(examples)
    reference = VWShelfRanker(RankerConfig())
    events = [LoggedEvent(c, shelves, d, Outcome(tuple(rewards[i]))) for i, (c, d) in enumerate(decisions)]
    reference.learn(EventBatch.from_events(events))
    context, _ = decisions[0]
    probe = [listener_line(context)] + [shelf_line(s) for s in shelves] + [slot_line(k) for k in range(2)]

    def costs(workspace):
        examples = [Example(workspace, line, LabelType.CONDITIONAL_CONTEXTUAL_BANDIT) for line in probe]
        pylibvw.vw.predict_multi(workspace, examples)
        return [e.get_partial_prediction() for e in examples]

    assert costs(trained) == pytest.approx(costs(reference.workspace), abs=1e-6)
    assert any(abs(c) > 1e-3 for c in costs(trained))
    assert VWShelfRanker(RankerConfig()).learn_file(part.jsonl) == 30
