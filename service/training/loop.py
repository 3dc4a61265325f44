"""TrainingLoop: the champion learns continuously and is published on a timer; challengers
train beside it and replace its configuration only on the launch gate's evidence.

A round: every candidate's actor trains the committed parts it has not trained yet (up to
`max_events_per_round` events each; one `ray.get` over all the actors' calls) and the steps
are recorded. Then each challenger that trained enough since it was last judged is judged
against the champion on the learnable events of a recent window (`service.training.judge`);
of those the gate ships, the one with the largest estimated lift becomes the champion. Then,
every `publish.interval_s` (and at once after a change of champion), the champion's latest
committed model is published and activated after the checks of
`service.training.publishing`. Models are never averaged across workers
(`vowpalwabbit.merge_models` merges only part of a CCB model's state).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.durable import try_lock
from bandit.errors import ShelfBanditError, ValidationError
from service.experiments.arms import ACTIVE, BASELINES, ArmsFile
from service.join.reader import JoinedLog, learnable_rows
from service.layout import DataPaths
from service.models.store import ActivePointer, ModelRefused, ModelStore, PointerPinned
from service.supervisor import Supervised
from service.training.candidates import DEFAULT_CANDIDATES, Candidate, check_candidates
from service.training.judge import (
    BASELINE_COLUMNS,
    GateSettings,
    ProgressiveScores,
    SlateRows,
    dominant_slot_count,
    gate_fields,
    judge,
    last_events,
    served_by,
)
from service.training.publishing import PublishSettings, SnapshotRefused, checked_snapshot, guardrail_refusal, read_status, write_status
from service.training.records import (
    GATE,
    PROMOTED,
    PUBLISH_REFUSED,
    PUBLISHED,
    REFUSED,
    TRAINED,
    TrainingRecords,
    read_records,
)
from service.training.state import candidate_dir, check_candidate, training_dir
from service.training.worker import CandidateTrainer

JUDGED = "judged"
MAX_DEATHS = 3  # rounds in a row a trainer may die (Ray restarts it; it resumes from its checkpoint)
MAX_SERVED_VERSIONS = 1000  # recently published versions whose events the guardrail reads
FOLLOW_INTERVAL_S = 1.0  # how often a following loop looks for new parts once caught up
RESTART_WAIT_S = 60.0  # how long a restarting trainer may take to answer again
TRAINER_TASK = "trainer"
FAILED_ROUND_BASE_S, FAILED_ROUND_MAX_S = 1.0, 60.0  # backoff after failed rounds of a following loop
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


class TrainingBusy(ShelfBanditError):
    """Another training loop holds the data directory's training lock."""


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What one round did: events trained (summed over candidates), the records it wrote
    (`trained`; challenger decisions `gate`, `promoted`, `refused`; `published` or
    `publish_refused`), the champion after it, the candidate it promoted to champion and the
    version it published (or None), why challengers were not judged, and trainers that died."""

    n_events: int
    steps: tuple[dict, ...]
    decisions: tuple[dict, ...]
    publications: tuple[dict, ...]
    champion: str
    promoted: str | None
    published: str | None
    waiting: dict[str, str]
    lost: tuple[str, ...]
    statuses: tuple[dict, ...]

    @property
    def gates(self) -> tuple[dict, ...]:
        return tuple(r for r in self.decisions if r["record"] == GATE)

    @property
    def refused(self) -> tuple[dict, ...]:
        return tuple(r for r in self.decisions if r["record"] == REFUSED)

    @property
    def publish_refused(self) -> tuple[dict, ...]:
        return tuple(r for r in self.publications if r["record"] == PUBLISH_REFUSED)


@dataclass(frozen=True, slots=True)
class _Verdict:
    candidate: str
    status: dict
    record: dict
    lift: float
    ship: bool


def _winner(verdicts: list[_Verdict]) -> _Verdict | None:
    """Of the challengers the gate ships, the one with the largest estimated lift."""
    shipping = [v for v in verdicts if v.ship]
    return max(shipping, key=lambda v: v.lift) if shipping else None


def _decision_records(verdicts: list[_Verdict], winner: _Verdict | None) -> list[dict]:
    """Per verdict its `gate` record, then `promoted` for the winner or `refused` (with why) for the others."""
    records = []
    for verdict in verdicts:
        records.append(verdict.record)
        outcome = {key: verdict.record[key] for key in ("time", "candidate", "candidate_version", "champion", "champion_version", "events_trained")}
        if verdict is winner:
            records.append({"record": PROMOTED, **outcome, "estimator": verdict.record["estimator"],
                            "difference": verdict.record["difference"]})
        else:
            reason = verdict.record["reason"] if not verdict.ship else (
                f"candidate {winner.candidate} became the champion in this round with a larger estimated lift")
            records.append({"record": REFUSED, **outcome, "verdict": verdict.record["verdict"], "reason": reason})
    return records


class TrainingLoop:
    """Trains `candidates` (one Ray actor each) on a data directory's joined log, publishes the
    champion's snapshots every `publish.interval_s`, and changes the champion when the launch
    gate ships a challenger. The champion is the first candidate until the gate promotes another
    (the last `promoted` record names it). `clock` tells when publishing is due. Use as a context
    manager (or `start()`/`close()`), from a thread that outlives the loop: Ray started from a
    thread stops when that thread ends.

    `ray_address`: join that cluster; otherwise a local Ray with `num_cpus` CPUs is started
    (unless Ray is already initialised in this process; then that one is used and left running).
    """

    def __init__(
        self,
        data_dir: str | Path,
        candidates: Sequence[Candidate] = DEFAULT_CANDIDATES,
        *,
        gate: GateSettings | None = None,
        publish: PublishSettings | None = None,
        ray_address: str | None = None,
        num_cpus: int = 2,
        max_events_per_round: int = 20_000,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.candidates = check_candidates(candidates)
        self.gate = gate or GateSettings()
        self.publish = publish or PublishSettings()
        if num_cpus < 1:
            raise ValidationError("num_cpus", "must be at least 1", num_cpus)
        if max_events_per_round < 1:
            raise ValidationError("max_events_per_round", "must be at least 1", max_events_per_round)
        self.ray_address = ray_address
        self.num_cpus = num_cpus
        self.max_events_per_round = max_events_per_round
        self.seed = seed
        self.store = ModelStore(DataPaths(self.data_dir).models)
        self.judged = ModelStore(training_dir(self.data_dir) / JUDGED)  # refused snapshots; never activated
        self.records = TrainingRecords(self.data_dir)
        self.champion = self.candidates[0].name
        self.clock = clock  # when publishing is due
        self._slates = SlateRows(self.data_dir)
        self._scores = {c.name: ProgressiveScores(candidate_dir(self.data_dir, c.name)) for c in self.candidates}
        self._actors: dict = {}
        self._statuses: dict[str, dict] = {}
        self._recorded: dict[str, int] = {}
        self._last_gate: dict[str, tuple[str, int]] = {}
        self._last_publish_try = 0.0
        self._started_at = 0.0
        self._last_published: dict | None = None
        self._published: deque[str] = deque(maxlen=MAX_SERVED_VERSIONS)  # published versions and those they replaced
        self._refusals_in_a_row = 0
        self._refusals: dict[str, int] = {}  # publish refusals by check, over the records
        self._current_at = 0.0  # when the active model was last seen to be the champion's latest
        self._waiting: dict[str, str] = {}
        self._failures_total = 0  # rounds of this process that raised
        self._names = {c.name for c in self.candidates}
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
        self._started_at = self.clock()
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
        self._lock_fd = try_lock(directory / ".lock")
        if self._lock_fd is None:
            raise TrainingBusy(f"another training loop is running on {self.data_dir} (it holds training/.lock)")

    def _read_history(self) -> None:
        """Where the records stand: each candidate's last recorded step and last gate, the
        champion (the last promoted candidate still configured, else the first), the last
        publication (publishing resumes on its schedule) and the refusals."""
        for record in read_records(self.data_dir):
            name = record.get("candidate")
            kind = record["record"]
            if kind == TRAINED:
                self._recorded[name] = max(self._recorded.get(name, 0), record["step"])
            elif kind == GATE:
                self._last_gate[name] = (record.get("champion"), record["events_trained"])
            elif kind == PROMOTED and name in self._names:
                self.champion = name
            elif kind == PUBLISHED:
                self._published.extend(v for v in (record["active_version"], record["version"]) if v)
                self._last_published = {"version": record["version"], "time": record["time"]}
                self._last_publish_try = record["time"]
                self._refusals_in_a_row = 0
            elif kind == PUBLISH_REFUSED:
                self._last_publish_try = record["time"]
                self._refusals_in_a_row += 1
                self._refusals[record["check"]] = self._refusals.get(record["check"], 0) + 1

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
        committed = self._committed_parts()
        ahead = sorted(s["candidate"] for s in self._statuses.values() if s["next_part"] > committed)
        if ahead:
            raise ShelfBanditError(
                f"candidates {', '.join(ahead)} trained parts the joined log of {self.data_dir} does not hold "
                f"(it has {committed}); was the data directory replaced? Remove training/ to start over"
            )

    def _refresh_statuses(self, restart_wait_s: float = 0.0) -> None:
        """Every actor's status; a trainer Ray is still restarting is asked again for up to
        `restart_wait_s` seconds."""
        import ray

        deadline = time.monotonic() + restart_wait_s
        while True:
            try:
                statuses = self._get([actor.status.remote() for actor in self._actors.values()])
                break
            except ray.exceptions.RayActorError as err:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
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

    def run_once(self, *, publish_now: bool = False) -> RoundReport:
        """Train every candidate on its waiting parts (in parallel), record, judge the
        challengers, and publish the champion when due (or `publish_now`)."""
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
            self._refresh_statuses(RESTART_WAIT_S)  # Ray restarts the trainer; it resumes from its checkpoint
            return RoundReport(0, (), (), (), self.champion, None, None, {}, (lost,), self.statuses)
        self._deaths.clear()
        steps = []
        for name, result in zip(names, results):
            self._statuses[name] = result["status"]
            for step in result["steps"]:
                steps.append({"record": TRAINED, **step})
                self._recorded[name] = step["step"]
        self.records.append(steps)
        decisions, promoted, waiting = self._judge_challengers()
        publications = self._publish_when_due(publish_now or promoted is not None)
        self._write_status()
        published = next((r["version"] for r in publications if r["record"] == PUBLISHED), None)
        return RoundReport(sum(r["n_events"] for r in results), tuple(steps), tuple(decisions), tuple(publications),
                           self.champion, promoted, published, waiting, (), self.statuses)

    def run(self, stop: threading.Event, interval_s: float = FOLLOW_INTERVAL_S,
            on_round: Callable[[RoundReport], None] | None = None) -> None:
        """Rounds until `stop` is set: back to back while parts wait, else one every `interval_s`.

        Supervised (service/supervisor.py): a round that raises is logged with its traceback,
        counted, shown in `publishing.json` (`failing`, `failures_total`: the service's metrics
        and `doctor` read it) and retried with capped backoff; the next good round clears it."""

        def round_step() -> float:
            try:
                report = self.run_once()
            except Exception as err:
                self._failed_round(err)
                raise
            if on_round is not None:
                on_round(report)
            return 0.0 if report.n_events else min(interval_s, self.publish.interval_s)

        task = Supervised(TRAINER_TASK, round_step, base_s=FAILED_ROUND_BASE_S, max_backoff_s=FAILED_ROUND_MAX_S).start()
        try:
            while not stop.wait(0.5) and task.running:
                pass
        finally:
            task.stop(timeout_s=RESTART_WAIT_S * 10)  # the round under way ends first, as a round always did

    def backfill(self, on_round: Callable[[RoundReport], None] | None = None) -> list[RoundReport]:
        """Rounds until every candidate has trained every committed part; the last one publishes
        the champion's model (after its checks) whether or not the timer is due."""
        reports = []
        while True:
            committed = self._committed_parts()
            report = self.run_once(publish_now=all(s["next_part"] >= committed for s in self.statuses))
            reports.append(report)
            if on_round is not None:
                on_round(report)
            if report.n_events == 0 and not report.lost:
                return reports

    def _committed_parts(self) -> int:
        return JoinedLog(self.data_dir).checkpoint().next_part

    # -- the challenger gate --------------------------------------------------------------------
    def _judge_challengers(self) -> tuple[list[dict], str | None, dict[str, str]]:
        """Judge every challenger that trained `every_events` since it was last judged against
        this champion; the shipped one with the largest lift becomes the champion."""
        verdicts, waiting = self._verdicts()
        winner = _winner(verdicts)
        records = _decision_records(verdicts, winner)
        self.records.append(records)  # the promoted record is what makes the change of champion
        if winner is not None:
            self.champion = winner.candidate
        self._waiting = waiting
        return records, (winner.candidate if winner else None), waiting

    def _verdicts(self) -> tuple[list[_Verdict], dict[str, str]]:
        """The gate's verdicts on the challengers due for one, and why the others due could not be judged."""
        champion = self._statuses[self.champion]
        waiting: dict[str, str] = {}
        verdicts = []
        for name, status in self._statuses.items():
            if not self._due_for_gate(name, status, champion):
                continue
            try:
                verdict = self._judge(name, status, champion)
            except (ShelfBanditError, OSError, ValueError, KeyError) as err:  # unreadable parts or scores
                verdict = f"the gate failed on this round's events ({type(err).__name__}: {err}); it tries again next round"
            if isinstance(verdict, str):
                waiting[name] = verdict
            else:
                verdicts.append(verdict)
                self._last_gate[name] = (self.champion, status["events_trained"])
        return verdicts, waiting

    def _due_for_gate(self, name: str, status: dict, champion: dict) -> bool:
        """A challenger is due once it and the champion have trained, and it trained `every_events`
        more since it was last judged against this champion."""
        trained = status["events_trained"]
        if name == self.champion or trained == 0 or champion["events_trained"] == 0:
            return False
        last = self._last_gate.get(name)
        return last is None or last[0] != self.champion or trained - last[1] >= self.gate.every_events

    def _judge(self, name: str, status: dict, champion: dict) -> _Verdict | str:
        """The gate's verdict on one challenger against the champion, or why it cannot be judged yet."""
        settings = self.gate
        stop_part = min(status["next_part"], champion["next_part"])
        rows = self._slates.recent(stop_part, settings.window_events, learnable_rows)
        if len(rows):
            rows = self._scores[self.champion].attach(self._scores[name].attach(rows), BASELINE_COLUMNS)
            rows = last_events(dominant_slot_count(rows), settings.window_events)
        n_events = rows["event_id"].nunique() if len(rows) else 0
        if n_events < settings.min_events:
            return f"{n_events} of the {settings.min_events} learnable events needed have been scored by it and the champion {self.champion}"
        rng = np.random.default_rng([self.seed, status["events_trained"], zlib.crc32(name.encode())])
        try:
            result = judge(rows, settings, rng)
        except ValidationError as err:  # e.g. marginals the primary estimator needs were not logged
            return f"the gate cannot judge these events: {err}"
        record = {
            "record": GATE,
            "time": self.clock(),
            "candidate": name,
            "candidate_version": status["model_version"],
            "champion": self.champion,
            "champion_version": champion["model_version"],
            "events_trained": status["events_trained"],
            "parts": [int(rows["part"].iloc[0]), int(rows["part"].iloc[-1])],
            **gate_fields(result, "champion"),
        }
        return _Verdict(name, status, record, result.difference[settings.rule.primary].value, result.ship)

    # -- publishing ----------------------------------------------------------------------------
    def _publish_when_due(self, now: bool) -> list[dict]:
        """Publish the champion's latest committed model if the timer is due (or `now`) and it
        differs from the active one; returns the `published` or `publish_refused` record."""
        champion = self._statuses[self.champion]
        if not champion["events_trained"] or not (now or self.clock() - self._last_publish_try >= self.publish.interval_s):
            return []  # a champion that learned nothing (only logging-only events so far) has nothing to publish
        try:
            pointer = self.store.active()
        except ModelRefused:
            pointer = None
        if pointer is not None and pointer.version == champion["model_version"]:
            self._current_at = self.clock()  # nothing newer to publish: the served model is current
            return []
        if pointer is not None and pointer.pinned:
            return []
        self._last_publish_try = self.clock()
        base = {"time": self._last_publish_try, "candidate": self.champion, "candidate_version": champion["model_version"],
                "active_version": pointer.version if pointer else None, "events_trained": champion["events_trained"]}
        guardrail = None
        try:
            checked_snapshot(champion["model"])
            guardrail = self._guardrail(champion, pointer)
            version = self.store.publish_file(champion["model"])
            activated = self.store.activate(version, check=self.store.get, respect_pin=True)  # loaded above
        except PointerPinned:  # an operator pinned a version meanwhile
            return []
        except SnapshotRefused as err:
            self._refusals_in_a_row += 1
            self._refusals[err.check] = self._refusals.get(err.check, 0) + 1
            record = {"record": PUBLISH_REFUSED, **base, "check": err.check, "reason": err.reason,
                      "guardrail": err.figures, "refusals_in_a_row": self._refusals_in_a_row,
                      "model": self._keep_judged(champion["model"])}
        except (ShelfBanditError, OSError) as err:
            self._refusals_in_a_row += 1
            self._refusals["store"] = self._refusals.get("store", 0) + 1
            record = {"record": PUBLISH_REFUSED, **base, "check": "store", "reason": f"publishing failed ({err})",
                      "guardrail": guardrail, "refusals_in_a_row": self._refusals_in_a_row, "model": None}
        else:
            self._refusals_in_a_row = 0
            self._published.extend(v for v in (activated.previous, version) if v)
            self._last_published = {"version": version, "time": self._last_publish_try}
            self._current_at = self._last_publish_try
            try:
                pruned: list[str] | str = self.store.prune(self.publish.keep_versions, protect=self._arm_versions)
            except (ShelfBanditError, OSError) as err:  # the publication stands; the next one prunes again
                pruned = f"pruning failed ({err})"
            record = {"record": PUBLISHED, **base, "version": version, "previous_version": activated.previous,
                      "guardrail": guardrail, "pruned": pruned}
        self.records.append([record])
        return [record]

    def _guardrail(self, champion: dict, pointer: ActivePointer | None) -> dict:
        """The guardrail's figures on the latest events the active model and the versions
        published before it served; raises SnapshotRefused when they show the snapshot worse
        than what was served (see service.training.publishing)."""
        if pointer is None:
            return {"n_events": 0, "reason": "no model is active yet"}
        window, least = self.publish.guardrail_events, self.publish.guardrail_min_events
        served = {*self._published, pointer.version}
        try:
            rows = self._slates.recent(champion["next_part"], window, lambda frame: served_by(frame["model_version"], served))
            if len(rows):
                rows = last_events(dominant_slot_count(self._scores[self.champion].attach(rows)), window)
        except (ShelfBanditError, OSError, ValueError, KeyError) as err:  # unreadable parts or scores: refuse, loudly
            raise SnapshotRefused("guardrail", f"the guardrail could not read its events ({type(err).__name__}: {err})") from None
        n_events = rows["event_id"].nunique() if len(rows) else 0
        if n_events < least:
            return {"n_events": n_events, "reason": f"fewer than {least} events served by {pointer.version} "
                                                    "or the versions published before it: no evidence either way"}
        rng = np.random.default_rng([self.seed, champion["events_trained"], zlib.crc32(b"guardrail")])
        try:
            result = judge(rows, self.gate, rng)
        except ValidationError as err:
            return {"n_events": n_events, "reason": f"the guardrail cannot judge these events: {err}"}
        primary = result.rule.primary
        figures = {
            "n_events": n_events,
            "estimator": primary,
            "difference": gate_fields(result, "served")["difference"],
            "served_estimate": gate_fields(result, "served")["served_estimate"],
            "snapshot_estimate": gate_fields(result, "served")["candidate_estimate"],
            "ess": {"snapshot": result.candidate.estimates[primary].ess, "served": result.baseline.estimates[primary].ess},
            "max_regression": self.publish.max_regression,
            "min_ess": self.publish.min_ess,
        }
        refusal = guardrail_refusal(result, self.publish.max_regression, self.publish.min_ess)
        if refusal:
            raise SnapshotRefused("guardrail", refusal, figures)
        return {**figures, "reason": "not shown worse than the served model"}

    def _keep_judged(self, model: str) -> str | None:
        """Keep a refused snapshot (its checkpoint file is deleted two steps later) in the judged
        store; its payload path relative to the data directory, None if it could not be copied."""
        try:
            version = self.judged.publish_file(model)
            self.judged.prune(self.publish.keep_versions)
        except (ShelfBanditError, OSError):
            return None
        return str(self.judged.path_of(version).relative_to(self.data_dir))

    def _arm_versions(self) -> set[str]:
        """Stored versions the A/B arms serve (pruning spares them)."""
        try:
            arms = ArmsFile(self.data_dir).read()
        except (ShelfBanditError, OSError):
            return {v.version for v in self.store.versions()}  # cannot tell: spare every version
        if arms is None:
            return set()
        return {arm.policy for arm in arms.arms if arm.policy != ACTIVE and arm.policy not in BASELINES}

    def _write_status(self) -> None:
        """The publishing state for the service's metrics and `doctor` (every round)."""
        try:
            pointer = self.store.active()
        except ModelRefused:
            pointer = None
        champion = self._statuses[self.champion]
        write_status(training_dir(self.data_dir), {
            "champion": self.champion,
            "champion_version": champion["model_version"],
            "active_version": pointer.version if pointer else None,
            "pinned": bool(pointer and pointer.pinned),
            "interval_s": self.publish.interval_s,
            "last_published": self._last_published,
            "last_try": self._last_publish_try,
            "current_at": self._current_at,
            "started": self._started_at,
            "refusals_in_a_row": self._refusals_in_a_row,
            "refusals_by_check": self._refusals,
            "candidates": sorted(self._names),
            "waiting": self._waiting,
            "failures_total": self._failures_total,
        })

    def _failed_round(self, err: Exception) -> None:
        """Say in the publishing state that rounds fail (the round could not write it)."""
        self._failures_total += 1
        status = read_status(training_dir(self.data_dir)) or {}
        failing = status.get("failing") or {"since": time.time(), "in_a_row": 0}
        failing = {**failing, "error": f"{type(err).__name__}: {err}", "in_a_row": failing["in_a_row"] + 1}
        write_status(training_dir(self.data_dir), {**status, "failing": failing, "failures_total": self._failures_total})

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
