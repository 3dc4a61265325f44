"""`shelfbandit demo`: the whole loop on local disk and a local Ray, driven by simulated listeners.

It starts the decision service (`shelfbandit serve` on 127.0.0.1, a fresh data directory) and
the training loop (one Ray actor per candidate configuration, the launch gate, the model
store), then plays the simulator's listeners against the HTTP API at a steady rate: every
session is a real `POST /v1/rank`, every stream a real `POST /v1/reward`. The service logs and
joins; the trainers learn the joined log and publish a candidate only when the gate says
ship; the service hot-swaps. The simulator knows the truth, so the report shows the true
reward of what was served beside the editorial order, uniform random and the oracle, and each
gate decision's offline estimate beside the candidate's true value. Everything it started is
stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd
from tqdm import tqdm

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from offline_eval.gate import GateRule
from service.local import LocalService
from service.training.candidates import DEFAULT_CANDIDATES, Candidate
from service.training.gate import GateSettings
from service.training.loop import TrainingLoop
from shelfbandit.demo_report import DemoTruth, write_report
from simulator.http_driver import DriverConfig, drive
from simulator.world import World, WorldConfig

MARKER = ".shelfbandit-demo"
GATE_ESTIMATOR = "snips_iips"
MARGINAL_DRAWS = 256


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How long and how fast the demo drives, and how quickly the loop may react."""

    sessions: int = 6000
    rate: float = 40.0  # sessions per second
    reward_window_s: float = 5.0
    min_events: int = 400  # on-policy events a challenger needs before the gate judges it
    num_cpus: int = 2
    concurrency: int = 4
    seed: int = 7
    tail_share: float = 0.2

    def __post_init__(self) -> None:
        if self.sessions < 50:
            raise ValidationError("sessions", "must be at least 50", self.sessions)
        for name in ("rate", "reward_window_s"):
            if not getattr(self, name) > 0:
                raise ValidationError(name, "must be > 0", getattr(self, name))
        if self.num_cpus < 1 or self.concurrency < 1 or self.min_events < 1:
            raise ValidationError("num_cpus/concurrency/min_events", "must be at least 1")


def _fresh_data_dir(out: Path) -> Path:
    """`out/data`, emptied if an earlier demo made it; refuse to clear anything else."""
    data_dir = out / "data"
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (out / MARKER).exists():
            raise ValidationError("--out", "holds a data directory the demo did not create; choose another", str(out))
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by shelfbandit demo\n")
    return data_dir


def demo_candidates() -> tuple[Candidate, ...]:
    """The default candidates, with the Monte Carlo draws of their marginals raised: item-position
    IPS divides by the logged marginals, so a promoted model should log them tightly."""
    return tuple(Candidate(c.name, RankerConfig.from_dict({**c.config.to_dict(), "marginal_draws": MARGINAL_DRAWS}))
                 for c in DEFAULT_CANDIDATES)


class _Trainer(threading.Thread):
    """The training loop in a thread of its own (Ray started there lives as long as it)."""

    def __init__(self, data_dir: Path, config: DemoConfig) -> None:
        super().__init__(name="demo-trainer", daemon=True)
        # The simulated listeners stream by a position-based model (slot k's reward depends only on
        # the shelf there), the assumption of item-position IPS, whose weights stay small where the
        # whole-ordering and prefix weights of 6 slots explode: the gate decides on snips_iips.
        gate = GateSettings(min_events=config.min_events, every_events=config.min_events,
                            window_events=5 * config.min_events, rule=GateRule(primary=GATE_ESTIMATOR))
        self.loop = TrainingLoop(data_dir, demo_candidates(), gate=gate, num_cpus=config.num_cpus, seed=config.seed)
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.rounds = 0

    def run(self) -> None:
        try:
            with self.loop:
                self.ready.set()
                self.loop.run(self.stop_event, interval_s=1.0, on_round=self._count)
        except BaseException as err:  # reported by the main thread
            self.error = err
        finally:
            self.ready.set()

    def _count(self, report) -> None:
        self.rounds += 1

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=120)


def run_demo(config: DemoConfig, out: Path, *, quiet: bool = False) -> dict:
    """Run the loop; write the report into `out`; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    data_dir = _fresh_data_dir(out)
    world = World(WorldConfig.default(), np.random.default_rng(config.seed))
    requests = world.draw_requests(config.sessions, np.random.default_rng(config.seed + 1))
    driver_rng = np.random.default_rng(config.seed + 2)
    service = LocalService(data_dir, {
        "reward_window_s": config.reward_window_s, "join_interval_s": 1.0, "join_grace_s": 1.0,
        "model_poll_s": 0.5, "access_log": False, "log_level": "warning",
        "initial_ranker": {"explorer": "squarecb", "marginal_draws": MARGINAL_DRAWS, "seed": config.seed},
    })
    trainer = _Trainer(data_dir, config)
    chunk = max(1, int(round(config.rate * 2.0)))  # two seconds of listeners per drive
    frames, chunk_times = [], []
    try:
        service.start()
        trainer.start()
        trainer.ready.wait(timeout=120)
        if trainer.error is not None:
            raise trainer.error
        with tqdm(total=config.sessions, desc="listener sessions", unit="session", disable=quiet,
                  mininterval=1.0, dynamic_ncols=True) as bar:
            for start in range(0, config.sessions, chunk):
                began = time.monotonic()
                block = np.arange(start, min(start + chunk, config.sessions))
                result = drive(service.url, world, requests[block], driver_rng,
                               DriverConfig(concurrency=config.concurrency, max_seconds=60.0))
                metrics = result.metrics.assign(session=block[result.metrics["session"].to_numpy()])
                frames.append(metrics)
                chunk_times.append((int(block[0]), time.time()))
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
    sessions = pd.concat(frames, ignore_index=True).sort_values("session")
    truth = DemoTruth(world, requests, np.random.default_rng(config.seed + 3))
    summary = write_report(out, data_dir, truth, sessions, chunk_times, config.tail_share, quiet=quiet)
    summary["config"] = asdict(config)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


DEFAULTS = DemoConfig()


@click.command()
@click.option("--sessions", default=DEFAULTS.sessions, show_default=True, help="Listener sessions to play.")
@click.option("--rate", default=DEFAULTS.rate, show_default=True, help="Sessions per second.")
@click.option("--reward-window", "reward_window_s", default=DEFAULTS.reward_window_s, show_default=True,
              help="Seconds after a decision in which rewards count (the service's window).")
@click.option("--min-events", default=DEFAULTS.min_events, show_default=True,
              help="Events served by the active model a challenger must have scored before the gate judges it.")
@click.option("--num-cpus", default=DEFAULTS.num_cpus, show_default=True, help="CPUs of the local Ray.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, help="Seed of the world, the listeners and the policies.")
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the report, plot and the demo's data directory go.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def demo(sessions: int, rate: float, reward_window_s: float, min_events: int, num_cpus: int, seed: int,
         out: Path, as_json: bool) -> None:
    """The whole loop end to end: the decision service, the joiner, Ray trainers with the launch
    gate, and simulated listeners over HTTP; ends with the true reward of what was served next
    to the editorial order, uniform random and the oracle, and one JSON line."""
    config = DemoConfig(sessions=sessions, rate=rate, reward_window_s=reward_window_s, min_events=min_events,
                        num_cpus=num_cpus, seed=seed)
    summary = run_demo(config, out, quiet=as_json)
    keys = ("policy_reward", "baseline_reward", "random_reward", "oracle_reward", "gap_closed",
            "initial_model_reward", "final_model_reward", "promoted_versions", "refused", "sessions", "report")
    click.echo(json.dumps({k: summary[k] for k in keys}))
