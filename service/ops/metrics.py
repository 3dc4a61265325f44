"""Prometheus metrics of the service, the logs, the model, the joiner and the trainer's publishing.

One `ServiceMetrics` per app (its own registry, so apps in one process do not collide). With
several uvicorn workers, `shelfbandit serve` sets `PROMETHEUS_MULTIPROC_DIR` and `/metrics`
aggregates every worker's values (prometheus_client's multiprocess mode). The trainer runs in
a process of its own; its publishing state (`training/publishing.json`) and its backlog (joined
parts its candidates have not trained, service/training/backlog.py) are read at each scrape.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bandit.errors import ShelfBanditError
from service.training.backlog import trainer_backlog
from service.training.publishing import read_status

PREFIX = "shelfbandit"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5)
MIN_PROB_WINDOW = 1000
_PROBABILITY = itemgetter(1)


WORKER_RESTARTS = f"{PREFIX}_worker_restarts_total"


def worker_restarts() -> Counter:
    """The counter of worker processes `serve --workers N` started again after one exited. The
    parent increments it; in multiprocess mode its file sits beside the workers', so /metrics sums it in."""
    return Counter(WORKER_RESTARTS, "worker processes started again after one exited", registry=None)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServiceMetrics:
    """Every metric the dashboard and the alert rules use (see service/ops/)."""

    def __init__(self, training_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._publishing = PublishingCollector(training_dir) if training_dir is not None else None
        if self._publishing is not None:
            r.register(self._publishing)
        self.requests = Counter(f"{PREFIX}_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "HTTP request latency by endpoint and status",
            ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.decisions = Counter(f"{PREFIX}_decisions_total", "decisions served and logged", registry=r)
        self.explored = Counter(
            f"{PREFIX}_explored_decisions_total",
            "decisions where some slot showed a shelf other than its most probable one", registry=r,
        )
        self.min_probability = Gauge(
            f"{PREFIX}_min_logged_probability",
            f"smallest per-slot logged probability over this worker's last {MIN_PROB_WINDOW} decisions",
            registry=r, multiprocess_mode="livemin",
        )
        self.rewards = Counter(f"{PREFIX}_rewards_total", "rewards received by result", ["result"], registry=r)
        self.log_commit = Histogram(
            f"{PREFIX}_log_commit_seconds", "time to make a log line durable", ["log"], buckets=COMMIT_BUCKETS, registry=r
        )
        self.log_errors = Counter(f"{PREFIX}_log_write_errors_total", "log lines that could not be made durable", ["log"], registry=r)
        self.torn_lines = Counter(f"{PREFIX}_torn_lines_set_aside_total", "torn last lines moved to quarantine at start", registry=r)
        self.model_info = Gauge(
            f"{PREFIX}_model_info", "the model version a worker serves (value 1)", ["version"], registry=r, multiprocess_mode="liveall"
        )
        self.model_created = Gauge(
            f"{PREFIX}_model_created_timestamp_seconds", "when the served model was saved (model age = time() - this)",
            registry=r, multiprocess_mode="livemin",
        )
        self.model_refused = Gauge(
            f"{PREFIX}_model_refused", "1 while the active pointer names a version this worker refused",
            registry=r, multiprocess_mode="livemax",
        )
        self.model_refusals = Counter(f"{PREFIX}_model_refusals_total", "model versions refused (corrupt or unusable)", registry=r)
        self.model_swaps = Counter(f"{PREFIX}_model_swaps_total", "hot swaps to a new model version", registry=r)
        self.joined_events = Counter(f"{PREFIX}_joined_events_total", "decisions joined with their rewards", registry=r)
        self.joined_slots = Counter(f"{PREFIX}_joined_slots_total", "slots joined", registry=r)
        self.default_slots = Counter(f"{PREFIX}_default_reward_slots_total", "joined slots that got the default reward", registry=r)
        self.join_rejected = Counter(f"{PREFIX}_join_rejected_lines_total", "decision lines the joiner set aside", registry=r)
        self.join_lag = Gauge(
            f"{PREFIX}_join_lag_seconds", "how long the oldest ready but unjoined decision has waited",
            registry=r, multiprocess_mode="livemax",
        )
        self.join_last_run = Gauge(
            f"{PREFIX}_joiner_last_run_timestamp_seconds", "when the joiner last completed a pass",
            registry=r, multiprocess_mode="livemax",
        )
        self.join_interval = Gauge(
            f"{PREFIX}_join_interval_seconds", "the in-process joiner's pass interval (set by a worker that runs one)",
            registry=r, multiprocess_mode="livemax",
        )
        # supervised background work (service/supervisor.py)
        self.background_failures = Counter(
            f"{PREFIX}_background_failures_total", "failures of a background task (each is retried with backoff)",
            ["task"], registry=r,
        )
        self.background_failing = Gauge(
            f"{PREFIX}_background_failing", "1 while a background task's last attempt failed", ["task"],
            registry=r, multiprocess_mode="livemax",
        )
        # A/B arms (docs/experiments.md)
        self.arm_decisions = Counter(f"{PREFIX}_arm_decisions_total", "decisions served by arm and mode", ["arm", "mode"], registry=r)
        self.arm_share = Gauge(
            f"{PREFIX}_arm_share", "configured share of the traffic of each arm (0 once an arm is removed)",
            ["arm", "mode"], registry=r, multiprocess_mode="livemax",
        )
        self.arms_refused = Gauge(
            f"{PREFIX}_arms_config_refused", "1 while arms.json holds a configuration this worker refused",
            registry=r, multiprocess_mode="livemax",
        )
        self.arms_refusals = Counter(f"{PREFIX}_arms_config_refusals_total", "arms configurations refused", registry=r)
        self.arms_reloads = Counter(f"{PREFIX}_arms_config_reloads_total", "arms configurations loaded", registry=r)
        self.apprentice_slots = Counter(
            f"{PREFIX}_apprentice_slots_total", "apprentice slots compared with the model's top choice", ["arm"], registry=r
        )
        self.apprentice_agreed = Counter(
            f"{PREFIX}_apprentice_agreed_slots_total", "apprentice slots where the model's top choice was the editorial one",
            ["arm"], registry=r,
        )
        self._recent_min_prob = WindowMin(MIN_PROB_WINDOW)
        self._children: dict[tuple, object] = {}
        self._served_version: str | None = None

    def child(self, metric, *labels: str):
        """`metric.labels(*labels)`, remembered (prometheus_client looks it up under a lock each time)."""
        key = (metric, labels)
        try:
            return self._children[key]
        except KeyError:
            made = self._children[key] = metric.labels(*labels)
            return made

    def observe_decision(self, slot_distributions: tuple, slot_probs: tuple, arm: str, mode: str) -> None:
        """Count a decision (and its arm), whether it explored, and its smallest logged probability."""
        self.decisions.inc()
        self.child(self.arm_decisions, arm, mode).inc()
        if any(distribution[0][1] < max(map(_PROBABILITY, distribution)) for distribution in slot_distributions):
            self.explored.inc()
        self.min_probability.set(self._recent_min_prob.push(min(slot_probs)))

    def observe_agreement(self, arm: str, n_slots: int, n_agreed: int) -> None:
        self.child(self.apprentice_slots, arm).inc(n_slots)
        self.child(self.apprentice_agreed, arm).inc(n_agreed)

    def serve_model(self, version: str, created: float) -> None:
        if self._served_version is not None:
            self.model_info.labels(self._served_version).set(0)
        self._served_version = version
        self.model_info.labels(version).set(1)
        self.model_created.set(created)

    def exposition(self) -> bytes:
        """The text exposition of this app's metrics (every worker's, in multiprocess mode)."""
        if multiprocess_enabled():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            if self._publishing is not None:
                registry.register(self._publishing)
            return generate_latest(registry)
        return generate_latest(self.registry)


PUBLISH_REFUSALS = f"{PREFIX}_training_publish_refusals"  # a counter, exposed as ..._total, labelled by check
# the trainer's publishing state: gauge name -> (help, how to read it from the status file)
PUBLISHING_GAUGES = {
    f"{PREFIX}_training_publish_refusals_in_a_row": (
        "snapshots refused in a row since the last publication", lambda s: s.get("refusals_in_a_row")),
    f"{PREFIX}_training_publish_last_timestamp_seconds": (
        "when the trainer last published and activated a snapshot", lambda s: (s.get("last_published") or {}).get("time")),
    f"{PREFIX}_training_publish_current_timestamp_seconds": (
        "when the served model was last the champion's latest (published then, or nothing newer to publish)",
        lambda s: max(s.get("current_at") or 0.0, s.get("started") or 0.0) or None),
    f"{PREFIX}_training_challengers_waiting": (
        "challengers the gate could not judge in the last round", lambda s: len(s.get("waiting") or {})),
    f"{PREFIX}_training_publish_paused": (
        "1 while an operator's pin pauses timed publishing", lambda s: float(bool(s.get("pinned")))),
    f"{PREFIX}_training_publish_interval_seconds": ("the trainer's publish interval", lambda s: s.get("interval_s")),
    f"{PREFIX}_training_rounds_failing": (
        "1 while the trainer's rounds fail (it retries with backoff)", lambda s: float(bool(s.get("failing")))),
    f"{PREFIX}_training_round_failures": (
        "rounds of the running trainer that failed", lambda s: s.get("failures_total")),
    f"{PREFIX}_training_status_timestamp_seconds": (
        "when the trainer last wrote its publishing state (every round)", lambda s: s.get("updated")),
}


# the trainer's backlog: gauge name -> (help, how to read it from a TrainerBacklog)
BACKLOG_GAUGES = {
    f"{PREFIX}_joined_parts_committed": ("parts the joiner has committed", lambda b: b.committed_parts),
    f"{PREFIX}_training_parts_behind": (
        "committed parts the slowest candidate has not trained yet",
        lambda b: b.committed_parts - min(c.next_part for c in b.candidates)),
    f"{PREFIX}_training_waiting_since_timestamp_seconds": (
        "since when a candidate has had a part to train and committed no step (absent when none waits)",
        lambda b: b.waiting_since),
}


class WindowMin:
    """The minimum of the last `size` values pushed, in amortised O(1) a push: a deque of the
    values that may still become the minimum (each smaller than those after it), oldest first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pushed = 0
        self._candidates: deque[tuple[int, float]] = deque()  # (push number, value)

    def push(self, value: float) -> float:
        """Add `value`; return the minimum of the last `size` values."""
        candidates = self._candidates
        while candidates and candidates[-1][1] >= value:
            candidates.pop()
        candidates.append((self._pushed, value))
        self._pushed += 1
        if candidates[0][0] < self._pushed - self.size:
            candidates.popleft()
        return candidates[0][1]


class PublishingCollector:
    """The trainer's publishing state and backlog as gauges, read from its files at each scrape
    (nothing is exported before a trainer has written them)."""

    def __init__(self, training_dir: Path) -> None:
        self.training_dir = training_dir

    def describe(self) -> list:
        return []  # the families exist only once a trainer has written its state

    def collect(self):
        status = read_status(self.training_dir)
        if status is not None:
            yield from _gauges(PUBLISHING_GAUGES, status)
            refusals = CounterMetricFamily(PUBLISH_REFUSALS, "snapshots refused since the trainer's records began, by check",
                                           labels=["check"])
            for check, count in (status.get("refusals_by_check") or {}).items():
                refusals.add_metric([str(check)], float(count))
            yield refusals
        try:
            backlog = trainer_backlog(self.training_dir.parent)
        except (OSError, ShelfBanditError):
            return  # `shelfbandit doctor` names what is unreadable
        if backlog.candidates:
            yield from _gauges(BACKLOG_GAUGES, backlog)


def _gauges(table: dict, source) -> Iterator[GaugeMetricFamily]:
    """One gauge per entry of `table` (name -> (help, read)) whose value `read(source)` is a number."""
    for name, (doc, read) in table.items():
        value = read(source)
        if isinstance(value, (int, float)):
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], float(value))
            yield family
