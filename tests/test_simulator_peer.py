"""The plain learner (simulator.peer): it is the closed loop with instant feedback, it learns,
and the gap share is computed as its formula says."""

import numpy as np
import pytest

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.vw.ranker import VWShelfRanker
from simulator.closed_loop import LoopConfig, reference_columns, run_closed_loop
from simulator.peer import PeerConfig, gap_closed, run_peer_learner
from simulator.world import World, WorldConfig

SESSIONS = 1500
TAIL = 500
Z = 3.3  # one-sided 99.95%
# the bench's simple world: 16 shelves, 6 slots, 4 segments, only the segment's taste matters
SIMPLE = WorldConfig.default().updated(n_shelves=16, min_candidates=16, max_candidates=16, n_segments=4,
                                       context_scale=0.0, individual_taste_sd=0.0)


@pytest.fixture(scope="module")
def simple_world():
    world = World(SIMPLE, np.random.default_rng(31))
    return world, world.draw_requests(SESSIONS, np.random.default_rng(32))


@pytest.fixture(scope="module")
def peer_run(simple_world):
    world, requests = simple_world
    return run_peer_learner(world, requests, np.random.default_rng(33))


def test_the_plain_learner_is_the_closed_loop_learning_after_every_session(simple_world, peer_run):
    world, requests = simple_world
    direct = run_closed_loop(world, VWShelfRanker(RankerConfig(explorer="squarecb")), requests, np.random.default_rng(33),
                             config=LoopConfig(learn_every=1, reward_window_s=0.0))
    assert np.array_equal(peer_run, direct.metrics["expected_reward"].to_numpy())
    assert peer_run.shape == (SESSIONS,)


def test_the_plain_learner_beats_the_editorial_order(simple_world, peer_run):
    """Paired on the last TAIL requests by true expected reward: the mean difference exceeds Z
    standard errors of the paired differences."""
    world, requests = simple_world
    difference = peer_run[-TAIL:] - reference_columns(world, requests)["editorial_reward"][-TAIL:]
    assert difference.mean() - Z * difference.std(ddof=1) / np.sqrt(TAIL) > 0


def test_the_simple_world_s_truth_depends_on_the_segment_only(simple_world):
    _world, requests = simple_world
    segment = requests.codes[:, 0]
    for s in np.unique(segment):
        rows = requests.attraction[segment == s]
        assert np.allclose(rows, rows[0]), s
    assert len(np.unique(segment)) == 4


def test_gap_closed_reference_values():
    assert gap_closed(np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([2.0, 3.0])) == pytest.approx(0.5)
    assert gap_closed([0.5], [0.5], [1.5]) == 0.0
    assert gap_closed([1.5], [0.5], [1.5]) == 1.0
    assert gap_closed([0.0], [0.5], [1.5]) == pytest.approx(-0.5)
    assert np.isnan(gap_closed([1.0], [1.0], [1.0]))


@pytest.mark.parametrize("served, editorial, oracle", [
    ([1.0, 2.0], [1.0], [2.0]),
    ([], [], []),
    ([[1.0]], [[0.0]], [[2.0]]),
])
def test_gap_closed_refuses_mismatched_inputs(served, editorial, oracle):
    with pytest.raises(ValidationError, match="must be non-empty 1-d arrays of one length"):
        gap_closed(np.array(served), np.array(editorial), np.array(oracle))


def test_the_plain_learner_refuses_delayed_rewards_and_bad_configs():
    world = World(WorldConfig.default().updated(delay_mean_s=30.0), np.random.default_rng(1))
    with pytest.raises(ValidationError, match=r"world.delay_mean_s.*instant feedback"):
        run_peer_learner(world, world.draw_requests(10, np.random.default_rng(2)), np.random.default_rng(3))
    with pytest.raises(ValidationError, match=r"ranker.*must be a RankerConfig"):
        PeerConfig(ranker={"explorer": "squarecb"})
