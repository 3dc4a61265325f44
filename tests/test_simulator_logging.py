"""Logging mode: the slate table, exact probabilities checked against sampled frequencies, and
target probabilities that make importance weighting recover a target's true value."""

import itertools

import numpy as np
import pytest

from bandit.baselines import EditorialPolicy
from bandit.errors import ValidationError
from simulator.logging_mode import SlatePolicy, generate_slate_log
from simulator.world import World, WorldConfig

SLATE_COLUMNS = ["event_id", "slot", "action", "reward", "logging_prob", "logging_marginal"]


def tiny_world(**changes):
    """5 shelves, all candidates, 3 slots: 60 possible rankings."""
    config = WorldConfig(n_shelves=5, min_candidates=5, max_candidates=5, n_slots=3, **changes)
    return World(config, np.random.default_rng(21))


def policies(world):
    rng = np.random.default_rng(0)
    return {
        "uniform": SlatePolicy.uniform(world),
        "editorial-epsilon": SlatePolicy.editorial(world, 0.3),
        "linear-epsilon": SlatePolicy.linear(world, "epsilon", rng, noise_sd=0.5, epsilon=0.2),
        "linear-softmax": SlatePolicy.linear(world, "softmax", rng, temperature=0.7),
    }


@pytest.mark.parametrize("name", ["uniform", "editorial-epsilon", "linear-epsilon", "linear-softmax"])
def test_ranking_probabilities_match_sampled_frequencies(name):
    """For one context: P(ranking) = prod of conditional probabilities sums to 1 over all 60
    rankings and matches how often the policy samples each (5 binomial sd); the marginals
    match how often each shelf lands in each slot."""
    world = tiny_world()
    policy = policies(world)[name]
    one = world.draw_requests(1, np.random.default_rng(1))
    n = 40_000
    batch = one[np.zeros(n, dtype=np.int64)]
    sampled = policy.sample(batch, np.random.default_rng(2))
    every = np.array(list(itertools.permutations(range(5), 3)))
    probs = policy.conditional_probs(one[np.zeros(len(every), dtype=np.int64)], every).prod(axis=1)
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    codes = sampled @ np.array([25, 5, 1])
    counts = np.bincount(codes, minlength=125)[every @ np.array([25, 5, 1])]
    assert np.all(np.abs(counts - n * probs) <= 5 * np.sqrt(n * probs * (1 - probs)) + 1)
    marginal = policy.marginal_probs(batch[:2000], sampled[:2000], np.random.default_rng(3))
    for slot in range(3):
        for shelf in range(5):
            shown = sampled[:, slot] == shelf
            if shown.any():
                frequency = shown.mean()
                tolerance = 5 * np.sqrt(frequency * (1 - frequency) / n) + (0.02 if name == "linear-softmax" else 1e-9)
                rows = sampled[:2000, slot] == shelf
                if rows.any():
                    assert abs(marginal[rows, slot].mean() - frequency) < tolerance


def test_the_slate_table_has_the_design_columns_and_is_seeded():
    world = World(WorldConfig.default(), np.random.default_rng(3))
    logging = SlatePolicy.editorial(world, 0.2)
    target = SlatePolicy.uniform(world)
    table = generate_slate_log(world, logging, 5000, np.random.default_rng(4), target=target, chunk_events=1500)
    assert list(table.columns) == [*SLATE_COLUMNS, "target_prob", "target_marginal"]
    assert len(table) == 5000 * 6
    assert np.array_equal(table["event_id"].to_numpy(), np.repeat(np.arange(5000), 6))
    assert np.array_equal(table["slot"].to_numpy(), np.tile(np.arange(6), 5000))
    assert set(table["action"].astype(str)) <= set(world.shelf_ids)
    assert table.groupby("event_id")["action"].nunique().eq(6).all()
    assert table["logging_prob"].between(0, 1, inclusive="right").all()
    assert table["target_prob"].to_numpy() == pytest.approx(1.0 / (16 - table["slot"].to_numpy()))
    again = generate_slate_log(world, logging, 5000, np.random.default_rng(4), target=target, chunk_events=1500)
    assert table.equals(again)
    assert list(generate_slate_log(world, logging, 10, np.random.default_rng(4)).columns) == SLATE_COLUMNS


def test_importance_weights_from_the_log_recover_the_target_s_true_value():
    """Slate IPS (product of target/logging conditionals) and, under position-based clicks,
    item-position IPS (target/logging marginals) are unbiased: within 4.5 standard errors."""
    world = tiny_world()
    rng = np.random.default_rng(5)
    logging = SlatePolicy.uniform(world)
    target = SlatePolicy.linear(world, "epsilon", rng, epsilon=0.2)
    n = 60_000
    table = generate_slate_log(world, logging, n, rng, target=target)
    truth = target.value(world, world.draw_requests(50_000, rng), rng)
    per_event = table.assign(
        ratio=table["target_prob"] / table["logging_prob"],
        marginal_term=table["reward"] * table["target_marginal"] / table["logging_marginal"],
    ).groupby("event_id")
    slate = per_event["ratio"].prod() * per_event["reward"].sum()
    item_position = per_event["marginal_term"].sum()
    for estimate in (slate, item_position):
        stderr = np.hypot(estimate.std() / np.sqrt(n), truth.population_stderr)
        assert abs(estimate.mean() - truth.value) < 4.5 * stderr


def test_a_bandit_policy_as_target_gives_the_same_probabilities_as_its_vectorised_twin():
    world = World(WorldConfig(min_candidates=10, max_candidates=20), np.random.default_rng(6))
    logging = SlatePolicy.uniform(world)
    twin = SlatePolicy.editorial(world, 0.0)
    by_policy = generate_slate_log(world, logging, 300, np.random.default_rng(7), target=EditorialPolicy())
    by_twin = generate_slate_log(world, logging, 300, np.random.default_rng(7), target=twin)
    assert by_policy["target_prob"].to_numpy() == pytest.approx(by_twin["target_prob"].to_numpy())
    assert by_policy["target_marginal"].to_numpy() == pytest.approx(by_twin["target_marginal"].to_numpy())
    assert set(np.unique(by_twin["target_prob"])) == {0.0, 1.0}


@pytest.mark.parametrize("spec, message", [
    ("thompson", "policy: must be one of uniform, editorial, epsilon, softmax"),
    ("softmax:epsilon=0.1", "policy: 'softmax' takes only noise, temperature"),
    ("uniform:noise=1", "policy: 'uniform' takes only no options"),
    ("epsilon:epsilon", "policy: options are key=number pairs"),
    ("epsilon:epsilon=x", "policy: options are key=number pairs"),
    ("epsilon:epsilon=1.5", "epsilon: must lie in [0, 1]"),
    ("softmax:temperature=0", "temperature: must be > 0"),
])
def test_bad_logging_policies_fail_clearly(spec, message):
    world = tiny_world()
    with pytest.raises(ValidationError) as err:
        SlatePolicy.from_spec(world, spec, np.random.default_rng(0))
    assert str(err.value).startswith(message)


def test_bad_log_requests_fail_clearly():
    world = tiny_world()
    with pytest.raises(ValidationError, match="n_events: must be a positive integer"):
        generate_slate_log(world, SlatePolicy.uniform(world), -5, np.random.default_rng(0))
    with pytest.raises(ValidationError, match="target: must be a SlatePolicy or a bandit Policy"):
        generate_slate_log(world, SlatePolicy.uniform(world), 5, np.random.default_rng(0), target="uniform")
