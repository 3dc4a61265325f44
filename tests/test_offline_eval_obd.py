"""Real data: the Open Bandit Dataset sample inside the obp 0.4.1 wheel (fetched once with pip, cached).

The quantity: expected clicks per impression, summed over the 3 positions. On-policy, from the
uniform-random logs, that is the sum over positions of the position's click rate (each row is
one item shown at one position). Off-policy, the uniform-random policy is evaluated on the
Bernoulli Thompson Sampling logs with independent IPS: the dataset gives position-wise
propensities only, so the item-position marginal estimators are the ones it supports.
"""

import hashlib

import numpy as np
import pytest

from bandit.errors import ValidationError
from offline_eval.evaluate import evaluate, supported
from offline_eval.obd import WHEEL_NAME, WHEEL_SHA256, fetch_wheel, load_open_bandit, read_csv, uniform_random_target


def on_policy_clicks_per_impression(campaign: str) -> float:
    rows = read_csv(campaign, "random", campaign)
    return float(rows.groupby("position")["click"].mean().sum())


def test_loader_groups_rows_into_impressions():
    data = load_open_bandit("all", "bts")
    rows = read_csv("all", "bts", "all")
    log = data.log
    assert data.n_items == 80 and log.n_slots == 3
    assert log.observed.sum() == len(rows) == 10_000
    assert log.n_events == rows["timestamp"].nunique()
    assert log.reward.sum() == rows["click"].sum()
    np.testing.assert_allclose(np.sort(log.logging_marginal[log.observed]), np.sort(rows["propensity_score"].to_numpy()))
    assert log.logging_prob is None and not log.complete
    assert supported(log, uniform_random_target(data)) == ("iips", "snips_iips")


def test_uniform_random_value_from_thompson_sampling_logs_covers_its_on_policy_value():
    data = load_open_bandit("all", "bts")
    truth = on_policy_clicks_per_impression("all")
    evaluation = evaluate(data.log, uniform_random_target(data), "iips,snips_iips", rng=np.random.default_rng(0))
    for name, estimate in evaluation.estimates.items():
        assert estimate.lower <= truth <= estimate.upper, f"{name}: {truth:.5f} outside [{estimate.lower:.5f}, {estimate.upper:.5f}]"
        assert estimate.upper - estimate.lower < 0.02  # informative: clicks per impression are about 0.011


def test_on_policy_evaluation_of_the_random_logs_is_their_click_rate():
    data = load_open_bandit("all", "random")
    evaluation = evaluate(data.log, uniform_random_target(data), "iips", rng=np.random.default_rng(0))
    assert evaluation.estimates["iips"].value == pytest.approx(on_policy_clicks_per_impression("all"), rel=1e-12)


def test_unknown_campaign_is_refused():
    with pytest.raises(ValidationError, match="campaign: must be one of all, men, women"):
        load_open_bandit("kids")


def test_a_corrupt_cached_wheel_is_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELF_BANDIT_CACHE", str(tmp_path))
    wheel = tmp_path / "obp" / WHEEL_NAME
    wheel.parent.mkdir()
    wheel.write_bytes(b"not a wheel")
    assert fetch_wheel() == wheel
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == WHEEL_SHA256
