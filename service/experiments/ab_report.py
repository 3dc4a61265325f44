"""The A/B report: each arm's online reward per session with intervals, its difference from the
control arm, and its offline estimate from before launch beside the online result.

Unit and estimand. A session is one decision; its reward is the sum over its slots. Arms are
assigned per listener, so a listener's sessions are not independent draws: the reward per
session of an arm is the ratio R / N of its reward sum to its number of sessions, with
listeners as the independent units (clusters; a session without a listener id is its own
cluster). Its standard error is the delta method's,

    se^2 = sum_c psi_c^2 / (C (C - 1)),  psi_c = (R_c - v N_c) / mean_c(N_c),

(`offline_eval.intervals.influence` with one listener per row). Arms hold disjoint listeners,
so the difference of two arms has se^2 = se_a^2 + se_b^2 (two independent samples, Welch),
and every interval is value +- z se with z the normal quantile of the level.

Offline estimates (docs/experiments.md): `<data_dir>/offline_estimates.json` by arm name or
model version, else the trainer's `<data_dir>/training/records.jsonl` (its launch-gate records)
by model version. The
offline/online agreement: is the online value inside the offline interval, their difference,
and whether that difference is within z sqrt(se_online^2 + se_offline^2) (se_offline read
from the offline interval's half-width).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bandit.errors import ValidationError
from bandit.model_file import write_atomic
from offline_eval.gate import GateRule
from offline_eval.intervals import Ratio, check_level, finite_or_none, influence, normal_quantile, slot_values
from service.experiments.arms import DEFAULT_ARM, ONLINE, ArmsFile
from service.join.reader import JoinedLog
from service.training.records import records_path

OFFLINE_ESTIMATES = "offline_estimates.json"
REPORT_NAME = "report.md"
PLOT_NAME = "ab_report.png"
ARM_DEFAULTS = {"arm": DEFAULT_ARM, "arm_mode": ONLINE, "learn": True, "listener_id": None, "agreement": None}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value with its standard error, in total and per slot; intervals are value +- z se."""

    value: float
    stderr: float
    z: float
    per_slot: tuple[float, ...] = ()
    per_slot_stderr: tuple[float, ...] = ()

    @property
    def lower(self) -> float:
        return self.value - self.z * self.stderr

    @property
    def upper(self) -> float:
        return self.value + self.z * self.stderr

    def to_dict(self) -> dict:
        slots, slot_se = np.array(self.per_slot), np.array(self.per_slot_stderr)
        return finite_or_none({
            "value": self.value, "stderr": self.stderr, "lower": self.lower, "upper": self.upper,
            "per_slot": slots.tolist(), "per_slot_lower": (slots - self.z * slot_se).tolist(),
            "per_slot_upper": (slots + self.z * slot_se).tolist(),
        })


@dataclass(frozen=True, slots=True)
class OfflineEstimate:
    """An arm's value as estimated offline before launch, and where it was recorded."""

    value: float
    lower: float
    upper: float
    level: float
    estimator: str
    source: str
    version: str | None = None
    recorded_at: float | None = None

    def to_dict(self) -> dict:
        return finite_or_none({
            "value": self.value, "lower": self.lower, "upper": self.upper, "level": self.level,
            "estimator": self.estimator, "source": self.source, "version": self.version, "recorded_at": self.recorded_at,
        })


@dataclass(frozen=True, slots=True)
class OfflineOnline:
    """Does the online result agree with the offline estimate?"""

    offline: OfflineEstimate
    inside: bool  # the online value lies in the offline interval
    difference: float  # online - offline
    z_score: float  # difference / sqrt(se_online^2 + se_offline^2)
    consistent: bool  # |z_score| <= z of the report's level

    def to_dict(self) -> dict:
        return finite_or_none({
            **self.offline.to_dict(), "inside": self.inside, "difference": self.difference,
            "z_score": self.z_score, "consistent": self.consistent,
        })


@dataclass(frozen=True, slots=True)
class ArmResult:
    arm: str
    modes: tuple[str, ...]
    n_sessions: int
    n_listeners: int
    reward: Estimate
    model_versions: Mapping[str, int]
    difference: Estimate | None  # this arm - control (None for the control itself)
    agreement: Estimate | None  # apprentice sessions: share of slots where the model agreed
    offline: OfflineOnline | None

    def to_dict(self) -> dict:
        return {
            "arm": self.arm,
            "modes": list(self.modes),
            "sessions": self.n_sessions,
            "listeners": self.n_listeners,
            "reward_per_session": self.reward.to_dict(),
            "model_versions": dict(self.model_versions),
            "difference_vs_control": self.difference.to_dict() if self.difference else None,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "offline": self.offline.to_dict() if self.offline else None,
        }


@dataclass(frozen=True, slots=True)
class ABReport:
    control: str
    level: float
    n_sessions: int
    since: float | None
    arms: tuple[ArmResult, ...]

    def arm(self, name: str) -> ArmResult:
        for result in self.arms:
            if result.arm == name:
                return result
        raise ValidationError("arm", f"not in the report (arms: {', '.join(r.arm for r in self.arms)})", name)

    def to_dict(self) -> dict:
        return {
            "n_sessions": self.n_sessions,
            "since": self.since,
            "level": self.level,
            "control": self.control,
            "interval": "normal; listeners as independent units (delta method); arms as independent samples",
            "arms": [result.to_dict() for result in self.arms],
        }


# -- inputs ------------------------------------------------------------------------------------
def read_slates(data_dir: str | Path, *, progress: Callable[[int], object] | None = None) -> pd.DataFrame:
    """The committed slate tables of a data directory, with the arm columns (parts written
    before arms existed get arm `main`, mode `online`)."""
    frames = []
    for part in JoinedLog(data_dir).parts():
        frames.append(pd.read_parquet(part.slates))
        if progress is not None:
            progress(1)
    if not frames:
        raise ValidationError("data_dir", "has no joined events yet (run the service's joiner or `shelfbandit join`)", str(data_dir))
    slates = pd.concat(frames, ignore_index=True)
    for column, default in ARM_DEFAULTS.items():
        if column not in slates:
            slates[column] = default
    slates["arm"] = slates["arm"].fillna(DEFAULT_ARM)
    slates["arm_mode"] = slates["arm_mode"].fillna(ONLINE)
    return slates


def parse_since(text: str, *, now: float | None = None) -> float:
    """`--since`: epoch seconds, an ISO-8601 time (UTC if no zone), or a duration back from now
    (`90m`, `24h`, `7d`)."""
    now = time.time() if now is None else now
    duration = _DURATION.match(text.strip())
    if duration:
        return now - float(duration.group(1)) * _SECONDS[duration.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("since", "must be epoch seconds, an ISO-8601 time or a duration like 24h", text) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def arm_order(data_dir: str | Path, seen: list[str]) -> list[str]:
    """Arms in the current configuration's order, then any others in order of first session."""
    try:
        config = ArmsFile(data_dir).read()
    except ValidationError:
        config = None
    configured = [name for name in (config.names if config else ()) if name in seen]
    return configured + [name for name in seen if name not in configured]


# -- offline estimates -------------------------------------------------------------------------
def _estimate_from(record: object, source: str) -> OfflineEstimate | None:
    """An estimate in a recognised shape: {value, lower, upper}; or under `estimate` / `offline`;
    or `shelfbandit evaluate --json` output (the primary estimator of the candidate, else of the target)."""
    if not isinstance(record, Mapping):
        return None
    if all(isinstance(record.get(k), (int, float)) for k in ("value", "lower", "upper")):
        return OfflineEstimate(
            float(record["value"]), float(record["lower"]), float(record["upper"]), float(record.get("level", 0.95)),
            str(record.get("estimator", "unknown")), source,
            record.get("version") if isinstance(record.get("version"), str) else None,
            float(record["recorded_at"]) if isinstance(record.get("recorded_at"), (int, float)) else None,
        )
    for key in ("estimate", "offline"):
        if isinstance(record.get(key), Mapping):
            found = _estimate_from({"level": record.get("level", 0.95), **record[key]}, source)
            if found is not None:
                return found
    evaluation = record.get("candidate") if isinstance(record.get("candidate"), Mapping) else record
    estimates = evaluation.get("estimates") if isinstance(evaluation, Mapping) else None
    if isinstance(estimates, Mapping) and estimates:
        rule = record.get("rule") if isinstance(record.get("rule"), Mapping) else {}
        primary = rule.get("primary", GateRule().primary)
        name = primary if primary in estimates else next(iter(estimates))
        chosen = estimates[name]
        if isinstance(chosen, Mapping):
            return _estimate_from({"level": record.get("level", 0.95), "estimator": name, **chosen}, source)
    return None


def estimate_from_evaluation(output: Mapping, *, estimator: str | None = None) -> OfflineEstimate:
    """The estimate to record from `shelfbandit evaluate --json` output: `estimator` (default the
    gate's primary estimator) of the candidate (or of the evaluated target)."""
    if estimator is not None:
        evaluation = output.get("candidate", output)
        chosen = (evaluation.get("estimates") or {}).get(estimator) if isinstance(evaluation, Mapping) else None
        if not isinstance(chosen, Mapping):
            raise ValidationError("estimator", "is not among the evaluation's estimates", estimator)
        output = {"level": output.get("level", 0.95), "estimator": estimator, **chosen}
    found = _estimate_from(output, "shelfbandit evaluate")
    if found is None or not all(math.isfinite(v) for v in (found.value, found.lower, found.upper)):
        raise ValidationError("evaluation", "holds no finite estimate with value, lower and upper")
    return found


def record_offline_estimate(data_dir: str | Path, estimate: OfflineEstimate, *, arm: str | None, version: str | None) -> Path:
    """Append an estimate for an arm and/or a model version to `offline_estimates.json`."""
    if arm is None and version is None:
        raise ValidationError("arm/version", "name the arm or the model version the estimate belongs to")
    path = Path(data_dir) / OFFLINE_ESTIMATES
    data = _read_json(path) or {"estimates": []}
    entry = {**estimate.to_dict(), "arm": arm, "version": version, "recorded_at": estimate.recorded_at or time.time()}
    data.setdefault("estimates", []).append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1).encode())
    return path


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValidationError(str(path), f"must be valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValidationError(str(path), "must hold a JSON object with 'estimates'")
    return data


class OfflineEstimates:
    """The recorded offline estimates of a data directory, by arm name and by model version."""

    def __init__(self, data_dir: str | Path) -> None:
        self.by_arm: dict[str, OfflineEstimate] = {}
        self.by_version: dict[str, OfflineEstimate] = {}
        self.unreadable_records = 0
        root = Path(data_dir)
        self._read_training_records(records_path(root))
        entries = (_read_json(root / OFFLINE_ESTIMATES) or {}).get("estimates", [])
        for entry in entries if isinstance(entries, list) else []:  # later entries win; this file wins over the trainer's
            found = _estimate_from(entry, OFFLINE_ESTIMATES)
            if found is None or not isinstance(entry, Mapping):
                continue
            if isinstance(entry.get("arm"), str):
                self.by_arm[entry["arm"]] = found
            if isinstance(entry.get("version"), str):
                self.by_version[entry["version"]] = found

    def _read_training_records(self, path: Path) -> None:
        """The trainer's records, read defensively. A `gate` record gives its candidate's estimate
        (`candidate_version`, `candidate_estimate`, `estimator`, `level`, `time`): the last one of a
        version is its estimate from before it was promoted. A record with a string `version` and
        an estimate in a shape `_estimate_from` knows counts too; anything else is skipped."""
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for raw in lines:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.unreadable_records += 1
                continue
            if not isinstance(record, Mapping):
                continue
            if isinstance(record.get("candidate_version"), str) and isinstance(record.get("candidate_estimate"), Mapping):
                version = record["candidate_version"]
                shaped = {"estimator": record.get("estimator", "unknown"), "level": record.get("level", 0.95),
                          "recorded_at": record.get("time"), **record["candidate_estimate"]}
            elif isinstance(record.get("version"), str):
                version, shaped = record["version"], record
            else:
                continue
            found = _estimate_from(shaped, "training/records.jsonl")
            if found is not None:
                self.by_version[version] = replace(found, version=version)

    def find(self, arm: str, version: str | None) -> OfflineEstimate | None:
        return self.by_arm.get(arm) or (self.by_version.get(version) if version else None)


def compare_offline(online: Estimate, offline: OfflineEstimate, z: float) -> OfflineOnline:
    """Inside the offline interval? The difference and its z-score (offline se from its half-width)."""
    offline_se = (offline.upper - offline.lower) / (2.0 * normal_quantile(offline.level))
    difference = online.value - offline.value
    scale = math.hypot(online.stderr, offline_se)
    z_score = difference / scale if scale > 0 else math.copysign(math.inf, difference) if difference else 0.0
    return OfflineOnline(offline, bool(offline.lower <= online.value <= offline.upper), difference, z_score, abs(z_score) <= z)


# -- estimation --------------------------------------------------------------------------------
def _ratio_estimate(numerator: np.ndarray, denominator: np.ndarray, z: float) -> Estimate:
    """sum_c numerator[c, k] / sum_c denominator[c, k] per slot k and their sum, listeners c as the
    units; (C, K) arrays."""
    parts = (Ratio(numerator, denominator),)
    values = slot_values(parts)
    n_clusters = len(numerator)
    if n_clusters < 2:
        return Estimate(float(values.sum()), math.nan, z, tuple(values.tolist()), (math.nan,) * len(values))
    psi = influence(parts)
    slot_se = psi.std(axis=0, ddof=1) / math.sqrt(n_clusters)
    total_se = float(psi.sum(axis=1).std(ddof=1) / math.sqrt(n_clusters))
    return Estimate(float(values.sum()), total_se, z, tuple(values.tolist()), tuple(slot_se.tolist()))


def _difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b for independent samples: se = sqrt(se_a^2 + se_b^2), per slot likewise."""
    slots = np.array(a.per_slot) - np.array(b.per_slot)
    slot_se = np.hypot(a.per_slot_stderr, b.per_slot_stderr)
    return Estimate(a.value - b.value, math.hypot(a.stderr, b.stderr), a.z, tuple(slots.tolist()), tuple(slot_se.tolist()))


def group_sums(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """(G, K) column sums of the rows (n, K) of `values` by group code (n,)."""
    n_columns = values.shape[1]
    flat = (codes[:, None] * n_columns + np.arange(n_columns)).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=n_groups * n_columns).reshape(n_groups, n_columns)


def _agreement(agreed: np.ndarray, compared: np.ndarray, z: float) -> Estimate:
    """Share of compared slots that agreed, overall and per slot, listeners as units; (C, K) counts."""
    overall = _ratio_estimate(agreed.sum(axis=1, keepdims=True), compared.sum(axis=1, keepdims=True), z)
    per_slot = [_ratio_estimate(agreed[compared[:, k] > 0, k : k + 1], compared[compared[:, k] > 0, k : k + 1], z)
                for k in range(compared.shape[1]) if compared[:, k].any()]
    return Estimate(overall.value, overall.stderr, z, tuple(e.value for e in per_slot), tuple(e.stderr for e in per_slot))


def ab_report(
    slates: pd.DataFrame,
    *,
    control: str | None = None,
    order: list[str] | None = None,
    level: float = 0.95,
    since: float | None = None,
    offline: OfflineEstimates | None = None,
) -> ABReport:
    """Per arm: sessions, listeners, reward per session (sum over slots) with its interval, the
    difference from `control` (default: the first arm of `order`), apprentice agreement, and
    the offline estimate beside the online value. `slates`: the slate table with the arm columns."""
    z = normal_quantile(check_level(level))
    rows = slates if since is None else slates[slates["timestamp"] >= since]
    if rows.empty:
        raise ValidationError("since", "no joined session in the report's period", since)
    event_codes, event_ids = pd.factorize(rows["event_id"])
    n_events = len(event_ids)
    n_slots = int(rows["slot"].max()) + 1
    slot = rows["slot"].to_numpy(dtype=np.int64)
    cell = event_codes * n_slots + slot
    rewards = np.bincount(cell, weights=rows["reward"].to_numpy(dtype=np.float64), minlength=n_events * n_slots)
    agreement = pd.to_numeric(rows["agreement"], errors="coerce").to_numpy(dtype=np.float64)
    compared = ~np.isnan(agreement)
    agreed_slots = np.bincount(cell[compared], weights=agreement[compared], minlength=n_events * n_slots)
    compared_slots = np.bincount(cell[compared], minlength=n_events * n_slots).astype(np.float64)
    rewards, agreed_slots, compared_slots = (a.reshape(n_events, n_slots) for a in (rewards, agreed_slots, compared_slots))

    events = rows.iloc[~pd.Series(event_codes).duplicated().to_numpy()]  # first row of each event, in code order
    arm = events["arm"].astype(str).to_numpy()
    listener = events["listener_id"]
    cluster_key = np.where(listener.isna(), "event:" + events["event_id"].astype(str), "listener:" + listener.astype(str))
    present = list(dict.fromkeys(arm.tolist()))
    names = [name for name in (order or []) if name in present] + [name for name in present if name not in (order or [])]
    control = control or names[0]
    if control not in names:
        raise ValidationError("control", f"is not an arm of the report's sessions (arms: {', '.join(names)})", control)

    per_arm = {}
    for name in names:
        mine = arm == name
        codes, clusters = pd.factorize(cluster_key[mine])
        sums = group_sums(codes, rewards[mine], len(clusters))
        sessions = np.bincount(codes, minlength=len(clusters)).astype(np.float64)
        reward = _ratio_estimate(sums, np.broadcast_to(sessions[:, None], sums.shape), z)
        agreement_estimate = None
        if compared_slots[mine].any():
            counted = group_sums(codes, compared_slots[mine], len(clusters))
            has = counted.sum(axis=1) > 0
            agreement_estimate = _agreement(group_sums(codes, agreed_slots[mine], len(clusters))[has], counted[has], z)
        versions = events.loc[mine, "model_version"].astype(str).value_counts()
        modes = tuple(dict.fromkeys(events.loc[mine, "arm_mode"].astype(str).tolist()))
        per_arm[name] = (int(mine.sum()), len(clusters), reward, agreement_estimate, versions, modes)

    results = []
    for name, (n_sessions, n_listeners, reward, agreement_estimate, versions, modes) in per_arm.items():
        found = offline.find(name, versions.index[0] if len(versions) else None) if offline else None
        results.append(ArmResult(
            arm=name,
            modes=modes,
            n_sessions=n_sessions,
            n_listeners=n_listeners,
            reward=reward,
            model_versions={str(k): int(v) for k, v in versions.items()},
            difference=None if name == control else _difference(reward, per_arm[control][2]),
            agreement=agreement_estimate,
            offline=compare_offline(reward, found, z) if found else None,
        ))
    return ABReport(control, level, n_events, since, tuple(results))


# -- output ------------------------------------------------------------------------------------
def _interval(e: Estimate) -> str:
    return f"{e.value:.4g} [{e.lower:.4g}, {e.upper:.4g}]" if math.isfinite(e.lower) else f"{e.value:.4g}"


def plot(path: Path, report: ABReport) -> None:
    """Reward per session per arm (online, and offline where recorded) and each arm minus control."""
    figure = Figure(figsize=(11, 0.55 * len(report.arms) + 2.0))
    left, right = figure.subplots(1, 2)
    names = [f"{r.arm} (control)" if r.arm == report.control else r.arm for r in report.arms]
    for i, r in enumerate(report.arms):
        e = r.reward
        left.errorbar([e.value], [i - 0.12], xerr=[[e.value - e.lower], [e.upper - e.value]], fmt="o", color="tab:blue",
                      capsize=3, label="online" if i == 0 else None)
        if r.offline is not None:
            o = r.offline.offline
            left.errorbar([o.value], [i + 0.12], xerr=[[o.value - o.lower], [o.upper - o.value]], fmt="s", color="tab:orange",
                          capsize=3, label="offline (before launch)")
        if r.difference is not None:
            d = r.difference
            right.errorbar([d.value], [i], xerr=[[d.value - d.lower], [d.upper - d.value]], fmt="o", color="tab:green", capsize=3)
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    left.legend(unique.values(), unique.keys(), loc="best", fontsize=8)
    for axis in (left, right):
        axis.set_yticks(range(len(names)), names)
        axis.invert_yaxis()
    left.set_title(f"reward per session, {report.level:.0%} intervals", fontsize=10)
    right.axvline(0.0, color="tab:red", linestyle="--", linewidth=1)
    right.set_title(f"arm - {report.control}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_report(out_dir: str | Path, report: ABReport, *, data_dir: str | Path) -> Path:
    """Write report.md and ab_report.png into `out_dir`; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / PLOT_NAME, report)
    since = "all joined sessions" if report.since is None else datetime.fromtimestamp(report.since, timezone.utc).isoformat()
    lines = [
        f"# A/B report for {data_dir}", "",
        f"- sessions: {report.n_sessions} ({since})",
        f"- control arm: {report.control}",
        f"- reward per session: the sum of the slots' rewards; {report.level:.0%} normal intervals with listeners as "
        "the independent units (arms are assigned per listener); differences between arms as independent samples",
        "",
        "## Online results", "",
        f"| arm | modes | sessions | listeners | reward per session | {report.control} difference | served versions |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.arms:
        versions = ", ".join(f"{v} ({n})" for v, n in list(r.model_versions.items())[:3])
        difference = "control" if r.difference is None else _interval(r.difference)
        lines.append(f"| {r.arm} | {', '.join(r.modes)} | {r.n_sessions} | {r.n_listeners} | {_interval(r.reward)} | {difference} | {versions} |")
    lines += ["", "## Offline estimate before launch against the online result", "",
              "| arm | offline estimate | estimator | source | online inside offline interval | online - offline | consistent |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report.arms:
        if r.offline is None:
            lines.append(f"| {r.arm} | none recorded | | | | | |")
            continue
        o = r.offline
        lines.append(
            f"| {r.arm} | {o.offline.value:.4g} [{o.offline.lower:.4g}, {o.offline.upper:.4g}] | {o.offline.estimator} | "
            f"{o.offline.source} | {'yes' if o.inside else 'no'} | {o.difference:+.4g} (z = {o.z_score:.2f}) | {'yes' if o.consistent else 'no'} |"
        )
    apprentices = [r for r in report.arms if r.agreement is not None]
    if apprentices:
        lines += ["", "## Apprentice agreement", "",
                  "Share of slots where the compared model's top choice (given the editorial shelves above) was the editorial shelf.", "",
                  "| arm | agreement | per slot |", "| --- | --- | --- |"]
        for r in apprentices:
            lines.append(f"| {r.arm} | {_interval(r.agreement)} | {', '.join(f'{v:.2f}' for v in r.agreement.per_slot)} |")
    lines += ["", f"![arms]({PLOT_NAME})", ""]
    path = out / REPORT_NAME
    path.write_text("\n".join(lines))
    return path
