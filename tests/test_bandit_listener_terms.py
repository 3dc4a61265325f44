"""A saved model's costs from its listener terms, against VW's own pass over the same page."""

import numpy as np
import pytest
from vowpalwabbit.pyvw import Example

from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.types import Context, LoggedEvent, Outcome, Shelf
from bandit.vw.format import listener_line, shelf_line, slot_line
from bandit.vw.listener_terms import ENTRY_OVERHEAD, ListenerTerms, is_affine_in_listener
from bandit.vw.ranker import CCB, VWShelfRanker
from tests.bandit_fixtures import catalogue, train_toward

RICH_INTERACTIONS = ("listener*shelf", "slot*shelf", "listener*slot", "listener*shelf*slot")


def rich_context(rng: np.random.Generator) -> Context:
    """Numeric, categorical and boolean features, some values never seen in training, some zero."""
    return Context({
        "segment": f"s{rng.integers(6)}", "tenure": float(rng.integers(0, 4)), "premium": bool(rng.integers(2)),
        "taste": float(rng.normal()), "big": float(rng.choice([0.0, 1e6, -3e5])), "city": f"c{rng.integers(1000)}",
        "ts": float(1.7e9 + rng.integers(10**6)), "bytes": float(rng.choice([3e11, 9e11, -1e12, 1e12])),
    })


def vw_pass(ranker: VWShelfRanker, context: Context, shelves, n_slots: int) -> np.ndarray:
    """VW's CCB predict on freshly parsed text lines of the one-pass layout: costs (K, N)."""
    n = len(shelves)
    lines = [listener_line(context)] + [shelf_line(s) for _ in range(n_slots) for s in shelves] + [
        slot_line(k, include=range(k * n, (k + 1) * n)) for k in range(n_slots)]
    examples = [Example(ranker.workspace, line, CCB) for line in lines]
    ranker.workspace.predict(examples)
    return np.array([e.get_partial_prediction() for e in examples[1 : 1 + n * n_slots]]).reshape(n_slots, n)


def trained(config: RankerConfig, shelves, tmp_path) -> tuple[VWShelfRanker, VWShelfRanker]:
    """A ranker trained in process, and its saved copy loaded back."""
    ranker = VWShelfRanker(config)
    train_toward(ranker, shelves, 3, good={0: 1, 1: 4, 2: 2}, steps=300)
    rng = np.random.default_rng(5)
    for t in range(200):  # listeners of every kind, so every listener feature has weights
        ctx = rich_context(rng)
        decision = ranker.rank(ctx, shelves, 3, event_id=f"rich-{t}")
        rewards = tuple(float(rng.random() < 0.2 + 0.1 * k) for k in range(3))
        ranker.learn(EventBatch.from_events([LoggedEvent(ctx, shelves, decision, Outcome(rewards))]))
    ranker.save(tmp_path / "model")
    return ranker, VWShelfRanker.load(tmp_path / "model")


def _tolerance(costs: np.ndarray) -> float:
    # VW adds a pair's few hundred float32 products in float32; the terms add the same products in
    # float64: they differ by float32 rounding of the largest partial sums
    return 1e-5 * max(1.0, float(np.abs(costs).max()))


@pytest.mark.parametrize("interactions", [("listener*shelf", "slot*shelf"), RICH_INTERACTIONS, ("listener*shelf",)])
@pytest.mark.parametrize("explorer", ["epsilon", "softmax"])
def test_saved_model_costs_from_listener_terms_are_vws_costs(interactions, explorer, tmp_path):
    shelves = catalogue(7)
    _, loaded = trained(RankerConfig(explorer=explorer, interactions=interactions), shelves, tmp_path)
    rng = np.random.default_rng(11)
    contexts = [rich_context(rng) for _ in range(60)] + [Context({}), Context({"unseen": "never", "zero": 0.0})]
    pages = [(shelves, 3), (shelves[2:6], 2), (shelves[::-1], 5)]
    spread = 0.0
    for ctx in contexts:
        for page, n_slots in pages:
            costs, pdf = loaded.score(ctx, page, n_slots)
            expected = vw_pass(loaded, ctx, page, n_slots)
            assert pdf is None
            np.testing.assert_allclose(costs, expected, rtol=0, atol=_tolerance(expected))
            spread = max(spread, float(np.ptp(expected)))
    assert spread > 0.1  # a trained model whose costs differ between shelves and listeners
    assert len(loaded._listener_terms._pages) == len(pages)  # scored from the terms


def test_a_page_gathered_from_other_pages_terms_is_the_page_probed_afresh(tmp_path):
    """Costs do not depend on what was scored before: a page whose shelves' terms come from
    other pages (fewer slots, other orders, a subset) equals the page scored by a cold copy."""
    shelves = catalogue(8)
    _, warm = trained(RankerConfig(interactions=RICH_INTERACTIONS), shelves, tmp_path)
    cold = VWShelfRanker.load(tmp_path / "model")
    rng = np.random.default_rng(3)
    contexts = [rich_context(rng) for _ in range(10)]
    for ctx in contexts:
        warm.score(ctx, shelves, 4)
        warm.score(ctx, shelves[::-1], 3)
    probes = _count_probes(warm)
    page = (shelves[5], shelves[1], shelves[6], shelves[2])
    for ctx in contexts:
        assert np.array_equal(warm.score(ctx, page, 3)[0], cold.score(ctx, page, 3)[0])
    assert probes() == 0  # every row gathered from the per-shelf store
    assert np.array_equal(warm.score(contexts[0], shelves, 6)[0], cold.score(contexts[0], shelves, 6)[0])
    assert probes() > 0  # slots 4 and 5 were never scored: probed


def _count_probes(ranker: VWShelfRanker):
    calls = []
    probe = ranker._listener_terms._probe
    ranker._listener_terms._probe = lambda *args: calls.append(args) or probe(*args)
    return lambda: len(calls)


@pytest.mark.parametrize("config", [
    RankerConfig(interactions=("listener*listener", "listener*shelf", "slot*shelf")),
    RankerConfig(interactions=("listener*listener*shelf",)),
    RankerConfig(explorer="squarecb", gamma_scale=1.0),
], ids=["listener-squared", "listener-squared-shelf", "squarecb"])
def test_models_not_affine_in_the_listener_are_scored_by_vws_pass(config, tmp_path):
    shelves = catalogue(6)
    _, loaded = trained(config, shelves, tmp_path)
    rng = np.random.default_rng(2)
    for _ in range(20):
        ctx = rich_context(rng)
        costs, _ = loaded.score(ctx, shelves, 3)
        assert np.array_equal(costs, vw_pass(loaded, ctx, shelves, 3))
    assert len(loaded._listener_terms._pages) == 0


def test_a_model_that_learns_is_scored_by_vws_pass_until_it_is_saved(tmp_path):
    shelves = catalogue(6)
    ranker, _ = trained(RankerConfig(), shelves, tmp_path)  # saved: scored from its terms
    rng = np.random.default_rng(4)
    ctx = rich_context(rng)
    before = ranker.score(ctx, shelves, 3)[0]
    assert len(ranker._listener_terms._pages) == 1
    train_toward(ranker, shelves, 3, good={0: 5, 1: 0, 2: 3}, steps=100, seed=9)  # it learns: VW's pass again
    learning = ranker.score(ctx, shelves, 3)[0]
    assert np.array_equal(learning, vw_pass(ranker, ctx, shelves, 3))
    assert np.abs(learning - before).max() > 1e-3  # the model moved, and the terms did not linger
    ranker.save(tmp_path / "again")
    saved = ranker.score(ctx, shelves, 3)[0]
    np.testing.assert_allclose(saved, learning, rtol=0, atol=_tolerance(learning))
    assert len(ranker._listener_terms._pages) == 1


def test_a_seeded_ranking_does_not_depend_on_what_was_scored_before(tmp_path):
    shelves = catalogue(7)
    _, first = trained(RankerConfig(explorer="softmax", softmax_lambda=2.0), shelves, tmp_path)
    second = VWShelfRanker.load(tmp_path / "model")
    rng = np.random.default_rng(8)
    contexts = [rich_context(rng) for _ in range(30)]
    cold = first.rank(contexts[0], shelves, 3, event_id="e-0")
    for i, ctx in enumerate(contexts):  # warms the terms of other listeners' features
        first.rank(ctx, shelves, 3, event_id=f"other-{i}")
    for ranker in (first, second):
        again = ranker.rank(contexts[0], shelves, 3, event_id="e-0")
        assert (again.shelf_ids, again.slot_probs, again.slot_marginals) == (cold.shelf_ids, cold.slot_probs, cold.slot_marginals)


def test_listener_terms_probe_each_feature_once_and_keep_within_their_bounds():
    """Against an affine function with known coefficients per (feature, shelf, slot): the costs,
    one probe per new feature and page, rows gathered per shelf for a new page, and the bounds."""
    rng = np.random.default_rng(0)
    catalogue_ = tuple(f"s{j}" for j in range(6))
    shelves = catalogue_[:5]
    base = {s: rng.normal(size=6) for s in catalogue_}
    weights = {f"f{i}": {s: rng.normal(size=6) for s in catalogue_} for i in range(10)}
    probes = []

    def probe(page, n_slots, name, value):
        probes.append((page, n_slots, name))
        table = [base[s][:n_slots] + (value * weights[name][s][:n_slots] if name else 0.0) for s in page]
        return np.array(table).T.ravel()

    def expected(page, n_slots, names, values):
        table = [base[s][:n_slots] + sum(v * weights[n][s][:n_slots] for n, v in zip(names, values)) for s in page]
        return np.array(table).T

    terms = ListenerTerms(probe, max_pages=3, request_floats=240, max_floats=10_000)  # 4 rows of 5 x 4 values
    assert terms.fits(3, 5, 4) and not terms.fits(4, 5, 4)  # (T + 1) (K N + 40) <= 240
    assert terms.costs(shelves, 4, ["f0", "f1", "f2", "f3"], [1.0] * 4) is None and probes == []
    names, values = ["f0", "f1", "f2"], [0.5, -2.0, 3.0]
    for _ in range(2):
        np.testing.assert_allclose(terms.costs(shelves, 4, names, values), expected(shelves, 4, names, values),
                                   rtol=0, atol=1e-9)
    assert [p[2] for p in probes] == ["", "f0", "f1", "f2"]
    page = (shelves[3], shelves[0])  # fewer shelves and slots: gathered, no probe
    np.testing.assert_allclose(terms.costs(page, 2, names, values), expected(page, 2, names, values), rtol=0, atol=1e-9)
    assert len(probes) == 4
    page = (shelves[1], catalogue_[5], shelves[2])  # one new shelf: only it is probed, for each feature
    np.testing.assert_allclose(terms.costs(page, 3, names, values), expected(page, 3, names, values), rtol=0, atol=1e-9)
    assert probes[4:] == [((catalogue_[5],), 3, name) for name in ["", *names]]
    terms.costs(shelves, 4, ["f2", "f3"], [1.0, 1.0])  # f3 in, f0 (least recently used) out of the page
    assert list(terms._pages[(shelves, 4)].rows) == ["f1", "", "f2", "f3"]
    terms.costs(shelves, 6, ["f0"], [1.0])  # more slots than the store holds: probed
    assert probes[-2:] == [(shelves, 6, ""), (shelves, 6, "f0")]
    assert list(terms._pages) == [page, (shelves, 4), (shelves, 6)] or list(terms._pages) == [
        (page, 3), (shelves, 4), (shelves, 6)]  # the least recently used page out
    np.testing.assert_allclose(terms.costs(shelves, 6, [], []), expected(shelves, 6, [], []), rtol=0, atol=0)

    small = ListenerTerms(probe, max_floats=40)  # a store of 40 values: emptied, results unchanged
    for i in range(10):
        np.testing.assert_allclose(small.costs(shelves, 4, [f"f{i}"], [2.0]), expected(shelves, 4, [f"f{i}"], [2.0]),
                                   rtol=0, atol=1e-9)
        assert small._n_floats <= 40 + 2 * 5 * (4 + ENTRY_OVERHEAD)  # over by at most one request's rows


def test_high_cardinality_listener_features_beyond_the_bounds_stay_exact(tmp_path):
    shelves = catalogue(5)
    _, loaded = trained(RankerConfig(), shelves, tmp_path)
    loaded._listener_terms = ListenerTerms(loaded._probe, request_floats=4 * (10 + ENTRY_OVERHEAD), max_floats=100)
    for i in range(40):
        ctx = Context({"listener_ref": f"id-{i}", "segment": f"s{i % 3}", "taste": (i + 1) / 7})
        expected = vw_pass(loaded, ctx, shelves, 2)
        np.testing.assert_allclose(loaded.score(ctx, shelves, 2)[0], expected, rtol=0, atol=_tolerance(expected))
        assert len(loaded._listener_terms._pages[(shelves, 2)].rows) <= 4  # the base and 3 features
        assert loaded._listener_terms._n_floats <= 100 + 4 * 5 * (2 + ENTRY_OVERHEAD)  # over by one request's rows at most
    assert len(loaded._listener_terms._pages[(shelves, 2)].rows) == 4


def test_a_request_too_large_for_the_terms_is_scored_by_vws_pass(tmp_path):
    shelves = catalogue(6)
    _, loaded = trained(RankerConfig(), shelves, tmp_path)
    loaded._listener_terms = ListenerTerms(loaded._probe, request_floats=4 * (18 + ENTRY_OVERHEAD))
    small, large = Context({"a": 1.0, "b": 2.0, "c": "x"}), Context({"a": 1.0, "b": 2.0, "c": "x", "d": 3.0})
    np.testing.assert_allclose(loaded.score(small, shelves, 3)[0], vw_pass(loaded, small, shelves, 3), rtol=0, atol=1e-5)
    assert np.array_equal(loaded.score(large, shelves, 3)[0], vw_pass(loaded, large, shelves, 3))  # 5 rows: VW's
    assert list(loaded._listener_terms._pages[(shelves, 3)].rows) == ["", "a", "b", "c=x"]


def test_a_model_swapped_in_finds_the_terms_of_the_pages_served_before(tmp_path):
    """`warm_like` before a swap: the pages the serving model used last get their rows for the
    new model, so its first requests make no VW probe, and score what a cold copy scores."""
    shelves = catalogue(8)
    _, serving = trained(RankerConfig(), shelves, tmp_path)
    rng = np.random.default_rng(6)
    contexts = [rich_context(rng) for _ in range(5)]
    for ctx in contexts:
        serving.score(ctx, shelves, 4)
        serving.score(ctx, shelves[:5], 2)
    new, cold = VWShelfRanker.load(tmp_path / "model"), VWShelfRanker.load(tmp_path / "model")
    new.warm_like(serving, budget_s=60.0)
    probes = _count_probes(new)
    for ctx in contexts:
        for page, n_slots in ((shelves, 4), (shelves[:5], 2)):
            assert np.array_equal(new.score(ctx, page, n_slots)[0], cold.score(ctx, page, n_slots)[0])
    assert probes() == 0
    late = VWShelfRanker.load(tmp_path / "model")
    late.warm_like(serving, budget_s=0.0)  # no time: nothing found, nothing wrong
    assert sum(len(page.rows) for page in late._listener_terms._pages.values()) == 0


@pytest.mark.parametrize("interactions, affine", [
    (("listener*shelf", "slot*shelf"), True), (RICH_INTERACTIONS, True), ((), True),
    (("listener*listener",), False), (("shelf*listener*listener",), False), (("listener*shelf*listener",), False),
])
def test_affine_in_the_listener_unless_an_interaction_names_it_twice(interactions, affine):
    assert is_affine_in_listener(interactions) is affine


def test_a_listener_without_features_is_scored_from_the_base_alone(tmp_path):
    shelves = catalogue(6)
    _, loaded = trained(RankerConfig(), shelves, tmp_path)
    for ctx in (Context({}), Context({"zero": 0.0})):
        expected = vw_pass(loaded, ctx, shelves, 2)
        np.testing.assert_allclose(loaded.score(ctx, shelves, 2)[0], expected, rtol=0, atol=_tolerance(expected))
    assert list(loaded._listener_terms._pages[(shelves, 2)].rows) == [""]  # the base alone


def test_a_boolean_and_a_number_equal_in_python_stay_different_shelves(tmp_path):
    """True == 1.0 in Python, but VW reads `x=true` and `x:1.0` as different features: the shelf
    caches (parsed examples, text lines, terms) must not hand one the other's."""
    as_bool, as_number = Shelf("a", {"x": True}), Shelf("a", {"x": 1.0})
    assert as_bool != as_number and Context({"x": True}) != Context({"x": 1.0})
    _, loaded = trained(RankerConfig(), catalogue(6), tmp_path)
    ctx = Context({"segment": "s1"})
    for shelves in ((as_bool, *catalogue(3)), (as_number, *catalogue(3))):
        np.testing.assert_allclose(loaded.score(ctx, shelves, 2)[0], vw_pass(loaded, ctx, shelves, 2), rtol=0, atol=1e-5)
        assert shelf_line(shelves[0]) == shelf_line(Shelf("a", dict(shelves[0].features)))
