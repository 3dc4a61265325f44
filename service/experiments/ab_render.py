"""The A/B report as text: the command's summary lines, report.md and its plot."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.figure import Figure

from service.experiments.ab_estimates import OnlineEstimate
from service.experiments.ab_report import ABReport

REPORT_NAME = "report.md"
PLOT_NAME = "ab_report.png"


def summary_lines(report: ABReport) -> list[str]:
    """What `shelfbandit ab-report` prints before its JSON line."""
    lines = [f"{report.n_sessions} sessions; control arm {report.control}; {report.level:.0%} intervals, listeners as units"]
    for r in report.arms:
        e = r.reward
        line = f"  {r.arm:<14} {r.n_sessions:>7} sessions  reward/session {e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}]"
        if r.difference is not None:
            d = r.difference
            line += f"  vs {report.control} {d.value:+.4f} [{d.lower:+.4f}, {d.upper:+.4f}]"
        lines.append(line)
        if r.offline is not None:
            o = r.offline
            lines.append(f"  {'':<14} offline {o.offline.value:.4f} [{o.offline.lower:.4f}, {o.offline.upper:.4f}] "
                         f"({o.offline.estimator}): online {'inside' if o.inside else 'outside'}, difference {o.difference:+.4f}")
        if r.agreement is not None:
            lines.append(f"  {'':<14} apprentice agreement {r.agreement.value:.1%} [{r.agreement.lower:.1%}, {r.agreement.upper:.1%}]")
    return lines


def write_report(out_dir: str | Path, report: ABReport, *, data_dir: str | Path) -> Path:
    """Write report.md and ab_report.png into `out_dir`; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / PLOT_NAME, report)
    lines = [*_overview(report, data_dir), *_online_table(report), *_offline_table(report), *_agreement_table(report),
             "", f"![arms]({PLOT_NAME})", ""]
    path = out / REPORT_NAME
    path.write_text("\n".join(lines))
    return path


def _interval(e: OnlineEstimate) -> str:
    return f"{e.value:.4g} [{e.lower:.4g}, {e.upper:.4g}]" if math.isfinite(e.lower) else f"{e.value:.4g}"


def _overview(report: ABReport, data_dir: str | Path) -> list[str]:
    since = "all joined sessions" if report.since is None else datetime.fromtimestamp(report.since, UTC).isoformat()
    return [
        f"# A/B report for {data_dir}", "",
        f"- sessions: {report.n_sessions} ({since})",
        f"- control arm: {report.control}",
        f"- reward per session: the sum of the slots' rewards; {report.level:.0%} normal intervals with listeners as "
        "the independent units (arms are assigned per listener); differences between arms as independent samples",
    ]


def _online_table(report: ABReport) -> list[str]:
    lines = [
        "", "## Online results", "",
        f"| arm | modes | sessions | listeners | reward per session | {report.control} difference | served versions |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.arms:
        versions = ", ".join(f"{v} ({n})" for v, n in list(r.model_versions.items())[:3])
        difference = "control" if r.difference is None else _interval(r.difference)
        lines.append(f"| {r.arm} | {', '.join(r.modes)} | {r.n_sessions} | {r.n_listeners} | {_interval(r.reward)} | {difference} | {versions} |")
    return lines


def _offline_table(report: ABReport) -> list[str]:
    lines = ["", "## Offline estimate before launch against the online result", "",
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
    return lines


def _agreement_table(report: ABReport) -> list[str]:
    apprentices = [r for r in report.arms if r.agreement is not None]
    if not apprentices:
        return []
    lines = ["", "## Apprentice agreement", "",
             "Share of slots where the compared model's top choice (given the editorial shelves above) was the editorial shelf.", "",
             "| arm | agreement | per slot |", "| --- | --- | --- |"]
    for r in apprentices:
        lines.append(f"| {r.arm} | {_interval(r.agreement)} | {', '.join(f'{v:.2f}' for v in r.agreement.per_slot)} |")
    return lines


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
