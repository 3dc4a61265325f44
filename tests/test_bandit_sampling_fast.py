"""The compiled sampling kernel against the numpy reference, on the same draws.

`bandit.sampling.sample_rankings` hands the VW ranker's explorers to `bandit.sampling_kernel`;
`sample_rankings_reference` is the numpy implementation from `probs` alone. On the same
uniforms they must choose the same shelves and report the same probabilities and marginals
(to 1e-12; the kernel repeats numpy's operations in order, so in practice bit for bit).
"""

import hashlib

import numpy as np
import pytest

from bandit import sampling
from bandit.config import RankerConfig
from bandit.explore import EpsilonGreedy, Softmax, SquareCB, UniformShare, _ExplorerSlots
from bandit.sampling import _One, event_rng, marginals, sample_ranking, sample_rankings, sample_rankings_reference
from bandit.vw.ranker import VWShelfRanker
from tests.bandit_fixtures import catalogue, context, train_toward

pytest.importorskip("numba")

MODELS = {
    "epsilon": lambda costs, gamma: EpsilonGreedy(0.05).slot_model(costs),
    "greedy": lambda costs, gamma: EpsilonGreedy(0.0).slot_model(costs),
    "uniform": lambda costs, gamma: EpsilonGreedy(1.0).slot_model(costs),
    "softmax": lambda costs, gamma: Softmax(2.0).slot_model(costs),
    "softmax-underflow": lambda costs, gamma: Softmax(900.0).slot_model(costs),  # the kernel hands it back
    "softmax-floor": lambda costs, gamma: Softmax(3.0, 0.1).slot_model(costs),
    "softmax-steep-floor": lambda costs, gamma: Softmax(60.0, 0.3).slot_model(costs),
    "softmax-all-floor": lambda costs, gamma: Softmax(3.0, 1.0).slot_model(costs),
    "softmax-per-row": lambda costs, gamma: _ExplorerSlots(Softmax(2.0), costs),
    "squarecb": lambda costs, gamma: SquareCB().slot_model(costs, gamma),
    "squarecb-share": lambda costs, gamma: UniformShare(SquareCB().slot_model(costs, gamma), 0.2),
    "epsilon-share": lambda costs, gamma: UniformShare(EpsilonGreedy(0.1).slot_model(costs), 0.3),
    "softmax-floor-share": lambda costs, gamma: UniformShare(Softmax(2.0, 0.2).slot_model(costs), 0.1),
}


def _case(rng, n, k, n_events, kind):
    costs = rng.normal(size=(k, n_events, n)) * rng.choice([1e-3, 1.0, 10.0])
    if kind == "ties":
        costs = np.round(costs, 1)
    elif kind == "flat":  # an untrained model: every cost 0
        costs[:] = 0.0
    gamma = rng.uniform(0.0, 50.0, size=n_events)
    return costs, gamma


def _assert_same(ref, fast):
    np.testing.assert_array_equal(fast[0], ref[0])  # the same shelves chosen
    for a, b in [(ref[1], fast[1]), (ref[2].values, fast[2].values), (ref[2].stderr, fast[2].stderr)]:
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a))
        np.testing.assert_allclose(b, a, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_kernel_gives_the_reference_results_on_the_same_draws(name):
    rng = np.random.default_rng(sorted(MODELS).index(name))
    cases = [  # (shelves, slots, decisions, costs, draws, exact budget)
        (20, 8, 1, "normal", 32, 2048), (20, 8, 1, "ties", 32, 2048), (20, 8, 1, "flat", 32, 2048), (7, 3, 600, "normal", 8, 2048),
        (5, 5, 1, "normal", 2, 10**6), (9, 4, 1, "ties", 0, 2048), (9, 4, 3, "normal", 32, 2048),
        (2, 1, 1, "normal", 32, 2048), (3, 2, 2, "flat", 5, 1), (150, 6, 1, "normal", 8, 2048),
        (200, 3, 1, "ties", 4, 10**5), (40, 8, 2, "normal", 32, 50),
    ]
    for n, k, n_events, kind, draws, budget in cases:
        costs, gamma = _case(rng, n, k, n_events, kind)
        uniforms = rng.random((n_events, k, max(draws, 1), 1))
        model = _One(MODELS[name](costs[:, 0], float(gamma[0]))) if n_events == 1 else MODELS[name](costs, gamma)
        ref = sample_rankings_reference(model, uniforms, draws=draws, exact_budget=budget)
        _assert_same(ref, sample_rankings(model, uniforms, draws=draws, exact_budget=budget))
        if kind != "flat" and name != "softmax-underflow":  # not handed back to the reference
            assert sampling._kernel_sample_rankings(model, uniforms, draws, budget) is not None


def test_the_kernel_is_what_runs_for_the_vw_explorers_and_not_for_other_models(monkeypatch):
    costs = np.random.default_rng(0).normal(size=(3, 6))
    calls = []
    kernel = sampling.sampling_kernel()
    monkeypatch.setattr(sampling, "sampling_kernel", lambda: calls.append(1) or kernel)
    sample_ranking(EpsilonGreedy(0.1).slot_model(costs), 3, np.random.default_rng(1), draws=32, exact_budget=2048)
    assert calls
    calls.clear()
    nan_costs = costs.copy()
    nan_costs[0, 0] = np.nan  # what non-finite costs give is the reference's business
    sample_ranking(EpsilonGreedy(0.1).slot_model(nan_costs), 3, np.random.default_rng(1), draws=32, exact_budget=2048)

    class Plain:  # a SlotModel that only has probs
        n_shelves = 6

        def probs(self, slot, available):
            return available / available.sum(axis=1, keepdims=True)

    sample_ranking(Plain(), 3, np.random.default_rng(1), draws=32, exact_budget=2048)
    assert not calls


@pytest.mark.parametrize("config", [
    RankerConfig(explorer="epsilon", epsilon=0.2),
    RankerConfig(explorer="softmax", softmax_lambda=3.0, epsilon=0.1),
    RankerConfig(explorer="squarecb", gamma_scale=2.0, uniform_share=0.1),
], ids=["epsilon", "softmax", "squarecb-share"])
def test_a_trained_rankers_decisions_are_the_references(config, monkeypatch):
    ranker = VWShelfRanker(config)
    shelves = catalogue(12)
    train_toward(ranker, shelves, 5, good={0: 3, 1: 7, 2: 1}, steps=150)
    model = ranker.slot_model(context(0), shelves, 5)
    fast = [ranker.rank(context(i % 3), shelves, 5, event_id=f"same-{i}") for i in range(40)]
    fast_marginals = marginals(model, 5, np.random.default_rng(3), draws=64, exact_budget=10**6)
    monkeypatch.setattr(sampling, "sampling_kernel", lambda: None)
    reference = [ranker.rank(context(i % 3), shelves, 5, event_id=f"same-{i}") for i in range(40)]
    reference_marginals = marginals(model, 5, np.random.default_rng(3), draws=64, exact_budget=10**6)
    for a, b in zip(fast, reference):
        assert a.shelf_ids == b.shelf_ids
        for x, y in [(a.slot_probs, b.slot_probs), (a.slot_marginals, b.slot_marginals),
                     (a.marginal_stderr, b.marginal_stderr)]:
            np.testing.assert_allclose(x, y, rtol=0.0, atol=1e-12)
        for x, y in zip(a.slot_distributions, b.slot_distributions):
            assert [s for s, _ in x] == [s for s, _ in y]
            np.testing.assert_allclose([p for _, p in x], [p for _, p in y], rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(fast_marginals.values, reference_marginals.values, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(fast_marginals.stderr, reference_marginals.stderr, rtol=0.0, atol=1e-12)


def test_event_rng_is_philox_keyed_by_the_hash_of_seed_and_event_id():
    for seed, event_id in [(0, "a"), (7, "event-ü-42"), (123456789, "x" * 300)]:
        digest = hashlib.blake2b(f"{seed}/{event_id}".encode(), digest_size=16).digest()
        expected = np.random.Generator(np.random.Philox(key=int.from_bytes(digest, "little")))
        rng = event_rng(seed, event_id)
        np.testing.assert_array_equal(rng.random((8, 32, 1)), expected.random((8, 32, 1)))
        assert rng.integers(0, 1000, 20).tolist() == expected.integers(0, 1000, 20).tolist()
        assert str(rng.bit_generator.state) == str(expected.bit_generator.state)
