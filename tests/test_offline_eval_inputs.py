"""Log readers (slate table as Parquet, CSV, DataFrame; joined DSJSON) and their error messages."""

import json

import numpy as np
import pandas as pd
import pytest

from bandit.baselines import UniformRandomPolicy
from bandit.batch import EventBatch
from bandit.errors import ValidationError
from bandit.vw.format import event_line
from offline_eval.evaluate import evaluate
from offline_eval.readers import read_log, slate_table, table_log
from tests.offline_eval_synth import draw_log, policies, shelf_world_events, small_world


@pytest.fixture(scope="module")
def synthetic():
    pol = policies()
    return draw_log(small_world("cascade"), pol["logger"], pol["target"], 300, np.random.default_rng(3))


@pytest.fixture()
def table(synthetic):
    return slate_table(*synthetic)


def estimates(loaded, ci):
    evaluation = evaluate(loaded.log, loaded.target, "sips,iips,rips,snips_rips,pi", rng=np.random.default_rng(0), ci=ci)
    return {name: (e.value, e.lower, e.upper) for name, e in evaluation.estimates.items()}


def test_parquet_csv_and_dataframe_read_the_same_log_in_any_row_order(synthetic, table, tmp_path):
    log, target = synthetic
    table.to_parquet(tmp_path / "log.parquet")
    table.to_csv(tmp_path / "log.csv", index=False)
    shuffled = table.sample(frac=1.0, random_state=1)
    readings = [read_log(tmp_path / "log.parquet"), read_log(tmp_path / "log.csv"), read_log(shuffled)]
    for loaded in readings:
        # events keep the order of their first row; align on event ids to compare
        order = np.argsort(loaded.log.event_ids.astype(str))
        expected = np.argsort(log.event_ids.astype(str))
        np.testing.assert_array_equal(loaded.log.action_ids[loaded.log.action][order], log.action_ids[log.action][expected])
        np.testing.assert_array_equal(loaded.log.reward[order], log.reward[expected])
        np.testing.assert_allclose(loaded.target.prob[order], target.prob[expected])
        np.testing.assert_allclose(loaded.log.logging_marginal[order], log.logging_marginal[expected])
    assert estimates(readings[0], "bootstrap") == estimates(readings[1], "bootstrap")
    normal = estimates(readings[0], "normal")
    for name, values in estimates(readings[2], "normal").items():
        assert values == pytest.approx(normal[name], rel=1e-12)


def test_a_table_without_marginals_leaves_them_unknown(table):
    loaded = read_log(table.drop(columns=["logging_marginal"]))
    assert loaded.log.logging_marginal is None
    with pytest.raises(ValidationError, match="'iips' needs logging_marginal and target_marginal"):
        evaluate(loaded.log, loaded.target, "iips", rng=np.random.default_rng(0))


def test_dsjson_log_matches_its_event_batch(tmp_path):
    events = shelf_world_events(UniformRandomPolicy(seed=1), 40, np.random.default_rng(0))
    path = tmp_path / "joined.jsonl"
    path.write_text("".join(event_line(e) + "\n" for e in events))
    loaded = read_log(path)
    columns = EventBatch.from_events(events).slate_columns()
    log = loaded.log
    assert loaded.target is None and len(loaded.events) == 40
    np.testing.assert_array_equal(log.action_ids[log.action].ravel(), columns["action"])
    np.testing.assert_array_equal(log.reward.ravel(), columns["reward"])
    np.testing.assert_allclose(log.logging_prob.ravel(), columns["logging_prob"])
    np.testing.assert_allclose(log.logging_marginal.ravel(), columns["logging_marginal"])
    # the logger's distributions come from each decision's slot distributions: uniform over what is left
    np.testing.assert_allclose(log.logging_distribution.sum(axis=2), 1.0)
    np.testing.assert_allclose(log.logging_distribution[:, 1].max(axis=1), 1 / 5)
    assert (log.logging_distribution[np.arange(40), 1, log.action_position[:, 0]] == 0.0).all()
    # the context feature 'segment' (a or b) becomes one code column
    assert log.context.shape == (40, 1) and set(log.context[:, 0]) == {0, 1}


def frame(**changes) -> pd.DataFrame:
    base = {
        "event_id": ["e0", "e0", "e1", "e1"],
        "slot": [0, 1, 0, 1],
        "action": ["a", "b", "b", "a"],
        "reward": [1.0, 0.0, 0.0, 1.0],
        "logging_prob": [0.5, 1.0, 0.5, 1.0],
        "target_prob": [0.9, 1.0, 0.1, 1.0],
    }
    base.update(changes)
    return pd.DataFrame({k: v for k, v in base.items() if v is not None})


BAD_TABLES = [
    ("missing column", frame(logging_prob=None), "columns: the slate table needs event_id, slot, action, reward, logging_prob"),
    ("probability 0", frame(logging_prob=[0.5, 0.0, 0.5, 1.0], target_prob=[0.9, 0.0, 0.1, 1.0]),
     "logging_prob: probabilities must lie in (0, 1]"),
    ("probability above 1", frame(logging_prob=[0.5, 1.5, 0.5, 1.0]), "logging_prob: probabilities must lie in (0, 1]"),
    ("negative probability", frame(logging_prob=[-0.5, 1.0, 0.5, 1.0]), "logging_prob: probabilities must lie in (0, 1]"),
    ("target probability above 1", frame(target_prob=[0.9, 1.2, 0.1, 1.0]), "target_prob: probabilities must lie in [0, 1]"),
    ("target weight where the logger had none", frame(logging_prob=[0.5, 0.0, 0.5, 1.0]),
     "target_prob: the target puts weight on a shelf with zero logging_prob"),
    ("slot twice", frame(slot=[0, 0, 0, 1]), "slot: each event needs slots 0..K-1 once each"),
    ("slot gap", frame(slot=[0, 2, 0, 1]), "slot: each event needs slots 0..K-1 once each"),
    ("different slot counts", frame(event_id=["e0", "e0", "e0", "e1"], slot=[0, 1, 2, 0]),
     "slot: every event must fill the same slots 0..K-1"),
    ("fractional slot", frame(slot=[0, 0.5, 0, 1]), "slot: must be whole numbers >= 0"),
    ("text reward", frame(reward=["x", 0, 0, 1]), "reward: must be numbers"),
    ("missing reward", frame(reward=[np.nan, 0, 0, 1]), "reward: rewards must be finite numbers"),
]


@pytest.mark.parametrize("case,data,message", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_bad_slate_tables_are_refused_with_the_rule_they_break(case, data, message):
    with pytest.raises(ValidationError) as caught:
        read_log(data)
    assert str(caught.value).startswith(message), str(caught.value)


def test_bad_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValidationError, match="log: file does not exist"):
        read_log(tmp_path / "absent.parquet")
    (tmp_path / "log.txt").write_text("x")
    with pytest.raises(ValidationError, match=r"log: unknown file type \(known: .parquet"):
        read_log(tmp_path / "log.txt")
    events = shelf_world_events(UniformRandomPolicy(seed=1), 2, np.random.default_rng(0))
    broken = json.loads(event_line(events[1]))
    del broken["_outcomes"][0]["_label_cost"]
    (tmp_path / "joined.jsonl").write_text(event_line(events[0]) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(ValidationError, match=r"line 2: _outcomes\[0\]._label_cost: a joined event needs a cost"):
        read_log(tmp_path / "joined.jsonl")


def test_estimators_that_need_more_than_a_table_say_what(table):
    loaded = table_log({name: table[name].to_numpy() for name in table.columns})
    for name, needs in [("dr", "the target's marginal distribution over each event's candidates"),
                        ("cascade_dr", "the target's conditional distribution over each event's candidates"),
                        ("nope", "unknown estimator")]:
        with pytest.raises(ValidationError, match=needs):
            evaluate(loaded.log, loaded.target, name, rng=np.random.default_rng(0))
