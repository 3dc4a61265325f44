"""Scoring a policy on logged events: real VW ranker, baselines, progressive validation."""

import json

import numpy as np
import pytest

from bandit.baselines import EditorialPolicy, UniformRandomPolicy
from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.vw.ranker import VWShelfRanker
from offline_eval.evaluate import evaluate
from offline_eval.readers import batch_log
from offline_eval.scoring import event_slice, logged_scores, progressive_scores, resolve_policy, score_policy
from tests.offline_eval_synth import shelf_world_events

CONFIG = RankerConfig(explorer="epsilon", epsilon=0.2, seed=4)


@pytest.fixture(scope="module")
def batch():
    return EventBatch.from_events(shelf_world_events(UniformRandomPolicy(seed=1), 120, np.random.default_rng(2)))


@pytest.fixture(scope="module")
def trained_ranker(batch):
    ranker = VWShelfRanker(CONFIG)
    ranker.learn(batch)
    return ranker


@pytest.mark.parametrize("which", ["vw", "uniform", "editorial"])
def test_scores_agree_with_the_policy_interface(which, batch, trained_ranker):
    policy = {"vw": trained_ranker, "uniform": UniformRandomPolicy(seed=3), "editorial": EditorialPolicy(["shelf-3"])}[which]
    target = score_policy(policy, batch)
    n, k = batch.n_events, 3
    np.testing.assert_allclose(target.prob.ravel(), policy.probabilities(batch), rtol=1e-12)
    marginal, _ = policy.marginal_probabilities(batch)
    np.testing.assert_allclose(target.marginal.ravel(), marginal, rtol=1e-12)
    np.testing.assert_allclose(target.conditional_distribution.sum(axis=2), np.ones((n, k)), atol=1e-9)
    np.testing.assert_allclose(target.marginal_distribution.sum(axis=2), np.ones((n, k)), atol=1e-9)
    # a shelf placed above has no probability below it
    above = batch.action_index.reshape(n, k)[:, 0]
    assert (target.conditional_distribution[np.arange(n), 1, above] == 0.0).all()


@pytest.mark.parametrize("config", [
    RankerConfig(explorer="epsilon", epsilon=0.2, seed=4),
    RankerConfig(explorer="softmax", softmax_lambda=3.0, epsilon=0.05, seed=4, exact_budget=20),
    RankerConfig(explorer="squarecb", seed=4, marginal_draws=16, exact_budget=20),
    RankerConfig(explorer="epsilon", epsilon=0.0, uniform_share=0.1, seed=4, exact_budget=40),
], ids=["epsilon", "softmax-monte-carlo", "squarecb-monte-carlo", "greedy-uniform-share"])
def test_scores_of_many_events_at_once_equal_those_of_one_at_a_time(config, batch):
    ranker = VWShelfRanker(config)
    ranker.learn(batch)
    n, k = batch.n_events, 3
    scored = [ranker.score(context, shelves, k) for context, shelves in zip(batch.contexts, batch.shelves)]
    pdfs = None if scored[0][1] is None else np.stack([pdf for _, pdf in scored])
    model = ranker.slot_models(np.stack([costs for costs, _ in scored], axis=1), pdfs)
    prob, marginal = logged_scores(model, batch.action_index.reshape(n, k), batch.event_ids, seed=config.seed,
                                   draws=config.marginal_draws, exact_budget=config.exact_budget)
    one_at_a_time = score_policy(ranker, batch)
    np.testing.assert_array_equal(prob, one_at_a_time.prob)
    np.testing.assert_array_equal(marginal, one_at_a_time.marginal)


def test_a_uniform_target_on_a_uniform_log_has_unit_weights_and_the_on_policy_mean(batch):
    target = score_policy(UniformRandomPolicy(), batch)
    log = batch_log(batch)
    on_policy = batch.reward.sum() / batch.n_events
    evaluation = evaluate(log, target, "ips,snips,iips,rips,pi", rng=np.random.default_rng(0))
    for estimate in evaluation.estimates.values():
        assert estimate.value == pytest.approx(on_policy, rel=1e-12)
        assert estimate.ess == pytest.approx(batch.n_events)


def test_progressive_validation_scores_each_event_before_learning_it(batch):
    warmup = 20
    full = progressive_scores(VWShelfRanker(CONFIG), batch, warmup=warmup)
    assert full.prob.shape == (batch.n_events - warmup, 3)
    # no peeking: scoring only the first 60 events gives the same probabilities for them
    head = progressive_scores(VWShelfRanker(CONFIG), event_slice(batch, 0, 60), warmup=warmup)
    np.testing.assert_array_equal(head.prob, full.prob[:40])
    # and it does learn: late events are scored differently than by a ranker trained on the warm-up only
    frozen = VWShelfRanker(CONFIG)
    frozen.learn(event_slice(batch, 0, warmup))
    late = score_policy(frozen, event_slice(batch, warmup, batch.n_events))
    assert not np.allclose(late.prob[-20:], full.prob[-20:])
    np.testing.assert_array_equal(late.prob[0], full.prob[0])


def test_warmup_must_leave_events_to_score(batch):
    with pytest.raises(ValidationError, match=r"warmup: must lie in \[0, 119\]"):
        progressive_scores(VWShelfRanker(CONFIG), batch, warmup=120)


def test_policy_specs(tmp_path, trained_ranker):
    assert not resolve_policy("uniform").progressive
    assert resolve_policy("popularity").progressive
    path = tmp_path / "ranker.vw"
    trained_ranker.save(path)
    assert resolve_policy(str(path)).make().model_version == trained_ranker.model_version
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"explorer": "softmax", "softmax_lambda": 2.0}))
    spec = resolve_policy(f"vw:{config}")
    assert spec.progressive and spec.make().config.explorer == "softmax"
    for bad, message in [("nothing-here", "policy: not a saved policy file"),
                         (f"vw:{tmp_path / 'absent.json'}", "policy: file does not exist")]:
        with pytest.raises(ValidationError, match=message):
            resolve_policy(bad)
    config.write_text(json.dumps({"explorer": "bag"}))
    with pytest.raises(ValidationError, match="explorer: must be one of"):
        resolve_policy(f"vw:{config}")
