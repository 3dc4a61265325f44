"""Statistical behaviour on synthetic logs with exactly known values.

Unbiasedness: over S independent logs, the mean estimate of an estimator that is unbiased under
the world's reward structure lies within Z_UNBIASED standard errors (sd / sqrt(S)) of the truth;
two-sided, that fails by chance with probability 6e-5 per check. An estimator whose assumption
the world breaks sits more than Z_BIASED standard errors away (the biases here are 9 standard
errors or more at these sizes). Self-normalised and cross-fitted
estimators carry an O(1/n) bias that is far below one standard error at n = 400.

Coverage: over N_LOGS logs, nominal 95% intervals must contain the truth in 90-99% of them;
if the true coverage were 95%, falling outside that band has probability below 1e-3.
"""

import zlib

import numpy as np
import pytest

from offline_eval.evaluate import EstimatorOptions, evaluate, point_estimates
from offline_eval.reward_model import RewardModel
from tests.offline_eval_synth import draw_log, policies, small_world, true_values

Z_UNBIASED = 4.0
Z_BIASED = 6.0
N_SEEDS = 400
N_EVENTS = 400
N_LOGS = 240
# an unpenalised, well-specified reward model is unbiased; the default ridge of 1 shrinks toward the slot mean
OPTIONS = EstimatorOptions(clip=1.0, switch_threshold=1e9, reward_model=RewardModel(ridge=1e-3))

UNBIASED = {
    ("independent", "logger"): ("ips", "snips", "iips", "snips_iips", "rips", "snips_rips", "dm", "dr", "sndr", "switch_dr", "cascade_dr"),
    ("independent", "uniform"): ("pi", "iips", "rips"),
    ("cascade", "logger"): ("ips", "snips", "rips", "snips_rips", "dr", "cascade_dr"),
    ("interaction", "logger"): ("ips", "snips", "dr", "sndr"),
}
BIASED = {
    ("independent", "logger"): ("clipped_ips", "pi"),  # clipping at 1; pi's product form under a dependent logger
    ("cascade", "logger"): ("iips", "snips_iips", "dm"),  # shelves above change slot k's reward
    ("interaction", "logger"): ("rips", "snips_rips", "cascade_dr", "iips"),  # the shelf below does too
}


def mean_estimates(structure: str, logger: str, names: tuple[str, ...]) -> tuple[dict, dict, float]:
    world = small_world(structure)
    pol = policies()
    truth = float(true_values(world, pol["target"]).sum())
    seeds = np.random.SeedSequence(zlib.crc32(f"{structure}/{logger}".encode())).spawn(N_SEEDS)
    totals = {name: [] for name in names}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        log, target = draw_log(world, pol[logger], pol["target"], N_EVENTS, rng)
        for name, values in point_estimates(log, target, names, rng=rng, options=OPTIONS).items():
            totals[name].append(values.sum())
    means = {name: float(np.mean(v)) for name, v in totals.items()}
    errors = {name: float(np.std(v, ddof=1) / np.sqrt(N_SEEDS)) for name, v in totals.items()}
    return means, errors, truth


@pytest.mark.parametrize("structure,logger", sorted(set(UNBIASED) | set(BIASED)))
def test_unbiased_where_the_assumption_holds_and_biased_where_it_breaks(structure, logger):
    unbiased = UNBIASED.get((structure, logger), ())
    biased = BIASED.get((structure, logger), ())
    means, errors, truth = mean_estimates(structure, logger, unbiased + biased)
    for name in unbiased:
        z = (means[name] - truth) / errors[name]
        assert abs(z) <= Z_UNBIASED, f"{name}: mean {means[name]:.4f} vs truth {truth:.4f} ({z:+.1f} SE)"
    for name in biased:
        z = (means[name] - truth) / errors[name]
        assert abs(z) > Z_BIASED, f"{name} should be biased here: mean {means[name]:.4f} vs truth {truth:.4f} ({z:+.1f} SE)"


COVERAGE_ESTIMATORS = ("ips", "snips", "iips", "rips", "snips_rips", "dr", "cascade_dr")


@pytest.fixture(scope="module")
def coverage_runs():
    """For each CI method, how often each estimator's 95% interval held the truth over N_LOGS logs."""
    world = small_world("independent")
    pol = policies()
    truth = float(true_values(world, pol["target"]).sum())
    held = {method: {name: 0 for name in COVERAGE_ESTIMATORS} for method in ("bootstrap", "normal", "bernstein")}
    for seed in np.random.SeedSequence(2024).spawn(N_LOGS):
        rng = np.random.default_rng(seed)
        log, target = draw_log(world, pol["logger"], pol["target"], N_EVENTS, rng)
        for method in held:
            evaluation = evaluate(log, target, COVERAGE_ESTIMATORS, rng=rng, ci=method, n_resamples=400, options=OPTIONS)
            for name, estimate in evaluation.estimates.items():
                held[method][name] += estimate.lower <= truth <= estimate.upper
    return {method: {name: count / N_LOGS for name, count in counts.items()} for method, counts in held.items()}


@pytest.mark.parametrize("method", ["bootstrap", "normal"])
def test_95_percent_intervals_cover_the_truth_90_to_99_percent_of_the_time(coverage_runs, method):
    for name, share in coverage_runs[method].items():
        assert 0.90 <= share <= 0.99, f"{method} {name}: covered {share:.1%} of {N_LOGS} logs"


def test_empirical_bernstein_bound_is_valid_and_conservative(coverage_runs):
    # a high-probability bound: at least the nominal level (it is not meant to be tight)
    for name, share in coverage_runs["bernstein"].items():
        assert share >= 0.95, f"bernstein {name}: covered only {share:.1%}"


def test_the_bootstrap_of_a_large_log_resamples_blocks_as_widely_as_events_vary():
    # above MAX_BLOCKS events the bootstrap resamples 4096 blocks keyed by event id (sizes vary
    # around n / 4096); its intervals must be as wide as the normal ones, which see every event
    world, pol = small_world("independent"), policies()
    ratios = {name: [] for name in ("ips", "snips", "iips", "rips", "snips_rips")}
    for seed in np.random.SeedSequence(77).spawn(6):
        rng = np.random.default_rng(seed)
        log, target = draw_log(world, pol["logger"], pol["target"], 20_000, rng)
        widths = {}
        for method in ("bootstrap", "normal"):
            evaluation = evaluate(log, target, tuple(ratios), rng=rng, ci=method, n_resamples=400)
            widths[method] = {name: e.upper - e.lower for name, e in evaluation.estimates.items()}
        for name in ratios:
            ratios[name].append(widths["bootstrap"][name] / widths["normal"][name])
    for name, values in ratios.items():
        # 400 resamples: a percentile interval's width is within about 7% of its limit (1 sd)
        assert 0.9 <= np.mean(values) <= 1.1, f"{name}: bootstrap / normal width {np.mean(values):.3f}"
