"""Every estimator and interval on a 4-event, 2-slot log, against values worked out by hand.

Shelves A, B, C (codes 0, 1, 2) are the candidates of every event. Logged orderings:
e0 (A, B), e1 (B, C), e2 (C, A), e3 (A, C).
"""

import math

import numpy as np
import pytest

from offline_eval.estimators import SHORT_NAMES, EstimatorInputs, ModelPredictions
from offline_eval.evaluate import EstimatorOptions, make_estimator
from offline_eval.intervals import Intervals, slot_values
from offline_eval.reward_model import RewardModel, cross_fitted
from offline_eval.slate import SlateLog, TargetProbs, unsupported_share

ACTIONS = np.array([[0, 1], [1, 2], [2, 0], [0, 2]])
REWARD = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
LOGGING_PROB = np.array([[0.5, 0.5], [0.25, 0.5], [0.25, 0.8], [0.5, 0.4]])
TARGET_PROB = np.array([[0.8, 0.25], [0.1, 0.5], [0.1, 0.2], [0.8, 0.5]])
LOGGING_MARGINAL = np.array([[0.5, 0.25], [0.25, 0.5], [0.25, 0.2], [0.5, 0.25]])
TARGET_MARGINAL = np.array([[0.8, 0.4], [0.1, 0.5], [0.1, 0.1], [0.8, 0.5]])
# the target's distribution at slot 1 given the logged shelf above (slot 0: A 0.8, B 0.1, C 0.1)
TARGET_SLOT1 = np.array([[0.0, 0.25, 0.75], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0], [0.0, 0.5, 0.5]])
TARGET_MARGINAL_SLOTS = np.array([[0.8, 0.1, 0.1], [0.1, 0.4, 0.5]])
# reward model q_k(A), q_k(B), q_k(C): slot 0 (0.6, 0.2, 0.4), slot 1 (0.3, 0.1, 0.5)
# cascade Q-function Q_k(A), Q_k(B), Q_k(C): slot 0 (0.9, 0.3, 0.6), slot 1 (0.3, 0.1, 0.5)


def tiny_log() -> SlateLog:
    return SlateLog(
        event_ids=np.array(["e0", "e1", "e2", "e3"], dtype=object),
        action=ACTIONS,
        action_ids=np.array(["A", "B", "C"], dtype=object),
        reward=REWARD,
        logging_prob=LOGGING_PROB,
        logging_marginal=LOGGING_MARGINAL,
        observed=np.ones((4, 2), dtype=bool),
        context=np.zeros((4, 0), dtype=np.int64),
        candidates=np.tile([0, 1, 2], (4, 1)),
        action_position=ACTIONS,
    )


def tiny_inputs() -> EstimatorInputs:
    conditional = np.stack([np.tile([0.8, 0.1, 0.1], (4, 1)), TARGET_SLOT1], axis=1)
    target = TargetProbs(
        prob=TARGET_PROB,
        marginal=TARGET_MARGINAL,
        conditional_distribution=conditional,
        marginal_distribution=np.broadcast_to(TARGET_MARGINAL_SLOTS, (4, 2, 3)).copy(),
    )
    # the models at the logged shelves, and in expectation under the target's distributions:
    # q: sum_a pi(a at k) q_k(a) = slot 0: 0.8*0.6 + 0.1*0.2 + 0.1*0.4 = 0.54; slot 1: 0.1*0.3 + 0.4*0.1 + 0.5*0.5 = 0.32
    # Q: slot 0: 0.8*0.9 + 0.1*0.3 + 0.1*0.6 = 0.81; slot 1, given the shelf above:
    #    e0 0.25*0.1 + 0.75*0.5 = 0.4, e1 0.5*0.3 + 0.5*0.5 = 0.4, e2 0.2*0.3 + 0.8*0.1 = 0.14, e3 0.5*0.1 + 0.5*0.5 = 0.3
    rewards = ModelPredictions(
        logged=np.array([[0.6, 0.1], [0.2, 0.5], [0.4, 0.3], [0.6, 0.5]]), expected=np.tile([0.54, 0.32], (4, 1))
    )
    q_values = ModelPredictions(
        logged=np.array([[0.9, 0.1], [0.3, 0.5], [0.6, 0.3], [0.9, 0.5]]),
        expected=np.array([[0.81, 0.4], [0.81, 0.4], [0.81, 0.14], [0.81, 0.3]]),
    )
    return EstimatorInputs(tiny_log(), target, rewards, q_values)


# Conditional ratios rho = target/logging: e0 (1.6, 0.5), e1 (0.4, 1.0), e2 (0.4, 0.25), e3 (1.6, 1.25)
# whole-ordering weights w = (0.8, 0.4, 0.1, 2.0); prefix weights W = e0 (1.6, 0.8), e1 (0.4, 0.4),
# e2 (0.4, 0.1), e3 (1.6, 2.0). Marginal ratios v: e0 (1.6, 1.6), e1 (0.4, 1.0), e2 (0.4, 0.5), e3 (1.6, 2.0).
# Logged q: e0 (0.6, 0.1), e1 (0.2, 0.5), e2 (0.4, 0.3), e3 (0.6, 0.5); r - q: e0 (0.4, -0.1),
# e1 (-0.2, 0.5), e2 (0.6, 0.7), e3 (-0.6, -0.5); w (r - q): e0 (0.32, -0.08), e1 (-0.08, 0.2),
# e2 (0.06, 0.07), e3 (-1.2, -1.0): sums (-0.9, -0.81).
# DM per event: slot 0: 0.8*0.6 + 0.1*0.2 + 0.1*0.4 = 0.54; slot 1: 0.1*0.3 + 0.4*0.1 + 0.5*0.5 = 0.32.
HAND = {
    # (0.8*1 + 0.4*0 + 0.1*1 + 2.0*0)/4, (0.8*0 + 0.4*1 + 0.1*1 + 2.0*0)/4
    "ips": (0.9 / 4, 0.5 / 4),
    "sips": (0.9 / 4, 0.5 / 4),
    # M = 0.5: w -> (0.5, 0.4, 0.1, 0.5): (0.5 + 0.1)/4, (0.4 + 0.1)/4
    "clipped_ips": (0.6 / 4, 0.5 / 4),
    # sum w = 3.3
    "snips": (0.9 / 3.3, 0.5 / 3.3),
    # (1.6*1 + 0.4*0 + 0.4*1 + 1.6*0)/4, (1.6*0 + 1.0*1 + 0.5*1 + 2.0*0)/4
    "iips": (2.0 / 4, 1.5 / 4),
    # sum v = (4.0, 5.1)
    "snips_iips": (2.0 / 4.0, 1.5 / 5.1),
    # (1.6*1 + 0.4*0 + 0.4*1 + 1.6*0)/4, (0.8*0 + 0.4*1 + 0.1*1 + 2.0*0)/4
    "rips": (2.0 / 4, 0.5 / 4),
    # sum W = (4.0, 3.3)
    "snips_rips": (2.0 / 4.0, 0.5 / 3.3),
    # product form (the logger is neither independent nor uniform): weight sum_k v_k - 1 =
    # (2.2, 0.4, -0.1, 2.6): (2.2*1 + 0 - 0.1*1 + 0)/4, (0 + 0.4*1 - 0.1*1 + 0)/4
    "pi": (2.1 / 4, 0.3 / 4),
    "dm": (0.54, 0.32),
    "dr": (0.54 - 0.9 / 4, 0.32 - 0.81 / 4),
    "sndr": (0.54 - 0.9 / 3.3, 0.32 - 0.81 / 3.3),
    # tau = 1 drops e3 (w = 2.0): sums of w (r - q) over e0..e2: (0.30, 0.19)
    "switch_dr": (0.54 + 0.30 / 4, 0.32 + 0.19 / 4),
    # slot 0: sum_a pi Q_0 = 0.8*0.9 + 0.1*0.3 + 0.1*0.6 = 0.81; r - Q_0(logged) = (0.1, -0.3, 0.4, -0.9);
    #   W_0 (r - Q) = (0.16, -0.12, 0.16, -1.44), sum -1.24: (-1.24 + 4*0.81)/4
    # slot 1: sum_a pi(a | above) Q_1 = (0.4, 0.4, 0.14, 0.3), times W_0 = (0.64, 0.16, 0.056, 0.48),
    #   sum 1.336; r - Q_1(logged) = (-0.1, 0.5, 0.7, -0.5), times W_1 = (-0.08, 0.2, 0.07, -1.0),
    #   sum -0.81: (-0.81 + 1.336)/4
    "cascade_dr": (2.0 / 4, 0.526 / 4),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_estimator_matches_hand_computation(name):
    estimator = make_estimator(name, EstimatorOptions(clip=0.5, switch_threshold=1.0))
    values = slot_values(estimator.terms(tiny_inputs()).parts)
    np.testing.assert_allclose(values, HAND[name], rtol=1e-12, atol=1e-12)


def test_every_estimator_has_a_hand_reference():
    assert set(SHORT_NAMES) == set(HAND)


def test_pseudoinverse_flags_a_logger_it_cannot_invert_exactly():
    notes = make_estimator("pi", EstimatorOptions()).terms(tiny_inputs()).notes
    assert any(note.startswith("warning: the logger's slots are dependent") for note in notes)


def test_pseudoinverse_for_a_uniform_logger_uses_the_exact_form():
    # 3 shelves, 2 slots, uniform logger: P = (1/3, 1/2), marginals 1/3; m = 3, K = 2.
    # weight = (m-1) sum_k q_k(s_k) + 1 - K + sum_k ((m-1) P(s_k) - (K-1)) / (m - K), P(a) = q_0(a) + q_1(a):
    # P = A 0.9, B 0.5, C 0.6 (slot marginals A (0.8, 0.1), B (0.1, 0.4), C (0.1, 0.5)).
    # e0 (A, B): 2*(0.8 + 0.4) - 1 + (2*0.9 - 1) + (2*0.5 - 1) = 2.4 - 1 + 0.8 + 0.0 = 2.2
    # e1 (B, C): 2*(0.1 + 0.5) - 1 + (2*0.5 - 1) + (2*0.6 - 1) = 1.2 - 1 + 0.0 + 0.2 = 0.4
    # e2 (C, A): 2*(0.1 + 0.1) - 1 + (2*0.6 - 1) + (2*0.9 - 1) = 0.4 - 1 + 0.2 + 0.8 = 0.4
    # e3 (A, C): 2*(0.8 + 0.5) - 1 + (2*0.9 - 1) + (2*0.6 - 1) = 2.6 - 1 + 0.8 + 0.2 = 2.6
    # slot 0: (2.2*1 + 0 + 0.4*1 + 0)/4 = 0.65; slot 1: (0 + 0.4*1 + 0.4*1 + 0)/4 = 0.2
    inputs = tiny_inputs()
    uniform = SlateLog(**{
        **{f: getattr(inputs.log, f) for f in ("event_ids", "action", "action_ids", "reward", "observed", "context",
                                               "candidates", "action_position")},
        "logging_prob": np.tile([1 / 3, 1 / 2], (4, 1)),
        "logging_marginal": np.full((4, 2), 1 / 3),
    })
    terms = make_estimator("pi", EstimatorOptions()).terms(EstimatorInputs(uniform, inputs.target))
    np.testing.assert_allclose(slot_values(terms.parts), [0.65, 0.2], rtol=1e-12)
    assert any("uniform over orderings" in note for note in terms.notes)


def ips_parts():
    return make_estimator("ips", EstimatorOptions()).terms(tiny_inputs()).parts


def test_normal_interval_by_hand():
    # per-event totals w_i (r_i0 + r_i1) = (0.8, 0.4, 0.2, 0.0): mean 0.35, deviations
    # (0.45, 0.05, -0.15, -0.35), sum of squares 0.35, variance 0.35/3, se sqrt(0.35/3/4)
    interval = Intervals("normal", 0.95, 4, np.random.default_rng(0))(ips_parts())
    half = 1.959963984540054 * math.sqrt(0.35 / 3 / 4)
    assert interval.value == pytest.approx(0.35)
    assert (interval.lower, interval.upper) == pytest.approx((0.35 - half, 0.35 + half))


def test_empirical_bernstein_bound_by_hand():
    # Maurer-Pontil: sqrt(2 V ln(4/d) / n) + 7 b ln(4/d) / (3 (n - 1)), V = 0.35/3, b = 0.8 - 0.0, d = 0.05
    interval = Intervals("bernstein", 0.95, 4, np.random.default_rng(0))(ips_parts())
    log_term = math.log(4 / 0.05)
    half = math.sqrt(2 * (0.35 / 3) * log_term / 4) + 7 * 0.8 * log_term / (3 * 3)
    assert (interval.lower, interval.upper) == pytest.approx((0.35 - half, 0.35 + half))


def test_bootstrap_of_a_mean_has_the_plug_in_standard_error():
    # the bootstrap distribution of a mean of n values has variance (1/n) * (population variance);
    # for (0.8, 0.4, 0.2, 0.0): population variance 0.35/4, so sd sqrt(0.35/16) = 0.1479
    intervals = Intervals("bootstrap", 0.95, 4, np.random.default_rng(1), n_resamples=20000)
    intervals(ips_parts())
    counts = intervals.resampling.counts(4)
    replicates = counts @ np.array([0.8, 0.4, 0.2, 0.0]) / 4
    # the sd of a sample sd from 20000 draws is about sd / sqrt(2 * 20000): 5 of those is the tolerance
    assert replicates.std() == pytest.approx(math.sqrt(0.35 / 16), abs=5 * math.sqrt(0.35 / 16) / math.sqrt(40000))
    assert replicates.mean() == pytest.approx(0.35, abs=5 * math.sqrt(0.35 / 16) / math.sqrt(20000))


def test_unsupported_share_by_hand():
    # e1's logger could not show B at slot 1, where the target gives it 0.3: 1 of 2 events
    log = SlateLog(
        event_ids=np.array(["e0", "e1"], dtype=object),
        action=np.array([[0, 1], [0, 2]]),
        action_ids=np.array(["A", "B", "C"], dtype=object),
        reward=np.zeros((2, 2)),
        logging_prob=np.array([[0.5, 0.5], [0.5, 1.0]]),
        logging_marginal=None,
        observed=np.ones((2, 2), dtype=bool),
        context=np.zeros((2, 0), dtype=np.int64),
        candidates=np.tile([0, 1, 2], (2, 1)),
        action_position=np.array([[0, 1], [0, 2]]),
        logging_distribution=np.array([[[0.5, 0.25, 0.25], [0.0, 0.5, 0.5]], [[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]]),
    )
    target = TargetProbs(conditional_distribution=np.array(
        [[[0.2, 0.4, 0.4], [0.0, 0.5, 0.5]], [[0.2, 0.4, 0.4], [0.0, 0.3, 0.7]]]
    ))
    assert unsupported_share(log, target) == 0.5


def two_slot_log() -> SlateLog:
    # e0 (A, B) rewards (1, 1); e1 (B, A) (0, 0); e2 (C, A) (1, 0); e3 (A, C) (0, 0)
    action = np.array([[0, 1], [1, 0], [2, 0], [0, 2]])
    return SlateLog(
        event_ids=np.array(["e0", "e1", "e2", "e3"], dtype=object),
        action=action,
        action_ids=np.array(["A", "B", "C"], dtype=object),
        reward=np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]),
        logging_prob=np.full((4, 2), 0.5),
        logging_marginal=None,
        observed=np.ones((4, 2), dtype=bool),
        context=np.zeros((4, 0), dtype=np.int64),
        candidates=np.tile([0, 1, 2], (4, 1)),
        action_position=action,
    )


# the target's distribution at each slot, the same for every event: slot 0 (0.6, 0.2, 0.2), slot 1 (0.2, 0.3, 0.5)
DISTRIBUTION = np.tile([[0.6, 0.2, 0.2], [0.2, 0.3, 0.5]], (4, 1, 1))
# folds (0, 0, 1, 1), ridge ~0, one backfitting sweep: each fold is scored by shelf means over the other fold
MODEL, FOLDS = RewardModel(ridge=1e-9, n_iterations=1, n_folds=2), np.array([0, 0, 1, 1])


def test_cross_fitted_reward_model_by_hand():
    # fold 1 (e2, e3) from e0, e1: slot 0 A 1, B 0 -> q_0 = (1, 0, 0.5); slot 1 B 1, A 0 -> q_1 = (0, 1, 0.5)
    # fold 0 (e0, e1) from e2, e3: slot 0 C 1, A 0 -> q_0 = (0, 0.5, 1); slot 1 A 0, C 0 -> q_1 = (0, 0, 0)
    # expected under the distribution: fold 0 slot 0 0.6*0 + 0.2*0.5 + 0.2*1 = 0.3, slot 1 0;
    # fold 1 slot 0 0.6*1 + 0.2*0 + 0.2*0.5 = 0.7, slot 1 0.2*0 + 0.3*1 + 0.5*0.5 = 0.55
    predictions = cross_fitted(two_slot_log(), MODEL, np.random.default_rng(0), DISTRIBUTION, folds=FOLDS)
    np.testing.assert_allclose(predictions.logged, [[0.0, 0.0], [0.5, 0.0], [0.5, 0.0], [1.0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(predictions.expected, [[0.3, 0.0], [0.3, 0.0], [0.7, 0.55], [0.7, 0.55]], atol=1e-6)


def test_cascade_q_function_by_hand():
    # fold 1 (e2, e3) from e0, e1: Q_1 = (A 0, B 1, C 0.5) as above, so V_1 = 0.2*0 + 0.3*1 + 0.5*0.5 = 0.55
    #   on every event; slot 0 targets r_0 + V_1: e0 (A) 1.55, e1 (B) 0.55 -> Q_0 = (1.55, 0.55, 1.05)
    #   expected slot 0: 0.6*1.55 + 0.2*0.55 + 0.2*1.05 = 1.25
    # fold 0 (e0, e1) from e2, e3: Q_1 = 0 everywhere, V_1 = 0; slot 0 targets e2 (C) 1, e3 (A) 0
    #   -> Q_0 = (0, 0.5, 1), expected slot 0: 0.2*0.5 + 0.2*1 = 0.3
    predictions = cross_fitted(two_slot_log(), MODEL, np.random.default_rng(0), DISTRIBUTION, cascade=True, folds=FOLDS)
    np.testing.assert_allclose(predictions.logged, [[0.0, 0.0], [0.5, 0.0], [1.05, 0.0], [1.55, 0.5]], atol=1e-6)
    np.testing.assert_allclose(predictions.expected, [[0.3, 0.0], [0.3, 0.0], [1.25, 0.55], [1.25, 0.55]], atol=1e-6)
