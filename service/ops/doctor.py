"""`shelfbandit doctor`: what is wrong with a data directory, in plain words.

Checks: whether the data directory's file system takes writes (read-only, almost full), torn or
unreadable log lines, logged probabilities outside (0, 1], the joiner's backlog (decisions
unjoined more than 3 join intervals after their window) and leftovers, the model store's active
pointer, the trainer's backlog (joined parts waiting and no step committed for 10 minutes) and
its timed publishing (refusals in a row, a pin, publications overdue), and the worker processes
of `serve --workers N` (restarts in the last hour, a manager gone without stopping). Reads only,
but for one probe block it writes and removes to tell whether the disk takes writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bandit.errors import ShelfBanditError
from service.eventlog.lines import line_head
from service.eventlog.segments import is_live, probe_write, segment_paths, torn_tail_size
from service.join.parts import REJECTED, decision_segments, missing_parts, read_checkpoint, uncommitted_parts
from service.layout import DECISION_KIND, LATE_KIND, REWARD_KIND, DataPaths
from service.models.active import probe
from service.models.store import ModelRefused, ModelStore, UnknownModelVersion
from service.ops.worker_status import RECENT_EXITS, read_worker_status
from service.settings import Settings
from service.training.backlog import trainer_backlog
from service.training.publishing import read_status
from service.training.records import PUBLISH_REFUSED, read_records
from service.training.state import training_dir

OK, WARN, PROBLEM = "ok", "warning", "problem"
MAX_EXAMPLES = 3
REFUSALS_PROBLEM = 3  # snapshots refused in a row (the alert ShelfBanditSnapshotsRefused agrees)
OVERDUE_INTERVALS = 10  # publish intervals without a publication (ShelfBanditPublishingStalled)
UNJOINED_INTERVALS = 3  # join intervals after the window (and grace) before a decision is overdue (ShelfBanditDecisionsUnjoined)
DISK_FREE_PROBLEM_BYTES = 2**20  # less free than this and decisions soon fail to log (ShelfBanditLogWriteErrors)
TRAINER_STALL_S = 600.0  # joined parts waiting without a committed step (ShelfBanditTrainerStalled)
RESTARTS_WINDOW_S = 3600.0  # worker restarts counted over this window ...
RESTARTS_PROBLEM = 3  # ... this many or more is a crash loop (ShelfBanditWorkersRestarting agrees)


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict: ok, warning or problem, and what it means."""

    check: str
    status: str
    message: str


def diagnose(settings: Settings, *, progress: Callable[[int], None] | None = None) -> list[Finding]:
    """Every check on `settings.data_dir` (the logs: those of `settings.replica_id`);
    `progress(n_bytes)` is called as log bytes are read."""
    paths = DataPaths(settings.data_dir, settings.replica_id)
    if not paths.root.is_dir():
        return [Finding("data directory", PROBLEM, f"{paths.root} does not exist or is not a directory")]
    findings = [_check_disk(paths.root)]
    for directory, kind in ((paths.decisions, DECISION_KIND), (paths.rewards, REWARD_KIND), (paths.late_rewards, LATE_KIND)):
        findings.extend(_check_log(directory, kind, progress))
    findings.extend(_check_joiner(paths, settings))
    findings.extend(_check_models(paths))
    findings.extend(_check_trainer(paths.root))
    findings.extend(_check_publishing(paths.root))
    findings.extend(_check_workers(paths.run))
    quarantined = sorted(paths.quarantine.glob("*")) if paths.quarantine.is_dir() else []
    if quarantined:
        names = ", ".join(p.name for p in quarantined[:MAX_EXAMPLES])
        findings.append(Finding("quarantine", WARN, f"{len(quarantined)} file(s) of torn lines were set aside in {paths.quarantine} ({names}); they were "
            "never acknowledged"))
    return findings


def log_bytes(settings: Settings) -> int:
    paths = DataPaths(settings.data_dir, settings.replica_id)
    kinds = ((paths.decisions, DECISION_KIND), (paths.rewards, REWARD_KIND), (paths.late_rewards, LATE_KIND))
    return sum(p.stat().st_size for directory, kind in kinds for p in segment_paths(directory, kind))


def _check_disk(root: Path) -> Finding:
    """Whether the data directory's file system takes a durable write (a probe block, removed
    again), and has room."""
    try:
        probe_write(root, f"doctor-{os.getpid()}")
    except OSError as err:
        return Finding("disk", PROBLEM, f"{root} does not take writes ({err.strerror or err}): no decision can be logged, so /v1/rank answers 503")
    stats = os.statvfs(root)
    free = stats.f_bavail * stats.f_frsize
    if free < DISK_FREE_PROBLEM_BYTES:
        return Finding("disk", PROBLEM, f"{root} has {free / 2**20:.1f} MiB free: decisions that cannot be logged get 503; free space and the "
            "service resumes by itself")
    return Finding("disk", OK, f"{free / 2**20:.0f} MiB free")


def _check_log(directory: Path, kind: str, progress: Callable[[int], None] | None) -> list[Finding]:
    segments = segment_paths(directory, kind)
    if not segments:
        return [Finding(f"{kind} log", OK, f"no {kind} segments yet")]
    findings = []
    n_lines = 0
    unreadable: list[str] = []
    bad_probs: list[str] = []
    for path in segments:
        torn = torn_tail_size(path)
        if torn and not is_live(path):
            findings.append(Finding(f"{kind} log", PROBLEM, f"{path.name} ends in a torn line of {torn} bytes (a crash in the middle of a write); the service "
                "sets it aside when it next starts"))
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if progress is not None:
                    progress(len(raw))
                if not raw.endswith(b"\n"):
                    break
                n_lines += 1
                where = f"{path.name} line {number}"
                try:
                    record = json.loads(raw)
                except ValueError:
                    unreadable.append(where)
                    continue
                if kind == DECISION_KIND:
                    problem = _decision_problem(raw, record)
                    if problem == "unreadable":
                        unreadable.append(where)
                    elif problem:
                        bad_probs.append(f"{where} ({problem})")
    if unreadable:
        findings.append(Finding(f"{kind} log", PROBLEM, f"{len(unreadable)} line(s) are not readable {kind} records, e.g. "
            f"{', '.join(unreadable[:MAX_EXAMPLES])}"))
    if bad_probs:
        findings.append(Finding(f"{kind} log", PROBLEM, f"{len(bad_probs)} decision(s) log a probability outside (0, 1] or a slot whose probabilities do not "
            f"sum to 1, e.g. {', '.join(bad_probs[:MAX_EXAMPLES])}; estimators cannot use them"))
    if not findings:
        findings.append(Finding(f"{kind} log", OK, f"{n_lines} lines in {len(segments)} segment(s), all readable"))
    return findings


def _decision_problem(raw: bytes, record: object) -> str | None:
    """None if the decision line is sound, else what is wrong with it."""
    if line_head(raw) is None or not isinstance(record, dict):
        return "unreadable"
    try:
        for k, slot in enumerate(record["_outcomes"]):
            probs = [float(p) for p in slot["_p"]]
            if not all(0.0 < p <= 1.0 + 1e-6 for p in probs):
                return f"slot {k} has probability {min(probs) if min(probs) <= 0 else max(probs)}"
            if not math.isclose(sum(probs), 1.0, abs_tol=1e-4):
                return f"slot {k} probabilities sum to {sum(probs):.6f}"
    except (KeyError, TypeError, ValueError):
        return "unreadable"
    return None


def _check_joiner(paths: DataPaths, settings: Settings) -> list[Finding]:
    try:
        checkpoint = read_checkpoint(paths)
    except ShelfBanditError as err:
        return [Finding("joiner", PROBLEM, f"the joiner checkpoint is unreadable: {err}")]
    findings = []
    now = time.time()
    cutoff = now - settings.reward_window_s - settings.join_grace_s
    overdue = cutoff - UNJOINED_INTERVALS * settings.join_interval_s
    n_ready = n_overdue = n_waiting = 0
    oldest_ready = None
    for key, path in decision_segments(paths):  # every replica's: the joiner's backlog is shared
        with open(path, "rb") as handle:
            handle.seek(checkpoint.offsets.get(key, 0))
            for raw in handle:
                head = line_head(raw) if raw.endswith(b"\n") else None
                if head is None:
                    continue
                if head[1] <= cutoff:
                    n_ready += 1
                    n_overdue += head[1] <= overdue
                    oldest_ready = head[1] if oldest_ready is None else min(oldest_ready, head[1])
                else:
                    n_waiting += 1
    if n_overdue:
        findings.append(Finding("joiner", PROBLEM, f"{n_overdue} decision(s) are past their reward window by more than {UNJOINED_INTERVALS} join "
            f"intervals ({UNJOINED_INTERVALS * settings.join_interval_s:g} s) but not joined (the oldest has "
            f"waited {now - settings.reward_window_s - oldest_ready:.0f} s); is a joiner running (the service's, "
            "or `shelfbandit join`), and is it failing (`/readyz`, the service's log)?"))
    leftovers = [p.name for p in uncommitted_parts(paths, checkpoint.next_part)]
    if leftovers:
        findings.append(Finding("joiner", WARN, f"uncommitted part(s) {', '.join(leftovers[:MAX_EXAMPLES])} were left by an interrupted joiner; the "
            "next joiner run deletes and redoes them"))
    missing = missing_parts(paths, checkpoint.next_part)
    if missing:
        findings.append(Finding("joiner", PROBLEM, f"{len(missing)} committed part(s) are missing, e.g. {', '.join(missing[:MAX_EXAMPLES])}"))
    rejected = paths.joined / REJECTED
    if rejected.exists() and rejected.stat().st_size:
        with open(rejected, "rb") as lines:
            n_rejected = sum(1 for _ in lines)
        findings.append(Finding("joiner", WARN, f"{n_rejected} decision line(s) could not be joined; see {rejected}"))
    if not findings:
        ready = f", {n_ready} ready for the next join pass" if n_ready else ""
        findings.append(Finding("joiner", OK, f"{checkpoint.n_events} decisions joined in {checkpoint.next_part} part(s); {n_waiting} waiting for "
            f"their reward window{ready}"))
    return findings


def _check_models(paths: DataPaths) -> list[Finding]:
    store = ModelStore(paths.models)
    try:
        pointer = store.active()
    except ModelRefused as err:
        return [Finding("model store", PROBLEM, f"the active pointer is unreadable: {err}")]
    if pointer is None:
        return [Finding("model store", WARN, "no model is active yet (the service creates and activates a fresh one at its first start)")]
    findings = []
    try:
        policy, stored = store.load(pointer.version)
        probe(policy, pointer.version)
        findings.append(Finding("model store", OK, f"active version {pointer.version} loads and ranks (activated "
            f"{time.time() - pointer.activated_at:.0f} s ago, model saved {time.time() - stored.created:.0f} s "
            "ago)"))
    except UnknownModelVersion:
        findings.append(Finding("model store", PROBLEM, f"the active pointer names {pointer.version}, which is not in the store; activate a stored version"))
    except ModelRefused as err:
        fallback = f"; services keep serving what they had, or fall back to {pointer.previous} at a restart" if pointer.previous else ""
        findings.append(Finding("model store", PROBLEM, f"the active version cannot serve: {err}{fallback}"))
    broken = []
    for stored in store.versions():
        try:
            store.get(stored.version)
        except (ModelRefused, UnknownModelVersion):
            broken.append(stored.version)
    if broken:
        findings.append(Finding("model store", WARN, f"{len(broken)} stored version(s) fail their checksum: {', '.join(broken[:MAX_EXAMPLES])}"))
    return findings


def _check_trainer(data_dir: Path) -> list[Finding]:
    try:
        backlog = trainer_backlog(data_dir)
    except ShelfBanditError as err:
        return [Finding("trainer", PROBLEM, str(err))]
    if not backlog.candidates:
        return []  # no trainer has run here: the publishing check says so
    now = time.time()
    stalled = [c for c in backlog.candidates if c.waiting_since is not None and now - c.waiting_since > TRAINER_STALL_S]
    if stalled:
        status = read_status(training_dir(data_dir)) or {}
        reported = f"{now - float(status['updated']):.0f} s ago" if status.get("updated") else "never"
        names = ", ".join(f"{c.candidate} (at part {c.next_part}, {now - c.waiting_since:.0f} s)" for c in stalled[:MAX_EXAMPLES])
        return [Finding("trainer", PROBLEM, f"{len(stalled)} candidate(s) have committed no step for more than {TRAINER_STALL_S:g} s although "
            f"joined parts wait (the joiner has committed {backlog.committed_parts}): {names}; the trainer last "
            f"reported {reported} — is `shelfbandit train --follow` running, and does its log show a failing step?")]
    behind = max(backlog.committed_parts - c.next_part for c in backlog.candidates)
    return [Finding("trainer", OK, f"{len(backlog.candidates)} candidate(s); the slowest is {behind} part(s) behind the joiner's {backlog.committed_parts}")]


def _check_publishing(data_dir: Path) -> list[Finding]:
    status = read_status(training_dir(data_dir))
    if status is None:
        return [Finding("publishing", WARN, "no trainer has published here yet; run `shelfbandit train --follow` beside the service so the "
            "served model learns")]
    now = time.time()
    interval = float(status.get("interval_s") or 0.0)
    published = status.get("last_published") or {}
    refused = int(status.get("refusals_in_a_row") or 0)
    failing = status.get("failing")
    if failing:
        return [Finding("publishing", PROBLEM, f"the trainer's rounds fail ({failing.get('in_a_row')} in a row since "
            f"{now - float(failing.get('since') or now):.0f} s ago, the last: {failing.get('error')}); it retries with backoff, "
            "see its log for the traceback")]
    if refused >= REFUSALS_PROBLEM:
        last = next((r for r in reversed(read_records(data_dir, PUBLISH_REFUSED))), {})
        return [Finding("publishing", PROBLEM, f"the champion's last {refused} snapshots were refused (the last by the "
            f"{last.get('check', 'unknown')} check: {last.get('reason', 'see training/records.jsonl')}); the "
            "served model does not learn")]
    if status.get("pinned"):
        return [Finding("publishing", WARN, f"an operator pinned {status.get('active_version')}; timed publishing is paused until POST /v1/model/resume")]
    waited_since = max(float(status.get("current_at") or 0.0), float(status.get("started") or 0.0))
    if interval and now - waited_since > OVERDUE_INTERVALS * interval:
        age = f"{now - published['time']:.0f} s ago" if published.get("time") else f"never (the trainer started {now - waited_since:.0f} s ago)"
        return [Finding("publishing", PROBLEM, f"the served model has not been the champion's latest for more than {OVERDUE_INTERVALS} publish "
            f"intervals ({interval:g} s; the last snapshot was published {age}); the trainer last reported "
            f"{now - float(status.get('updated') or 0.0):.0f} s ago — is `shelfbandit train --follow` running, "
            "and are decisions joined?")]
    last = f"{published['version']} published {now - published['time']:.0f} s ago" if published.get("time") else "nothing published yet"
    return [Finding("publishing", OK, f"champion {status.get('champion')}; {last} (every {interval:g} s)")]


def _check_workers(run_dir: Path) -> list[Finding]:
    status = read_worker_status(run_dir)
    if status is None:
        return []  # `serve` ran one worker here, or never ran
    now = time.time()
    stopped = status.get("stopped")
    if stopped and now - float(stopped) > RESTARTS_WINDOW_S:
        return []  # a manager that stopped over an hour ago
    until = float(stopped) if stopped else now
    exits = [e for e in status.get("recent_exits") or [] if until - float(e.get("time") or 0.0) <= RESTARTS_WINDOW_S]
    count = f"{len(exits)}{' or more' if len(exits) >= RECENT_EXITS else ''}"
    last = (f"; the last, pid {exits[-1].get('pid')} with exit code {exits[-1].get('exit_code')}, {now - float(exits[-1]['time']):.0f} s ago"
            if exits else "")
    if stopped:
        if exits:
            return [Finding("workers", WARN, f"{count} worker(s) exited and were started again in the hour before the service stopped{last}")]
        return []
    pid = int(status.get("manager_pid") or 0)
    if not _is_manager(pid):
        return [Finding("workers", WARN, f"the worker manager of `serve --workers {status.get('workers')}` (pid {pid}) ended without "
            "stopping (killed?): its workers may still run without anyone restarting them")]
    if len(exits) >= RESTARTS_PROBLEM:
        return [Finding("workers", PROBLEM, f"workers keep exiting: {count} restarts in the last hour{last}; the service's log has "
            "each ('worker exited; starting another'); a worker that cannot start (settings, memory, the port) is started again every second")]
    if exits:
        return [Finding("workers", WARN, f"{count} worker(s) exited and were started again in the last hour{last}")]
    return [Finding("workers", OK, f"{status.get('workers')} workers (manager pid {pid}), none restarted in the last hour "
        f"({status.get('restarts', 0)} since the start)")]


def _is_manager(pid: int) -> bool:
    """Whether `pid` runs a `shelfbandit serve` (a live pid that is not, on Linux, is a reused one)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell: trust the pid


def findings_json(findings: list[Finding]) -> dict:
    healthy = all(f.status != PROBLEM for f in findings)
    return {"healthy": healthy, "findings": [asdict(f) for f in findings]}
