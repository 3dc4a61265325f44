"""Offline estimates from before launch, and how an arm's online result compares with one.

Where they come from (docs/experiments.md): `<data_dir>/offline_estimates.json` by arm name or
model version, else the trainer's `<data_dir>/training/records.jsonl` (its launch-gate records)
by model version. The offline/online agreement: is the online value inside the offline
interval, their difference, and whether that difference is within z sqrt(se_online^2 +
se_offline^2) (se_offline read from the offline interval's half-width).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bandit.errors import ValidationError
from bandit.model_file import write_atomic
from offline_eval.gate import GateRule
from offline_eval.intervals import finite_or_none, normal_quantile
from service.experiments.ab_estimates import OnlineEstimate
from service.layout import DataPaths

OFFLINE_ESTIMATES = "offline_estimates.json"


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
        self._read_training_records(DataPaths(root).training_records)
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


def compare_offline(online: OnlineEstimate, offline: OfflineEstimate, z: float) -> OfflineOnline:
    """Inside the offline interval? The difference and its z-score (offline se from its half-width)."""
    offline_se = (offline.upper - offline.lower) / (2.0 * normal_quantile(offline.level))
    difference = online.value - offline.value
    scale = math.hypot(online.stderr, offline_se)
    z_score = difference / scale if scale > 0 else math.copysign(math.inf, difference) if difference else 0.0
    return OfflineOnline(offline, bool(offline.lower <= online.value <= offline.upper), difference, z_score, abs(z_score) <= z)
