"""One contract suite, run against every policy: the same rules hold for all of them."""

import numpy as np
import pytest

from bandit.baselines import EditorialPolicy, PopularityPolicy, UniformRandomPolicy
from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.policy import build_decision
from bandit.registry import load_policy
from bandit.sampling import SampledRanking, _exact_marginals, marginals
from bandit.types import Context, LoggedEvent, Outcome, Shelf
from bandit.vw.ranker import VWShelfRanker
from tests.bandit_fixtures import catalogue, context, train_toward

N_SHELVES, N_SLOTS = 7, 4


def _trained(policy):
    train_toward(policy, catalogue(N_SHELVES), N_SLOTS, good={0: 3, 1: 5}, steps=150)
    return policy


POLICIES = {
    "uniform": lambda: UniformRandomPolicy(seed=3),
    "editorial": lambda: EditorialPolicy(["shelf-4", "shelf-2"], seed=3),
    "popularity": lambda: _trained(PopularityPolicy(seed=3)),
    "vw-epsilon": lambda: _trained(VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.2, seed=3))),
    "vw-softmax": lambda: _trained(VWShelfRanker(RankerConfig(explorer="softmax", softmax_lambda=4.0, epsilon=0.05, seed=3))),
    "vw-squarecb": lambda: _trained(VWShelfRanker(RankerConfig(explorer="squarecb", gamma_scale=2.0, seed=3))),
    "vw-squarecb-share": lambda: _trained(VWShelfRanker(RankerConfig(explorer="squarecb", uniform_share=0.2, seed=3))),
}


@pytest.fixture(scope="module", params=sorted(POLICIES))
def policy(request):
    return POLICIES[request.param]()


def _decisions(policy, n, segment=0):
    shelves = catalogue(N_SHELVES)
    return [policy.rank(context(segment), shelves, N_SLOTS, event_id=f"c-{i}") for i in range(n)]


def test_rankings_are_valid_distributions(policy):
    for d in _decisions(policy, 50):
        assert len(set(d.shelf_ids)) == N_SLOTS
        assert all(0.0 < p <= 1.0 for p in d.slot_probs)
        for k, distribution in enumerate(d.slot_distributions):
            assert distribution[0] == (d.shelf_ids[k], d.slot_probs[k])
            assert sum(p for _, p in distribution) == pytest.approx(1.0, abs=1e-9)
            assert not set(s for s, _ in distribution) & set(d.shelf_ids[:k])
        assert all(0.0 < m <= 1.0 for m in d.slot_marginals)
        assert d.slot_marginals[0] == pytest.approx(d.slot_probs[0])


def test_same_event_id_and_seed_give_the_same_ranking(policy):
    assert _decisions(policy, 20) == _decisions(policy, 20)
    shelves = catalogue(N_SHELVES)
    a = policy.rank(context(), shelves, N_SLOTS, rng=np.random.default_rng(11), event_id="x")
    b = policy.rank(context(), shelves, N_SLOTS, rng=np.random.default_rng(11), event_id="x")
    assert a == b


def test_probabilities_of_its_own_decisions_match_what_it_reported(policy):
    shelves = catalogue(N_SHELVES)
    decisions = _decisions(policy, 30)
    events = [LoggedEvent(context(), shelves, d, Outcome((0.0,) * N_SLOTS)) for d in decisions]
    batch = EventBatch.from_events(events)
    np.testing.assert_allclose(policy.probabilities(batch), batch.logging_prob, rtol=1e-9)
    values, _stderr = policy.marginal_probabilities(batch)
    np.testing.assert_allclose(values, batch.logging_marginal, rtol=1e-9)


def test_marginals_are_exact_where_enumerated_and_within_stated_error_elsewhere(policy):
    shelves = catalogue(N_SHELVES)
    model = policy.slot_model(context(), shelves, N_SLOTS, ())
    first = model.probs(0, np.ones((1, N_SHELVES), dtype=bool))[0]
    truth, n_exact = _exact_marginals(model, N_SLOTS, 10**7, first)
    assert n_exact == N_SLOTS
    np.testing.assert_allclose(truth.sum(axis=1), 1.0, atol=1e-9)  # each slot shows one shelf
    np.testing.assert_allclose(truth.sum(axis=0)[truth.sum(axis=0) > 0], np.minimum(truth.sum(axis=0), 1.0)[truth.sum(axis=0) > 0])
    z = []
    for seed in range(40):
        est = marginals(model, N_SLOTS, np.random.default_rng(seed), draws=32, exact_budget=8)
        exact = est.stderr == 0.0
        np.testing.assert_allclose(est.values[exact], truth[exact], atol=1e-12)
        z.extend(((est.values[~exact] - truth[~exact]) / est.stderr[~exact]).tolist())
    if z:  # deterministic policies have no Monte Carlo error at all
        z = np.abs(np.array(z))
        # |z| > 3 has probability ~0.3% for a normal estimate; allow heavy-ish tails of a 32-draw mean
        assert np.mean(z > 3.0) < 0.02, np.mean(z > 3.0)
        assert np.mean(z < 2.0) > 0.85, np.mean(z < 2.0)


def test_save_and_load_give_the_same_rankings(policy, tmp_path):
    """The same rankings, and the same probabilities: exactly for a saved model and its loaded
    copy; to float32 rounding against the model as it learned (VW's pass, where the saved
    model's costs come from its listener terms)."""
    before = _decisions(policy, 10)
    version = policy.save(tmp_path / "model")
    saved = _decisions(policy, 10)
    loaded = load_policy(tmp_path / "model")
    assert loaded.model_version == version
    after = _decisions(loaded, 10)
    strip = lambda ds: [(d.shelf_ids, d.slot_probs, d.slot_marginals) for d in ds]  # noqa: E731
    assert strip(after) == strip(saved)
    assert [d.shelf_ids for d in after] == [d.shelf_ids for d in before]
    for field in ("slot_probs", "slot_marginals"):
        np.testing.assert_allclose([getattr(d, field) for d in after], [getattr(d, field) for d in before], rtol=1e-6)


def test_load_takes_the_same_overrides_for_every_kind(policy, tmp_path):
    policy.save(tmp_path / "model")
    reseeded = load_policy(tmp_path / "model", seed=11, marginal_draws=8)
    assert (reseeded.seed, reseeded.marginal_draws) == (11, 8)
    again = load_policy(tmp_path / "model", seed=11, marginal_draws=8)
    strip = lambda ds: [(d.shelf_ids, d.slot_probs, d.slot_marginals) for d in ds]  # noqa: E731
    assert strip(_decisions(reseeded, 10)) == strip(_decisions(again, 10))  # the seed decides the draws
    if any(p < 1.0 for d in _decisions(policy, 10) for p in d.slot_probs):  # a policy that draws at all
        assert [d.shelf_ids for d in _decisions(reseeded, 20)] != [d.shelf_ids for d in _decisions(policy, 20)]
    with pytest.raises(ValidationError, match=r"^learning_rate: is not a setting a loaded policy may override"):
        load_policy(tmp_path / "model", learning_rate=0.5)


def test_bandit_modules_import_no_circle():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bandit"
    graph = {}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        graph[module] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("bandit")}

    def reaches(start, target, seen):
        return any(n == target or (n not in seen and not seen.add(n) and reaches(n, target, seen)) for n in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert not circles, circles


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda p: p.rank(Context(), (), 1), "shelves"),
        (lambda p: p.rank(Context(), (Shelf("a"), Shelf("a")), 1), "shelves"),
        (lambda p: p.rank(Context(), (Shelf("a"), Shelf("b")), 3), "slots"),
        (lambda p: p.rank(Context(), (Shelf("a"), Shelf("b")), 0), "slots"),
        (lambda p: p.rank(Context(), (Shelf("a"), Shelf("b")), 1, baseline=["z"]), "baseline"),
        (lambda p: p.rank(Context(), (Shelf("a"), Shelf("b")), 1, baseline=["a", "a"]), "baseline"),
        (lambda p: p.rank({"x": 1}, (Shelf("a"), Shelf("b")), 1), "context"),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(policy, call, field):
    with pytest.raises(ValidationError) as caught:
        call(policy)
    assert caught.value.field == field


def test_editorial_follows_the_request_baseline_then_its_own_order():
    shelves = catalogue(5)
    policy = EditorialPolicy(["shelf-3"])
    assert policy.rank(context(), shelves, 3, event_id="e").shelf_ids == ("shelf-3", "shelf-0", "shelf-1")
    d = policy.rank(context(), shelves, 3, event_id="e", baseline=["shelf-2", "shelf-4"])
    assert d.shelf_ids == ("shelf-2", "shelf-4", "shelf-0")
    assert d.slot_probs == (1.0, 1.0, 1.0)


def test_uniform_probabilities_are_exact():
    d = UniformRandomPolicy().rank(context(), catalogue(6), 3, event_id="u")
    assert d.slot_probs == pytest.approx((1 / 6, 1 / 5, 1 / 4))
    assert d.slot_marginals == pytest.approx((1 / 6, 1 / 6, 1 / 6))
    assert d.marginal_stderr == (0.0, 0.0, 0.0)


def test_popularity_ranks_by_observed_reward_rate():
    shelves = catalogue(4)
    policy = PopularityPolicy()
    train = [
        LoggedEvent(context(), shelves, UniformRandomPolicy().rank(context(), shelves, 2, event_id=f"p{i}"), Outcome((0.0, 0.0)))
        for i in range(3)
    ]
    policy.learn(EventBatch.from_events(train))
    rewarded = EditorialPolicy(["shelf-2", "shelf-1"]).rank(context(), shelves, 2, event_id="r")
    policy.learn(EventBatch.from_events([LoggedEvent(context(), shelves, rewarded, Outcome((1.0, 0.5)))]))
    assert policy.rank(context(), shelves, 2, event_id="q").shelf_ids == ("shelf-2", "shelf-1")


def test_without_monte_carlo_deep_marginals_are_unknown_and_logged_as_null():
    from bandit.vw.format import event_line, parse_event

    ranker = VWShelfRanker(RankerConfig(explorer="epsilon", epsilon=0.2, marginal_draws=0, exact_budget=10))
    shelves = catalogue(N_SHELVES)
    d = ranker.rank(context(), shelves, N_SLOTS, event_id="no-mc")
    assert d.slot_marginals[0] == d.slot_probs[0] and d.marginal_stderr[0] == 0.0
    assert all(np.isnan(m) for m in d.slot_marginals[1:]) and all(np.isnan(e) for e in d.marginal_stderr[1:])
    line = event_line(LoggedEvent(context(), shelves, d, Outcome((0.0,) * N_SLOTS)))
    assert "NaN" not in line and '"_marginals":[' in line
    back = parse_event(line).decision
    assert back.slot_marginals[0] == d.slot_marginals[0] and np.isnan(back.slot_marginals[-1])
    with pytest.raises(ValidationError, match="marginal_draws"):
        RankerConfig(marginal_draws=1)


def test_a_decision_lists_each_slots_possible_shelves_in_candidate_order_with_the_chosen_one_first():
    shelves = catalogue(4)  # shelf-0 .. shelf-3
    ranking = SampledRanking(
        indices=np.array([2, 0]),
        slot_probs=np.array([0.5, 0.6]),
        distributions=np.array([[0.25, 0.0, 0.5, 0.25], [0.6, 0.0, 0.0, 0.4]]),
    )
    values, stderr = np.full((2, 4), 0.3), np.full((2, 4), 0.01)
    values[0, 2], values[1, 0], stderr[1, 0] = 0.5, 0.45, 0.02
    decision = build_decision("e-1", "v-1", shelves, ranking, values, stderr)
    assert decision.shelf_ids == ("shelf-2", "shelf-0")
    assert decision.slot_distributions == (
        (("shelf-2", 0.5), ("shelf-0", 0.25), ("shelf-3", 0.25)),  # the chosen one swapped with the first
        (("shelf-0", 0.6), ("shelf-3", 0.4)),
    )
    assert decision.slot_marginals == (0.5, 0.45) and decision.marginal_stderr == (0.01, 0.02)
    drawn_impossible = SampledRanking(np.array([1]), np.array([0.0]), np.array([[0.5, 0.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match=r"probability 0\.0 was drawn"):
        build_decision("e-2", "v-1", shelves, drawn_impossible, values[:1], stderr[:1])
