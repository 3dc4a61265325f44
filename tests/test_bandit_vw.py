"""The VW ranker against Vowpal Wabbit itself: probabilities, learning, files, formats."""

import json

import numpy as np
import pytest
import vowpalwabbit
from scipy import stats

from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.errors import ModelFileError, ValidationError
from bandit.types import Context, LoggedEvent, Outcome, Shelf
from bandit.vw.format import event_line, listener_line, parse_event, shelf_line, slot_line
from bandit.vw.ranker import VWShelfRanker
from tests.bandit_fixtures import catalogue, context, train_toward

EXPLORERS = {
    "epsilon": RankerConfig(explorer="epsilon", epsilon=0.3),
    "softmax": RankerConfig(explorer="softmax", softmax_lambda=3.0, epsilon=0.1),
    "squarecb": RankerConfig(explorer="squarecb", gamma_scale=1.0),
}


@pytest.fixture(scope="module")
def spread_ranker():
    """A softmax ranker trained so its slot distributions are far from uniform and from one-hot."""
    ranker = VWShelfRanker(RankerConfig(explorer="softmax", softmax_lambda=1.5, seed=1))
    train_toward(ranker, catalogue(5), 3, good={0: 1, 1: 2, 2: 4}, steps=300)
    return ranker


def _chi_square(observed: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    return float(((observed - expected) ** 2 / expected).sum()), len(observed) - 1


def test_reported_probabilities_are_the_sampling_frequencies(spread_ranker):
    """20,000 seeded rankings of one context: slot 0, and slot 1 given slot 0, follow the
    reported probabilities; the same counts reject probabilities that are 10% off."""
    shelves, ctx, n = catalogue(5), context(0), 20_000
    decisions = [spread_ranker.rank(ctx, shelves, 3, event_id=f"chi-{i}") for i in range(n)]
    ids = [s.shelf_id for s in shelves]
    slot0 = dict(decisions[0].slot_distributions[0])
    p0 = np.array([slot0[s] for s in ids])
    assert p0.max() < 0.95 and p0.min() > 0.01  # a spread distribution, not a degenerate one
    counts0 = np.array([sum(d.shelf_ids[0] == s for d in decisions) for s in ids])

    statistic, dof = 0.0, 0
    tilted_stat = 0.0
    tilt = np.array([1.1, 0.9, 1.0, 1.0, 1.0])  # two probabilities 10% off, renormalised
    for observed, p in [(counts0, p0)]:
        s, d = _chi_square(observed, n * p)
        statistic, dof = statistic + s, dof + d
        q = p * tilt / (p * tilt).sum()
        tilted_stat += _chi_square(observed, n * q)[0]
    for first in ids:
        group = [d for d in decisions if d.shelf_ids[0] == first]
        if len(group) < 500:
            continue
        dist = dict(group[0].slot_distributions[1])
        rest = [s for s in ids if s != first]
        p1 = np.array([dist[s] for s in rest])
        assert all(dict(g.slot_distributions[1]) == dist for g in group[:50])  # same given the same prefix
        observed = np.array([sum(g.shelf_ids[1] == s for g in group) for s in rest])
        s, d = _chi_square(observed, len(group) * p1)
        statistic, dof = statistic + s, dof + d
        q = p1 * tilt[: len(p1)] / (p1 * tilt[: len(p1)]).sum()
        tilted_stat += _chi_square(observed, len(group) * q)[0]
    assert stats.chi2.sf(statistic, dof) > 1e-3, (statistic, dof)
    assert stats.chi2.sf(tilted_stat, dof) < 1e-6, (tilted_stat, dof)


@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_explorer_reproduces_vw_distribution_after_vw_own_prefix(name):
    """VW's own CCB predict samples a prefix and reports each slot's distribution; the project's
    explorer on the one-pass costs, with the same shelves excluded, gives the same numbers."""
    ranker = VWShelfRanker(EXPLORERS[name])
    shelves = catalogue(8)
    train_toward(ranker, shelves, 4, good={0: 2, 1: 6, 2: 0, 3: 5}, steps=400)
    for segment in range(2):
        ctx = context(segment)
        lines = [listener_line(ctx)] + [shelf_line(s) for s in shelves] + [slot_line(k) for k in range(4)]
        for _ in range(5):
            vw_slots = ranker.workspace.predict(lines)
            model = ranker.slot_model(ctx, shelves, 4)
            available = np.ones((1, len(shelves)), dtype=bool)
            for k, scored in enumerate(vw_slots):
                ours = model.probs(k, available)[0]
                vw_pdf = np.zeros(len(shelves))
                for action, prob in scored:
                    vw_pdf[action] = prob
                np.testing.assert_allclose(ours, vw_pdf, atol=2e-5, err_msg=f"{name} slot {k}")
                available[0, scored[0][0]] = False


def test_squarecb_gamma_read_from_vw_matches_its_schedule():
    ranker = VWShelfRanker(RankerConfig(explorer="squarecb", gamma_scale=10.0, gamma_exponent=0.5))
    shelves = catalogue(6)
    train_toward(ranker, shelves, 3, good={0: 1}, steps=200)
    model = ranker.slot_model(context(), shelves, 3)
    assert model.gamma == pytest.approx(10.0 * np.sqrt(200 * 3), rel=1e-3)


def test_learns_the_shelf_that_always_earns_in_slot_zero():
    epsilon, n = 0.1, 6
    ranker = VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=epsilon, seed=4))
    shelves = catalogue(n)
    train_toward(ranker, shelves, 3, good={0: 4}, steps=2000, seed=4)
    for segment in range(2):
        d = ranker.rank(context(segment), shelves, 3, event_id=f"after-{segment}")
        p = dict(d.slot_distributions[0])[shelves[4].shelf_id]
        assert p >= 1 - epsilon + epsilon / n - 1e-9


def test_model_file_refuses_other_configurations_and_corruption(tmp_path):
    ranker = VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.1))
    train_toward(ranker, catalogue(4), 2, good={0: 1}, steps=20)
    path = tmp_path / "a folder with spaces" / "m.vw"  # VW's argument parser splits on white space
    version = ranker.save(path)
    assert VWShelfRanker.load(path).model_version == version
    assert version.startswith("vw-") and ranker.model_version == version
    meta = json.loads((path.parent / "m.vw.json").read_text())
    assert meta["config"]["epsilon"] == 0.1 and meta["n_learned_events"] == 20
    with pytest.raises(ModelFileError, match=r"different configuration \(epsilon: file has 0.1, expected 0.2\)"):
        VWShelfRanker.load(path, config=RankerConfig(explorer="epsilon", epsilon=0.2))
    same = VWShelfRanker.load(path, config=RankerConfig(explorer="epsilon", epsilon=0.1, seed=9))
    assert same.seed == 9  # sampling settings may differ
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        VWShelfRanker.load(path)
    (path.parent / "m.vw.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        VWShelfRanker.load(path)
    with pytest.raises(ModelFileError, match="missing"):
        VWShelfRanker.load(tmp_path / "absent.vw")


def test_unsupported_explorers_are_refused_with_the_reason():
    with pytest.raises(ValidationError, match=r"bag.*1.0 for the chosen shelf"):
        RankerConfig(explorer="bag")
    with pytest.raises(ValidationError, match="interactions"):
        RankerConfig(interactions=("listener*nothing",))
    with pytest.raises(ValidationError, match="squarecb only supports mtr"):
        RankerConfig(explorer="squarecb", cb_type="ips")


def _logged(ranker, shelves, n, seed):
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        ctx = context(int(rng.integers(3)))
        d = ranker.rank(ctx, shelves, 3, event_id=f"log-{seed}-{i}")
        events.append(LoggedEvent(ctx, shelves, d, Outcome(tuple(rng.random(3).round(2))), timestamp=1.7e9 + i))
    return events


def test_vw_trains_the_same_model_from_the_joined_dsjson_log():
    """The joined DSJSON lines, read by VW's own parser, train the model the ranker trains from text."""
    shelves = catalogue(6)
    events = _logged(VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.5)), shelves, 60, seed=2)
    from_text = VWShelfRanker(RankerConfig())
    from_text.learn(EventBatch.from_events(events))
    native = vowpalwabbit.Workspace(RankerConfig().vw_args() + " --dsjson --quiet")
    for event in events:
        examples = native.parse(event_line(event))
        native.learn(examples)
        native.finish_example(examples)
    probe = [listener_line(context(1))] + [shelf_line(s) for s in shelves] + [slot_line(k) for k in range(3)]
    import pylibvw
    from vowpalwabbit.pyvw import Example, LabelType

    def costs(workspace):
        exs = [Example(workspace, line, LabelType.CONDITIONAL_CONTEXTUAL_BANDIT) for line in probe]
        pylibvw.vw.predict_multi(workspace, exs)
        return [e.get_partial_prediction() for e in exs]

    assert costs(native) == pytest.approx(costs(from_text.workspace), abs=1e-6)
    assert any(abs(c) > 1e-3 for c in costs(native))  # the models did learn something


def test_dsjson_round_trip_keeps_every_field():
    shelves = (
        Shelf("mix|1", {"kind": "made for you", "age": 2.5, "fresh": True}),
        Shelf("news:2", {"kind": "new\nreleases", "a=b": "c=d"}),
        Shelf("pod 3", {"%odd": "50%", "_private": "x"}),
    )
    ranker = VWShelfRanker(RankerConfig(epsilon=0.5))
    ctx = Context({"country": "SE", "tenure": 3.0, "tab\there": "x y"}, listener_id="listener-1")
    d = ranker.rank(ctx, shelves, 2, event_id="round-trip", baseline=["news:2"])
    event = LoggedEvent(ctx, shelves, d, Outcome((1.0, 0.0), (False, True)), timestamp=1_700_000_000.5, baseline=("news:2",))
    back = parse_event(event_line(event))
    assert back.decision == d
    assert back.outcome == event.outcome
    assert back.context.listener_id == "listener-1"
    assert dict(back.context.features) == {"country": "SE", "tenure": 3.0, "tab\there": "x y"}
    assert back.shelves[0].features["fresh"] == "true"  # booleans come back as their VW token
    assert [s.shelf_id for s in back.shelves] == [s.shelf_id for s in shelves]
    assert back.shelves[1].features["a=b"] == "c=d"
    assert back.timestamp == pytest.approx(1_700_000_000.5)
    assert back.baseline == ("news:2",)


@pytest.mark.parametrize("name, value", [("pipe|name", "a|b"), ("colon:name", "a:b"), ("space name", "a b"),
                                         ("newline\nname", "a\nb"), ("percent%", "100%"), ("_leading", "x")])
def test_special_characters_are_escaped_into_one_feature(name, value):
    ranker = VWShelfRanker(RankerConfig())
    from vowpalwabbit.pyvw import Example, LabelType

    line = listener_line(Context({name: value, "plain": 1.0}))
    assert "\n" not in line
    example = Example(ranker.workspace, line, LabelType.CONDITIONAL_CONTEXTUAL_BANDIT)
    listener_ns = [example.get_ns(i) for i in range(example.num_namespaces()) if example.get_ns(i).ns == "L"]
    assert example.num_features_in(listener_ns[0]) == 2
    d = ranker.rank(Context({name: value}), catalogue(3), 2, event_id="escape")
    assert parse_event(event_line(LoggedEvent(Context({name: value}), catalogue(3), d, Outcome((0.0, 0.0))))).context.features[name] == value


def test_vw_dsjson_parser_ignores_the_project_fields():
    shelves = catalogue(4)
    events = _logged(VWShelfRanker(RankerConfig()), shelves, 1, seed=5)
    record = json.loads(event_line(events[0]))
    assert {"_model_version", "_marginals", "_marginal_stderr", "_defaulted"} <= set(record)
    native = vowpalwabbit.Workspace("--ccb_explore_adf --dsjson --quiet")
    examples = native.parse(json.dumps(record))
    assert len(examples) == 1 + len(shelves) + 3
    shared = examples[0]
    assert [shared.get_ns(i).ns for i in range(shared.num_namespaces())] == ["L", "\x80"]  # listener + constant
    native.learn(examples)
    native.finish_example(examples)


def test_learning_a_joined_log_file_natively_equals_learning_the_events(tmp_path):
    shelves = catalogue(6)
    events = _logged(VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.5)), shelves, 80, seed=8)
    log = tmp_path / "joined log.json"  # a space in the path on purpose
    log.write_text("".join(event_line(e) + "\n" for e in events))
    by_file, by_events = VWShelfRanker(RankerConfig()), VWShelfRanker(RankerConfig())
    assert by_file.learn_file(log) == 80
    by_events.learn(EventBatch.from_events(events))
    probe = context(2)
    np.testing.assert_allclose(by_file.score(probe, shelves, 3)[0], by_events.score(probe, shelves, 3)[0], atol=1e-6)
    assert by_file.n_learned_events == 80 and by_file.model_version.endswith("+80")
    (tmp_path / "bad.json").write_text("{not json}\n")
    with pytest.raises(ValidationError, match="VW could not learn"):
        by_file.learn_file(tmp_path / "bad.json")


def test_a_shelfs_cost_at_a_slot_is_not_its_slot_free_cost_plus_a_slot_term():
    """Why the one-pass layout scores every shelf at every slot: VW's CCB adds the slot index to
    every interaction (listener x shelf x slot), so even without an interaction on the slot
    namespace a shelf's cost at slot k differs from its cost at slot 0 by a shelf-dependent
    amount; no scoring of the shelves without slot features plus per-slot terms reproduces it."""
    ranker = VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.3, interactions=("listener*shelf",)))
    shelves = catalogue(6)
    train_toward(ranker, shelves, 3, good={0: 1, 1: 4, 2: 2}, steps=300)
    costs, _ = ranker.score(context(1), shelves, 3)
    step = costs - costs[0]  # each shelf's cost at slot k minus its cost at slot 0
    assert np.ptp(step, axis=1).max() > 1e-2  # not one term per slot


def test_learning_an_event_is_what_vw_learns_from_its_text_lines():
    """`learn` parses and learns through pylibvw directly; the model is the one that
    Workspace.learn makes of the same lines, weight for weight."""
    shelves = catalogue(6)
    events = _logged(VWShelfRanker(RankerConfig(explorer="squarecb", uniform_share=0.2)), shelves, 40, seed=3)
    ranker, plain = VWShelfRanker(RankerConfig()), VWShelfRanker(RankerConfig())
    for event in events:
        batch = EventBatch.from_events([event])
        ranker.learn(batch)
        plain.workspace.learn(plain.event_lines(batch, 0, batch.event_rows(0)))
    assert ranker.workspace.json_weights() == plain.workspace.json_weights()
    assert ranker.workspace.get_weighted_examples() == plain.workspace.get_weighted_examples() == 40
