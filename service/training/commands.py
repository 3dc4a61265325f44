"""`shelfbandit train`: candidates learn the joined log on Ray; the champion is published on a
timer; the launch gate changes the champion's configuration."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from service.layout import DEFAULT_DATA_DIR
from service.training.judge import DEFAULT_ESTIMATOR, SCORED_ESTIMATORS, GateSettings
from service.training.loop import FOLLOW_INTERVAL_S
from service.training.publishing import PublishSettings

GATE_DEFAULTS = GateSettings()
PUBLISH_DEFAULTS = PublishSettings()


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR, show_default=True,
              help="Data directory of the service (joined log, model store); training state goes to <data-dir>/training.")
@click.option("--follow", is_flag=True, help="Keep training beside the service as new parts are joined (Ctrl-C stops).")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False, path_type=Path),
              help='JSON list of candidates: [{"name": "greedy", "explorer": "epsilon", "epsilon": 0.02}, ...] '
                  '(RankerConfig fields). [default: three built-in]')
@click.option("--ray-address", help="Join this Ray cluster (the data directory must be visible to its nodes). [default: start a local Ray]")
@click.option("--num-cpus", type=click.IntRange(min=1), default=2, show_default=True, help="CPUs of the local Ray.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=FOLLOW_INTERVAL_S, show_default=True,
              help="With --follow: seconds between polls for new parts once caught up.")
@click.option("--publish-interval", "publish_interval_s", type=click.FloatRange(min=0, min_open=True),
              default=PUBLISH_DEFAULTS.interval_s, show_default=True,
              help="Seconds between publications of the champion's latest model (after its checks and the guardrail).")
@click.option("--max-regression", type=click.FloatRange(min=0), default=PUBLISH_DEFAULTS.max_regression, show_default=True,
              help="Guardrail: refuse a snapshot when the upper end of its difference to the served model, on the events "
                   "that model served, lies below -this x the served value.")
@click.option("--keep-versions", type=click.IntRange(min=2), default=PUBLISH_DEFAULTS.keep_versions, show_default=True,
              help="Published versions the model store keeps for rollback (the active, previous and arms' ones always stay).")
@click.option("--min-events", type=click.IntRange(min=1), default=GATE_DEFAULTS.min_events, show_default=True,
              help="Learnable events a challenger and the champion must both have scored before the gate judges the challenger.")
@click.option("--min-lift", type=float, default=0.0, show_default=True,
              help="A challenger becomes the champion only when the lower end of the difference interval is above this.")
@click.option("--estimator", type=click.Choice(SCORED_ESTIMATORS), default=DEFAULT_ESTIMATOR, show_default=True,
              help="The gate's and the guardrail's primary estimator (rips/snips_rips make no assumption on how slots "
                   "interact but their effective sample collapses on long pages; see docs/training.md).")
@click.option("--min-ess", type=click.FloatRange(min=0), default=GATE_DEFAULTS.rule.min_ess, show_default=True,
              help="Judge only when the primary estimator's effective sample size reaches this (worst slot).")
@click.option("--max-events-per-round", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Events each candidate trains per round at most (whole parts), before the gate is asked.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the gate's bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def train(data_dir, follow, candidates_file, ray_address, num_cpus, interval_s, publish_interval_s, max_regression,
          keep_versions, min_events, min_lift, estimator, min_ess, max_events_per_round, seed, as_json) -> None:
    """Train candidate rankers (one Ray worker each) on the joined log with progressive
    validation. The champion (the first candidate until the gate picks another) learns every
    joined event and its latest model is published and activated every --publish-interval
    seconds, once it loads, ranks a canary request validly and is not shown worse than the
    served model; an operator's activation pins the served version until POST /v1/model/resume.
    The other candidates are challengers: one replaces the champion's configuration only when
    the launch gate ships it on the recent learnable events. Records go to
    <data-dir>/training/records.jsonl."""
    from tqdm import tqdm

    from offline_eval.gate import GateRule
    from service.training.candidates import DEFAULT_CANDIDATES, read_candidates
    from service.training.loop import RoundReport, TrainingLoop
    from service.training.records import records_path

    candidates = read_candidates(candidates_file) if candidates_file else DEFAULT_CANDIDATES
    rule = GateRule(primary=estimator, min_lift=min_lift, min_ess=min_ess)
    gate = GateSettings(min_events=min_events, window_events=max(GATE_DEFAULTS.window_events, min_events),
                        every_events=min(GATE_DEFAULTS.every_events, min_events), rule=rule)
    publish = PublishSettings(interval_s=publish_interval_s, max_regression=max_regression, keep_versions=keep_versions)
    loop = TrainingLoop(data_dir, candidates, gate=gate, publish=publish, ray_address=ray_address, num_cpus=num_cpus,
                        max_events_per_round=max_events_per_round, seed=seed)
    totals = {"rounds": 0, "events_trained": 0, "gates": 0, "refused": 0, "promoted": [], "published": [],
              "publish_refused": 0, "workers_lost": 0, "waiting": {}}
    stop = threading.Event()
    with loop, tqdm(total=loop.pending_events(), unit=" events", desc="training", disable=as_json, mininterval=0.5) as bar:

        def report(done: RoundReport) -> None:
            totals["rounds"] += 1
            totals["events_trained"] += done.n_events
            totals["gates"] += len(done.gates)
            totals["workers_lost"] += len(done.lost)
            totals["refused"] += len(done.refused)
            totals["publish_refused"] += len(done.publish_refused)
            totals["waiting"] = done.waiting
            if done.promoted:
                totals["promoted"].append(done.promoted)
            if done.published:
                totals["published"].append(done.published)
            bar.total = bar.n + done.n_events + loop.pending_events()
            bar.update(done.n_events)
            if not as_json:
                for gate_record in done.gates:
                    difference = gate_record["difference"]
                    bar.write(f"{gate_record['candidate']}: {gate_record['verdict']} "
                              f"({gate_record['estimator']} lift {_number(difference['value'])} "
                              f"[{_number(difference['lower'])}, {_number(difference['upper'])}] on {gate_record['n_events']} events)")
                if done.promoted:
                    bar.write(f"{done.promoted} is the champion now")
                for record in done.publications:
                    if record["record"] == "published":
                        bar.write(f"published and activated {record['version']} ({record['candidate']}, "
                                  f"{record['events_trained']} events trained)")
                    else:
                        bar.write(f"refused to publish {record['candidate_version']}: {record['check']}: {record['reason']}")

        def request_stop(*_) -> None:
            if stop.is_set():  # a second Ctrl-C: stop now (every committed step is kept)
                raise KeyboardInterrupt
            stop.set()

        if follow:
            previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                loop.run(stop, interval_s, report)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        else:
            loop.backfill(report)
        statuses = loop.statuses
        active = loop.store.active()
    summary = {
        "data_dir": str(loop.data_dir),
        **totals,
        "champion": loop.champion,
        "active_version": active.version if active else None,
        "pinned": bool(active and active.pinned),
        "candidates": [{k: s[k] for k in ("candidate", "events_trained", "next_part", "model_version")} for s in statuses],
        "records": str(records_path(loop.data_dir)),
    }
    if not as_json:
        for status in statuses:
            click.echo(f"{status['candidate']}: {status['events_trained']} events trained, model {status['model_version']}")
        click.echo(f"records in {summary['records']}")
    click.echo(json.dumps(summary))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"
