"""The A/B report: each arm's online reward per session with intervals, its difference from the
control arm, apprentice agreement, and its offline estimate from before launch beside the
online result. The estimates are `service.experiments.ab_estimates`'s, the offline ones
`service.experiments.offline_estimates`'s; the input is read by `service.experiments.ab_input`
and rendered by `service.experiments.ab_render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bandit.errors import ValidationError
from offline_eval.intervals import check_level, normal_quantile
from service.experiments.ab_estimates import OnlineEstimate, agreement_share, difference, group_sums, ratio_estimate
from service.experiments.offline_estimates import OfflineEstimates, OfflineOnline, compare_offline


@dataclass(frozen=True, slots=True)
class ArmResult:
    arm: str
    modes: tuple[str, ...]
    n_sessions: int
    n_listeners: int
    reward: OnlineEstimate
    model_versions: Mapping[str, int]
    difference: OnlineEstimate | None  # this arm - control (None for the control itself)
    agreement: OnlineEstimate | None  # apprentice sessions: share of slots where the model agreed
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


@dataclass(frozen=True, slots=True)
class Sessions:
    """The sessions (events) of a slate table in order of first row: per slot (E, K) sums, and
    per session (E,) its arm, its cluster (listener, or the session itself without one), the
    model version and the arm mode it was served with."""

    rewards: np.ndarray
    agreed: np.ndarray  # apprentice slots whose comparison agreed
    compared: np.ndarray  # apprentice slots compared
    arm: np.ndarray
    cluster: np.ndarray
    model_version: pd.Series
    arm_mode: pd.Series

    @classmethod
    def of(cls, rows: pd.DataFrame) -> Sessions:
        event_codes, event_ids = pd.factorize(rows["event_id"])
        n_events, n_slots = len(event_ids), int(rows["slot"].max()) + 1
        cell = event_codes * n_slots + rows["slot"].to_numpy(dtype=np.int64)

        def per_slot(mask: np.ndarray | slice, weights: np.ndarray | None) -> np.ndarray:
            return np.bincount(cell[mask], weights=weights, minlength=n_events * n_slots).reshape(n_events, n_slots)

        agreement = pd.to_numeric(rows["agreement"], errors="coerce").to_numpy(dtype=np.float64)
        compared = ~np.isnan(agreement)
        events = rows.iloc[~pd.Series(event_codes).duplicated().to_numpy()]  # first row of each event, in code order
        listener = events["listener_id"]
        return cls(
            rewards=per_slot(slice(None), rows["reward"].to_numpy(dtype=np.float64)),
            agreed=per_slot(compared, agreement[compared]),
            compared=per_slot(compared, None).astype(np.float64),
            arm=events["arm"].astype(str).to_numpy(),
            cluster=np.where(listener.isna(), "event:" + events["event_id"].astype(str), "listener:" + listener.astype(str)),
            model_version=events["model_version"].astype(str),
            arm_mode=events["arm_mode"].astype(str),
        )

    @property
    def n_events(self) -> int:
        return len(self.arm)


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
    sessions = Sessions.of(rows)
    names = arm_names(sessions.arm, order or [])
    control = control or names[0]
    if control not in names:
        raise ValidationError("control", f"is not an arm of the report's sessions (arms: {', '.join(names)})", control)
    measured = [measure_arm(sessions, name, z) for name in names]
    reference = next(result.reward for result in measured if result.arm == control)
    results = tuple(compare_arm(result, control, reference, offline, z) for result in measured)
    return ABReport(control, level, sessions.n_events, since, results)


def arm_names(arms: np.ndarray, order: Sequence[str]) -> list[str]:
    """The arms present, those of `order` first in its order, then the others by first session."""
    present = list(dict.fromkeys(arms.tolist()))
    return [name for name in order if name in present] + [name for name in present if name not in order]


def measure_arm(sessions: Sessions, name: str, z: float) -> ArmResult:
    """One arm's sessions, listeners, reward per session, agreement and served versions (no
    comparison with the control or offline yet)."""
    mine = sessions.arm == name
    codes, clusters = pd.factorize(sessions.cluster[mine])
    sums = group_sums(codes, sessions.rewards[mine], len(clusters))
    counts = np.bincount(codes, minlength=len(clusters)).astype(np.float64)
    reward = ratio_estimate(sums, np.broadcast_to(counts[:, None], sums.shape), z)
    agreement = None
    if sessions.compared[mine].any():
        compared = group_sums(codes, sessions.compared[mine], len(clusters))
        has = compared.sum(axis=1) > 0
        agreement = agreement_share(group_sums(codes, sessions.agreed[mine], len(clusters))[has], compared[has], z)
    versions = sessions.model_version[mine].value_counts()
    return ArmResult(
        arm=name,
        modes=tuple(dict.fromkeys(sessions.arm_mode[mine].tolist())),
        n_sessions=int(mine.sum()),
        n_listeners=len(clusters),
        reward=reward,
        model_versions={str(k): int(v) for k, v in versions.items()},
        difference=None,
        agreement=agreement,
        offline=None,
    )


def compare_arm(
    result: ArmResult, control: str, reference: OnlineEstimate, offline: OfflineEstimates | None, z: float
) -> ArmResult:
    """`result` with its difference from the control's reward and its offline estimate (found by
    arm name, else by its most served model version) beside its online value."""
    served = next(iter(result.model_versions), None)
    found = offline.find(result.arm, served) if offline else None
    return replace(
        result,
        difference=None if result.arm == control else difference(result.reward, reference),
        offline=compare_offline(result.reward, found, z) if found else None,
    )
