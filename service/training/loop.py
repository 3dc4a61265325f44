"""TrainingLoop: candidates train on Ray workers in parallel; the launch gate decides promotions.

A round: every candidate's actor trains the committed parts it has not trained yet (up to
`max_events_per_round` events each; one `ray.get` over all the actors' calls), the steps are
recorded, then each candidate that trained enough since it was last judged is judged against
the active model on the events the active model served (`service.training.gate`). Of the
candidates the gate would ship, the one with the largest estimated lift is published and
activated; every other judged candidate is refused, with the reason. Models are never
averaged across workers (`vowpalwabbit.merge_models` merges only part of a CCB model's state).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.errors import ShelfBanditError, ValidationError
from service.joiner import JoinedLog
from service.model_store import ModelRefused, ModelStore
from service.training.candidates import DEFAULT_CANDIDATES, Candidate, check_candidates
from service.training.gate import (
    GateSettings,
    OnPolicyEvents,
    ProgressiveScores,
    dominant_slot_count,
    gate_fields,
    judge,
    last_events,
)
from service.training.records import GATE, PROMOTED, REFUSED, TRAINED, TrainingRecords, read_records
from service.training.state import candidate_dir, check_candidate, training_dir
from service.training.worker import CandidateTrainer

JUDGED = "judged"
MAX_DEATHS = 3  # rounds in a row a trainer may die (Ray restarts it; it resumes from its checkpoint)
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


class TrainingBusy(ShelfBanditError):
    """Another training loop holds the data directory's training lock."""


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What one round did: events trained (summed over candidates), the records it wrote
    (`trained`; `gate` and their outcome), the version it promoted, why candidates were not
    judged, and trainers that died."""

    n_events: int
    steps: tuple[dict, ...]
    decisions: tuple[dict, ...]
    promoted: str | None
    waiting: dict[str, str]
    lost: tuple[str, ...]
    statuses: tuple[dict, ...]

    @property
    def gates(self) -> tuple[dict, ...]:
        return tuple(r for r in self.decisions if r["record"] == GATE)

    @property
    def refused(self) -> tuple[dict, ...]:
        return tuple(r for r in self.decisions if r["record"] == REFUSED)


@dataclass(frozen=True, slots=True)
class _Verdict:
    candidate: str
    status: dict
    record: dict
    lift: float
    ship: bool


class TrainingLoop:
    """Trains `candidates` (one Ray actor each) on a data directory's joined log and promotes
    the ones the launch gate ships. Use as a context manager (or `start()`/`close()`), from a
    thread that outlives the loop: Ray started from a thread stops when that thread ends.

    `ray_address`: join that cluster; otherwise a local Ray with `num_cpus` CPUs is started
    (unless Ray is already initialised in this process; then that one is used and left running).
    """

    def __init__(
        self,
        data_dir: str | Path,
        candidates: Sequence[Candidate] = DEFAULT_CANDIDATES,
        *,
        gate: GateSettings | None = None,
        ray_address: str | None = None,
        num_cpus: int = 2,
        max_events_per_round: int = 20_000,
        seed: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.candidates = check_candidates(candidates)
        self.gate = gate or GateSettings()
        if num_cpus < 1:
            raise ValidationError("num_cpus", "must be at least 1", num_cpus)
        if max_events_per_round < 1:
            raise ValidationError("max_events_per_round", "must be at least 1", max_events_per_round)
        self.ray_address = ray_address
        self.num_cpus = num_cpus
        self.max_events_per_round = max_events_per_round
        self.seed = seed
        self.store = ModelStore(self.data_dir / "models")
        self.judged = ModelStore(training_dir(self.data_dir) / JUDGED)  # refused models; never activated
        self.records = TrainingRecords(self.data_dir)
        self.on_policy = OnPolicyEvents(self.data_dir)
        self._scores = {c.name: ProgressiveScores(candidate_dir(self.data_dir, c.name)) for c in self.candidates}
        self._actors: dict = {}
        self._statuses: dict[str, dict] = {}
        self._recorded: dict[str, int] = {}
        self._last_gate: dict[str, tuple[str, int]] = {}
        self._deaths: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._started_ray = False

    # -- lifetime ------------------------------------------------------------------------------
    def start(self) -> TrainingLoop:
        if self._actors:
            return self
        if not self.data_dir.is_dir():
            raise ValidationError("data_dir", "does not exist", str(self.data_dir))
        for candidate in self.candidates:
            check_candidate(candidate_dir(self.data_dir, candidate.name), candidate)
        self._lock()
        try:
            self.records.repair()
            self._read_history()
            self._start_actors()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the actors (their state is committed), Ray if this loop started it, and unlock."""
        if self._actors:
            import ray

            for actor in self._actors.values():
                ray.kill(actor)
            self._actors = {}
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> TrainingLoop:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self) -> None:
        directory = training_dir(self.data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TrainingBusy(f"another training loop is running on {self.data_dir} (it holds training/.lock)") from None
        self._lock_fd = fd

    def _read_history(self) -> None:
        """Where the records stand: the last recorded step and the last gate of each candidate."""
        for record in read_records(self.data_dir):
            name = record.get("candidate")
            if record["record"] == TRAINED:
                self._recorded[name] = max(self._recorded.get(name, 0), record["step"])
            elif record["record"] == GATE:
                self._last_gate[name] = (record["active_version"], record["events_trained"])

    def _start_actors(self) -> None:
        import ray

        if not ray.is_initialized():
            if self.ray_address:
                ray.init(address=self.ray_address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            self._started_ray = True
        # one CPU per trainer, or an equal share when there are more candidates than CPUs
        cpus = ray.cluster_resources().get("CPU", 1.0)
        share = min(1.0, math.floor(cpus / len(self.candidates) * 1e4) / 1e4)
        trainer = ray.remote(CandidateTrainer).options(num_cpus=share, max_restarts=-1)
        self._actors = {c.name: trainer.remote(str(self.data_dir), c) for c in self.candidates}
        self._refresh_statuses()
        for name, status in self._statuses.items():
            if status["step"] < self._recorded.get(name, 0):  # its state was removed: it starts over
                self._recorded[name] = status["step"]
                self._last_gate.pop(name, None)
        committed = JoinedLog(self.data_dir).checkpoint().next_part
        ahead = sorted(s["candidate"] for s in self._statuses.values() if s["next_part"] > committed)
        if ahead:
            raise ShelfBanditError(
                f"candidates {', '.join(ahead)} trained parts the joined log of {self.data_dir} does not hold "
                f"(it has {committed}); was the data directory replaced? Remove training/ to start over"
            )

    def _refresh_statuses(self) -> None:
        import ray

        try:
            statuses = self._get([actor.status.remote() for actor in self._actors.values()])
        except ray.exceptions.RayActorError as err:
            last_line = str(err).strip().splitlines()[-1]  # "module.SomeError: message" of the failed start
            raise ShelfBanditError(f"a trainer could not start: {_EXCEPTION_LINE.sub('', last_line)}") from None
        self._statuses = {s["candidate"]: s for s in statuses}

    # -- rounds --------------------------------------------------------------------------------
    def pending_events(self) -> int:
        """Joined events not yet trained, summed over candidates."""
        joined = JoinedLog(self.data_dir).checkpoint().n_events
        return sum(max(0, joined - s["events_trained"]) for s in self._statuses.values())

    @property
    def statuses(self) -> tuple[dict, ...]:
        """Per candidate: step, next part, events trained, model version and file."""
        return tuple(self._statuses.values())

    def run_once(self) -> RoundReport:
        """Train every candidate on its waiting parts (in parallel), record, judge, promote."""
        import ray

        self.start()
        names = list(self._actors)
        calls = [
            self._actors[name].train.remote(recorded_through=self._recorded.get(name, 0), max_events=self.max_events_per_round)
            for name in names
        ]
        try:
            results = self._get(calls)
        except ray.exceptions.RayActorError as err:
            lost = self._name_of(err)
            self._deaths[lost] = self._deaths.get(lost, 0) + 1
            if self._deaths[lost] >= MAX_DEATHS:
                raise ShelfBanditError(f"the trainer of candidate {lost} died in {MAX_DEATHS} rounds in a row; see the Ray logs") from None
            self._refresh_statuses()  # Ray restarts the trainer; it resumes from its checkpoint
            return RoundReport(0, (), (), None, {}, (lost,), self.statuses)
        self._deaths.clear()
        steps = []
        for name, result in zip(names, results):
            self._statuses[name] = result["status"]
            for step in result["steps"]:
                steps.append({"record": TRAINED, **step})
                self._recorded[name] = step["step"]
        self.records.append(steps)
        decisions, promoted, waiting = self._judge_candidates()
        return RoundReport(sum(r["n_events"] for r in results), tuple(steps), tuple(decisions), promoted, waiting, (), self.statuses)

    def run(self, stop: threading.Event, interval_s: float, on_round: Callable[[RoundReport], None] | None = None) -> None:
        """Rounds until `stop` is set: back to back while parts wait, else one every `interval_s`."""
        while not stop.is_set():
            report = self.run_once()
            if on_round is not None:
                on_round(report)
            if report.n_events == 0:
                stop.wait(interval_s)

    def backfill(self, on_round: Callable[[RoundReport], None] | None = None) -> list[RoundReport]:
        """Rounds until every candidate has trained every committed part."""
        reports = []
        while True:
            report = self.run_once()
            reports.append(report)
            if on_round is not None:
                on_round(report)
            if report.n_events == 0 and not report.lost:
                return reports

    # -- the gate ------------------------------------------------------------------------------
    def _judge_candidates(self) -> tuple[list[dict], str | None, dict[str, str]]:
        try:
            pointer = self.store.active()
        except ModelRefused as err:
            return [], None, {name: str(err) for name in self._statuses}
        if pointer is None:
            return [], None, {name: "no active model to compare with" for name in self._statuses}
        active = pointer.version
        waiting: dict[str, str] = {}
        verdicts = []
        for name, status in self._statuses.items():
            trained = status["events_trained"]
            last = self._last_gate.get(name)
            if trained == 0 or status["model_version"] == active:
                continue
            if last is not None and last[0] == active and trained - last[1] < self.gate.every_events:
                continue
            verdict = self._judge(name, status, active)
            if isinstance(verdict, str):
                waiting[name] = verdict
            else:
                verdicts.append(verdict)
                self._last_gate[name] = (active, trained)
        shipping = [v for v in verdicts if v.ship]
        winner = max(shipping, key=lambda v: v.lift) if shipping else None
        promoted = None
        refusal = None
        if winner is not None:
            try:
                promoted = self.store.publish_file(winner.status["model"], activate=True)
            except (ShelfBanditError, OSError) as err:
                refusal = f"the gate said ship but publishing failed ({err})"
        records = []
        for verdict in verdicts:
            records.append(verdict.record)
            outcome = {key: verdict.record[key] for key in ("time", "candidate", "candidate_version", "active_version", "events_trained")}
            if verdict is winner and promoted is not None:
                records.append({"record": PROMOTED, **outcome, "version": promoted, "activated": True,
                                "previous_version": active, "estimator": verdict.record["estimator"],
                                "difference": verdict.record["difference"]})
                continue
            if not verdict.ship:
                reason = verdict.record["reason"]
            elif verdict is winner:
                reason = refusal
            else:
                reason = f"candidate {winner.candidate} was promoted in this round with a larger estimated lift"
            records.append({"record": REFUSED, **outcome, "verdict": verdict.record["verdict"], "reason": reason,
                            "model": self._keep_judged(verdict.status["model"])})
        self.records.append(records)
        return records, promoted, waiting

    def _keep_judged(self, model: str) -> str | None:
        """Keep a refused model (its checkpoint file is deleted two steps later) in the judged
        store; its payload path relative to the data directory, None if it could not be copied."""
        try:
            version = self.judged.publish_file(model)
        except (ShelfBanditError, OSError):
            return None
        return str(self.judged.path_of(version).relative_to(self.data_dir))

    def _judge(self, name: str, status: dict, active: str) -> _Verdict | str:
        """The gate's verdict on one candidate, or why it cannot be judged yet."""
        settings = self.gate
        rows = self.on_policy.rows(active, status["next_part"], settings.window_events)
        if len(rows):
            rows = last_events(dominant_slot_count(self._scores[name].attach(rows, active)), settings.window_events)
        n_events = rows["event_id"].nunique() if len(rows) else 0
        if n_events < settings.min_events:
            return f"{n_events} of the {settings.min_events} events needed were served by the active model {active}"
        rng = np.random.default_rng([self.seed, status["events_trained"], zlib.crc32(name.encode())])
        try:
            result = judge(rows, settings, rng)
        except ValidationError as err:  # e.g. marginals the primary estimator needs were not logged
            return f"the gate cannot judge these events: {err}"
        record = {
            "record": GATE,
            "time": time.time(),
            "candidate": name,
            "candidate_version": status["model_version"],
            "active_version": active,
            "events_trained": status["events_trained"],
            "parts": [int(rows["part"].iloc[0]), int(rows["part"].iloc[-1])],
            **gate_fields(result),
        }
        return _Verdict(name, status, record, result.difference[settings.rule.primary].value, result.ship)

    # -- Ray -----------------------------------------------------------------------------------
    def _get(self, refs: list) -> list:
        """One `ray.get`; a failure inside a trainer becomes a ShelfBanditError naming it."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            raise ShelfBanditError(f"a trainer failed: {cause}") from None

    def _name_of(self, err: Exception) -> str:
        actor_id = getattr(err, "actor_id", None)
        for name, actor in self._actors.items():
            if actor._actor_id.hex() == actor_id:
                return name
        return "unknown"
