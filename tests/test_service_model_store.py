"""Model store: versions, atomic activation, rollback, refusal of corrupt models; hot swap."""

import json

import pytest

from bandit.baselines import UniformRandomPolicy
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.types import Context
from bandit.vw.ranker import VWShelfRanker
from service.models.active import ActiveModel
from service.models.store import ModelRefused, ModelStore, PointerPinned, UnknownModelVersion
from service.ops.metrics import ServiceMetrics
from tests.service_support import catalogue


def trained_ranker(seed: int) -> VWShelfRanker:
    """A ranker that has learned something (so its payload, hence its version, differs)."""
    from bandit.batch import EventBatch
    from bandit.types import LoggedEvent, Outcome

    ranker = VWShelfRanker(RankerConfig(seed=seed))
    shelves = catalogue(4)
    decision = ranker.rank(Context({"s": seed}), shelves, 2, event_id=f"t{seed}")
    ranker.learn(EventBatch.from_events([LoggedEvent(Context({"s": seed}), shelves, decision, Outcome((1.0, float(seed))))]))
    return ranker


def test_publish_activate_and_roll_back(tmp_path):
    store = ModelStore(tmp_path)
    first = store.publish(trained_ranker(1))
    second = store.publish(trained_ranker(2))
    assert first != second
    assert store.publish(trained_ranker(1)) == first  # same content, same version, stored once
    assert [v.version for v in store.versions()] == [first, second]
    assert store.active() is None
    store.activate(first)
    pointer = store.activate(second)
    assert (pointer.version, pointer.previous) == (second, first)
    rollback = store.activate(pointer.previous)
    assert (rollback.version, rollback.previous) == (first, second)
    policy, stored = store.load(first)
    assert policy.model_version == first and stored.kind == "vw"
    assert not list(tmp_path.glob("versions/.incoming*")) and not list(tmp_path.glob(".*.tmp"))


def test_any_saved_policy_kind_can_be_published(tmp_path):
    store = ModelStore(tmp_path)
    policy_file = tmp_path / "elsewhere" / "uniform.model"
    version = UniformRandomPolicy(seed=3).save(policy_file)
    assert store.publish_file(policy_file, activate=True) == version
    assert store.active().version == version
    assert store.load(version)[1].kind == "uniform"


def test_corrupt_unknown_and_unloadable_versions_are_refused(tmp_path):
    store = ModelStore(tmp_path)
    good = store.publish(trained_ranker(1), activate=True)
    bad = store.publish(trained_ranker(2))
    payload = store.path_of(bad)
    payload.write_bytes(payload.read_bytes()[:-10] + b"corrupted!")
    with pytest.raises(ModelRefused, match=f"version: {bad} is refused.*does not match its metadata"):
        store.activate(bad)
    with pytest.raises(UnknownModelVersion, match="version: no model 'vw-000000000000'"):
        store.activate("vw-000000000000")
    assert store.active().version == good  # the pointer never moved


def test_a_pin_holds_the_pointer_against_timed_publishing_until_resumed(tmp_path):
    store = ModelStore(tmp_path)
    first, second = store.publish(trained_ranker(1)), store.publish(trained_ranker(2))
    store.activate(first)
    assert store.activate(second, respect_pin=True).version == second  # nothing pinned: publishing moves it
    pinned = store.activate(first, pin=True)  # an operator's rollback
    assert (pinned.version, pinned.previous, pinned.pinned) == (first, second, True)
    with pytest.raises(PointerPinned, match=f"{first} is pinned by an operator"):
        store.activate(second, respect_pin=True)
    assert store.active() == pinned  # the refused move wrote nothing
    resumed = store.resume()
    assert (resumed.version, resumed.activated_at, resumed.pinned) == (first, pinned.activated_at, False)
    assert store.activate(second, respect_pin=True).version == second


def test_prune_keeps_the_newest_and_never_the_served_ones(tmp_path):
    store = ModelStore(tmp_path)
    versions = [store.publish(trained_ranker(seed)) for seed in range(1, 7)]
    store.activate(versions[0])
    store.activate(versions[1])  # active: versions[1], previous: versions[0]
    removed = store.prune(2, protect=lambda: {versions[2]})
    assert removed == [versions[3]]  # the newest two stay, and the active, previous and protected ones
    assert [v.version for v in store.versions()] == [versions[0], versions[1], versions[2], versions[4], versions[5]]
    assert not store.path_of(versions[3]).exists()
    with pytest.raises(UnknownModelVersion):
        store.load(versions[3])
    assert store.prune(10) == []
    with pytest.raises(ValidationError, match="keep"):
        store.prune(0)


def test_an_activation_never_points_at_a_version_pruned_while_it_was_checked(tmp_path):
    store = ModelStore(tmp_path)
    versions = [store.publish(trained_ranker(seed)) for seed in range(1, 5)]
    store.activate(versions[2])
    store.activate(versions[3])

    def check_while_pruning(version: str) -> None:
        store.load(version)
        assert store.prune(2) == [versions[0], versions[1]]  # the trainer prunes meanwhile

    with pytest.raises(UnknownModelVersion, match="removed from the store while it was checked"):
        store.activate(versions[0], check=check_while_pruning, pin=True)
    assert store.active().version == versions[3] and not store.active().pinned


def test_ensure_active_publishes_a_first_model_once(tmp_path):
    store = ModelStore(tmp_path)
    made = []

    def make():
        made.append(1)
        return VWShelfRanker(RankerConfig())

    first = store.ensure_active(make)
    again = store.ensure_active(make)
    assert first == again and len(made) == 1


def test_the_served_model_swaps_on_a_pointer_move_and_refuses_a_corrupt_one(tmp_path):
    store = ModelStore(tmp_path)
    first = store.publish(trained_ranker(1), activate=True)
    metrics = ServiceMetrics()
    active = ActiveModel(store, metrics, poll_s=3600)  # polled by hand here
    active.start()
    try:
        assert active.current.version == first
        second = store.publish(trained_ranker(2), activate=True)
        active.poll_once()
        assert active.current.version == second
        third = store.publish(trained_ranker(3))
        payload = store.path_of(third)
        payload.write_bytes(b"not a vw model")
        store.activate(third, check=lambda version: None)  # activated without checks
        active.poll_once()
        assert active.current.version == second  # the old model keeps serving
        assert active.refused.version == third and "does not match its metadata" in active.refused.reason
        exposition = metrics.exposition().decode()
        assert "shelfbandit_model_refused 1.0" in exposition
        assert f'shelfbandit_model_info{{version="{second}"}} 1.0' in exposition
        version, _previous = active.activate(first)  # rollback clears the refusal
        assert (version, active.current.version, active.refused) == (first, first, None)
        assert json.loads(store.pointer_path.read_text())["version"] == first
    finally:
        active.stop()
