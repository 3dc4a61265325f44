"""Explorers: the prepared per-decision slot models equal the plain per-slot rule, ties included."""

import numpy as np
import pytest

from bandit.explore import EpsilonGreedy, Softmax, SquareCB


def _masks(rng, n, slot, rows):
    masks = np.ones((rows, n), dtype=bool)
    for r in range(rows):
        masks[r, rng.choice(n, size=slot, replace=False)] = False
    return masks


@pytest.mark.parametrize("explorer", [EpsilonGreedy(0.1), EpsilonGreedy(0.0), Softmax(2.0), Softmax(2.0, 0.2), SquareCB()])
@pytest.mark.parametrize("tied", [False, True])
def test_prepared_slot_model_equals_the_rule(explorer, tied):
    rng = np.random.default_rng(0)
    n, k = 9, 5
    costs = rng.normal(size=(k, n))
    if tied:
        costs = np.round(costs, 0)  # many equal costs, including among the cheapest
    model = explorer.slot_model(costs, gamma=7.0)
    for slot in range(k):
        available = _masks(rng, n, slot, 40)
        expected = explorer.probs(costs[slot], available, n - slot, 7.0)
        np.testing.assert_allclose(model.probs(slot, available), expected, atol=1e-12)
        np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-12)
        assert (expected[~available] == 0.0).all()


def test_epsilon_greedy_splits_the_greedy_mass_between_tied_shelves():
    p = EpsilonGreedy(0.2).probs(np.array([1.0, 0.0, 0.0, 2.0]), np.ones((1, 4), dtype=bool), 4)
    np.testing.assert_allclose(p[0], [0.05, 0.05 + 0.4, 0.05 + 0.4, 0.05])


def test_softmax_floor_matches_vw_rule():
    # VW's enforce_minimum_probability: every shelf gets at least eps/m, the largest give mass up
    p = Softmax(5.0, 0.3).probs(np.array([0.0, 1.0, 2.0]), np.ones((1, 3), dtype=bool), 3)
    assert p.min() == pytest.approx(0.1)
    assert p.sum() == pytest.approx(1.0)
    raw = np.exp(-5.0 * np.array([0.0, 1.0, 2.0]))
    raw /= raw.sum()
    assert p[0, 0] == pytest.approx(raw[0] - (0.1 - raw[1]) - (0.1 - raw[2]))


def test_squarecb_probabilities_follow_the_gap():
    p = SquareCB().probs(np.array([0.0, 0.5, 1.0]), np.ones((1, 3), dtype=bool), 3, gamma=4.0)
    np.testing.assert_allclose(p[0, 1:], [1 / (3 + 2.0), 1 / (3 + 4.0)])
    assert p[0, 0] == pytest.approx(1 - 1 / 5 - 1 / 7)


def test_a_uniform_share_keeps_every_available_shelf_at_share_over_m():
    from bandit.explore import UniformShare

    costs = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    base = EpsilonGreedy(0.0).slot_model(costs)
    mixed = UniformShare(base, 0.2)
    available = np.array([[True, True, False, True]])
    p = mixed.probs(1, available)
    np.testing.assert_allclose(p[0], [0.2 / 3, 0.2 / 3, 0.0, 0.8 + 0.2 / 3])
