"""`shelfbandit demo` end to end: the service, the joiner, Ray trainers and the launch gate,
driven by simulated listeners over HTTP. The loop must learn, and stop everything it started."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent / "shelfbandit"


def _processes(pattern: str) -> set[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return {int(pid) for pid in found}


def test_the_loop_learns_and_the_demo_stops_what_it_started(tmp_path):
    before = _processes("raylet") | _processes("shelfbandit.cli import main; main()")
    out = tmp_path / "demo"
    result = subprocess.run(
        [str(BIN), "demo", "--sessions", "2000", "--rate", "50", "--reward-window", "3", "--min-events", "300",
         "--seed", "11", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("policy_reward", "baseline_reward", "random_reward", "oracle_reward", "gap_closed", "promoted_versions"):
        assert key in summary
    assert summary["oracle_reward"] > summary["baseline_reward"] > summary["random_reward"] > 0
    # the active model at the end is truly better than the initial one: both valued by the
    # simulator on the same 600 fresh requests; the difference must exceed 3 standard errors
    # (the errors are combined as if independent, which overstates them for a paired comparison)
    details = json.loads((out / "summary.json").read_text())
    assert summary["promoted_versions"], "no candidate was promoted"
    lift = details["final_model_reward"] - details["initial_model_reward"]
    error = np.hypot(details["final_model_stderr"], details["initial_model_stderr"])
    assert lift > 3 * error, (lift, error)
    for name in ("demo.png", "rewards.csv", "gate_decisions.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    decisions = pd.read_csv(out / "gate_decisions.csv")
    assert set(decisions["verdict"]) <= {"promoted", "ship", "do not ship", "not enough data"}  # ship: outdone the same round
    assert (decisions["verdict"] == "promoted").sum() == len(summary["promoted_versions"])
    after = _processes("raylet") | _processes("shelfbandit.cli import main; main()")
    assert after <= before, f"left running: {sorted(after - before)}"
