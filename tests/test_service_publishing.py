"""Continuous training on a real local Ray: the champion's snapshots published on a timer after
their checks and the guardrail, the operator's pin, the store's rollback versions, and the
challenger gate changing the champion's configuration on evidence."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bandit.config import RankerConfig
from bandit.model_file import read_meta
from bandit.vw.ranker import VWShelfRanker
from service.join.reader import JoinedLog
from service.models.store import ModelStore
from service.ops.doctor import diagnose
from service.ops.metrics import ServiceMetrics
from service.settings import Settings
from service.training.candidates import Candidate
from service.training.judge import GateSettings
from service.training.loop import TrainingBusy, TrainingLoop
from service.training.publishing import PublishSettings, SnapshotRefused, checked_snapshot, read_status
from service.training.records import read_records
from service.training.state import training_dir
from tests.service_support import wait_until
from tests.service_training_support import TinyWorld, log_and_join

SQUARECB = Candidate("squarecb", RankerConfig(explorer="squarecb"))
UNIFORM = Candidate("uniform", RankerConfig(explorer="epsilon", epsilon=1.0))
SLOW = PublishSettings(interval_s=3600.0)  # publishing only when a test asks for it


def uniform_value(world: TinyWorld) -> float:
    """Exact expected reward per session of a uniformly random ranking, averaged over segments."""
    theta = 1.0 / (1.0 + np.arange(world.n_slots))
    return float(theta.sum() * world.appeal.mean())


def greedy_value(ranker: VWShelfRanker, world: TinyWorld) -> float:
    """Exact expected reward per session of the ranker's lowest-cost ordering, averaged over segments."""
    segments = np.arange(world.appeal.shape[0])
    rankings = np.array([np.argsort(ranker.score(world.context(s), world.shelves, 1)[0][0])[: world.n_slots] for s in segments])
    return float(world.value(rankings, segments).mean())


def served_log(data_dir: Path, seed: int, n_events: int, part_size: int):
    """A strong-signal world whose store serves a fresh ranker (every shelf tied: uniformly
    random), as the service's first model, and `n_events` of its decisions joined into parts:
    (rng, world, store, the fresh version)."""
    rng = np.random.default_rng(seed)
    world = TinyWorld.strong(rng)
    store = ModelStore(data_dir / "models")
    first = store.publish(VWShelfRanker(RankerConfig(epsilon=0.2)), activate=True)
    log_and_join(data_dir, world, store.load(first)[0], n_events, part_size, rng, "a")
    return rng, world, store, first


# -- the checks --------------------------------------------------------------------------------

def trained_model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    world = TinyWorld.strong(rng)
    scratch = tmp_path / "scratch"
    log_and_join(scratch, world, VWShelfRanker(RankerConfig(epsilon=0.2)), 500, 500, rng, "c")
    ranker = VWShelfRanker(SQUARECB.config)
    ranker.learn_file(JoinedLog(scratch).parts()[0].jsonl)
    path = tmp_path / "good.model"
    ranker.save(path)
    return path


def spoiled(path: Path, target: Path, value: float) -> Path:
    """The model at `path` with its non-zero weights set to `value`, saved (with valid metadata) at `target`."""
    ranker = VWShelfRanker.load(path)
    weights = json.loads(ranker.workspace.json_weights())["weights"]
    for weight in weights:
        ranker.workspace.set_weight(weight["index"], 0, value)
    ranker.save(target)
    return target


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the overflowing model's scores
def test_a_good_snapshot_passes_and_each_broken_one_is_refused_by_its_check(tmp_path):
    good = trained_model(tmp_path)
    assert checked_snapshot(good).model_version == read_meta(good)["version"]
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(good.read_bytes()[:-40])
    corrupt.with_name("corrupt.model.json").write_bytes(good.with_name("good.model.json").read_bytes())
    nan = spoiled(good, tmp_path / "nan.model", float("nan"))
    huge = spoiled(good, tmp_path / "huge.model", 3e38)  # finite (32-bit) weights whose scores overflow
    for path, check in ((corrupt, "load"), (tmp_path / "missing.model", "load"), (nan, "weights"), (huge, "canary")):
        with pytest.raises(SnapshotRefused) as refused:
            checked_snapshot(path)
        assert refused.value.check == check, (path.name, refused.value.reason)


# -- timed publishing --------------------------------------------------------------------------

class Clock:
    """A clock the test moves by hand: publishing is due by it, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_the_champion_is_published_on_its_timer_and_the_schedule_survives_a_restart(local_ray, tmp_path):
    rng, world, store, first = served_log(tmp_path, 2, 600, 300)
    publish = PublishSettings(interval_s=60.0, keep_versions=3)
    clock = Clock()
    with TrainingLoop(tmp_path, [SQUARECB], publish=publish, clock=clock) as loop:
        report = loop.run_once()  # never published before: due at once
        assert report.published == store.active().version == loop.statuses[0]["model_version"]
        assert store.active().previous == first
        log_and_join(tmp_path, world, store.load(report.published)[0], 300, 300, rng, "b")
        clock.now += publish.interval_s - 1
        early = loop.run_once()
        assert early.n_events == 300 and early.published is None  # trained, but not due yet
        clock.now += 1
        due = loop.run_once()
        assert due.n_events == 0 and due.published == loop.statuses[0]["model_version"] != report.published
    [published, again] = read_records(tmp_path, "published")
    assert (published["version"], published["previous_version"], published["candidate"]) == (report.published, first, "squarecb")
    assert published["guardrail"]["n_events"] == 600 and published["guardrail"]["difference"]["lower"] > 0  # it learned
    assert again["previous_version"] == report.published
    assert again["guardrail"]["n_events"] == 900  # the evidence spans every version published since
    assert read_status(training_dir(tmp_path))["last_published"]["version"] == due.published

    log_and_join(tmp_path, world, store.load(due.published)[0], 300, 300, rng, "c")
    with TrainingLoop(tmp_path, [SQUARECB], publish=publish, clock=clock) as loop:  # a restart: the schedule goes on
        clock.now += publish.interval_s - 1
        restarted = loop.run_once()
        assert restarted.n_events == 300 and restarted.published is None
        clock.now += 1
        assert loop.run_once().published == loop.statuses[0]["model_version"]
        clock.now += publish.interval_s
        assert loop.run_once().published is None  # nothing new: the served model is current
    status = read_status(training_dir(tmp_path))
    assert status["current_at"] == clock.now and status["refusals_in_a_row"] == 0
    versions = [v.version for v in store.versions()]
    assert len(versions) == publish.keep_versions and first not in versions  # rollback versions, the oldest pruned
    last = read_records(tmp_path, "published")[-1]
    assert first in last["pruned"]
    assert last["guardrail"]["n_events"] == 1200  # the versions served before the restart, read back from the records
    assert store.active().version in versions and store.active().previous in versions


def test_a_snapshot_that_fails_a_check_is_refused_recorded_and_the_served_model_stays(local_ray, tmp_path):
    rng, world, store, first = served_log(tmp_path, 3, 600, 300)
    with TrainingLoop(tmp_path, [SQUARECB], publish=SLOW) as loop:
        served = loop.run_once().published  # the first publication is due at once
        log_and_join(tmp_path, world, store.load(served)[0], 300, 300, rng, "b")
        assert loop.run_once().published is None  # trained; the next publication is an hour away
        model = Path(loop.statuses[0]["model"])
        spoiled(model, model, float("nan"))  # the checkpoint's model goes bad on disk
        for attempt in (1, 2, 3):
            report = loop.run_once(publish_now=True)
            [refused] = report.publish_refused
            assert (refused["check"], refused["refusals_in_a_row"], report.published) == ("weights", attempt, None)
            [finding] = [f for f in diagnose(Settings(data_dir=tmp_path)) if f.check == "publishing"]
            assert finding.status == ("problem" if attempt == 3 else "ok")  # doctor agrees with the alert rule
    assert store.active().version == served != first
    status = read_status(training_dir(tmp_path))
    assert (status["refusals_in_a_row"], status["refusals_by_check"]) == (3, {"weights": 3})
    assert "last 3 snapshots were refused (the last by the weights check" in finding.message
    exposition = ServiceMetrics(training_dir(tmp_path)).exposition().decode()
    assert "shelfbandit_training_publish_refusals_in_a_row 3.0" in exposition
    assert exposition.count('shelfbandit_training_publish_refusals_total{check="weights"} 3.0') == 1
    kept = read_meta(tmp_path / refused["model"])  # the refused snapshot is kept for a post-mortem
    assert kept["version"] == read_meta(model)["version"]


def test_a_following_loop_whose_rounds_fail_says_so_retries_and_recovers(local_ray, tmp_path):
    served_log(tmp_path, 5, 600, 300)
    checkpoint = tmp_path / "joined" / "checkpoint.json"
    good = checkpoint.read_bytes()
    stop = threading.Event()

    def status_until(condition, what):
        def matching():
            status = read_status(training_dir(tmp_path))
            return status if status is not None and condition(status) else None
        return wait_until(matching, 90.0, what)

    with TrainingLoop(tmp_path, [SQUARECB], publish=SLOW) as loop:
        follower = threading.Thread(target=loop.run, args=(stop,), kwargs={"interval_s": 0.2})
        follower.start()
        try:
            status_until(lambda s: s.get("champion_version") is not None, "a good round")  # a good round went by
            checkpoint.write_bytes(b"{not json")  # the joined log turns unreadable under the trainer
            failing = status_until(lambda s: s.get("failing"), "the failing round in the status")["failing"]
            assert "joiner checkpoint is not valid JSON" in failing["error"]
            [finding] = [f for f in diagnose(Settings(data_dir=tmp_path)) if f.check == "publishing"]
            assert finding.status == "problem" and "the trainer's rounds fail" in finding.message
            exposition = ServiceMetrics(training_dir(tmp_path)).exposition().decode()
            assert "shelfbandit_training_rounds_failing 1.0" in exposition
            assert follower.is_alive()  # it retries, it does not die
            checkpoint.write_bytes(good)
            recovered = status_until(lambda s: not s.get("failing"), "the recovery in the status")
            assert recovered["failures_total"] >= 1
        finally:
            stop.set()
            follower.join(timeout=120)
    assert not follower.is_alive()
    exposition = ServiceMetrics(training_dir(tmp_path)).exposition().decode()
    assert "shelfbandit_training_rounds_failing 0.0" in exposition


def inverted(world: TinyWorld) -> TinyWorld:
    """The same world with every appeal turned around: the favourites become the least streamed."""
    return TinyWorld(world.appeal.max() + world.appeal.min() - world.appeal, world.n_slots)


def test_a_snapshot_trained_on_inverted_rewards_is_refused_by_the_guardrail(local_ray, tmp_path):
    rng = np.random.default_rng(4)
    world = TinyWorld.strong(rng)
    scratch = tmp_path / "scratch"
    log_and_join(scratch, world, VWShelfRanker(RankerConfig(epsilon=0.2)), 3000, 3000, rng, "s")
    good = VWShelfRanker(RankerConfig(explorer="squarecb", uniform_share=0.3))  # explores enough to judge a departure
    good.learn_file(JoinedLog(scratch).parts()[0].jsonl)
    data_dir = tmp_path / "data"
    store = ModelStore(data_dir / "models")
    served = store.publish(good, activate=True)
    assert greedy_value(good, world) > uniform_value(world) + 0.3  # the premise: the served model is good
    log_and_join(data_dir, inverted(world), VWShelfRanker(RankerConfig(epsilon=0.2)), 12000, 12000, rng, "x")  # poisoned
    log_and_join(data_dir, world, store.load(served)[0], 800, 800, rng, "g")  # what the good model served since
    with TrainingLoop(data_dir, [SQUARECB], publish=SLOW) as loop:
        report = loop.run_once(publish_now=True)
        poisoned = greedy_value(VWShelfRanker.load(loop.statuses[0]["model"]), world)
    assert poisoned < greedy_value(good, world) - 0.25  # the premise: the snapshot is far worse than the served model
    [refused] = report.publish_refused
    assert refused["check"] == "guardrail" and "worse than the served model" in refused["reason"]
    figures = refused["guardrail"]
    assert figures["n_events"] == 800 and figures["difference"]["upper"] < -SLOW.max_regression * figures["served_estimate"]["value"]
    assert store.active().version == served


def test_an_operators_activation_pins_the_version_until_publishing_is_resumed(local_ray, tmp_path):
    rng, world, store, first = served_log(tmp_path, 5, 600, 300)
    with TrainingLoop(tmp_path, [SQUARECB], publish=SLOW) as loop:
        published = loop.run_once().published
        store.activate(first, pin=True)  # a rollback by an operator (what POST /v1/model/activate does)
        log_and_join(tmp_path, world, store.load(first)[0], 300, 300, rng, "b")
        paused = loop.run_once(publish_now=True)
        assert (paused.n_events, paused.publications, store.active().version) == (300, (), first)
        assert read_status(training_dir(tmp_path))["pinned"] is True
        store.resume()
        publish_file = loop.store.publish_file

        def pinned_meanwhile(path):  # an operator pins between the trainer's checks and its activation
            version = publish_file(path)
            store.activate(first, pin=True)
            return version

        loop.store.publish_file = pinned_meanwhile
        raced = loop.run_once(publish_now=True)
        assert (raced.publications, store.active().version, store.active().pinned) == ((), first, True)
        loop.store.publish_file = publish_file
        store.resume()
        resumed = loop.run_once(publish_now=True)
    assert resumed.published == store.active().version not in (first, published)
    assert store.active().previous == first and not store.active().pinned


# -- the challenger gate -----------------------------------------------------------------------

def test_a_better_challenger_becomes_the_champion_and_is_published_at_once(local_ray, tmp_path):
    rng, world, store, first = served_log(tmp_path, 6, 600, 300)
    gate = GateSettings(min_events=1000, every_events=500)
    with TrainingLoop(tmp_path, [UNIFORM, SQUARECB], gate=gate, publish=SLOW) as loop:
        early = loop.run_once()
        with pytest.raises(TrainingBusy, match="another training loop is running"):
            TrainingLoop(tmp_path, [SQUARECB]).start()
        assert early.champion == "uniform" and not early.decisions
        assert early.waiting["squarecb"] == "600 of the 1000 learnable events needed have been scored by it and the champion uniform"
        log_and_join(tmp_path, world, store.load(first)[0], 2400, 300, rng, "b")
        later = loop.backfill()
        champion_model = VWShelfRanker.load(loop.statuses[1]["model"])
    gates = [r for report in later for r in report.gates]
    [shipped] = [r for r in gates if r["candidate"] == "squarecb"]
    assert shipped["verdict"] == "ship" and shipped["difference"]["lower"] > 0
    assert shipped["n_events"] == 3000 and shipped["champion"] == "uniform"
    [dethroned] = [r for r in gates if r["candidate"] == "uniform"]  # the old champion is a challenger now
    assert dethroned["champion"] == "squarecb" and dethroned["verdict"] == "do not ship"
    [promoted] = read_records(tmp_path, "promoted")
    assert (promoted["candidate"], promoted["champion"]) == ("squarecb", "uniform")
    with TrainingLoop(tmp_path, [UNIFORM, SQUARECB], gate=gate, publish=SLOW) as restarted:
        assert restarted.champion == "squarecb"  # the last promoted record names it
    promoting = next(report for report in later if report.promoted)
    assert promoting.published == promoted["candidate_version"] == store.active().version  # published in the same round
    assert greedy_value(champion_model, world) > uniform_value(world) + 0.3  # the premise: it did learn the signal
    assert_documented_fields(read_records(tmp_path))


def test_a_worse_challenger_is_refused_and_the_record_says_why(local_ray, tmp_path):
    _rng, world, _store, _first = served_log(tmp_path, 7, 3000, 500)
    with TrainingLoop(tmp_path, [SQUARECB, UNIFORM], gate=GateSettings(min_events=1000), publish=SLOW) as loop:
        reports = loop.backfill()
    [gate] = [r for report in reports for r in report.gates]
    assert (gate["candidate"], gate["champion"], gate["n_events"], gate["verdict"]) == ("uniform", "squarecb", 3000, "do not ship")
    assert gate["difference"]["upper"] < 0.0
    assert gate["candidate_estimate"]["lower"] <= uniform_value(world) <= gate["candidate_estimate"]["upper"]
    assert "lies below min_lift 0" in gate["reason"]
    [refused] = read_records(tmp_path, "refused")
    assert (refused["candidate"], refused["verdict"], refused["reason"]) == ("uniform", "do not ship", gate["reason"])
    assert not read_records(tmp_path, "promoted") and reports[-1].champion == "squarecb"


# the record format of docs/training.md
RECORD_FIELDS = {
    "trained": {"record", "time", "candidate", "step", "config_id", "parts", "n_events", "first_event_id", "last_event_id",
                "events_sha256", "events_trained", "next_part", "model_version", "scored_by", "model", "scores", "seconds"},
    "published": {"record", "time", "candidate", "candidate_version", "active_version", "events_trained", "version",
                  "previous_version", "guardrail", "pruned"},
    "publish_refused": {"record", "time", "candidate", "candidate_version", "active_version", "events_trained", "check",
                        "reason", "guardrail", "refusals_in_a_row", "model"},
    "gate": {"record", "time", "candidate", "candidate_version", "champion", "champion_version", "events_trained", "parts",
             "n_events", "n_slots", "estimator", "candidate_estimate", "champion_estimate", "difference", "ess", "verdict",
             "reason", "rule", "ci", "level", "estimates"},
    "promoted": {"record", "time", "candidate", "candidate_version", "champion", "champion_version", "events_trained",
                 "estimator", "difference"},
    "refused": {"record", "time", "candidate", "candidate_version", "champion", "champion_version", "events_trained",
                "verdict", "reason"},
}
INTERVAL_FIELDS = {"value", "lower", "upper"}


def assert_documented_fields(records: list[dict]) -> None:
    assert {r["record"] for r in records} >= {"trained", "published", "gate", "promoted"}
    for record in records:
        assert set(record) == RECORD_FIELDS[record["record"]], record["record"]
        for name in ("candidate_estimate", "champion_estimate", "difference"):
            if name in record:
                assert set(record[name]) == INTERVAL_FIELDS
        for estimates in record.get("estimates", {}).values():
            assert set(estimates) == {"candidate", "champion", "difference"}
