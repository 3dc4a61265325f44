"""`shelfbandit arms` (show, set, clear, record-estimate) and `shelfbandit ab-report`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from service.layout import DEFAULT_DATA_DIR

DATA_DIR_HELP = f"Data directory of the service.  [default: ./{DEFAULT_DATA_DIR}]"


def _data_dir_option(function):
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP
    )(function)


@click.group()
def arms() -> None:
    """The A/B arms of a data directory (arms.json): every worker of the service picks a change
    up within `model_poll_s`, without a restart. See docs/experiments.md."""


@arms.command("show")
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON configuration.")
def show(data_dir: Path, as_json: bool) -> None:
    """Print the arms configuration (the single `main` arm when there is no arms.json)."""
    from service.experiments.arms import ArmsConfig, ArmsFile

    config = ArmsFile(data_dir).read()
    source = "default" if config is None else "file"
    config = config or ArmsConfig.default()
    if not as_json:
        click.echo(f"arms ({source}, salt {config.salt!r}):")
        for arm in config.arms:
            click.echo(f"  {arm.name:<16} {arm.share:6.1%}  {arm.mode:<12} {arm.policy}")
    click.echo(json.dumps({"source": source, **config.to_dict()}))


@arms.command("set")
@_data_dir_option
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def set_arms(data_dir: Path, config_file: Path) -> None:
    """Check CONFIG_FILE (JSON: {"salt", "arms": [{"name", "share", "policy", "mode"}]}), load
    and probe the model versions it pins, then replace arms.json atomically."""
    from service.experiments.arms import ArmsConfig, ArmsFile
    from service.experiments.live import load_pinned
    from service.layout import DataPaths
    from service.models.store import ModelStore

    config = ArmsConfig.from_json(config_file.read_bytes())
    load_pinned(ModelStore(DataPaths(data_dir).models), config)
    ArmsFile(data_dir).write(config)
    click.echo(f"arms set: {', '.join(f'{a.name} {a.share:.1%} {a.mode} {a.policy}' for a in config.arms)}")


@arms.command("clear")
@_data_dir_option
def clear(data_dir: Path) -> None:
    """Remove arms.json: the service goes back to one arm, `main`, serving the active model online."""
    from service.experiments.arms import ArmsFile

    removed = ArmsFile(data_dir).clear()
    click.echo("arms cleared" if removed else "there was no arms configuration")


@arms.command("record-estimate")
@_data_dir_option
@click.option("--arm", default=None, help="The arm the estimate belongs to.")
@click.option("--version", "version", default=None, help="The model version the estimate belongs to.")
@click.option("--estimator", default=None, help="Which estimator of the evaluation to keep.  [default: the gate's primary]")
@click.argument("evaluation_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def record_estimate(data_dir: Path, arm: str | None, version: str | None, estimator: str | None, evaluation_file: Path) -> None:
    """Record an offline estimate from before launch (the output of `shelfbandit evaluate --json`,
    whose last line is read) in offline_estimates.json, for `ab-report` to put beside the arm's
    online result."""
    from bandit.errors import ValidationError
    from service.experiments.offline_estimates import estimate_from_evaluation, record_offline_estimate

    lines = [line for line in evaluation_file.read_text().splitlines() if line.strip()]
    try:
        output = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError as err:
        raise ValidationError(str(evaluation_file), f"its last line must be the JSON of `shelfbandit evaluate --json` ({err})") from None
    if not isinstance(output, dict):
        raise ValidationError(str(evaluation_file), "its last line must be the JSON object of `shelfbandit evaluate --json`")
    estimate = estimate_from_evaluation(output, estimator=estimator)
    path = record_offline_estimate(data_dir, estimate, arm=arm, version=version)
    click.echo(f"recorded {estimate.estimator} {estimate.value:.4g} [{estimate.lower:.4g}, {estimate.upper:.4g}] in {path}")


@click.command("ab-report")
@_data_dir_option
@click.option("--since", default=None, help="Only sessions from then on: epoch seconds, an ISO-8601 time, or a duration back from now (24h, 7d).")
@click.option("--control", default=None, help="The arm the others are compared with.  [default: the first arm]")
@click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95, show_default=True, help="Interval level.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Write report.md and ab_report.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
def ab_report(data_dir: Path, since: str | None, control: str | None, level: float, out: Path | None, as_json: bool) -> None:
    """Compare the arms' online reward per session (the sum over slots) from the joined log:
    intervals with listeners as the units, each arm's difference from the control arm, apprentice
    agreement, and each arm's offline estimate from before launch beside its online result."""
    from tqdm import tqdm

    from service.experiments.ab_input import arm_order, parse_since, read_slates
    from service.experiments.ab_render import summary_lines, write_report
    from service.experiments.ab_report import ab_report as make_report
    from service.experiments.offline_estimates import OfflineEstimates
    from service.join.reader import JoinedLog

    with tqdm(total=len(JoinedLog(data_dir).parts()), unit="part", desc="reading joined parts", disable=as_json, leave=False) as bar:
        slates = read_slates(data_dir, progress=bar.update)
    offline = OfflineEstimates(data_dir)
    report = make_report(
        slates,
        control=control,
        order=arm_order(data_dir, list(dict.fromkeys(slates["arm"].astype(str)))),
        level=level,
        since=None if since is None else parse_since(since),
        offline=offline,
    )
    result = report.to_dict()
    if out is not None:
        result["report"] = str(write_report(out, report, data_dir=data_dir))
    if offline.unreadable_records:
        result["unreadable_training_records"] = offline.unreadable_records
    if not as_json:
        for line in summary_lines(report):
            click.echo(line)
    click.echo(json.dumps(result))

