"""Markdown report with a PNG plot for an evaluation or a launch-gate comparison."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from offline_eval.evaluate import EstimatorResult, Evaluation
from offline_eval.gate import GateResult

PLOT_NAME = "estimates.png"
REPORT_NAME = "report.md"


def _interval(low: float, high: float) -> str:
    return f"[{low:.4g}, {high:.4g}]"


def _error_bars(axis, rows: list[tuple[str, float, float, float]], color: str, offset: float, label: str) -> None:
    positions = [i + offset for i in range(len(rows))]
    values = [r[1] for r in rows]
    low = [r[1] - r[2] for r in rows]
    high = [r[3] - r[1] for r in rows]
    axis.errorbar(values, positions, xerr=[low, high], fmt="o", color=color, capsize=3, label=label)


def _estimate_rows(evaluation: Evaluation) -> list[tuple[str, float, float, float]]:
    return [(name, e.value, e.lower, e.upper) for name, e in evaluation.estimates.items()]


def plot(path: Path, result: GateResult | Evaluation) -> None:
    """Values with intervals per estimator (and, for a comparison, the paired difference)."""
    evaluation = result.candidate if isinstance(result, GateResult) else result
    names = list(evaluation.estimates)
    panels = 2 if isinstance(result, GateResult) else 1
    figure = Figure(figsize=(5.5 * panels, 0.5 * len(names) + 1.8))
    axes = figure.subplots(1, panels, squeeze=False)
    left = axes[0][0]
    if isinstance(result, GateResult):
        _error_bars(left, _estimate_rows(result.candidate), "tab:blue", -0.15, "candidate")
        _error_bars(left, _estimate_rows(result.baseline), "tab:gray", 0.15, "baseline")
        left.legend(loc="best", fontsize=8)
        right = axes[0][1]
        rows = [(n, d.value, d.lower, d.upper) for n, d in result.difference.items()]
        _error_bars(right, rows, "tab:green", 0.0, "candidate - baseline")
        right.axvline(result.rule.min_lift, color="tab:red", linestyle="--", linewidth=1, label="min_lift")
        right.set_yticks(range(len(names)), names)
        right.invert_yaxis()
        right.set_title(f"candidate - baseline: {result.verdict}", fontsize=10)
        right.legend(loc="best", fontsize=8)
    else:
        _error_bars(left, _estimate_rows(result), "tab:blue", 0.0, result.target)
    left.set_yticks(range(len(names)), names)
    left.invert_yaxis()
    left.set_title(f"value per event, {evaluation.level:.0%} {evaluation.ci} intervals", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _estimate_table(evaluation: Evaluation) -> list[str]:
    lines = [
        "| estimator | value | interval | per slot | ESS | max weight | events with support gaps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in evaluation.estimates.items():
        per_slot = ", ".join(f"{v:.4g}" for v in e.per_slot)
        max_weight = "-" if e.max_weight is None else f"{e.max_weight:.3g}"
        gaps = "unknown" if e.unsupported_share is None else f"{e.unsupported_share:.1%}"
        lines.append(
            f"| {name} | {e.value:.4g} | {_interval(e.lower, e.upper)} | {per_slot} | {e.ess:.1f} | {max_weight} | {gaps} |"
        )
    return lines


def _notes(estimates: dict[str, EstimatorResult]) -> list[str]:
    lines = []
    for name, e in estimates.items():
        lines.append(f"- **{name}**: {e.assumption}")
        lines.extend(f"  - {note}" for note in e.notes)
    return lines


def write_report(out_dir: str | Path, result: GateResult | Evaluation, *, log_name: str, labels: dict[str, str]) -> Path:
    """Write report.md and estimates.png into `out_dir`; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / PLOT_NAME, result)
    evaluation = result.candidate if isinstance(result, GateResult) else result
    lines = [f"# Offline evaluation of {log_name}", ""]
    lines += [f"- {who}: {label}" for who, label in labels.items()]
    lines += [
        f"- events: {evaluation.n_events}, slots: {evaluation.n_slots}",
        f"- intervals: {evaluation.level:.0%} {evaluation.ci}",
        "- value: expected reward summed over the slots, per event",
        "",
    ]
    if isinstance(result, GateResult):
        rule = result.rule
        lines += [
            f"## Verdict: {result.verdict}",
            "",
            f"{result.reason} (primary estimator `{rule.primary}`, min_lift {rule.min_lift:g}, "
            f"min_ess {rule.min_ess:g}, max_unsupported {rule.max_unsupported:.1%}).",
            "",
            "## Candidate - baseline (paired over events)",
            "",
            "| estimator | difference | interval |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {n} | {d.value:.4g} | {_interval(d.lower, d.upper)} |" for n, d in result.difference.items()]
        lines += ["", "## Candidate", "", *_estimate_table(result.candidate), "", "## Baseline", "", *_estimate_table(result.baseline)]
    else:
        lines += ["## Estimates", "", *_estimate_table(result)]
    lines += ["", f"![estimates]({PLOT_NAME})", "", "## Assumptions and checks", "", *_notes(evaluation.estimates), ""]
    path = out / REPORT_NAME
    path.write_text("\n".join(lines))
    return path
