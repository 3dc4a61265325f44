"""`shelfbandit simulate`, `shelfbandit simulate-log` and `shelfbandit sweep`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from bandit.errors import ValidationError
from bandit.jsonfile import read_json_file
from simulator.closed_loop import LoopConfig
from simulator.policies import POLICY_KINDS, PolicySpec, parse_options
from simulator.world import World, WorldConfig

DEFAULT_POLICIES = ("vw:explorer=squarecb", "editorial", "uniform")
TRUTH_REQUESTS = 20_000  # fresh requests on which simulate-log reports the policies' true values


def _world_config(world: str, world_config: str | None) -> WorldConfig:
    """The default world, updated by a JSON file, then by `key=value,...` settings."""
    config = WorldConfig.default()
    if world_config:
        config = config.updated(**_json_object(world_config, "--world-config"))
    if world != "default":
        config = config.updated(**parse_options(world, "world"))
    return config


def _json_object(path: str, option: str) -> dict:
    data = read_json_file(path, option)
    if not isinstance(data, dict):
        raise ValidationError(option, "must hold a JSON object", type(data).__name__)
    return data


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValidationError(name, "must be at least 1", value)
    return value


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


def _emit(summary: dict, as_json: bool, lines: list[str]) -> None:
    if not as_json:
        for line in lines:
            click.echo(line)
    else:
        click.echo(json.dumps(summary, default=str))


world_options = [
    click.option("--world", default="default", show_default=True,
                 help="World settings: 'default' or key=value,... over WorldConfig fields "
                      "(e.g. click_model=cascade,n_shelves=40,delay_mean_s=120)."),
    click.option("--world-config", type=click.Path(exists=True, dir_okay=False),
                 help="JSON file of WorldConfig fields (applied before --world)."),
    click.option("--seed", default=0, show_default=True, help="Seed of the world, the requests and every policy."),
]


def with_world_options(command):
    for option in reversed(world_options):
        command = option(command)
    return command


@click.command()
@click.option("--sessions", default=3000, show_default=True, help="Listener sessions to run.")
@click.option("--policy", "policies", multiple=True, metavar="SPEC",
              help=f"Policy to run, repeatable: KIND[:key=value,...] with KIND in {', '.join(POLICY_KINDS)} "
                   f"(vw takes RankerConfig fields, interactions joined by '+'; model takes path=FILE). "
                   f"Default: {' '.join(DEFAULT_POLICIES)}.")
@with_world_options
@click.option("--learn-every", default=10, show_default=True, help="Sessions per learning mini-batch.")
@click.option("--reward-window", "reward_window_s", default=0.0, show_default=True,
              help="Seconds a decision waits for its rewards before it is joined and learned.")
@click.option("--out", default="out/simulate", show_default=True, type=click.Path(file_okay=False),
              help="Directory for metrics.parquet, decisions-<policy>.jsonl, simulate.png, summary.json.")
@click.option("--url", default=None, help="Drive the decision API at this URL over HTTP instead of in-process policies.")
@click.option("--concurrency", default=8, show_default=True, help="With --url: HTTP calls in flight at most.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, help="With --url: seconds per HTTP call.")
@click.option("--max-seconds", default=600.0, show_default=True, help="With --url: stop starting sessions after this long.")
@click.option("--delay-scale", default=0.0, show_default=True,
              help="With --url: wall seconds per simulated second of reward delay (0 sends rewards at once).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (last line).")
def simulate(sessions, policies, world, world_config, seed, learn_every, reward_window_s, out, url, concurrency,
             timeout_s, max_seconds, delay_scale, as_json):
    """Run policies in closed loop against simulated listeners with known ground truth (or
    drive a running decision API with --url), and report the true expected reward per
    session, the regret against the oracle and the share of the editorial-to-oracle gap closed."""
    from simulator.plots import plot_run

    _positive("sessions", sessions)
    if url and policies:
        raise ValidationError("--policy", "with --url the service ranks; leave out --policy", policies)
    config = _world_config(world, world_config)
    world_ss, requests_ss, run_ss = np.random.SeedSequence(seed).spawn(3)
    sim = World(config, np.random.default_rng(world_ss))
    requests = sim.draw_requests(sessions, np.random.default_rng(requests_ss))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if url:
        summaries, metrics, logs = _drive_service(sim, requests, run_ss, url, concurrency, timeout_s, max_seconds, delay_scale)
    else:
        specs = [PolicySpec.parse(text) for text in (policies or DEFAULT_POLICIES)]
        loop = LoopConfig(learn_every=_positive("learn_every", learn_every), reward_window_s=reward_window_s)
        loop.check_world(config)
        summaries, metrics, logs = _run_policies(sim, requests, run_ss, specs, loop, out)
    paths = {"metrics": out / "metrics.parquet", "plot": out / "simulate.png", "summary": out / "summary.json"}
    metrics.to_parquet(paths["metrics"], index=False)
    plot_run(metrics, paths["plot"])
    first = next(iter(summaries.values()))
    summary = {
        "sessions": sessions,
        "seed": seed,
        "world": config.to_dict(),
        "oracle_reward_last": first["oracle_reward_last"],
        "editorial_reward_last": first["editorial_reward_last"],
        "policies": summaries,
        **{name: str(path) for name, path in paths.items()},
        "logs": {name: str(path) for name, path in logs.items()},
    }
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"true expected streams per session over the last {max(1, round(0.2 * sessions))} sessions:"]
    lines += [f"  {name:<32} {s['expected_reward_last']:.4f}  gap closed {s['gap_closed_last']:+.2f}  regret {s['regret']:.1f}"
              for name, s in summaries.items()]
    lines += [f"  {'oracle':<32} {first['oracle_reward_last']:.4f}",
              f"  {'editorial order':<32} {first['editorial_reward_last']:.4f}",
              f"metrics {paths['metrics']}  plot {paths['plot']}"]
    _emit(summary, as_json, lines)


def _run_policies(sim, requests, run_ss, specs, loop, out):
    import pandas as pd

    from simulator.closed_loop import run_closed_loop

    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValidationError("--policy", "each policy may be given once", labels)
    policy_seed = int(run_ss.generate_state(1)[0])
    summaries, frames, logs = {}, [], {}
    with tqdm(total=len(requests) * len(specs), desc="sessions", unit="session", mininterval=0.5) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.label)
            logs[spec.label] = out / f"decisions-{_file_label(spec.label)}.jsonl"
            with open(logs[spec.label], "w") as log:
                result = run_closed_loop(
                    sim, spec.build(sim, policy_seed), requests, np.random.default_rng(run_ss),
                    name=spec.label, config=loop, log=log, progress=bar.update,
                )
            summaries[spec.label] = result.summary
            frames.append(result.metrics)
    return summaries, pd.concat(frames, ignore_index=True), logs


def _drive_service(sim, requests, run_ss, url, concurrency, timeout_s, max_seconds, delay_scale):
    from simulator.http_driver import DriverConfig, drive

    config = DriverConfig(concurrency=concurrency, timeout_s=timeout_s, max_seconds=max_seconds, delay_scale=delay_scale)
    with tqdm(total=len(requests), desc="sessions", unit="session", mininterval=0.5) as bar:
        result = drive(url, sim, requests, np.random.default_rng(run_ss), config, name=url, progress=bar.update)
    return {url: result.summary}, result.metrics, {}


@click.command("simulate-log")
@click.option("--events", default=1_000_000, show_default=True, help="Logged decisions to generate.")
@click.option("--policy", "logging_spec", default="uniform", show_default=True, metavar="SPEC",
              help="Logging policy: uniform | editorial[:epsilon=E] | epsilon[:epsilon=E,noise=S] | "
                   "softmax[:temperature=T,noise=S] (the last two linear in the listener context).")
@click.option("--target", "target_spec", default=None, metavar="SPEC",
              help="Policy whose probabilities of the logged rankings fill target_prob/target_marginal: "
                   "a logging-policy SPEC, or model:path=FILE for a saved bandit policy (one VW call per event).")
@with_world_options
@click.option("--out", default="out/slate_log.parquet", show_default=True, type=click.Path(dir_okay=False),
              help="Slate table to write (.parquet, or .csv).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (last line).")
def simulate_log(events, logging_spec, target_spec, world, world_config, seed, out, as_json):
    """Generate a decision log at scale from a vectorised logging policy, as the slate table
    (one row per event and slot) with exact logging probabilities, and report the true value
    of the logging and target policies for offline-evaluation experiments."""
    from simulator.logging_mode import SlatePolicy, iter_slate_log

    _positive("events", events)
    config = _world_config(world, world_config)
    world_ss, log_ss, policy_ss, truth_ss = np.random.SeedSequence(seed).spawn(4)
    sim = World(config, np.random.default_rng(world_ss))
    policy_rng = np.random.default_rng(policy_ss)
    logging_policy = SlatePolicy.from_spec(sim, logging_spec, policy_rng)
    target = None
    if target_spec:
        target = (PolicySpec.parse(target_spec).build(sim, seed) if target_spec.startswith("model:")
                  else SlatePolicy.from_spec(sim, target_spec, policy_rng))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = _write_table(iter_slate_log(sim, logging_policy, events, np.random.default_rng(log_ss), target=target), out, events)
    seconds = time.perf_counter() - started
    truth_rng = np.random.default_rng(truth_ss)
    values = {"logging": logging_policy.value(sim, sim.draw_requests(TRUTH_REQUESTS, truth_rng), truth_rng)}
    if isinstance(target, SlatePolicy):
        values["target"] = target.value(sim, sim.draw_requests(TRUTH_REQUESTS, truth_rng), truth_rng)
    elif target is not None:
        values["target"] = sim.policy_value(target, sim.draw_requests(TRUTH_REQUESTS // 10, truth_rng), truth_rng)
    summary = {
        "events": events,
        "rows": rows,
        "out": str(out),
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "logging_policy": logging_spec,
        "target_policy": target_spec,
        **{f"{name}_value": {"value": v.value, "stderr": v.stderr, "population_stderr": v.population_stderr,
                             "per_slot": v.per_slot, "n_requests": v.n_requests} for name, v in values.items()},
    }
    lines = [f"{rows} rows ({events} events) in {seconds:.1f} s -> {out}"]
    lines += [f"true value of the {name} policy: {v.value:.4f} +/- {1.96 * v.population_stderr:.4f}" for name, v in values.items()]
    _emit(summary, as_json, lines)


def _write_table(chunks, out: Path, events: int) -> int:
    """Stream slate-table chunks to Parquet (or CSV), with a progress bar; return the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    writer = None
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tqdm(total=events, desc="events", unit="event", mininterval=0.5, unit_scale=True) as bar:
            for chunk in chunks:
                if out.suffix == ".csv":
                    chunk.to_csv(tmp, mode="a" if rows else "w", header=not rows, index=False)
                else:
                    table = pa.Table.from_pandas(chunk, preserve_index=False)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                rows += len(chunk)
                bar.update(len(chunk) // int(chunk["slot"].max() + 1))
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(out)
    return rows


@click.command()
@click.option("--grid", "grid_file", type=click.Path(exists=True, dir_okay=False),
              help='JSON grid: {"policies": [{"policy": KIND, "name"?, ...}], "worlds": [{"name"?, ...}], '
                   '"seeds", "sessions", "learn_every", "reward_window_s", "seed"} (replaces the flags below).')
@click.option("--policy", "policies", multiple=True, metavar="SPEC",
              help=f"Policy cell, repeatable (as in simulate). Default: {' '.join(DEFAULT_POLICIES)}.")
@click.option("--world", "worlds", multiple=True, metavar="SETTINGS",
              help="World cell, repeatable: 'default' or key=value,... Default: default.")
@click.option("--seeds", default=3, show_default=True, help="Replicates of every (policy, world) cell.")
@click.option("--sessions", default=2000, show_default=True, help="Sessions per cell.")
@click.option("--learn-every", default=10, show_default=True, help="Sessions per learning mini-batch.")
@click.option("--reward-window", "reward_window_s", default=0.0, show_default=True, help="Reward window in seconds.")
@click.option("--seed", default=0, show_default=True, help="Root seed of the grid.")
@click.option("--workers", default=2, show_default=True, help="CPUs of the local Ray started for the sweep.")
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting a local Ray.")
@click.option("--out", default="out/sweep", show_default=True, type=click.Path(file_okay=False),
              help="Directory: cells/ (one file per finished cell; reruns skip them), results.parquet, "
                   "summary.csv, regret.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (last line).")
def sweep(grid_file, policies, worlds, seeds, sessions, learn_every, reward_window_s, seed, workers, ray_address, out, as_json):
    """Run a grid of policy configs x world configs x seeds as Ray tasks (one closed-loop run
    each), resumably; write one row per cell, a summary with confidence intervals over seeds
    and regret curves with confidence bands."""
    from simulator.sweep import SweepGrid, WorldSpec, run_sweep

    if grid_file:
        grid = SweepGrid.from_dict(_json_object(grid_file, "--grid"))
    else:
        grid = SweepGrid(
            policies=tuple(PolicySpec.parse(p) for p in (policies or DEFAULT_POLICIES)),
            worlds=tuple(WorldSpec.parse(w) for w in (worlds or ("default",))),
            seeds=seeds,
            sessions=sessions,
            loop=LoopConfig(learn_every=learn_every, reward_window_s=reward_window_s),
            seed=seed,
        )
    result = run_sweep(grid, out, workers=workers, ray_address=ray_address)
    table = result.summary
    summary = {
        "cells": len(result.results),
        "ran": result.ran,
        "skipped": result.skipped,
        **{name: str(path) for name, path in result.paths.items()},
        "table": table.to_dict(orient="records"),
    }
    lines = [f"{len(result.results)} cells ({result.ran} run now, {result.skipped} already finished)"]
    lines += [
        f"  {row.world:<24} {row.policy:<32} reward(last) {row.expected_reward_last:.4f} "
        f"[{row.expected_reward_last_lower:.4f}, {row.expected_reward_last_upper:.4f}]  gap closed {row.gap_closed_last:+.2f}"
        for row in table.itertuples()
    ]
    lines.append(f"results {result.paths['results']}  summary {result.paths['summary']}  plot {result.paths['plot']}")
    _emit(summary, as_json, lines)
