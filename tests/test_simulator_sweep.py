"""Sweeps on a real local Ray: determinism across worker counts, resuming, failures, the command."""

import json

import numpy as np
import pandas as pd
import pytest
import ray
from click.testing import CliRunner

from bandit.errors import ShelfBanditError, ValidationError
from shelfbandit.cli import cli
from simulator.policies import PolicySpec
from simulator.sweep import SweepGrid, WorldSpec, run_sweep, summary_table

GRID = SweepGrid(
    policies=(PolicySpec.parse("vw:explorer=squarecb"), PolicySpec.parse("editorial")),
    worlds=(WorldSpec.parse("default"), WorldSpec.parse("click_model=cascade,n_segments=4")),
    seeds=2,
    sessions=150,
    seed=9,
)
TIMING = ["runtime_s"]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """One local Ray with 2 CPUs: a full sweep, a resumed one, a failing one and the command."""
    out = tmp_path_factory.mktemp("sweep2")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        first = run_sweep(GRID, out, progress=False)
        removed = sorted((out / "cells").glob("*.parquet"))[3]
        removed.unlink()
        (out / "cells" / ".half-written.parquet.tmp").write_bytes(b"PAR1 torn")
        resumed = run_sweep(GRID, out, progress=False)
        broken = SweepGrid(policies=(PolicySpec.parse("model:path=/nonexistent/model.vw"),), seeds=1, sessions=20)
        with pytest.raises(ShelfBanditError, match=r"a sweep cell failed .*rerun to resume") as failure:
            run_sweep(broken, tmp_path_factory.mktemp("broken"), progress=False)
        command_out = tmp_path_factory.mktemp("command")
        command = CliRunner().invoke(cli, ["sweep", "--policy", "uniform", "--policy", "oracle", "--seeds", "2",
                                           "--sessions", "60", "--out", str(command_out), "--json"])
    finally:
        ray.shutdown()
    return {"first": first, "resumed": resumed, "failure": failure, "command": command, "command_out": command_out}


def test_results_have_one_row_per_cell_with_config_columns_and_metrics(two_workers):
    results = two_workers["first"].results
    assert len(results) == 2 * 2 * 2 and results["cell_id"].is_unique
    assert {"world", "world_click_model", "policy", "policy_kind", "ranker_explorer", "ranker_gamma_scale", "replicate",
            "sessions", "expected_reward_last", "gap_closed_last", "regret", "regret_curve"} <= set(results)
    vw = results[results["policy_kind"] == "vw"]
    assert (vw["ranker_explorer"] == "squarecb").all()
    assert results.loc[results["policy_kind"] == "editorial", "ranker_explorer"].isna().all()
    assert set(results["world_click_model"]) == {"position", "cascade"}
    assert all(len(curve) == 50 for curve in results["regret_curve"])
    for path in two_workers["first"].paths.values():
        assert path.stat().st_size > 0


def test_policies_on_one_world_and_replicate_share_their_requests(two_workers):
    results = two_workers["first"].results
    oracle = results.groupby(["world", "replicate"])["oracle_reward"].nunique()
    assert (oracle == 1).all()  # same requests for every policy of a (world, replicate)
    assert results.groupby(["world", "policy"])["oracle_reward"].nunique().eq(2).all()  # replicates differ


def test_a_rerun_skips_finished_cells_and_redoes_only_the_missing_one(two_workers):
    resumed = two_workers["resumed"]
    assert (resumed.ran, resumed.skipped) == (1, 7)
    first = two_workers["first"].results.drop(columns=TIMING)
    assert resumed.results.drop(columns=TIMING).equals(first)


def test_one_worker_gives_the_same_results_as_two(two_workers, tmp_path):
    one = run_sweep(GRID, tmp_path, workers=1, progress=False)  # starts and stops its own local Ray
    assert not ray.is_initialized()
    pd.testing.assert_frame_equal(one.results.drop(columns=TIMING), two_workers["first"].results.drop(columns=TIMING))


def test_a_failing_cell_stops_the_sweep_with_a_clear_error(two_workers):
    assert "ModelFileError" in str(two_workers["failure"].value)


def test_sweep_command_prints_the_summary_table(two_workers):
    command = two_workers["command"]
    assert command.exit_code == 0, command.output
    summary = json.loads(command.stdout.strip().splitlines()[-1])
    assert summary["cells"] == 4 and summary["ran"] == 4
    table = {row["policy"]: row for row in summary["table"]}
    assert table["oracle"]["regret"] == pytest.approx(0.0, abs=1e-9)
    assert table["uniform"]["regret_lower"] <= table["uniform"]["regret"] <= table["uniform"]["regret_upper"]
    assert (two_workers["command_out"] / "regret.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_intervals_by_hand():
    results = pd.DataFrame({"world": "w", "policy": "p", "expected_reward_last": [1.0, 2.0, 3.0],
                            "gap_closed_last": [0.5, 0.5, 0.5], "regret": [10.0, 10.0, 40.0]})
    row = summary_table(results).iloc[0]
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (row["expected_reward_last_lower"], row["expected_reward_last_upper"]) == pytest.approx((2 - half, 2 + half))
    assert row["gap_closed_last_lower"] == row["gap_closed_last_upper"] == 0.5
    single = summary_table(results.iloc[:1]).iloc[0]
    assert np.isnan(single["regret_lower"])


@pytest.mark.parametrize("grid, message", [
    ({"policies": []}, "policies: a sweep needs at least one policy"),
    ({"policies": [{"policy": "uniform"}, {"policy": "uniform"}]}, "policies: labels must be unique"),
    ({"policies": [{"kind": "uniform"}]}, "policies[].policy: every policy entry needs its kind"),
    ({"policies": [{"policy": "uniform"}], "seeds": 0}, "seeds: must be a positive integer"),
    ({"policies": [{"policy": "uniform"}], "worlds": [{"n_slots": 40}]}, "n_slots: must not exceed min_candidates"),
    ({"policies": [{"policy": "uniform"}], "worlds": [{"delay_mean_s": 30}]}, "reward_window_s: must be > 0"),
    ({"policies": [{"policy": "uniform"}], "repeats": 2}, "grid: unknown keys"),
])
def test_bad_grids_fail_before_any_work(grid, message):
    with pytest.raises(ValidationError) as err:
        SweepGrid.from_dict(grid)
    assert str(err.value).startswith(message)


def test_a_grid_file_names_its_cells():
    grid = SweepGrid.from_dict({
        "policies": [{"policy": "vw", "name": "squarecb", "explorer": "squarecb"},
                     {"policy": "vw", "explorer": "epsilon", "epsilon": 0.1}, {"policy": "editorial"}],
        "worlds": [{"name": "default"}, {"click_model": "cascade"}],
        "seeds": 2, "sessions": 500, "learn_every": 5, "seed": 4,
    })
    cells = grid.cells()
    assert len(cells) == 3 * 2 * 2 and len({c.cell_id() for c in cells}) == 12
    assert [p.label for p in grid.policies] == ["squarecb", "vw:explorer=epsilon,epsilon=0.1", "editorial"]
    assert [w.label for w in grid.worlds] == ["default", "click_model=cascade"]
    assert grid.worlds[1].config.click_model == "cascade" and grid.loop.learn_every == 5
    # a cell's seeds follow its world's config, not its place in the grid
    worlds = [{"name": "x", "click_model": "cascade"}]
    relabelled = SweepGrid.from_dict({"policies": [{"policy": "editorial"}], "worlds": worlds, "seed": 4}).cells()[0]
    cascade = next(c for c in cells if c.world.label == "click_model=cascade" and c.replicate == 0)
    default = next(c for c in cells if c.world.label == "default" and c.replicate == 0)
    assert relabelled.seeds()[0].spawn_key == cascade.seeds()[0].spawn_key
    assert relabelled.seeds()[0].spawn_key != default.seeds()[0].spawn_key
