"""`shelfbandit evaluate`: estimates with intervals on a log, and the launch gate."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from bandit.errors import ValidationError
from offline_eval.estimators import ALIASES, ESTIMATOR_CLASSES
from offline_eval.evaluate import EstimatorOptions, Evaluation
from offline_eval.evaluate import evaluate as evaluate_target
from offline_eval.gate import GateResult, GateRule, compare
from offline_eval.intervals import METHODS
from offline_eval.readers import read_log
from offline_eval.scoring import resolve_policy


def _estimator_help() -> str:
    lines = [f"  {name:<12} {cls.title}" for name, cls in ESTIMATOR_CLASSES.items()]
    lines += [f"  {alias:<12} same as {name}" for alias, name in ALIASES.items()]
    return "\n".join(lines)


RULE, OPTIONS = GateRule(), EstimatorOptions()

EPILOG = f"""\b
Estimators (--estimators, comma-separated short names):
{_estimator_help()}

\b
Policies (--candidate, --baseline): a saved policy file, 'uniform', 'editorial',
'popularity' (learns as it goes), or vw:CONFIG.json (a RankerConfig as JSON, trained on
the log by progressive validation: each event is scored, then learned).

\b
Verdict (primary estimator, paired difference D = candidate - baseline):
  not enough data  ESS < --min-ess, or support gaps above --max-unsupported, or the mean
                   importance weight outside [1/--weight-band, --weight-band]
  ship             lower end of D's interval > --min-lift
  do not ship      upper end of D's interval < --min-lift
  not enough data  otherwise
"""


def _print_evaluation(evaluation: Evaluation) -> None:
    click.echo(f"{evaluation.target}: {evaluation.n_events} events x {evaluation.n_slots} slots, "
               f"{evaluation.level:.0%} {evaluation.ci} intervals")
    for name, e in evaluation.estimates.items():
        click.echo(f"  {name:<12} {e.value:10.5g}  [{e.lower:.5g}, {e.upper:.5g}]  ESS {e.ess:.1f}")
        for note in e.notes:
            click.echo(f"  {'':<12} {note}")


def _print_gate(result: GateResult) -> None:
    _print_evaluation(result.candidate)
    _print_evaluation(result.baseline)
    click.echo("candidate - baseline:")
    for name, d in result.difference.items():
        click.echo(f"  {name:<12} {d.value:10.5g}  [{d.lower:.5g}, {d.upper:.5g}]")
    click.echo(f"verdict: {result.verdict} ({result.reason})")


@click.command(epilog=EPILOG)
@click.option("--log", "log_path", required=True, type=click.Path(),
              help="Slate table (.parquet, .csv), a directory (or s3://... prefix) of slate-table Parquet parts, "
                   "or a joined DSJSON decision log (.jsonl, .json, .dsjson).")
@click.option("--estimators", default=None, help="Comma-separated short names (default: all the inputs support).")
@click.option("--ci", type=click.Choice(METHODS), default="bootstrap", show_default=True, help="Interval method.")
@click.option("--level", type=float, default=0.95, show_default=True, help="Interval level.")
@click.option("--resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--candidate", default=None, help="Policy to evaluate on the log (needs a DSJSON log).")
@click.option("--baseline", default=None, help="Policy to compare against: runs the launch gate.")
@click.option("--warmup", type=int, default=0, show_default=True,
              help="Events learned before progressive validation starts scoring (both policies skip them).")
@click.option("--primary", default=RULE.primary, show_default=True, help="Estimator the verdict uses.")
@click.option("--min-lift", type=float, default=RULE.min_lift, show_default=True, help="Smallest gain worth shipping.")
@click.option("--min-ess", type=float, default=RULE.min_ess, show_default=True, help="Smallest effective sample size.")
@click.option("--max-unsupported", type=float, default=RULE.max_unsupported, show_default=True,
              help="Largest share of events with shelves the logger could not show.")
@click.option("--weight-band", type=float, default=RULE.weight_band, show_default=True,
              help="The primary's mean importance weight must lie in [1/band, band] (1 when the log covers the policy).")
@click.option("--clip", type=float, default=OPTIONS.clip, show_default=True, help="Weight clip M of clipped_ips.")
@click.option("--switch-threshold", type=float, default=OPTIONS.switch_threshold, show_default=True,
              help="Weight threshold tau of switch_dr.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of cross-fitting folds and bootstrap.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for report.md and estimates.png.")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="Evaluate a directory of Parquet parts on this Ray cluster, one task per part (same results).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Evaluate a directory of Parquet parts on a local Ray with this many CPUs (same results).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def evaluate(log_path: str, estimators: str | None, ci: str, level: float, resamples: int, candidate: str | None,
             baseline: str | None, warmup: int, primary: str, min_lift: float, min_ess: float, max_unsupported: float,
             weight_band: float, clip: float, switch_threshold: float, seed: int, out_dir: str | None,
             ray_address: str | None, workers: int | None, as_json: bool) -> None:
    """Estimate a policy's value from a log with confidence intervals, or run the launch gate
    (--candidate C --baseline B): is C better than B, and how sure are we?

    On a slate table with target_prob/target_marginal columns, evaluates that target; a directory
    of slate-table Parquet parts is read as one dataset, or with --workers N / --ray-address
    evaluated part by part on Ray tasks, with the same estimates and, for a seed, the same
    intervals. On a joined DSJSON log, scores --candidate (and --baseline) on the logged events
    first. The value is the expected reward summed over the slots; per-slot values are reported too.
    """
    rng = np.random.default_rng(seed)
    options = EstimatorOptions(clip=clip, switch_threshold=switch_threshold)
    interval_args = {"ci": ci, "level": level, "n_resamples": resamples, "options": options}
    if baseline is not None and candidate is None:
        raise ValidationError("--baseline", "needs --candidate (the gate compares a candidate with a baseline)")
    if ray_address is not None or workers is not None:
        result = _evaluate_on_ray(log_path, estimators, rng, interval_args, candidate, warmup, ray_address, workers)
        _finish(result, out_dir, log_path, {"target": "the log's target columns"}, as_json)
        return
    loaded = read_log(log_path, progress=not as_json)
    if candidate is None:
        if warmup:
            raise ValidationError("--warmup", "applies only when scoring a policy (--candidate)")
        if loaded.target is None:
            raise ValidationError("--log", "has no target_prob/target_marginal columns; pass --candidate to score a policy")
        labels = {"target": "the log's target columns"}
        result: GateResult | Evaluation = evaluate_target(loaded.log, loaded.target, estimators, rng=rng, **interval_args)
    else:
        if loaded.batch is None:
            raise ValidationError("--candidate", "scoring a policy needs a joined DSJSON log (contexts and shelves), not a slate table")
        specs = {"candidate": resolve_policy(candidate)}
        if baseline is not None:
            specs["baseline"] = resolve_policy(baseline)
        if warmup and not any(spec.progressive for spec in specs.values()):
            raise ValidationError("--warmup", "applies only to progressive validation (vw:CONFIG.json or popularity)")
        labels = {who: spec.label for who, spec in specs.items()}
        targets = {who: spec.score(loaded.batch, warmup=warmup, name=who, progress=not as_json) for who, spec in specs.items()}
        evaluated = loaded.log.subset(slice(warmup, None))
        if baseline is None:
            result = evaluate_target(evaluated, targets["candidate"], estimators, rng=rng, **interval_args)
        else:
            rule = GateRule(primary=primary, min_lift=min_lift, min_ess=min_ess, max_unsupported=max_unsupported,
                            weight_band=weight_band)
            result = compare(evaluated, targets["candidate"], targets["baseline"], rng=rng, estimators=estimators,
                             rule=rule, **interval_args)
    _finish(result, out_dir, log_path, labels, as_json)


def _evaluate_on_ray(log_path: str, estimators: str | None, rng: np.random.Generator, interval_args: dict,
                     candidate: str | None, warmup: int, ray_address: str | None, workers: int | None) -> Evaluation:
    """The target columns of a directory of Parquet parts, shard by shard on Ray."""
    from offline_eval.sharded import evaluate_parts, ray_session  # Ray loads only when asked for

    flag = "--ray-address" if ray_address is not None else "--workers"
    if ray_address is not None and workers is not None:
        raise ValidationError("--workers", "starts a local Ray; on a cluster (--ray-address) its CPUs are the workers")
    if candidate is not None or warmup:
        raise ValidationError(flag, "evaluates a slate table's target columns; scoring a policy (--candidate) runs in one process")
    if "://" not in log_path and not Path(log_path).is_dir():
        if not Path(log_path).exists():
            raise ValidationError("log", "file does not exist", log_path)
        raise ValidationError(flag, "needs a directory of slate-table Parquet parts (one Ray task per part)", log_path)
    with ray_session(ray_address, workers):
        return evaluate_parts(log_path, estimators, rng=rng, **interval_args)


def _finish(result: GateResult | Evaluation, out_dir: str | None, log_path: str, labels: dict[str, str], as_json: bool) -> None:
    report = None
    if out_dir is not None:
        from offline_eval.report import write_report  # matplotlib loads only when a report is asked for

        report = write_report(out_dir, result, log_name=Path(log_path).name, labels=labels)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "report": None if report is None else str(report)}))
        return
    if isinstance(result, GateResult):
        _print_gate(result)
    else:
        _print_evaluation(result)
    if report is not None:
        click.echo(f"report: {report}")
