"""PNG plots of closed-loop runs and sweeps (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simulator.intervals import mean_interval


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plot_run(metrics: pd.DataFrame, path: str | Path) -> Path:
    """Left: true expected reward per session (moving average over ~5% of the run) of each
    policy, with the oracle and the editorial order for reference. Right: cumulative regret
    against the oracle."""
    figure = Figure(figsize=(12, 4.5))
    reward_axes, regret_axes = figure.subplots(1, 2)
    first = metrics[metrics["policy"] == metrics["policy"].iloc[0]]
    window = max(1, len(first) // 20)

    def smooth(values: pd.Series) -> pd.Series:
        return values.rolling(window, min_periods=1).mean()

    for name, reference, style in (("oracle", "oracle_reward", "k--"), ("editorial order", "editorial_reward", "k:")):
        reward_axes.plot(first["session"], smooth(first[reference]), style, label=name, linewidth=1)
    for name, run in metrics.groupby("policy", sort=False):
        reward_axes.plot(run["session"], smooth(run["expected_reward"]), label=name)
        regret_axes.plot(run["session"], run["cumulative_regret"], label=name)
    reward_axes.set(xlabel="session", ylabel=f"expected streams per session ({window}-session mean)", title="reward")
    regret_axes.set(xlabel="session", ylabel="cumulative regret vs oracle", title="regret")
    reward_axes.legend(fontsize=8)
    regret_axes.legend(fontsize=8)
    return _save(figure, path)


def plot_sweep(results: pd.DataFrame, path: str | Path, *, curve: str = "regret_curve") -> Path:
    """One panel per world: each policy's cumulative regret over the run, mean over seeds with
    its 95% confidence band. `results` has one row per cell with `world`, `policy`,
    `sessions` and the list column `curve` (evenly spaced checkpoints)."""
    worlds = list(dict.fromkeys(results["world"]))
    figure = Figure(figsize=(6 * len(worlds), 4.5))
    axes = np.atleast_1d(figure.subplots(1, len(worlds)))
    for ax, world in zip(axes, worlds):
        for policy, cells in results[results["world"] == world].groupby("policy", sort=False):
            values = np.stack(cells[curve].to_numpy())
            x = np.linspace(0, int(cells["sessions"].iloc[0]), values.shape[1])
            mean, lower, upper = mean_interval(values)
            (line,) = ax.plot(x, mean, label=f"{policy} (n={len(values)})")
            ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="session", ylabel="cumulative regret vs oracle", title=f"world: {world}")
        ax.legend(fontsize=8)
    return _save(figure, path)
