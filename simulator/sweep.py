"""Sweeps on Ray: a grid of policy configs x world configs x seeds, one closed-loop run per cell.

Each cell is one Ray task (thousands of sessions). A (world, replicate) pair's world and
requests are built once in the driver and `ray.put` once; every policy on that pair runs on
the same requests (common random numbers). Seeds come from
`SeedSequence(seed, spawn_key=(world key, replicate))`, so a cell's result depends only on its
own config, never on the number of workers or the order cells finish in. Every finished cell
is written durably to `cells/<cell_id>.parquet` as it lands; a rerun skips those.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bandit.errors import ShelfBanditError, ValidationError
from simulator.closed_loop import LoopConfig, run_closed_loop
from simulator.intervals import mean_interval
from simulator.policies import PolicySpec, parse_options
from simulator.world import RequestBatch, World, WorldConfig

CURVE_POINTS = 50
SUMMARY_METRICS = ("expected_reward_last", "gap_closed_last", "regret")


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """A labelled world config; `default` or `key=value,...` overrides of the default."""

    label: str
    config: WorldConfig = field(default_factory=WorldConfig.default)

    @classmethod
    def parse(cls, text: str) -> WorldSpec:
        options = {} if text == "default" else parse_options(text, "world")
        return cls(text, WorldConfig.default().updated(**options))

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> WorldSpec:
        values = dict(data)
        label = values.pop("name", None)
        label = label or ",".join(f"{k}={v}" for k, v in values.items()) or "default"
        return cls(str(label), WorldConfig.default().updated(**values))

    def key(self) -> int:
        """A stable integer from the config (not the label): the world's seed key."""
        blob = json.dumps(self.config.to_dict(), sort_keys=True).encode()
        return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of the grid: a policy on a world with one replicate seed."""

    policy: PolicySpec
    world: WorldSpec
    replicate: int
    seed: int
    sessions: int
    loop: LoopConfig
    curve_points: int

    def seeds(self) -> tuple[np.random.SeedSequence, np.random.SeedSequence, np.random.SeedSequence]:
        """(world, requests, run) seed sequences, shared by every policy on this world and replicate."""
        world_ss, requests_ss, run_ss = np.random.SeedSequence(self.seed, spawn_key=(self.world.key(), self.replicate)).spawn(3)
        return world_ss, requests_ss, run_ss

    def shared_key(self) -> tuple[int, int]:
        return (self.world.key(), self.replicate)

    def cell_id(self) -> str:
        blob = json.dumps(
            {
                "policy": [self.policy.label, self.policy.kind, [list(o) for o in self.policy.options]],
                "world": [self.world.label, self.world.config.to_dict()],
                "replicate": self.replicate, "seed": self.seed, "sessions": self.sessions,
                "loop": [self.loop.learn_every, self.loop.reward_window_s, self.loop.tail_share],
                "curve_points": self.curve_points,
            },
            sort_keys=True, default=str,
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SweepGrid:
    """policies x worlds x `seeds` replicates, each run for `sessions` sessions."""

    policies: tuple[PolicySpec, ...]
    worlds: tuple[WorldSpec, ...] = (WorldSpec("default"),)
    seeds: int = 3
    sessions: int = 2000
    loop: LoopConfig = field(default_factory=LoopConfig)
    seed: int = 0
    curve_points: int = CURVE_POINTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        object.__setattr__(self, "worlds", tuple(self.worlds))
        if not self.policies:
            raise ValidationError("policies", "a sweep needs at least one policy", 0)
        if not self.worlds:
            raise ValidationError("worlds", "a sweep needs at least one world", 0)
        for name, labels in (("policies", [p.label for p in self.policies]), ("worlds", [w.label for w in self.worlds])):
            if len(set(labels)) != len(labels):
                raise ValidationError(name, "labels must be unique", labels)
        for name in ("seeds", "sessions", "curve_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(name, "must be a positive integer", value)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValidationError("seed", "must be a non-negative integer", self.seed)
        for world in self.worlds:
            self.loop.check_world(world.config)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SweepGrid:
        """`{"policies": [{"policy": KIND, "name"?, ...}], "worlds"?: [{"name"?, ...WorldConfig}],
        "seeds"?, "sessions"?, "learn_every"?, "reward_window_s"?, "seed"?}`."""
        known = {"policies", "worlds", "seeds", "sessions", "learn_every", "reward_window_s", "seed", "curve_points"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError("grid", f"unknown keys (known: {', '.join(sorted(known))})", unknown)
        loop = LoopConfig(learn_every=data.get("learn_every", 10), reward_window_s=float(data.get("reward_window_s", 0.0)))
        worlds = tuple(WorldSpec.from_dict(w) for w in data.get("worlds", [{"name": "default"}]))
        return cls(
            policies=tuple(PolicySpec.from_dict(p) for p in data.get("policies", [])),
            worlds=worlds,
            seeds=data.get("seeds", 3),
            sessions=data.get("sessions", 2000),
            loop=loop,
            seed=data.get("seed", 0),
            curve_points=data.get("curve_points", CURVE_POINTS),
        )

    def cells(self) -> list[Cell]:
        return [
            Cell(policy, world, replicate, self.seed, self.sessions, self.loop, self.curve_points)
            for world in self.worlds
            for replicate in range(self.seeds)
            for policy in self.policies
        ]


def shared_inputs(cell: Cell) -> tuple[World, RequestBatch]:
    """The world and requests of a cell's (world, replicate) pair."""
    world_ss, requests_ss, _ = cell.seeds()
    world = World(cell.world.config, np.random.default_rng(world_ss))
    return world, world.draw_requests(cell.sessions, np.random.default_rng(requests_ss))


def run_cell(cell: Cell, shared: tuple[World, RequestBatch]) -> dict:
    """Run one cell; its row: config columns, summary metrics, curves, runtime."""
    world, requests = shared
    _, _, run_ss = cell.seeds()
    policy_seed = int(run_ss.generate_state(1)[0])
    policy = cell.policy.build(world, policy_seed)
    started = time.perf_counter()
    result = run_closed_loop(world, policy, requests, np.random.default_rng(run_ss), name=cell.policy.label, config=cell.loop)
    metrics = result.metrics
    checkpoints = np.linspace(0, len(metrics) - 1, cell.curve_points).round().astype(np.int64)
    windows = np.array_split(metrics["expected_reward"].to_numpy(), cell.curve_points)
    return {
        "cell_id": cell.cell_id(),
        "world": cell.world.label,
        **{f"world_{k}": v for k, v in cell.world.config.to_dict().items()},
        **cell.policy.config_columns(policy_seed),
        "replicate": cell.replicate,
        "seed": cell.seed,
        "sessions": cell.sessions,
        "learn_every": cell.loop.learn_every,
        "reward_window_s": cell.loop.reward_window_s,
        **{k: v for k, v in result.summary.items() if k not in ("policy", "sessions")},
        "regret_curve": metrics["cumulative_regret"].to_numpy()[checkpoints].tolist(),
        "reward_curve": [float(w.mean()) if len(w) else float("nan") for w in windows],
        "runtime_s": time.perf_counter() - started,
    }


def write_cell(row: dict, directory: Path) -> Path:
    """Write a finished cell durably (temp file, fsync, atomic rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{row['cell_id']}.parquet"
    tmp = directory / f".{row['cell_id']}.parquet.tmp"
    pd.DataFrame([row]).to_parquet(tmp, index=False)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


@dataclass(frozen=True, slots=True, eq=False)
class SweepResult:
    """All cells of a grid (one row each, grid order), the summary table, how many cells ran
    now and how many were already finished, and the file paths."""

    results: pd.DataFrame
    summary: pd.DataFrame
    ran: int
    skipped: int
    paths: dict[str, Path]


def run_sweep(
    grid: SweepGrid,
    out_dir: str | Path,
    *,
    workers: int = 2,
    ray_address: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run the cells of `grid` not already finished in `out_dir` on Ray (a local Ray with
    `workers` CPUs, or the cluster at `ray_address`), then write results.parquet,
    summary.csv and regret.png."""
    from tqdm import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValidationError("workers", "must be a positive integer", workers)
    out_dir = Path(out_dir)
    cell_dir = out_dir / "cells"
    cells = grid.cells()
    finished = {p.stem for p in cell_dir.glob("*.parquet")} if cell_dir.is_dir() else set()
    todo = [c for c in cells if c.cell_id() not in finished]
    if todo:
        with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="cells", disable=not progress, mininterval=0.5) as bar:
            _run_on_ray(todo, cell_dir, workers, ray_address, bar.update)
    rows = [pd.read_parquet(cell_dir / f"{c.cell_id()}.parquet") for c in cells]
    results = pd.concat(rows, ignore_index=True)
    paths = {"results": out_dir / "results.parquet", "summary": out_dir / "summary.csv", "plot": out_dir / "regret.png"}
    results.to_parquet(paths["results"], index=False)
    summary = summary_table(results)
    summary.to_csv(paths["summary"], index=False)
    from simulator.plots import plot_sweep

    plot_sweep(results, paths["plot"])
    return SweepResult(results, summary, len(todo), len(cells) - len(todo), paths)


def _run_on_ray(todo: list[Cell], cell_dir: Path, workers: int, ray_address: str | None, advance) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            ray.init(address=ray_address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote_cell = ray.remote(num_cpus=1)(run_cell)
        shared_refs = {}
        for cell in todo:
            if cell.shared_key() not in shared_refs:
                shared_refs[cell.shared_key()] = ray.put(shared_inputs(cell))
        cell_of = {remote_cell.remote(cell, shared_refs[cell.shared_key()]): cell for cell in todo}
        pending = list(cell_of)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if pending:  # collect everything else that has finished too, without waiting
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            try:
                rows = ray.get(ready)
            except ray.exceptions.RayTaskError as err:
                raise ShelfBanditError(f"a sweep cell failed ({err.cause!r}); finished cells are kept, rerun to resume") from None
            for row in rows:
                write_cell(row, cell_dir)
            advance(len(rows))
    finally:
        if started_here:
            ray.shutdown()


def summary_table(results: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (world, policy): number of seeds and, for each summary metric, the mean over seeds
    and its Student-t confidence interval at `level` (NaN bounds with a single seed)."""
    rows = []
    for (world, policy), cells in results.groupby(["world", "policy"], sort=False):
        row: dict[str, object] = {"world": world, "policy": policy, "seeds": len(cells)}
        for metric in SUMMARY_METRICS:
            mean, lower, upper = mean_interval(cells[metric].to_numpy(), level)
            row.update({metric: float(mean), f"{metric}_lower": float(lower), f"{metric}_upper": float(upper)})
        rows.append(row)
    return pd.DataFrame(rows)
