"""`shelfbandit serve`, `shelfbandit join`, `shelfbandit doctor` and `shelfbandit openapi`."""

from __future__ import annotations

import ipaddress
import json
import logging.config
import os
import shutil
import signal
import threading
from pathlib import Path

import click

from bandit.durable import try_lock
from service.eventlog.segments import DURABILITY_MODES
from service.layout import DEFAULT_DATA_DIR, DataPaths

SETTINGS_HELP = "Settings file (TOML or JSON); the environment (SHELFBANDIT_<FIELD>) and flags override it."


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(settings_file: str | None, **flags):
    from service.settings import Settings

    settings = Settings.load(settings_file, **flags)
    return settings.model_copy(update={"data_dir": settings.data_dir.resolve()})


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help=f"Data directory (logs, joined data, models).  [default: ./{DEFAULT_DATA_DIR}]")
@click.option("--host", help="Interface to bind.  [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port to bind.  [default: 8000]")
@click.option("--workers", type=click.IntRange(1, 64), help="uvicorn worker processes sharing the data directory.  [default: 1]")
@click.option("--replica-id", help="This replica's name, for replicas on several hosts sharing the data directory: its logs "
              "live in <data-dir>/replicas/<replica-id>/ (see docs/service.md).  [default: none, logs in the data directory]")
@click.option("--durability", type=click.Choice(DURABILITY_MODES), help="When a logged line counts as durable (see docs/service.md).  [default: group]")
@click.option("--reward-window", "reward_window_s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds after a decision in which rewards count.  [default: 600]")
@click.option("--no-joiner", is_flag=True, help="Do not run the joiner inside the service (run `shelfbandit join` instead).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level of the JSON logs on stderr.  [default: info]")
@click.option("--settings", "settings_file", type=click.Path(exists=True, dir_okay=False), help=SETTINGS_HELP)
def serve(data_dir, host, port, workers, replica_id, durability, reward_window_s, no_joiner, log_level, settings_file) -> None:
    """Serve the decision API (POST /v1/rank, /v1/reward; GET /v1/model, /metrics; docs at /docs)."""
    import uvicorn

    from service.logs import get_logger, log_config
    from service.ops.worker_status import STATUS_NAME
    from service.settings import SETTINGS_ENV
    from service.workers import run_workers, spreads_connections

    settings = _settings(
        settings_file, data_dir=data_dir, host=host, port=port, workers=workers, replica_id=replica_id, durability=durability,
        reward_window_s=reward_window_s, run_joiner=False if no_joiner else None, log_level=log_level,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _hold_replica(DataPaths(settings.data_dir, settings.replica_id))
    os.environ[SETTINGS_ENV] = settings.to_env()
    if settings.workers > 1:
        # every worker writes its metric values here; /metrics sums them (set before workers import prometheus_client)
        metrics_dir = DataPaths(settings.data_dir, settings.replica_id).run / f"metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if settings.keys_open and not is_loopback(settings.host):
        warning = (f"WARNING: /v1/rank and /v1/reward are open to anyone who reaches {settings.host}:{settings.port}: "
                   "no client key is configured (settings client_keys or client_keys_file, see docs/service.md)")
        logging.config.dictConfig(log_config(settings.log_level))
        get_logger().warning("client endpoints open on a public interface", extra={"fields": {"host": settings.host, "port": settings.port}})
        click.secho(warning, err=True, fg="red", bold=True)
    click.echo(f"serving on http://{settings.host}:{settings.port} (docs at /docs), data in {settings.data_dir}", err=True)
    server = {"app": "service.http.app:app_from_environment", "factory": True, "log_config": log_config(settings.log_level),
              "access_log": False, "timeout_graceful_shutdown": 10}
    run_dir = DataPaths(settings.data_dir, settings.replica_id).run
    if settings.workers > 1 and spreads_connections():  # a listening socket per worker (service/workers.py)
        logging.config.dictConfig(log_config(settings.log_level))
        try:
            run_workers(settings.workers, settings.host, settings.port, server, run_dir)
        except OSError as err:
            raise click.ClickException(f"cannot listen on {settings.host}:{settings.port}: {err.strerror or err}") from None
    else:
        (run_dir / STATUS_NAME).unlink(missing_ok=True)  # an earlier worker manager's: stale now
        uvicorn.run(host=settings.host, port=settings.port, workers=settings.workers, **server)


def _hold_replica(paths: DataPaths) -> None:
    """Take a replica's lock until this process exits (its descriptor is never closed; nothing
    without a replica id): a second replica started with the same id is refused, since its
    segments could collide with the first one's."""
    if paths.replica_id is None:
        return
    paths.logs.root.mkdir(parents=True, exist_ok=True)
    if try_lock(paths.logs.lock) is None:
        raise click.UsageError(f"--replica-id {paths.replica_id}: another replica with this id is serving "
                               f"(it holds {paths.logs.lock}); every replica needs an id of its own")


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help=f"Data directory.  [default: ./{DEFAULT_DATA_DIR}]")
@click.option("--once", is_flag=True, help="Join what is ready now and exit (default: keep joining until interrupted).")
@click.option("--reward-window", "reward_window_s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds after a decision in which rewards count (use the service's value).  [default: 600]")
@click.option("--settings", "settings_file", type=click.Path(exists=True, dir_okay=False), help=SETTINGS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def join(data_dir, once, reward_window_s, settings_file, as_json) -> None:
    """Join decisions with their rewards into joined/ (DSJSON) and slates/ (Parquet), exactly once:
    those of the data directory's own logs and of every replica's in replicas/<id>/."""
    from service.clock import SteadyClock
    from service.join.joiner import Joiner, JoinReport
    from service.serving import join_config

    settings = _settings(settings_file, data_dir=data_dir, reward_window_s=reward_window_s)
    joiner = Joiner(settings.data_dir, join_config(settings), clock=SteadyClock())
    totals = {"parts": 0, "events": 0, "slots": 0, "default_slots": 0, "rejected": 0, "lag_s": 0.0}

    def count(report: JoinReport) -> None:
        totals["parts"] += report.part is not None
        totals["events"] += report.n_events
        totals["slots"] += report.n_slots
        totals["default_slots"] += report.n_default_slots
        totals["rejected"] += report.n_rejected
        totals["lag_s"] = round(report.lag_s, 3)
        if not as_json and report.n_events:
            click.echo(f"part {report.part}: {report.n_events} events, {report.n_default_slots}/{report.n_slots} slots defaulted", err=True)

    if once:
        with joiner:
            while True:
                report = joiner.run_once()
                count(report)
                if not report.more_ready:
                    break
    else:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            joiner.run(stop, settings.join_interval_s, count)
        except KeyboardInterrupt:
            stop.set()
    if not as_json:
        click.echo(f"joined {totals['events']} events in {totals['parts']} part(s); {totals['default_slots']} of "
            f"{totals['slots']} slots got the default reward")
    click.echo(json.dumps(totals))


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help=f"Data directory to check.  [default: ./{DEFAULT_DATA_DIR}]")
@click.option("--replica-id", help="Check this replica's logs (<data-dir>/replicas/<replica-id>/) beside the shared data.  "
              "[default: the data directory's own logs]")
@click.option("--settings", "settings_file", type=click.Path(exists=True, dir_okay=False), help=SETTINGS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON verdict.")
def doctor(data_dir, replica_id, settings_file, as_json) -> None:
    """Check a data directory: torn or unreadable log lines, probabilities outside (0, 1], the
    unjoined backlog, and the model store's active pointer. Exit status 1 if anything is wrong."""
    from tqdm import tqdm

    from service.ops.doctor import PROBLEM, diagnose, findings_json, log_bytes

    settings = _settings(settings_file, data_dir=data_dir, replica_id=replica_id)
    with tqdm(total=log_bytes(settings) if settings.data_dir.is_dir() else 0, unit="B", unit_scale=True,
              desc="reading logs", disable=as_json, leave=False) as bar:
        findings = diagnose(settings, progress=bar.update)
    if not as_json:
        marks = {"ok": "ok     ", "warning": "warning", PROBLEM: "PROBLEM"}
        for finding in findings:
            click.echo(f"{marks[finding.status]}  {finding.check}: {finding.message}")
    verdict = findings_json(findings)
    click.echo(json.dumps(verdict))
    if not verdict["healthy"]:
        raise click.exceptions.Exit(1)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the document here.  [default: stdout]")
def openapi(out) -> None:
    """Write the API document (OpenAPI 3.1, JSON) of the service with the default settings: the
    one in docs/openapi.json, from which clients in other languages are generated."""
    from service.http.app import create_app
    from service.http.openapi import document_text
    from service.settings import Settings

    text = document_text(create_app(Settings()).openapi())
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
