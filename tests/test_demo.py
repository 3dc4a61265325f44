"""`shelfbandit demo` end to end: the service, the joiner, Ray trainers publishing the champion
on a timer, driven by simulated listeners over HTTP, beside the plain learner on the same
sessions. The loop must learn, and stop everything it started."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.peer import gap_closed

BIN = Path(sys.executable).parent / "shelfbandit"
SESSIONS = 2000
TAIL = 400  # the demo's last 20%
Z = 3.3  # one-sided 99.95%: a seeded run fails only if the effect were not there


def _marked_processes(mark: str) -> set[int]:
    """Processes whose environment holds `mark` (the demo's, and all it started: they inherit it)."""
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                found.add(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _beats(better: np.ndarray, worse: np.ndarray) -> bool:
    """Paired by session: the mean difference exceeds Z standard errors of the differences."""
    difference = better - worse
    return difference.mean() - Z * difference.std(ddof=1) / np.sqrt(len(difference)) > 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    mark = f"demo-test-{uuid.uuid4().hex}"
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = subprocess.run(
        [str(BIN), "demo", "--sessions", str(SESSIONS), "--rate", "50", "--reward-window", "3", "--publish-interval", "3",
         "--seed", "11", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore", "DEMO_TEST_MARK": mark},
    )
    left = _marked_processes(mark)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1]), left


def test_the_demo_stops_what_it_started(demo_run):
    """Nothing the demo started (the service, its workers, Ray and its workers) outlives it."""
    left = demo_run[-1]
    assert not left, f"left running: {sorted(left)}"


def test_the_summary_and_the_report(demo_run):
    out, summary, _ = demo_run
    for key in ("policy_reward", "peer_reward", "baseline_reward", "random_reward", "oracle_reward", "gap_closed",
                "peer_gap_closed", "published", "publish_refused", "promoted", "gate_decisions"):
        assert key in summary
    assert summary["oracle_reward"] > summary["baseline_reward"] > summary["random_reward"] > 0
    for name in ("demo.png", "rewards.csv", "sessions.csv", "gate_decisions.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["config"]["publish_interval_s"] == 3.0
    decisions = pd.read_csv(out / "gate_decisions.csv")
    if len(decisions):
        assert set(decisions["verdict"]) <= {"promoted", "ship", "do not ship", "not enough data"}  # ship: outdone the same round
        assert (decisions["verdict"] == "promoted").sum() == len(summary["promoted"])


def test_the_gap_shares_are_those_of_the_sessions_served(demo_run):
    """Both figures come from the same sessions: the loop's served rankings and the plain
    learner's, against one editorial order and oracle."""
    out, summary, _ = demo_run
    sessions = pd.read_csv(out / "sessions.csv")
    assert len(sessions) == summary["sessions"] == SESSIONS
    assert (sessions[["served", "peer"]].to_numpy() <= sessions[["oracle"]].to_numpy() + 1e-12).all()
    tail = sessions[sessions["session"] >= SESSIONS - TAIL]
    assert gap_closed(tail["served"], tail["editorial"], tail["oracle"]) == pytest.approx(summary["gap_closed"])
    assert gap_closed(tail["peer"], tail["editorial"], tail["oracle"]) == pytest.approx(summary["peer_gap_closed"])
    assert _beats(tail["peer"].to_numpy(), tail["editorial"].to_numpy())


def test_the_loop_learns(demo_run):
    """The champion is published on its timer, the loop serves better than the editorial order
    over the last sessions, and the model active at the end is truly better than the initial
    one: both valued by the simulator on the same 600 fresh requests, the difference exceeding
    3 standard errors (combined as if independent, which overstates them for a paired comparison)."""
    out, summary, _ = demo_run
    assert summary["published"] >= 3
    sessions = pd.read_csv(out / "sessions.csv")
    tail = sessions[sessions["session"] >= SESSIONS - TAIL]
    assert _beats(tail["served"].to_numpy(), tail["editorial"].to_numpy())
    details = json.loads((out / "summary.json").read_text())
    assert details["initial_model_version"] != details["final_model_version"]
    lift = details["final_model_reward"] - details["initial_model_reward"]
    error = np.hypot(details["final_model_stderr"], details["initial_model_stderr"])
    assert lift > 3 * error, (lift, error)
