"""`shelfbandit demo`: the whole loop on local disk and a local Ray, driven by simulated listeners.

It starts the decision service (`shelfbandit serve` on 127.0.0.1, a fresh data directory) and
the training loop (one Ray actor per candidate configuration, the model store), then plays the
simulator's listeners against the HTTP API at a steady rate: every session is a real
`POST /v1/rank`, every stream a real `POST /v1/reward`. The service logs and joins; the
champion learns every joined event and its latest model is published every few seconds after
its checks; challengers replace the champion only on launch-gate evidence; the service
hot-swaps. Everything runs on the product's defaults except the reward window, the rate and
the publish interval. The simulator knows the truth, so the report shows the true reward of
what was served beside a plain learner on the same sessions (simulator.peer), the editorial
order, uniform random and the oracle. Everything it started is stopped at the end, also on
Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd
from tqdm import tqdm

from bandit.errors import ShelfBanditError, ValidationError
from service.layout import DataPaths
from service.local import LocalService
from service.models.store import ModelStore
from service.training.loop import RoundReport, TrainingLoop
from service.training.publishing import PublishSettings
from shelfbandit.demo_report import DemoTruth, write_report
from simulator.http_driver import DriverConfig, drive
from simulator.peer import run_peer_learner
from simulator.world import RequestBatch, World, WorldConfig

MARKER = ".shelfbandit-demo"
GATE_MODELS = "gate-models"  # beside the data directory: copies of the models the gate compared
CHUNK_S = 2.0  # seconds of listeners per drive call
MAX_SLOWDOWN = 2.0  # the listeners stop once they run this many times longer than planned (+ 60 s)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How long and how fast the listeners come, the reward window and the publish interval
    (the only settings of the loop that differ from the product's defaults)."""

    sessions: int = 6000
    rate: float = 40.0  # sessions per second
    reward_window_s: float = 5.0
    publish_interval_s: float = 5.0
    num_cpus: int = 2
    concurrency: int = 4
    seed: int = 7
    tail_share: float = 0.2

    def __post_init__(self) -> None:
        if self.sessions < 50:
            raise ValidationError("sessions", "must be at least 50", self.sessions)
        for name in ("rate", "reward_window_s", "publish_interval_s"):
            if not getattr(self, name) > 0:
                raise ValidationError(name, "must be > 0", getattr(self, name))
        if self.num_cpus < 1 or self.concurrency < 1:
            raise ValidationError("num_cpus/concurrency", "must be at least 1")
        if not 0.0 < self.tail_share <= 1.0:
            raise ValidationError("tail_share", "must lie in (0, 1]", self.tail_share)


@dataclass(frozen=True, slots=True, eq=False)
class LoopRun:
    """What the listeners were served: per-session metrics of the HTTP driver (`session` indexes
    the requests), (first session, wall-clock start) of every chunk of sessions, and the initial
    model's version."""

    sessions: pd.DataFrame
    chunk_times: list[tuple[int, float]]
    initial_version: str | None


def _fresh_data_dir(out: Path) -> Path:
    """`out/data`, emptied if an earlier demo made it; refuse to clear anything else."""
    data_dir = out / "data"
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (out / MARKER).exists():
            raise ValidationError("--out", "holds a data directory the demo did not create; choose another", str(out))
        shutil.rmtree(data_dir)
    shutil.rmtree(out / GATE_MODELS, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by shelfbandit demo\n")
    return data_dir


class _Trainer(threading.Thread):
    """The training loop with its default candidates and gate in a thread of its own (Ray
    started there lives as long as it). With `keep`, the models each gate decision compared are
    copied there after the round (the trainers delete their older checkpoints), for the report."""

    def __init__(self, data_dir: Path, config: DemoConfig, keep: ModelStore | None = None) -> None:
        super().__init__(name="demo-trainer", daemon=True)
        self.loop = TrainingLoop(data_dir, publish=PublishSettings(interval_s=config.publish_interval_s),
                                 num_cpus=config.num_cpus, seed=config.seed)
        self.keep = keep
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.rounds = 0

    def run(self) -> None:
        try:
            with self.loop:
                self.ready.set()
                self.loop.run(self.stop_event, on_round=self._after_round)
        except BaseException as err:  # reported by the main thread
            self.error = err
        finally:
            self.ready.set()

    def _after_round(self, report: RoundReport) -> None:
        self.rounds += 1
        if self.keep is None:
            return
        judged = {r[key] for r in report.gates for key in ("candidate_version", "champion_version")}
        for status in report.statuses:
            if status["model"] and status["model_version"] in judged:
                with contextlib.suppress(ShelfBanditError, OSError):  # the report then shows no true value for this model
                    self.keep.publish_file(status["model"])

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=120)


def run_loop(data_dir: Path, world: World, requests: RequestBatch, config: DemoConfig, rng: np.random.Generator, *,
             on_start: Callable[[str | None], object] | None = None, keep_gate_models: Path | None = None,
             quiet: bool = False) -> LoopRun:
    """The service and the trainer on `data_dir`, and the world's listeners playing `requests`
    at `config.rate` over HTTP; `on_start(initial version)` runs once the service is ready,
    before any listener; `keep_gate_models`: a model store for copies of the models the gate
    compared. Stops both, also on error; listeners stop early only if the run falls
    MAX_SLOWDOWN times behind its plan."""
    service = LocalService(data_dir, {"reward_window_s": config.reward_window_s, "access_log": False,
                                      "log_level": "warning"})
    trainer = _Trainer(data_dir, config, ModelStore(keep_gate_models) if keep_gate_models else None)
    chunk = max(1, round(config.rate * CHUNK_S))
    frames, chunk_times = [], []
    deadline = time.monotonic() + MAX_SLOWDOWN * config.sessions / config.rate + 60.0
    try:
        service.start()
        active = ModelStore(DataPaths(data_dir).models).active()
        initial = active.version if active else None
        if on_start is not None:
            on_start(initial)
        trainer.start()
        trainer.ready.wait(timeout=120)
        if trainer.error is not None:
            raise trainer.error
        with tqdm(total=config.sessions, desc="listener sessions", unit="session", disable=quiet,
                  mininterval=1.0, dynamic_ncols=True) as bar:
            for start in range(0, config.sessions, chunk):
                if time.monotonic() > deadline:
                    click.echo(f"listeners stopped after {start} sessions: the loop fell {MAX_SLOWDOWN:g}x behind", err=True)
                    break
                began, began_wall = time.monotonic(), time.time()
                block = np.arange(start, min(start + chunk, config.sessions))
                result = drive(service.url, world, requests[block], rng,
                               DriverConfig(concurrency=config.concurrency, max_seconds=60.0))
                frames.append(result.metrics.assign(session=block[result.metrics["session"].to_numpy()]))
                chunk_times.append((int(block[0]), began_wall))
                bar.update(len(block))
                bar.set_postfix_str(f"trainer rounds {trainer.rounds}", refresh=False)
                if trainer.error is not None:
                    raise trainer.error
                time.sleep(max(0.0, len(block) / config.rate - (time.monotonic() - began)))
    finally:
        try:
            trainer.stop()
        finally:
            service.stop()
    if trainer.error is not None:
        raise trainer.error
    if trainer.is_alive():
        raise ShelfBanditError("the trainer did not stop within 120 s")
    return LoopRun(pd.concat(frames, ignore_index=True).sort_values("session", ignore_index=True), chunk_times, initial)


def run_demo(config: DemoConfig, out: Path, *, quiet: bool = False) -> dict:
    """Run the loop and the plain learner on the same sessions; write the report into `out`;
    return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    data_dir = _fresh_data_dir(out)
    world = World(WorldConfig.default(), np.random.default_rng(config.seed))
    requests = world.draw_requests(config.sessions, np.random.default_rng(config.seed + 1))
    truth = DemoTruth(world, requests, np.random.default_rng(config.seed + 3), kept=out / GATE_MODELS)
    # the initial model is valued now: the store prunes old versions while the loop runs
    run = run_loop(data_dir, world, requests, config, np.random.default_rng(config.seed + 2),
                   on_start=lambda version: truth.model(data_dir, version), keep_gate_models=out / GATE_MODELS,
                   quiet=quiet)
    if not quiet:
        click.echo("the plain learner on the same sessions ...")
    peer = run_peer_learner(world, requests, np.random.default_rng(config.seed + 4))
    summary = write_report(out, data_dir, truth, run, peer, config.tail_share, quiet=quiet)
    summary["config"] = asdict(config)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


DEFAULTS = DemoConfig()
SUMMARY_KEYS = ("policy_reward", "peer_reward", "baseline_reward", "random_reward", "oracle_reward", "gap_closed",
                "peer_gap_closed", "initial_model_reward", "final_model_reward", "published", "publish_refused",
                "promoted", "gate_decisions", "sessions", "report")


@click.command()
@click.option("--sessions", default=DEFAULTS.sessions, show_default=True, help="Listener sessions to play.")
@click.option("--rate", default=DEFAULTS.rate, show_default=True, help="Sessions per second.")
@click.option("--reward-window", "reward_window_s", default=DEFAULTS.reward_window_s, show_default=True,
              help="Seconds after a decision in which rewards count (the service's window).")
@click.option("--publish-interval", "publish_interval_s", default=DEFAULTS.publish_interval_s, show_default=True,
              help="Seconds between publications of the champion's latest model (the product's default is 60).")
@click.option("--num-cpus", default=DEFAULTS.num_cpus, show_default=True, help="CPUs of the local Ray.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, help="Seed of the world, the listeners and the policies.")
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the report, plot and the demo's data directory go.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def demo(sessions: int, rate: float, reward_window_s: float, publish_interval_s: float, num_cpus: int, seed: int,
         out: Path, as_json: bool) -> None:
    """The whole loop end to end on the product's defaults (but the reward window, the rate and
    the publish interval): the decision service, the joiner, Ray trainers whose champion is
    published every few seconds, and simulated listeners over HTTP; ends with the true reward of
    what was served next to a plain learner on the same sessions, the editorial order, uniform
    random and the oracle, and one JSON line."""
    config = DemoConfig(sessions=sessions, rate=rate, reward_window_s=reward_window_s,
                        publish_interval_s=publish_interval_s, num_cpus=num_cpus, seed=seed)
    summary = run_demo(config, out, quiet=as_json)
    click.echo(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))
