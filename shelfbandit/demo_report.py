"""The demo's report: true values from the simulator beside what the loop served and decided."""

from __future__ import annotations

import json
from pathlib import Path

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bandit.baselines import UniformRandomPolicy  # noqa: E402
from bandit.errors import ModelFileError  # noqa: E402
from bandit.model_file import load_policy, read_meta  # noqa: E402
from service.model_store import ModelStore  # noqa: E402
from service.training.loop import JUDGED  # noqa: E402
from service.training.records import read_records  # noqa: E402
from service.training.state import training_dir  # noqa: E402
from simulator.world import RequestBatch, World  # noqa: E402

N_BINS = 30
EVAL_REQUESTS = 600


class DemoTruth:
    """True values in the demo's world: of uniform random on any sessions, and of any stored
    model on a fixed evaluation set of fresh requests."""

    def __init__(self, world: World, requests: RequestBatch, rng: np.random.Generator) -> None:
        self.world, self.requests, self.rng = world, requests, rng
        self.eval_batch = world.draw_requests(EVAL_REQUESTS, rng)
        self._model_values: dict[str, dict] = {}

    def uniform(self, sessions: np.ndarray) -> float:
        return self.world.policy_value(UniformRandomPolicy(), self.requests[sessions], self.rng, draws=32).value

    def model(self, data_dir: Path, version: str) -> dict:
        """{"value", "stderr"} of a model version on the evaluation set (None if its file is gone)."""
        if version not in self._model_values:
            path = _model_file(data_dir, version)
            if path is None:
                self._model_values[version] = {"value": None, "stderr": None}
            else:
                result = self.world.policy_value(load_policy(path), self.eval_batch, self.rng, draws=64)
                self._model_values[version] = {"value": result.value, "stderr": result.population_stderr}
        return self._model_values[version]


def _model_file(data_dir: Path, version: str) -> Path | None:
    """The payload of `version`: in the model store, among the judged (refused) models, else in a
    trainer checkpoint that still holds it."""
    stores = (ModelStore(data_dir / "models"), ModelStore(training_dir(data_dir) / JUDGED))
    candidates = [*(store.path_of(version) for store in stores),
                  *sorted((training_dir(data_dir) / "candidates").glob("*/models/*.model"))]
    for path in candidates:
        try:
            if path.exists() and read_meta(path, check_payload=False).get("version") == version:
                return path
        except ModelFileError:
            continue
    return None


def _bins(sessions: pd.DataFrame, truth: DemoTruth) -> pd.DataFrame:
    edges = np.linspace(0, len(truth.requests), N_BINS + 1).astype(int)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = sessions[(sessions["session"] >= lo) & (sessions["session"] < hi)]
        if part.empty:
            continue
        rows.append({
            "first_session": int(lo), "last_session": int(hi - 1), "served": part["expected_reward"].mean(),
            "editorial": part["editorial_reward"].mean(), "uniform": truth.uniform(part["session"].to_numpy()),
            "oracle": part["oracle_reward"].mean(),
        })
    return pd.DataFrame(rows)


def _decisions(data_dir: Path, truth: DemoTruth) -> pd.DataFrame:
    gates = read_records(data_dir, "gate")
    promoted = {r["version"] for r in read_records(data_dir, "promoted")}
    rows = []
    for record in gates:
        estimate, active = record.get("candidate_estimate") or {}, record.get("active_estimate") or {}
        true_candidate = truth.model(data_dir, record["candidate_version"])
        rows.append({
            "time": record["time"], "candidate": record["candidate"], "version": record["candidate_version"],
            "active_version": record["active_version"], "events": record["n_events"],
            "verdict": "promoted" if record["candidate_version"] in promoted else record["verdict"],
            "offline_value": estimate.get("value"), "offline_lower": estimate.get("lower"),
            "offline_upper": estimate.get("upper"), "active_offline_value": active.get("value"),
            "true_value": true_candidate["value"], "true_value_stderr": true_candidate["stderr"],
            "active_true_value": truth.model(data_dir, record["active_version"])["value"],
        })
    return pd.DataFrame(rows)


def _session_at(chunk_times: list[tuple[int, float]], when: float) -> int:
    """The first session driven after wall-clock time `when`."""
    for first, started in chunk_times:
        if started >= when:
            return first
    return chunk_times[-1][0]


def _plot(path: Path, bins: pd.DataFrame, promotions: list[int], decisions: pd.DataFrame) -> None:
    fig, (curve, gate) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    middle = (bins["first_session"] + bins["last_session"]) / 2
    for column, style in (("oracle", "k--"), ("served", "C0-"), ("editorial", "C1-"), ("uniform", "C2-")):
        label = "learning loop (what was served)" if column == "served" else column
        curve.plot(middle, bins[column], style, label=label, linewidth=2 if column == "served" else 1.2)
    for i, session in enumerate(promotions):
        curve.axvline(session, color="C3", alpha=0.4, linestyle=":", label="promotion" if i == 0 else None)
    curve.set(xlabel="session", ylabel="true expected streams per session", title="Reward over time (true values)")
    curve.legend(loc="lower right", fontsize=8)
    judged = decisions.dropna(subset=["offline_value", "true_value"]) if not decisions.empty else decisions
    if not judged.empty:
        for verdict, colour in (("promoted", "C3"), ("do not ship", "C7"), ("not enough data", "C8"), ("ship", "C1")):
            rows = judged[judged["verdict"] == verdict]
            if rows.empty:
                continue
            errors = np.vstack([rows["offline_value"] - rows["offline_lower"], rows["offline_upper"] - rows["offline_value"]])
            gate.errorbar(rows["true_value"], rows["offline_value"], yerr=np.abs(errors), fmt="o", color=colour,
                          label=verdict, capsize=3)
        low = float(np.nanmin(judged[["offline_lower", "true_value"]].to_numpy()))
        high = float(np.nanmax(judged[["offline_upper", "true_value"]].to_numpy()))
        gate.plot([low, high], [low, high], "k:", linewidth=1)
        gate.legend(fontsize=8)
    gate.set(xlabel="true value of the candidate (simulator)", ylabel="offline estimate at the gate",
             title="Launch-gate decisions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, data_dir: Path, truth: DemoTruth, sessions: pd.DataFrame,
                 chunk_times: list[tuple[int, float]], tail_share: float, *, quiet: bool) -> dict:
    """Tables, plot and summary of a demo run; returns the summary."""
    bins = _bins(sessions, truth)
    decisions = _decisions(data_dir, truth)
    promoted = read_records(data_dir, "promoted")
    promotions = [_session_at(chunk_times, r["time"]) for r in promoted]
    n_tail = max(1, int(round(len(truth.requests) * tail_share)))
    tail = sessions[sessions["session"] >= len(truth.requests) - n_tail]
    policy, editorial, oracle = (float(tail[c].mean()) for c in ("expected_reward", "editorial_reward", "oracle_reward"))
    uniform = truth.uniform(tail["session"].to_numpy())
    store = ModelStore(data_dir / "models")
    versions = sorted(store.versions(), key=lambda v: v.created)
    unknown = {"value": None, "stderr": None}
    initial = truth.model(data_dir, versions[0].version) if versions else unknown
    active = store.active()
    final = truth.model(data_dir, active.version) if active else unknown
    bins.to_csv(out / "rewards.csv", index=False)
    decisions.to_csv(out / "gate_decisions.csv", index=False)
    _plot(out / "demo.png", bins, promotions, decisions)
    summary = {
        "sessions": int(len(sessions)),
        "policy_reward": policy, "baseline_reward": editorial, "random_reward": uniform, "oracle_reward": oracle,
        "gap_closed": (policy - editorial) / (oracle - editorial) if oracle > editorial else float("nan"),
        "tail_sessions": int(len(tail)),
        "initial_model_reward": initial["value"], "final_model_reward": final["value"],
        "initial_model_stderr": initial["stderr"], "final_model_stderr": final["stderr"],
        "promoted_versions": [r["version"] for r in promoted],
        "refused": int(len(read_records(data_dir, "refused"))),
        "report": str(out / "demo.png"),
    }
    if not quiet:
        _print_tables(bins, decisions, summary, n_tail)
    return summary


def _print_tables(bins: pd.DataFrame, decisions: pd.DataFrame, summary: dict, n_tail: int) -> None:
    click.echo("\nTrue expected streams per session (simulator ground truth), by stretch of sessions:")
    click.echo(bins.iloc[:: max(1, len(bins) // 10)].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo("\nLaunch-gate decisions: offline estimate (progressive validation, 95% interval) vs true value:")
    if decisions.empty:
        click.echo("  (none: no challenger saw enough events served by the active model)")
    else:
        shown = decisions.assign(offline=decisions.apply(
            lambda r: f"{r.offline_value:.3f} [{r.offline_lower:.3f}, {r.offline_upper:.3f}]"
            if pd.notna(r.offline_value) else "n/a", axis=1))
        columns = ["candidate", "version", "events", "verdict", "offline", "true_value", "active_true_value"]
        click.echo(shown[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"\nLast {n_tail} sessions: learning loop {summary['policy_reward']:.3f}, editorial "
               f"{summary['baseline_reward']:.3f}, uniform {summary['random_reward']:.3f}, oracle "
               f"{summary['oracle_reward']:.3f}; gap closed {summary['gap_closed']:.2f}; "
               f"{len(summary['promoted_versions'])} promoted, {summary['refused']} refused")
    click.echo(f"plot: {summary['report']}; tables: rewards.csv, gate_decisions.csv, summary.json beside it")

