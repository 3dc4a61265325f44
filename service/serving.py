"""The service's per-process state and its two operations, rank and reward.

One `Service` per worker process: its own log segments, event index and loaded model, all
sharing one data directory with the other workers. Built in the app's lifespan, never at
import time.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.policy import Policy
from bandit.types import Context, Decision, Shelf
from bandit.vw.ranker import VWShelfRanker
from service.clock import SteadyClock
from service.errors import Forbidden, LateReward, NotReady, RepeatedEvent, UnknownEvent
from service.eventlog.index import EventIndex
from service.eventlog.lines import ServedBy, decision_line, reward_line
from service.eventlog.segments import LogWriteError, SegmentWriter, set_aside_torn_tails
from service.experiments.arms import APPRENTICE, Arm
from service.experiments.live import Experiment, compare_with_model
from service.join.joiner import JoinConfig, Joiner, JoinReport
from service.layout import DECISION_KIND, LATE_KIND, REWARD_KIND, DataPaths
from service.logs import get_logger
from service.loop_bridge import LoopBridge
from service.models.active import ActiveModel
from service.models.store import ModelStore
from service.ops.metrics import ServiceMetrics
from service.settings import Settings
from service.supervisor import Supervised
from service.training.state import training_dir

log = get_logger()

SERVED_KEPT = 10_000  # answers a worker keeps for the 409 of a repeated event id (seconds of its traffic or more)


class ServedAnswer(NamedTuple):
    """What /v1/rank answered for an event (the fields of a Decision that `ranking_json` reads,
    and the arm), kept so that a retry's 409 carries the decision made for it."""

    event_id: str
    model_version: str
    arm: str
    shelf_ids: tuple[str, ...]
    slot_probs: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class AcceptedReward:
    event_id: str
    slot: int


def join_config(settings: Settings) -> JoinConfig:
    return JoinConfig(
        reward_window_s=settings.reward_window_s,
        grace_s=settings.join_grace_s,
        default_reward=settings.default_reward,
        aggregation=settings.reward_aggregation,
    )


class Service:
    """Logs, event index, model and joiner of one worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paths = DataPaths(settings.data_dir, settings.replica_id)
        self.metrics = ServiceMetrics(training_dir(settings.data_dir))
        self.store = ModelStore(self.paths.models)
        backoff = settings.background_max_backoff_s
        self.model = ActiveModel(self.store, self.metrics, poll_s=settings.model_poll_s, max_backoff_s=backoff)
        self.experiment = Experiment(
            settings.data_dir, self.store, self.model, self.metrics, poll_s=settings.model_poll_s, max_backoff_s=backoff
        )
        self.clock = SteadyClock()  # decision and reward times: a step of the system clock does not move them
        self.events = EventIndex(self.paths.decisions, settings.remembered_s, clock=self.clock, peers=self._peer_decisions)
        self._in_flight: set[str] = set()  # event ids being ranked and logged on this worker
        self._served: dict[str, ServedAnswer] = {}  # the last SERVED_KEPT answers, oldest first
        self.decisions: SegmentWriter | None = None
        self.rewards: SegmentWriter | None = None
        self.late_rewards: SegmentWriter | None = None
        self._bridge: LoopBridge | None = None  # settles the requests' futures from the decision log's committer
        self._joiner: Joiner | None = None
        self.joiner_task: Supervised | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        paths, settings = self.paths, self.settings
        for directory, kind in ((paths.decisions, DECISION_KIND), (paths.rewards, REWARD_KIND), (paths.late_rewards, LATE_KIND)):
            for torn in set_aside_torn_tails(directory, kind, paths.quarantine):
                self.metrics.torn_lines.inc()
                log.warning(
                    "torn last line set aside",
                    extra={"fields": {"segment": torn.segment.name, "bytes": torn.n_bytes, "moved_to": str(torn.quarantine)}},
                )
        self.decisions = self._writer(paths.decisions, DECISION_KIND)
        self.rewards = self._writer(paths.rewards, REWARD_KIND)
        self.late_rewards = self._writer(paths.late_rewards, LATE_KIND)
        self.store.ensure_active(lambda: VWShelfRanker(RankerConfig.from_dict(settings.initial_ranker)))
        self.model.start()
        self.experiment.start()
        self.events.refresh()
        if settings.run_joiner:
            self._joiner = Joiner(paths.root, join_config(settings), clock=self.clock)
            self.metrics.join_interval.set(settings.join_interval_s)
            self.joiner_task = Supervised(
                "joiner", self._join_step, self.metrics,
                base_s=settings.join_interval_s, max_backoff_s=max(settings.join_interval_s, settings.background_max_backoff_s),
            ).start()
        # what start-up built lives as long as the process: keep it out of every garbage
        # collection (full collections over it were the service's longest pauses)
        gc.freeze()
        log.info("service started", extra={"fields": {"data_dir": str(paths.root), "log_dir": str(paths.logs.root),
                                                      "durability": settings.durability}})

    def stop(self) -> None:
        self.model.stop()
        self.experiment.stop()
        if self.joiner_task is not None:
            self.joiner_task.stop(timeout_s=30.0)
            if not self.joiner_task.running:  # a pass still under way keeps the lock until the process ends
                self._joiner.release()
        for writer in (self.decisions, self.rewards, self.late_rewards):
            if writer is not None:
                writer.close()
        log.info("service stopped")

    def _peer_decisions(self) -> list[Path]:
        """The decision directories of the other replicas sharing the data directory: a reward
        for one of their decisions is found there."""
        return [logs.decisions for logs in self.paths.all_logs() if logs != self.paths.logs]

    def _writer(self, directory, kind: str) -> SegmentWriter:
        s = self.settings
        return SegmentWriter(
            directory,
            kind,
            durability=s.durability,
            group_commit_s=s.group_commit_ms / 1e3,
            max_bytes=s.segment_max_bytes,
            max_seconds=s.segment_max_seconds,
            clock=self.clock,
            metrics=self.metrics,
        )

    @property
    def ready(self) -> bool:
        return self.model.current is not None and self.decisions is not None and not self.failing

    @property
    def failing(self) -> dict[str, str]:
        """Background task -> its last error, for each task whose last attempt failed (and `model` ->
        why, while no model serves)."""
        tasks = [self.model.poller, self.experiment.poller, self.joiner_task]
        tasks += [w.committer for w in (self.decisions, self.rewards, self.late_rewards) if w is not None]
        failing = {task.task: task.failing for task in tasks if task is not None and task.failing is not None}
        if self.model.current is None and self.model.refused is not None:  # nothing serves: say why
            failing["model"] = self.model.refused.reason
        return failing

    # -- operations ----------------------------------------------------------------------------
    async def rank(
        self, context: Context, shelves: tuple[Shelf, ...], n_slots: int, event_id: str | None, baseline: tuple[str, ...],
        key_id: str | None = None,
    ) -> tuple[Decision, ServedBy]:
        """Assign the request to an arm (by its listener id, else its event id), rank with the
        arm's policy, wait until the decision is durably logged (with the name of the client key
        that asked, `key_id`), then return it and the arm that served it."""
        if self.decisions is None:
            raise NotReady("decisions", "the decision log is not open")
        if event_id is None:
            event_id = uuid.uuid4().hex
        elif self.events.seen_here(event_id) or event_id in self._in_flight:
            known = self.events.find(event_id)
            # the answer goes back only to the key that asked for it: another caller learns nothing of it
            served = self._served.get(event_id) if known is None or known.key_id == key_id else None
            raise RepeatedEvent("event_id", f"already served ({event_id}); event ids must be unique", served)
        self._in_flight.add(event_id)  # held until the decision is indexed: a retry racing it is refused
        try:
            return await self._rank_and_log(context, shelves, n_slots, event_id, baseline, key_id)
        finally:
            self._in_flight.discard(event_id)

    async def _rank_and_log(
        self, context: Context, shelves: tuple[Shelf, ...], n_slots: int, event_id: str, baseline: tuple[str, ...],
        key_id: str | None,
    ) -> tuple[Decision, ServedBy]:
        live = self.experiment.current
        arm = live.choose(context.listener_id or event_id)
        serving = self.experiment.serving_policy(live, arm)
        learner = self.experiment.policy_of(live, arm) if arm.mode == APPRENTICE else None
        try:
            decision, decided_at, served_by = await self._decide(
                arm, serving, learner, context, shelves, n_slots, event_id, baseline, key_id
            )
        except LogWriteError:
            self.metrics.child(self.metrics.log_errors, "decisions").inc()
            raise
        self.events.add(event_id, decided_at, decision.shelf_ids, key_id)
        self._served[event_id] = ServedAnswer(event_id, decision.model_version, served_by.arm, decision.shelf_ids, decision.slot_probs)
        if len(self._served) > SERVED_KEPT:
            del self._served[next(iter(self._served))]
        self.metrics.observe_decision(decision.slot_distributions, decision.slot_probs, arm.name, arm.mode)
        if served_by.agreement is not None:
            self.experiment.count_agreement(arm.name, served_by.agreement)
        return decision, served_by

    def _decide(
        self,
        arm: Arm,
        serving: Policy,
        learner: Policy | None,
        context: Context,
        shelves: tuple[Shelf, ...],
        n_slots: int,
        event_id: str,
        baseline: tuple[str, ...],
        key_id: str | None,
    ) -> asyncio.Future:
        """Rank, compare an apprentice's model with the editorial order, encode the log line and
        hand it to the decision log: a future of (decision, decision time, served by) that the
        log settles once the line is durable, or with the error that stopped it.

        Ranking runs here, on the event loop: it holds the GIL throughout (VW's predict does not
        release it), so a ranking thread would only add two hand-offs per request, while the
        write and fsync, which release the GIL, run on the committer's thread."""
        decision = serving.rank(context, shelves, n_slots, event_id=event_id, baseline=baseline)
        served_by = ServedBy(arm.name, arm.mode, arm.learn)
        if learner is not None:
            agreement = compare_with_model(learner, context, shelves, decision, baseline)
            served_by = ServedBy(arm.name, arm.mode, arm.learn, agreement, learner.model_version)
        now = self.clock()
        line = decision_line(context, shelves, decision, timestamp=now, baseline=baseline, served_by=served_by, key_id=key_id)
        loop = asyncio.get_running_loop()
        if self._bridge is None or self._bridge.loop is not loop:
            self._bridge = LoopBridge(loop)
        logged = loop.create_future()
        submitted = time.perf_counter()

        def settle(done: Future) -> None:  # on the committer's thread (or this one, if already done)
            error = done.exception()
            if error is None:
                self.metrics.child(self.metrics.log_commit, "decisions").observe(time.perf_counter() - submitted)
            self._bridge.settle(logged, (decision, now, served_by), error)

        self.decisions.submit(line).add_done_callback(settle)
        return logged

    def reward(
        self, event_id: str, slot: int | None, shelf_id: str | None, value: float, reward_id: str | None,
        key_id: str | None = None,
    ) -> AcceptedReward:
        """Log a reward for a served event (404 unknown, 403 decided for another client key than
        `key_id`, 409 after the window). `key_id` None: no key is required, any event may be rewarded."""
        known = self.events.find(event_id)
        if known is None:
            self.metrics.rewards.labels("unknown_event").inc()
            raise UnknownEvent("event_id", f"no decision {event_id!r} was served in the last {self.settings.remembered_s:g} s")
        if key_id is not None and known.key_id != key_id:
            self.metrics.rewards.labels("forbidden").inc()
            raise Forbidden("event_id", "was decided for another client key; only the key that asked for a decision may reward it")
        if slot is None:
            if shelf_id not in known.shelf_ids:
                self.metrics.rewards.labels("invalid").inc()
                raise ValidationError("shelf_id", f"was not shown in event {event_id} (shown: {', '.join(known.shelf_ids)})")
            slot = known.shelf_ids.index(shelf_id)
        elif slot >= len(known.shelf_ids):
            self.metrics.rewards.labels("invalid").inc()
            raise ValidationError("slot", f"event {event_id} has {len(known.shelf_ids)} slots (0 to {len(known.shelf_ids) - 1})")
        now = self.clock()
        line = reward_line(event_id, slot, value, reward_id, received=now, decided=known.timestamp)
        if now - known.timestamp > self.settings.reward_window_s:
            self._append(self.late_rewards, "late_rewards", line)
            self.metrics.rewards.labels("late").inc()
            raise LateReward(
                "event_id",
                f"the reward window of {self.settings.reward_window_s:g} s closed "
                f"{now - known.timestamp - self.settings.reward_window_s:.1f} s ago; the reward is kept aside",
            )
        self._append(self.rewards, "rewards", line)
        self.metrics.rewards.labels("accepted").inc()
        return AcceptedReward(event_id, slot)

    def _append(self, writer: SegmentWriter | None, name: str, line: bytes) -> None:
        if writer is None:
            raise NotReady(name, "the log is not open")
        started = time.perf_counter()
        try:
            writer.append(line)
        except LogWriteError:
            self.metrics.child(self.metrics.log_errors, name).inc()
            raise
        self.metrics.child(self.metrics.log_commit, name).observe(time.perf_counter() - started)

    # -- joiner --------------------------------------------------------------------------------
    def _join_step(self) -> float:
        """One pass if this worker holds the joiner lock (else try again in an interval); the wait
        before the next pass: none while a backlog remains. A failed pass releases the lock, so
        the next one starts again from the checkpoint."""
        interval = self.settings.join_interval_s
        if not self._joiner.acquire():
            return interval
        try:
            report = self._joiner.run_once()
        except BaseException:
            self._joiner.release()
            raise
        self._joined(report)
        return 0.0 if report.more_ready else interval

    def _joined(self, report: JoinReport) -> None:
        m = self.metrics
        m.joined_events.inc(report.n_events)
        m.joined_slots.inc(report.n_slots)
        m.default_slots.inc(report.n_default_slots)
        m.join_rejected.inc(report.n_rejected)
        m.join_lag.set(report.lag_s)
        m.join_last_run.set(time.time())
        if report.n_events or report.n_rejected:
            log.info(
                "joined",
                extra={"fields": {"part": report.part, "events": report.n_events, "default_slots": report.n_default_slots,
                                  "rejected": report.n_rejected, "lag_s": round(report.lag_s, 3)}},
            )
