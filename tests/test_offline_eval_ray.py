"""`evaluate` on a log held as Parquet parts: the Ray path (offline_eval.sharded) against the
single-process path, on a real local Ray (the `local_ray` fixture: 2 CPUs, shut down after)."""

import itertools
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bandit.errors import ValidationError
from offline_eval.commands import evaluate as evaluate_command
from offline_eval.evaluate import evaluate
from offline_eval.intervals import MAX_BLOCKS
from offline_eval.readers import read_log, slate_table
from offline_eval.sharded import LocalRunner, RayRunner, evaluate_parts
from tests.offline_eval_synth import draw_log, policies, small_world

N_EVENTS = 6000  # above MAX_BLOCKS: the bootstrap resamples blocks keyed by event id
N_SLOTS = 3
ESTIMATORS = ("sips", "iips", "rips", "snips_rips", "pi")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    pol = policies()
    log, target = draw_log(small_world("cascade"), pol["logger"], pol["target"], N_EVENTS, np.random.default_rng(11))
    return slate_table(log, target)


def write_parts(table: pd.DataFrame, directory, bounds) -> str:
    """The table's events split at `bounds` (event indices) into consecutive Parquet parts."""
    directory.mkdir(parents=True, exist_ok=True)
    edges = [0, *bounds, len(table) // N_SLOTS]
    for i, (start, stop) in enumerate(itertools.pairwise(edges)):
        part = pa.Table.from_pandas(table.iloc[start * N_SLOTS : stop * N_SLOTS], preserve_index=False)
        pq.write_table(part, directory / f"part-{i:05d}.parquet")
    (directory / "_SUCCESS").write_text("")  # marker files are not parts
    return str(directory)


def single_process(source, ci="bootstrap", seed=0, estimators=ESTIMATORS):
    loaded = read_log(source)
    return evaluate(loaded.log, loaded.target, estimators, rng=np.random.default_rng(seed), ci=ci, n_resamples=400)


def on_ray(directory, ci="bootstrap", seed=0, estimators=ESTIMATORS, shard_rows=1):
    return evaluate_parts(directory, estimators, rng=np.random.default_rng(seed), ci=ci, n_resamples=400,
                          runner=RayRunner(), shard_rows=shard_rows)


def assert_same(a, b, rtol=1e-9):
    assert (a.n_events, a.n_slots, list(a.estimates)) == (b.n_events, b.n_slots, list(b.estimates))
    for name in a.estimates:
        x, y = a.estimates[name].to_dict(), b.estimates[name].to_dict()
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                np.testing.assert_allclose(y[key], value, rtol=rtol, atol=1e-12, err_msg=f"{name}.{key}")
            else:
                assert y[key] == value, f"{name}.{key}"


@pytest.mark.parametrize("ci", ["bootstrap", "normal", "bernstein"])
def test_ray_gives_the_single_process_estimates_and_intervals(local_ray, tmp_path, table, ci):
    directory = write_parts(table, tmp_path / "log", [700, 2500, 2600, 5100])
    assert_same(single_process(directory, ci), on_ray(directory, ci))


def test_the_bootstrap_for_a_seed_does_not_depend_on_how_the_log_is_split(local_ray, tmp_path, table):
    reference = single_process(write_parts(table, tmp_path / "one", []))
    for name, bounds in [("three", [2000, 4000]), ("seven", [10, 900, 1000, 3000, 3001, 5999])]:
        directory = write_parts(table, tmp_path / name, bounds)
        assert_same(reference, on_ray(directory))
        assert_same(reference, on_ray(directory, shard_rows=10**9))  # the parts as one shard
    # blocks are keyed by event id, not position: the rows in another order give the same intervals
    shuffled = table.sample(frac=1.0, random_state=3)
    assert_same(reference, single_process(shuffled), rtol=1e-12)
    # and the seed matters
    assert single_process(shuffled, seed=1).estimates["rips"].upper != reference.estimates["rips"].upper


def test_a_small_log_resamples_events_in_part_order(local_ray, tmp_path):
    # at most MAX_BLOCKS events: the bootstrap resamples events themselves, in the log's order
    pol = policies()
    log, target = draw_log(small_world("independent"), pol["uniform"], pol["target"], 900, np.random.default_rng(5))
    frame = slate_table(log, target).assign(event_id=lambda f: f["event_id"].str[1:].astype(np.int64) + 10**9)
    directory = write_parts(frame, tmp_path / "small", [100, 450, 451])
    assert MAX_BLOCKS >= 900
    single, ray = single_process(directory), on_ray(directory)
    assert_same(single, ray)
    assert any("uniform over orderings" in note for note in ray.estimates["pi"].notes)
    assert_same(single_process(directory, "normal"), on_ray(directory, "normal"))


def test_the_local_runner_and_ray_agree(local_ray, tmp_path, table):
    directory = write_parts(table, tmp_path / "log", [3000])
    local = evaluate_parts(directory, None, rng=np.random.default_rng(2), n_resamples=400, runner=LocalRunner(),
                           shard_rows=1)
    assert_same(local, on_ray(directory, estimators=None, seed=2))
    assert list(local.estimates) == ["ips", "clipped_ips", "snips", "iips", "snips_iips", "rips", "snips_rips", "pi"]


def test_the_command_line_with_workers_prints_the_single_process_json(local_ray, tmp_path, table):
    directory = write_parts(table, tmp_path / "log", [1500, 3000, 4500])
    runner = CliRunner()
    outputs = []
    for extra in ([], ["--workers", "2"]):
        result = runner.invoke(evaluate_command, ["--log", directory, "--json", "--seed", "7", "--resamples", "200", *extra])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output.strip().splitlines()[-1]))
    single, ray = outputs
    assert single["n_events"] == ray["n_events"] == N_EVENTS
    assert list(single["estimates"]) == list(ray["estimates"])
    for name, estimate in single["estimates"].items():
        for key in ("value", "lower", "upper", "ess"):
            assert ray["estimates"][name][key] == pytest.approx(estimate[key], rel=1e-9), (name, key)


def test_what_only_the_whole_log_shows_is_refused(local_ray, tmp_path, table):
    # an event whose rows straddle two parts
    split = tmp_path / "split"
    split.mkdir()
    cut = 100 * N_SLOTS + 1
    pq.write_table(pa.Table.from_pandas(table.iloc[:cut], preserve_index=False), split / "a.parquet")
    pq.write_table(pa.Table.from_pandas(table.iloc[cut : 300 * N_SLOTS], preserve_index=False), split / "b.parquet")
    with pytest.raises(ValidationError, match="slot: every event must fill the same slots"):
        on_ray(str(split))
    # the same event in two parts
    twice = tmp_path / "twice"
    twice.mkdir()
    pq.write_table(pa.Table.from_pandas(table.iloc[: 200 * N_SLOTS], preserve_index=False), twice / "a.parquet")
    pq.write_table(pa.Table.from_pandas(table.iloc[150 * N_SLOTS : 300 * N_SLOTS], preserve_index=False), twice / "b.parquet")
    with pytest.raises(ValidationError, match="event_id: an event's rows must lie in one part"):
        on_ray(str(twice))
    # integer ids: overlapping ranges send the driver back for the ids themselves
    numbered = table.assign(event_id=lambda f: f["event_id"].str[1:].astype(np.int64))
    interleaved, clash = tmp_path / "interleaved", tmp_path / "clash"
    write_parts(numbered.iloc[: 40 * N_SLOTS], interleaved, [])
    odd = numbered.iloc[40 * N_SLOTS : 80 * N_SLOTS].assign(event_id=lambda f: f["event_id"] - 39)
    pq.write_table(pa.Table.from_pandas(odd, preserve_index=False), interleaved / "part-00001.parquet")
    with pytest.raises(ValidationError, match=r"event_id: an event's rows must lie in one part.*\[1, 2, 3\]"):
        on_ray(str(interleaved))
    even = numbered.iloc[: 40 * N_SLOTS].assign(event_id=lambda f: f["event_id"] * 2)
    odd = numbered.iloc[40 * N_SLOTS : 80 * N_SLOTS].assign(event_id=lambda f: (f["event_id"] - 40) * 2 + 1)
    write_parts(even, clash, [])
    pq.write_table(pa.Table.from_pandas(odd, preserve_index=False), clash / "part-00001.parquet")
    assert on_ray(str(clash)).n_events == 80  # the ranges overlap, the ids do not: accepted
    # parts whose events have different numbers of slots
    slots = tmp_path / "slots"
    slots.mkdir()
    pq.write_table(pa.Table.from_pandas(table.iloc[: 30 * N_SLOTS], preserve_index=False), slots / "a.parquet")
    two_slots = table.iloc[30 * N_SLOTS : 60 * N_SLOTS].query("slot < 2")
    pq.write_table(pa.Table.from_pandas(two_slots, preserve_index=False), slots / "b.parquet")
    with pytest.raises(ValidationError, match=r"the parts have K = \[2, 3\]"):
        on_ray(str(slots))
    # an estimator a slate table cannot support, and a log without parts
    directory = write_parts(table, tmp_path / "log", [3000])
    with pytest.raises(ValidationError, match="'dr' needs the target's marginal distribution"):
        on_ray(directory, estimators=("dr",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="log: holds no Parquet parts"):
        on_ray(str(tmp_path / "empty"))


def test_a_part_refused_on_a_ray_worker_is_refused_on_the_driver_as_in_one_process(local_ray, tmp_path, table):
    """A shard's ValidationError crosses from the worker as a value and is raised as itself."""
    broken = table.copy()
    broken.loc[broken.index[N_SLOTS * 250], "logging_prob"] = 1.5
    directory = write_parts(broken, tmp_path / "broken", [200])
    with pytest.raises(ValidationError) as locally:
        evaluate_parts(directory, ESTIMATORS, rng=np.random.default_rng(0), n_resamples=50, runner=LocalRunner())
    with pytest.raises(ValidationError) as on_workers:
        on_ray(directory)
    assert (on_workers.value.field, on_workers.value.rule) == (locally.value.field, locally.value.rule)
    assert "logging_prob" in str(on_workers.value)
