"""The simulated world: configs, requests, click models and ground truth against Monte Carlo."""

import itertools
import pickle
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from bandit.baselines import EditorialPolicy, UniformRandomPolicy
from bandit.config import RankerConfig
from bandit.errors import ShelfBanditError, ValidationError
from bandit.types import Context
from bandit.vw.ranker import VWShelfRanker
from simulator.catalogue import COUNTRIES, TEMPLATES, UTC_OFFSET_H
from simulator.click_models import ClickModel
from simulator.oracle import OraclePolicy
from simulator.world import ListenerContext, World, WorldConfig


def small_world(click_model="position", seed=0, **changes):
    """6 shelves, all candidates, 3 slots: small enough to enumerate every ranking."""
    config = WorldConfig(n_shelves=6, min_candidates=6, max_candidates=6, n_slots=3, click_model=click_model, **changes)
    return World(config, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig.default(), np.random.default_rng(11))


BAD_CONFIGS = [
    ({"n_shelves": -1}, "n_shelves: must be at least 1"),
    ({"n_listeners": 0}, "n_listeners: must be at least 1"),
    ({"min_candidates": 0}, "min_candidates: must be at least 1"),
    ({"n_slots": -2}, "n_slots: must be at least 1"),
    ({"n_slots": 17}, "n_slots: must not exceed min_candidates (16)"),
    ({"max_candidates": 30}, "max_candidates: must not exceed n_shelves (24)"),
    ({"min_candidates": 20, "max_candidates": 18}, "max_candidates: must be at least min_candidates (20)"),
    ({"n_shelves": 201, "max_candidates": 16}, "n_shelves: must not exceed 200"),
    ({"click_model": "dbn"}, "click_model: must be one of position, cascade"),
    ({"n_segments": 7}, "n_segments: must not exceed 6"),
    ({"n_slots": 2.5}, "n_slots: must be an integer"),
    ({"sessions_per_hour": 0.0}, "sessions_per_hour: must be > 0"),
    ({"delay_mean_s": -1.0}, "delay_mean_s: must be >= 0"),
    ({"drift_scale": float("nan")}, "drift_scale: must be a finite number"),
    ({"drift_period_days": 0}, "drift_period_days: must be > 0"),
]


@pytest.mark.parametrize("changes, message", BAD_CONFIGS)
def test_bad_configs_fail_naming_the_field_and_rule(changes, message):
    with pytest.raises(ValidationError) as err:
        WorldConfig.default().updated(**changes)
    assert str(err.value).startswith(message)


def test_unknown_settings_are_refused_by_name():
    with pytest.raises(ValidationError, match=r"world: unknown settings .*\['n_shelfs'\]"):
        WorldConfig.from_dict({"n_shelfs": 10})
    with pytest.raises(ValidationError, match="config: must be a WorldConfig"):
        World({"n_shelves": 10}, np.random.default_rng(0))
    with pytest.raises(ValidationError, match="n: must be a positive integer"):
        World(WorldConfig.default(), np.random.default_rng(0)).draw_requests(0, np.random.default_rng(0))


def test_default_world_is_the_documented_home_page(world):
    cfg = WorldConfig.default()
    assert (cfg.n_shelves, cfg.min_candidates, cfg.n_slots, cfg.n_segments, cfg.click_model) == (24, 16, 6, 6, "position")
    assert world.shelf_ids == tuple(t.name for t in TEMPLATES)
    assert sorted(world.editorial_order) == sorted(world.shelf_ids)
    kinds = {s.features["kind"] for s in world.shelves}
    assert kinds == {"made_for_you", "recently_played", "new_releases", "podcasts", "charts", "genre", "mood", "editorial"}
    assert world.click.examination[0] == 1.0 and np.all(np.diff(world.click.examination) < 0)


def test_catalogue_grows_with_unique_variants():
    big = World(WorldConfig(n_shelves=60, max_candidates=40, min_candidates=10), np.random.default_rng(0))
    assert len(set(big.shelf_ids)) == 60
    assert "daily-mix-1-2" in big.shelf_ids and "daily-mix-1-3" in big.shelf_ids


def test_requests_are_columnar_seeded_and_well_formed():
    world = World(WorldConfig(min_candidates=10, max_candidates=20), np.random.default_rng(3))
    a = world.draw_requests(4000, np.random.default_rng(5))
    b = world.draw_requests(4000, np.random.default_rng(5))
    assert np.array_equal(a.attraction, b.attraction) and np.array_equal(a.candidate_mask, b.candidate_mask)
    assert a.attraction.shape == a.candidate_mask.shape == (4000, 24)
    assert ((a.attraction > 0) & (a.attraction < 1)).all()
    sizes = a.n_candidates
    assert sizes.min() == 10 and sizes.max() == 20
    # sizes are uniform on 10..20: each of the 11 values about 4000/11 times (5 binomial sd)
    counts = np.bincount(sizes, minlength=21)[10:]
    p = 1 / 11
    assert np.all(np.abs(counts - 4000 * p) < 5 * np.sqrt(4000 * p * (1 - p)))
    assert np.all(np.diff(a.time_s) > 0)


def test_contexts_show_what_a_ranker_may_see_and_hide_the_rest(world):
    batch = world.draw_requests(50, np.random.default_rng(1))
    requests = world.requests(batch)
    first = requests[0]
    assert set(first.context.features) == {"segment", "country", "platform", "daypart", "weekend", "tenure"}
    assert first.context.listener_id == world.listener_ids[batch.listener[0]]
    assert [s.shelf_id for s in first.shelves] == [world.shelf_ids[i] for i in np.flatnonzero(batch.candidate_mask[0])]
    assert all(s is world.shelves[world.index_of[s.shelf_id]] for r in requests for s in r.shelves)  # shared objects
    ranks = [world.editorial_order.index(s) for s in first.baseline]
    assert ranks == sorted(ranks) and set(first.baseline) == {s.shelf_id for s in first.shelves}
    assert pickle.loads(pickle.dumps(first.context)) == first.context


def test_daypart_and_weekend_follow_each_country_s_local_clock(world):
    """Checked against Python's own calendar, request by request."""
    batch = world.draw_requests(400, np.random.default_rng(2), start_s=86400.0 * 4.7)
    for request, time_s in zip(world.requests(batch), batch.time_s):
        country = request.context.features["country"]
        offset = UTC_OFFSET_H[COUNTRIES.index(country)]
        local = datetime.fromtimestamp(WorldConfig().start_epoch_s + time_s, tz=timezone(timedelta(hours=offset)))
        hour = local.hour
        daypart = "morning" if 5 <= hour < 10 else "daytime" if 10 <= hour < 17 else "evening" if 17 <= hour < 22 else "night"
        assert request.context.features["daypart"] == daypart
        assert request.context.features["weekend"] == (local.weekday() >= 5)


def test_click_model_formulas_by_hand():
    attraction = np.array([[0.5, 0.2, 0.4]])
    theta = [1.0, 0.5, 0.25]
    assert ClickModel("position", theta).expected(attraction) == pytest.approx(np.array([[0.5, 0.1, 0.1]]))
    # cascade: 0.5; 0.5 * 0.2 * (1 - 0.5) = 0.05; 0.25 * 0.4 * 0.5 * 0.8 = 0.04
    assert ClickModel("cascade", theta).expected(attraction) == pytest.approx(np.array([[0.5, 0.05, 0.04]]))
    with pytest.raises(ValidationError, match="examination: must not increase"):
        ClickModel("position", [0.5, 0.6])
    with pytest.raises(ValidationError, match="click_model: must be one of"):
        ClickModel("pbm", [1.0])


@pytest.mark.parametrize("click_model", ["position", "cascade"])
def test_expected_rewards_match_monte_carlo_within_their_error(click_model):
    world = World(WorldConfig(click_model=click_model), np.random.default_rng(4))
    rng = np.random.default_rng(6)
    batch = world.draw_requests(300, rng)
    rankings = np.argsort(np.where(batch.candidate_mask, rng.random(batch.attraction.shape), 2.0), axis=1)[:, :6]
    expected = world.expected_slot_rewards(batch, rankings)
    draws = 400
    streams = np.mean([world.sample_rewards(batch, rankings, rng) for _ in range(draws)], axis=0)
    # per slot, mean over requests: Bernoulli variance p(1-p) per request, averaged
    stderr = np.sqrt((expected * (1 - expected)).sum(axis=0) / draws) / len(batch)
    assert np.all(np.abs(streams.mean(axis=0) - expected.mean(axis=0)) < 4.5 * stderr)
    if click_model == "cascade":
        assert world.sample_rewards(batch, rankings, rng).sum(axis=1).max() <= 1.0  # stops after a stream


@pytest.mark.parametrize("click_model", ["position", "cascade"])
def test_the_oracle_is_the_best_of_every_ranking(click_model):
    world = small_world(click_model)
    batch = world.draw_requests(40, np.random.default_rng(1))
    best = world.expected_slot_rewards(batch, world.oracle_rankings(batch)).sum(axis=1)
    every = np.array(list(itertools.permutations(range(6), 3)))
    for ranking in every:
        value = world.expected_slot_rewards(batch, np.broadcast_to(ranking, (len(batch), 3))).sum(axis=1)
        assert np.all(value <= best + 1e-12)
    oracle = OraclePolicy(world)
    shown = [oracle.rank(r.context, r.shelves, 3, event_id=f"o{i}").shelf_ids for i, r in enumerate(world.requests(batch))]
    assert np.array_equal(world.indices(shown), world.oracle_rankings(batch))


def test_the_oracle_needs_a_context_the_world_drew(world):
    with pytest.raises(ValidationError, match="context: the truth is known only for contexts this world drew"):
        OraclePolicy(world).rank(Context({"segment": "rock"}), world.shelves[:8], 3)
    with pytest.raises(ShelfBanditError, match="cannot be saved"):
        OraclePolicy(world).save("unused")


def test_editorial_policy_with_the_request_baseline_is_the_world_s_editorial_ranking(world):
    batch = world.draw_requests(30, np.random.default_rng(3))
    policy = EditorialPolicy()
    shown = [policy.rank(r.context, r.shelves, 6, baseline=r.baseline, event_id=f"e{i}").shelf_ids
             for i, r in enumerate(world.requests(batch))]
    assert np.array_equal(world.indices(shown), world.editorial_rankings(batch))


@pytest.mark.parametrize("click_model", ["position", "cascade"])
def test_policy_value_is_exact_by_enumeration_and_its_monte_carlo_agrees(click_model):
    world = small_world(click_model)
    batch = world.draw_requests(60, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    # uniform random: the mean over all 120 orderings of the first 3 of 6 shelves, by brute force
    every = np.array(list(itertools.permutations(range(6), 3)))
    brute = np.mean([world.expected_slot_rewards(batch, np.broadcast_to(r, (60, 3))).sum(axis=1) for r in every], axis=0)
    exact = world.policy_value(UniformRandomPolicy(), batch, rng)
    assert exact.exact and exact.stderr == 0.0
    assert exact.value == pytest.approx(brute.mean(), rel=1e-12)
    assert sum(exact.per_slot) == pytest.approx(exact.value)
    monte_carlo = world.policy_value(UniformRandomPolicy(), batch, rng, draws=64, exact_budget=1)
    assert not monte_carlo.exact and monte_carlo.stderr > 0
    assert abs(monte_carlo.value - exact.value) < 4.5 * monte_carlo.stderr


def test_policy_value_of_a_learning_ranker_matches_sampled_rankings():
    """Monte Carlo value of a stochastic VW ranker vs averaging the truth of rankings it samples."""
    world = World(WorldConfig.default(), np.random.default_rng(8))
    ranker = VWShelfRanker(RankerConfig(explorer="softmax", softmax_lambda=20.0, epsilon=0.1, seed=1))
    batch = world.draw_requests(40, np.random.default_rng(9))
    rng = np.random.default_rng(10)
    value = world.policy_value(ranker, batch, rng, draws=128)
    requests = world.requests(batch)
    samples = 60
    totals = np.empty((samples, len(batch)))
    for j in range(samples):
        shown = world.indices(ranker.rank(r.context, r.shelves, 6, rng).shelf_ids for r in requests)
        totals[j] = world.expected_slot_rewards(batch, shown).sum(axis=1)
    sampled = totals.mean()
    sampled_stderr = np.sqrt((totals.var(axis=0, ddof=1) / samples).sum()) / len(batch)
    assert abs(value.value - sampled) < 4.5 * np.hypot(value.stderr, sampled_stderr)


def test_delays_are_exponential_with_the_configured_mean():
    world = World(WorldConfig(delay_mean_s=90.0), np.random.default_rng(0))
    delays = world.sample_delays((20000, 6), np.random.default_rng(1))
    assert abs(delays.mean() - 90.0) < 5 * 90.0 / np.sqrt(delays.size)
    assert not World(WorldConfig(), np.random.default_rng(0)).sample_delays((3, 2), np.random.default_rng(1)).any()


def test_drift_moves_the_truth_over_time_with_its_period():
    def truth_at(world, t):
        return world.attraction(np.array([7]), np.array([t]), np.array([123]))[0]

    still = World(WorldConfig(), np.random.default_rng(0))
    assert np.array_equal(truth_at(still, 0.0), truth_at(still, 3 * 86400.0))
    drifting = World(WorldConfig(drift_scale=0.8, drift_period_days=2.0), np.random.default_rng(0))
    assert np.abs(truth_at(drifting, 0.0) - truth_at(drifting, 86400.0)).max() > 0.01
    assert truth_at(drifting, 0.0) == pytest.approx(truth_at(drifting, 2 * 86400.0), abs=1e-9)


def test_listener_contexts_keep_context_semantics():
    ctx = ListenerContext(Context({"a": "b"}).features, "listener-1", 4, 10.0)
    plain = Context({"a": "b"}, "listener-1")
    assert ctx == plain and plain == ctx and hash(ctx) == hash(plain)
    assert ctx != Context({"a": "c"}, "listener-1") and ctx != Context({"a": "b"})
    assert isinstance(ctx, Context)


def test_new_releases_are_most_attractive_right_after_friday():
    def logit_at(world, t):
        p = world.attraction(np.array([3]), np.array([t]), np.array([50]))[0]
        return np.log(p / (1 - p))

    friday = 4 * 86400.0  # the world starts on Monday 2024-01-01 00:00 UTC
    fresh = World(WorldConfig(novelty_scale=1.0, novelty_half_life_days=1.0), np.random.default_rng(0))
    plain = World(WorldConfig(), np.random.default_rng(0))
    new = fresh.catalogue.new_release
    assert new.sum() == 2
    for days_after, boost in ((0.0, 1.0), (1.0, 0.5), (2.0, 0.25), (6.999, 0.5 ** 6.999)):
        gain = logit_at(fresh, friday + days_after * 86400.0) - logit_at(plain, friday + days_after * 86400.0)
        assert gain[new] == pytest.approx(boost, abs=1e-9) and gain[~new] == pytest.approx(0.0, abs=1e-9)
