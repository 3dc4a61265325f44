"""The demo's report: true values from the simulator beside what the loop served, published
and decided, and beside a plain learner on the same sessions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bandit.baselines import UniformRandomPolicy
from bandit.errors import ModelFileError
from bandit.registry import load_policy, read_meta
from service.layout import DataPaths
from service.models.store import ModelStore
from service.training.loop import JUDGED
from service.training.records import GATE, PROMOTED, PUBLISH_REFUSED, PUBLISHED, REFUSED, read_records
from simulator.peer import gap_closed
from simulator.world import RequestBatch, World

if TYPE_CHECKING:
    from shelfbandit.demo import LoopRun

N_BINS = 30
EVAL_REQUESTS = 600
DECISION_COLUMNS = ("time", "challenger", "version", "champion", "champion_version", "events", "verdict", "offline_value",
                    "offline_lower", "offline_upper", "champion_offline_value", "true_value", "true_value_stderr",
                    "champion_true_value")
VERDICT_COLOURS = (("promoted", "C3"), ("do not ship", "C7"), ("not enough data", "C8"), ("ship", "C1"))


class DemoTruth:
    """True values in the demo's world: of uniform random on any sessions, and of any stored
    model on a fixed evaluation set of fresh requests (cached: value a model while its file exists)."""

    def __init__(self, world: World, requests: RequestBatch, rng: np.random.Generator, kept: Path | None = None) -> None:
        self.world, self.requests, self.rng, self.kept = world, requests, rng, kept
        self.eval_batch = world.draw_requests(EVAL_REQUESTS, rng)
        self._model_values: dict[str, dict] = {}

    def uniform(self, sessions: np.ndarray) -> float:
        return self.world.policy_value(UniformRandomPolicy(), self.requests[sessions], self.rng, draws=32).value

    def model(self, data_dir: Path, version: str | None) -> dict:
        """{"value", "stderr"} of a model version on the evaluation set (None if its file is gone)."""
        if version is None:
            return {"value": None, "stderr": None}
        if version not in self._model_values:
            path = _model_file(data_dir, version, self.kept)
            if path is None:
                return {"value": None, "stderr": None}  # not cached: the file may appear later
            result = self.world.policy_value(load_policy(path), self.eval_batch, self.rng, draws=64)
            self._model_values[version] = {"value": result.value, "stderr": result.population_stderr}
        return self._model_values[version]


def _model_file(data_dir: Path, version: str, kept: Path | None = None) -> Path | None:
    """The payload of `version`: in the model store, among the judged (refused) models, in the
    `kept` store, else in a trainer checkpoint that still holds it."""
    stores = [ModelStore(DataPaths(data_dir).models), ModelStore(DataPaths(data_dir).training / JUDGED)]
    stores += [ModelStore(kept)] if kept is not None else []
    candidates = [*(store.path_of(version) for store in stores),
                  *sorted(DataPaths(data_dir).candidates.glob("*/models/*.model"))]
    for path in candidates:
        try:
            if path.exists() and read_meta(path, check_payload=False).get("version") == version:
                return path
        except ModelFileError:
            continue
    return None


def session_table(sessions: pd.DataFrame, peer: np.ndarray) -> pd.DataFrame:
    """One row per session the loop served: true expected reward of what the loop served, of
    what the plain learner showed in the same session, of the editorial order and the oracle."""
    index = sessions["session"].to_numpy()
    return pd.DataFrame({"session": index, "served": sessions["expected_reward"].to_numpy(), "peer": peer[index],
                         "editorial": sessions["editorial_reward"].to_numpy(),
                         "oracle": sessions["oracle_reward"].to_numpy()})


def _bins(table: pd.DataFrame, truth: DemoTruth) -> pd.DataFrame:
    edges = np.linspace(0, len(truth.requests), N_BINS + 1).astype(int)
    which = np.searchsorted(edges, table["session"].to_numpy(), side="right") - 1
    means = table.groupby(which)[["served", "peer", "editorial", "oracle"]].mean()
    means.insert(0, "last_session", edges[means.index + 1] - 1)
    means.insert(0, "first_session", edges[means.index])
    means["uniform"] = [truth.uniform(table["session"].to_numpy()[which == b]) for b in means.index]
    return means.reset_index(drop=True)


def _decisions(data_dir: Path, truth: DemoTruth) -> pd.DataFrame:
    """Launch-gate decisions (a challenger configuration against the champion): the offline
    estimates beside both models' true values."""
    promoted = {r["candidate_version"] for r in read_records(data_dir, PROMOTED)}
    rows = []
    for record in read_records(data_dir, GATE):
        estimate, champion = record.get("candidate_estimate") or {}, record.get("champion_estimate") or {}
        challenger_version = record.get("candidate_version")
        champion_version = record.get("champion_version")
        true_challenger = truth.model(data_dir, challenger_version)
        rows.append({
            "time": record["time"], "challenger": record["candidate"], "version": challenger_version,
            "champion": record.get("champion"), "champion_version": champion_version,
            "events": record.get("n_events"),
            "verdict": "promoted" if challenger_version in promoted else record.get("verdict"),
            "offline_value": estimate.get("value"), "offline_lower": estimate.get("lower"),
            "offline_upper": estimate.get("upper"), "champion_offline_value": champion.get("value"),
            "true_value": true_challenger["value"], "true_value_stderr": true_challenger["stderr"],
            "champion_true_value": truth.model(data_dir, champion_version)["value"],
        })
    return pd.DataFrame(rows, columns=DECISION_COLUMNS)


def _session_at(chunk_times: list[tuple[int, float]], when: float) -> int:
    """The first session driven after wall-clock time `when`."""
    starts = np.array([started for _, started in chunk_times])
    i = min(int(np.searchsorted(starts, when, side="left")), len(chunk_times) - 1)
    return chunk_times[i][0]


def _plot(path: Path, bins: pd.DataFrame, publications: list[int], promotions: list[int], decisions: pd.DataFrame) -> None:
    fig, (curve, gate) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [3, 2]})
    middle = (bins["first_session"] + bins["last_session"]) / 2
    for column, style, label in (("oracle", "k--", "oracle"), ("served", "C0-", "learning loop (what was served)"),
                                 ("peer", "C4-", "plain learner, same sessions"), ("editorial", "C1-", "editorial"),
                                 ("uniform", "C2-", "uniform")):
        curve.plot(middle, bins[column], style, label=label, linewidth=2 if column in ("served", "peer") else 1.2)
    if publications:
        low = float(np.nanmin(bins[["uniform", "served", "peer"]].to_numpy()))
        curve.plot(publications, np.full(len(publications), low), "|", color="C0", markersize=10,
                   label=f"publication of the champion ({len(publications)})")
    for i, session in enumerate(promotions):
        curve.axvline(session, color="C3", alpha=0.5, linestyle=":", label="challenger became champion" if i == 0 else None)
    curve.set(xlabel="session", ylabel="true expected streams per session", title="Reward over time (true values)")
    curve.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8)
    judged = decisions.dropna(subset=["offline_value", "true_value"]) if not decisions.empty else decisions
    if not judged.empty:
        for verdict, colour in VERDICT_COLOURS:
            rows = judged[judged["verdict"] == verdict]
            if rows.empty:
                continue
            errors = np.vstack([rows["offline_value"] - rows["offline_lower"], rows["offline_upper"] - rows["offline_value"]])
            gate.errorbar(rows["true_value"], rows["offline_value"], yerr=np.abs(errors.astype(float)), fmt="o",
                          color=colour, label=verdict, capsize=3)
        champions = judged.dropna(subset=["champion_true_value", "champion_offline_value"])
        gate.plot(champions["champion_true_value"], champions["champion_offline_value"], "x", color="k",
                  label="champion at the gate")
        low = float(np.nanmin(judged[["offline_lower", "true_value"]].to_numpy(dtype=float)))
        high = float(np.nanmax(judged[["offline_upper", "true_value"]].to_numpy(dtype=float)))
        gate.plot([low, high], [low, high], "k:", linewidth=1)
        gate.legend(fontsize=8)
    else:
        gate.text(0.5, 0.5, "no challenger was judged", ha="center", va="center", transform=gate.transAxes)
    gate.set(xlabel="true value (simulator)", ylabel="offline estimate at the gate",
             title="Launch gate: challengers against the champion")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, data_dir: Path, truth: DemoTruth, run: LoopRun, peer: np.ndarray, tail_share: float, *,
                 quiet: bool) -> dict:
    """Tables, plot and summary of a demo run (`peer`: the plain learner's true expected reward
    per session); returns the summary."""
    table = session_table(run.sessions, peer)
    bins = _bins(table, truth)
    decisions = _decisions(data_dir, truth)
    published = read_records(data_dir, PUBLISHED)
    promoted = read_records(data_dir, PROMOTED)
    n_tail = max(1, round(len(truth.requests) * tail_share))
    tail = table[table["session"] >= len(truth.requests) - n_tail]
    policy, peer_reward, editorial, oracle = (float(tail[c].mean()) for c in ("served", "peer", "editorial", "oracle"))
    uniform = truth.uniform(tail["session"].to_numpy())
    initial = truth.model(data_dir, run.initial_version)
    active = ModelStore(DataPaths(data_dir).models).active()
    final = truth.model(data_dir, active.version if active else None)
    table.to_csv(out / "sessions.csv", index=False)
    bins.to_csv(out / "rewards.csv", index=False)
    decisions.to_csv(out / "gate_decisions.csv", index=False)
    _plot(out / "demo.png", bins, [_session_at(run.chunk_times, r["time"]) for r in published],
          [_session_at(run.chunk_times, r["time"]) for r in promoted], decisions)
    summary = {
        "sessions": len(table),
        "policy_reward": policy, "peer_reward": peer_reward, "baseline_reward": editorial, "random_reward": uniform,
        "oracle_reward": oracle,
        "gap_closed": gap_closed(tail["served"], tail["editorial"], tail["oracle"]),
        "peer_gap_closed": gap_closed(tail["peer"], tail["editorial"], tail["oracle"]),
        "tail_sessions": len(tail),
        "initial_model_version": run.initial_version, "final_model_version": active.version if active else None,
        "initial_model_reward": initial["value"], "final_model_reward": final["value"],
        "initial_model_stderr": initial["stderr"], "final_model_stderr": final["stderr"],
        "published": len(published),
        "publish_refused": len(read_records(data_dir, PUBLISH_REFUSED)),
        "promoted": [r["candidate"] for r in promoted],
        "gate_decisions": len(decisions),
        "refused": len(read_records(data_dir, REFUSED)),
        "report": str(out / "demo.png"),
    }
    if not quiet:
        _print_tables(bins, decisions, summary, n_tail)
    return summary


def _print_tables(bins: pd.DataFrame, decisions: pd.DataFrame, summary: dict, n_tail: int) -> None:
    click.echo("\nTrue expected streams per session (simulator ground truth), by stretch of sessions:")
    click.echo(bins.iloc[:: max(1, len(bins) // 10)].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo("\nLaunch-gate decisions, challenger against champion: offline estimate (95% interval) vs true values:")
    if decisions.empty:
        click.echo("  (none: no challenger has scored enough events yet)")
    else:
        shown = decisions.assign(offline=decisions.apply(
            lambda r: f"{r.offline_value:.3f} [{r.offline_lower:.3f}, {r.offline_upper:.3f}]"
            if pd.notna(r.offline_value) else "n/a", axis=1))
        columns = ["challenger", "version", "events", "verdict", "offline", "true_value", "champion_true_value"]
        click.echo(shown[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"\nLast {n_tail} sessions: learning loop {summary['policy_reward']:.3f}, plain learner "
               f"{summary['peer_reward']:.3f}, editorial {summary['baseline_reward']:.3f}, uniform "
               f"{summary['random_reward']:.3f}, oracle {summary['oracle_reward']:.3f}; gap closed "
               f"{summary['gap_closed']:.2f} (plain learner {summary['peer_gap_closed']:.2f}); "
               f"{summary['published']} published, {summary['publish_refused']} refused at publishing; "
               f"{summary['gate_decisions']} gate decisions, {len(summary['promoted'])} challengers became champion")
    click.echo(f"plot: {summary['report']}; tables: sessions.csv, rewards.csv, gate_decisions.csv, summary.json beside it")
