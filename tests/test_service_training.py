"""Trainer workers on a real local Ray: exact resume after a kill, the records, and `shelfbandit
train` (publishing and the challenger gate: tests/test_service_publishing.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bandit.config import RankerConfig
from bandit.errors import ShelfBanditError, ValidationError
from bandit.vw.ranker import VWShelfRanker
from offline_eval.gate import GateRule
from service.join.reader import JoinedLog
from service.training.candidates import Candidate, read_candidates
from service.training.judge import GateSettings
from service.training.loop import TrainingLoop
from service.training.records import read_records
from service.training.state import CHECKPOINT, JOURNAL, candidate_dir, model_name
from service.training.worker import CandidateTrainer
from shelfbandit.cli import cli
from tests.service_training_support import TinyWorld, log_and_join

SQUARECB = Candidate("squarecb", RankerConfig(explorer="squarecb"))
UNIFORM = Candidate("uniform", RankerConfig(explorer="epsilon", epsilon=1.0))
BIN = Path(sys.executable).parent / "shelfbandit"


def joined_event_ids(data_dir: Path) -> list[list[str]]:
    """Event ids of every committed part, read straight from the joined lines."""
    return [[json.loads(line)["EventId"] for line in part.jsonl.read_text().splitlines()] for part in JoinedLog(data_dir).parts()]


def digest(event_ids: list[str]) -> str:
    return hashlib.sha256("".join(f"{e}\n" for e in event_ids).encode()).hexdigest()


def uniform_log(data_dir: Path, n_events: int, part_size: int, seed: int) -> TinyWorld:
    """A strong-signal world logged by a fresh ranker (every shelf tied: uniformly random)."""
    rng = np.random.default_rng(seed)
    world = TinyWorld.strong(rng)
    log_and_join(data_dir, world, VWShelfRanker(RankerConfig(epsilon=0.2)), n_events, part_size, rng, "u")
    return world


def wait_for_part(state: Path, part: int, timeout_s: float = 60.0) -> None:
    """Until the candidate's committed checkpoint has reached `part` (training of it under way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads((state / CHECKPOINT).read_text())["next_part"] >= part:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.005)
    raise AssertionError(f"the trainer did not reach part {part} within {timeout_s} s")


def reference_trainer(data_dir: Path, name: str) -> CandidateTrainer:
    """The same configuration trained once, uninterrupted, in this process (no Ray)."""
    trainer = CandidateTrainer(data_dir, Candidate(name, SQUARECB.config))
    trainer.train()
    return trainer


# -- exact resume -------------------------------------------------------------------------------

def test_a_trainer_killed_mid_stream_resumes_exactly(local_ray, tmp_path):
    uniform_log(tmp_path, 2400, 300, seed=3)
    parts = joined_event_ids(tmp_path)
    assert len(parts) == 8
    state = candidate_dir(tmp_path, SQUARECB.name)
    kills = []
    with TrainingLoop(tmp_path, [SQUARECB], max_events_per_round=1200) as loop:
        for part in (2, 4):  # one kill in each round (4 parts each), while a later part trains
            pid = loop.statuses[0]["pid"]
            rounds = []
            worker = threading.Thread(target=lambda rounds=rounds: rounds.append(loop.run_once()))
            worker.start()
            wait_for_part(state, part)
            os.kill(pid, signal.SIGKILL)
            worker.join(timeout=120)
            kills.append((part, rounds[0].lost, json.loads((state / CHECKPOINT).read_text())["next_part"]))
        loop.backfill()
        final = loop.statuses[0]
    assert [lost for _, lost, _ in kills] == [("squarecb",), ("squarecb",)]
    assert all(part <= committed < 8 for part, _, committed in kills)  # killed mid-stream
    assert final["next_part"] == 8 and final["events_trained"] == 2400

    reference = reference_trainer(tmp_path, "reference")
    killed_model = Path(final["model"]).read_bytes()
    assert killed_model == Path(reference.status()["model"]).read_bytes()
    # and score for score against VW learning the same parts in the same order without scoring
    plain = VWShelfRanker(SQUARECB.config)
    for part in JoinedLog(tmp_path).parts():
        plain.learn_file(part.jsonl)
    resumed = VWShelfRanker.load(final["model"])
    world = TinyWorld.strong(np.random.default_rng(3))
    for segment in range(4):
        costs, _ = resumed.score(world.context(segment), world.shelves, 2)
        np.testing.assert_array_equal(costs, plain.score(world.context(segment), world.shelves, 2)[0])

    trained = [r for r in read_records(tmp_path, "trained") if r["candidate"] == "squarecb"]
    assert [r["step"] for r in trained] == list(range(1, 9))
    assert [r["parts"] for r in trained] == [[p] for p in range(8)]
    assert [r["events_sha256"] for r in trained] == [digest(ids) for ids in parts]
    assert [(r["first_event_id"], r["last_event_id"], r["n_events"]) for r in trained] == [(ids[0], ids[-1], len(ids)) for ids in parts]
    assert [r["events_trained"] for r in trained] == list(range(300, 2401, 300))
    scored = [e for r in trained for e in pd.read_parquet(state / r["scores"])["event_id"][::2]]
    assert scored == [e for ids in parts for e in ids]


def test_a_corrupt_checkpoint_model_is_refused_with_the_candidate_named(tmp_path):
    uniform_log(tmp_path, 300, 300, seed=13)
    model = Path(CandidateTrainer(tmp_path, SQUARECB).train()["status"]["model"])
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(ShelfBanditError, match=r"candidate squarecb: the checkpoint's model is unusable .*payload does not match"):
        CandidateTrainer(tmp_path, SQUARECB)


def test_each_event_is_scored_by_the_model_before_it_learns_that_event(tmp_path):
    from bandit.batch import EventBatch
    from offline_eval.readers import read_dsjson
    from offline_eval.scoring import score_policy

    uniform_log(tmp_path, 600, 300, seed=11)
    trainer = CandidateTrainer(tmp_path, SQUARECB)
    steps = trainer.train()["steps"]
    lines = [line for part in JoinedLog(tmp_path).parts() for line in part.jsonl.read_text().splitlines(keepends=True)]
    events = [e for part in JoinedLog(tmp_path).parts() for e in read_dsjson(part.jsonl)]
    state = trainer.state.directory
    scores = pd.concat([pd.read_parquet(state / s["scores"]) for s in steps], ignore_index=True)
    assert scores["event_id"].tolist() == [e.decision.event_id for e in events for _ in range(2)]
    # a fresh model ties every shelf: slot k of the first event picks uniformly among the 6 - k left
    np.testing.assert_allclose(scores["target_prob"][:2], 1.0 / (6 - scores["slot"][:2]))
    # event i: the scores of a ranker that learned the events before it (across parts) with VW's own reader
    for i in (1, 150, 300, 599):
        head = tmp_path / "head.jsonl"
        head.write_text("".join(lines[:i]))
        before = VWShelfRanker(SQUARECB.config)
        before.learn_file(head)
        expected = score_policy(before, EventBatch.from_events(events[i : i + 1]))
        np.testing.assert_array_equal(scores["target_prob"][2 * i : 2 * i + 2], expected.prob.ravel())
        np.testing.assert_array_equal(scores["target_marginal"][2 * i : 2 * i + 2], expected.marginal.ravel())
    # and not by the model as it stood at the start of the event's part
    part_start = score_policy(VWShelfRanker(SQUARECB.config), EventBatch.from_events(events[250:300]))
    assert not np.allclose(scores["target_prob"][500:600], part_start.prob.ravel())
    assert steps[0]["scored_by"] == f"vw-new-{SQUARECB.config.config_id()}"
    assert steps[1]["scored_by"] == steps[0]["model_version"] != steps[1]["model_version"]


def test_a_crash_between_writing_a_model_and_moving_the_pointer_resumes_at_the_pointer(tmp_path):
    uniform_log(tmp_path, 900, 300, seed=4)
    crashed = CandidateTrainer(tmp_path, SQUARECB)
    crashed.train(max_parts=2)
    state = crashed.state.directory
    # what a kill leaves after step 3's model and journal line were written, before the pointer moved
    part = JoinedLog(tmp_path).parts(2)[0]
    crashed.policy.learn_file(part.jsonl)
    crashed.policy.save(state / model_name(3))
    with open(state / JOURNAL, "ab") as journal:
        journal.write(json.dumps({"step": 3, "candidate": "squarecb"}).encode() + b"\n" + b'{"step": 4, "cand')
    (state / "models" / f".{Path(model_name(4)).name}.tmp123").write_bytes(b"torn")

    resumed = CandidateTrainer(tmp_path, SQUARECB)
    assert (resumed.status()["step"], resumed.status()["next_part"], resumed.status()["events_trained"]) == (2, 2, 600)
    assert sorted(p.name for p in (state / "models").iterdir()) == [
        "step-00000001.model", "step-00000001.model.json", "step-00000002.model", "step-00000002.model.json"]
    assert len((state / JOURNAL).read_text().splitlines()) == 2
    steps = resumed.train()["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert Path(resumed.status()["model"]).read_bytes() == Path(reference_trainer(tmp_path, "reference").status()["model"]).read_bytes()


# -- the command --------------------------------------------------------------------------------

def candidates_file(path: Path, candidates: list[Candidate]) -> Path:
    path.write_text(json.dumps([c.to_dict() for c in candidates]))
    return path


def test_train_backfills_everything_joined_then_a_rerun_has_nothing_left(local_ray, tmp_path):
    data_dir = tmp_path / "data"
    uniform_log(data_dir, 900, 300, seed=7)
    chosen = candidates_file(tmp_path / "candidates.json", [SQUARECB, UNIFORM])
    assert read_candidates(chosen) == (SQUARECB, UNIFORM)
    args = ["train", "--data-dir", str(data_dir), "--candidates", str(chosen), "--max-events-per-round", "600", "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output.strip().splitlines()[-1])
    assert summary["events_trained"] == 1800 and summary["rounds"] == 3  # 2 rounds of 600 and 300 events each, then none
    assert [(c["candidate"], c["events_trained"], c["next_part"]) for c in summary["candidates"]] == [("squarecb", 900, 3), ("uniform", 900, 3)]
    assert summary["promoted"] == [] and summary["champion"] == "squarecb"
    assert len(summary["published"]) == 2  # when first due, and the last model once everything is trained
    assert summary["active_version"] == summary["published"][-1] == summary["candidates"][0]["model_version"]
    assert len(read_records(data_dir, "trained")) == 6
    again = CliRunner().invoke(cli, args)
    assert json.loads(again.output.strip().splitlines()[-1])["events_trained"] == 0
    assert len(read_records(data_dir, "trained")) == 6
    shutil.rmtree(candidate_dir(data_dir, "uniform"))  # starting one candidate over
    over = CliRunner().invoke(cli, args)
    assert json.loads(over.output.strip().splitlines()[-1])["events_trained"] == 900
    assert [(r["candidate"], r["step"]) for r in read_records(data_dir, "trained")][6:] == [("uniform", 1), ("uniform", 2), ("uniform", 3)]


def test_a_part_the_trainer_cannot_read_stops_the_loop_with_the_reason(local_ray, tmp_path):
    uniform_log(tmp_path, 600, 300, seed=12)
    part = JoinedLog(tmp_path).parts()[1]
    part.jsonl.write_text(part.jsonl.read_text() + "{not json\n")
    with TrainingLoop(tmp_path, [UNIFORM]) as loop:
        with pytest.raises(ShelfBanditError, match="a trainer failed: candidate uniform: line 301: line: not valid JSON"):
            loop.run_once()
        assert loop.statuses[0]["next_part"] == 0  # round failed before its statuses were taken
    assert CandidateTrainer(tmp_path, UNIFORM).status()["next_part"] == 1  # part 0 was committed


def test_a_candidate_name_keeps_its_configuration(tmp_path):
    uniform_log(tmp_path, 300, 300, seed=8)
    CandidateTrainer(tmp_path, SQUARECB).train()
    changed = Candidate("squarecb", RankerConfig(explorer="squarecb", learning_rate=0.1))
    with pytest.raises(ValidationError, match=r"candidates.squarecb: its state .* another configuration \(learning_rate differ\)"):
        TrainingLoop(tmp_path, [changed]).start()


@pytest.mark.parametrize("content, message", [
    ("{not json", "candidates: is not valid JSON"),
    ('{"name": "a"}', "candidates: must be a JSON list of candidate objects"),
    ('[{"name": "a", "epsilon": 2}]', "candidates[0].epsilon: must lie in [0, 1]"),
    ('[{"name": "a/b"}]', "candidates[0].name: must be 1-64 letters"),
    ('[{"name": "a"}, {"name": "a", "explorer": "squarecb"}]', "candidates: names must be unique"),
    ('[{"name": "a", "speed": 3}]', "candidates[0].config: unknown fields"),
])
def test_train_refuses_a_bad_candidates_file_in_one_line(tmp_path, content, message):
    path = tmp_path / "candidates.json"
    path.write_text(content)
    with pytest.raises(ValidationError) as refused:
        read_candidates(path)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("settings, message", [
    ({"min_events": 0}, "min_events: must be at least 1"),
    ({"min_events": 500, "window_events": 400}, "window_events: must be at least min_events (500)"),
    ({"ci": "jackknife"}, "ci: must be one of bootstrap, normal, bernstein"),
    ({"rule": GateRule(primary="dr")}, "rule.primary: must be an estimator the progressive scores support"),
])
def test_gate_settings_name_the_broken_rule(settings, message):
    with pytest.raises(ValidationError) as refused:
        GateSettings(**settings)
    assert str(refused.value).startswith(message)


def test_the_command_reports_a_bad_candidates_file_without_a_traceback(tmp_path):
    path = tmp_path / "candidates.json"
    path.write_text('[{"name": "a", "epsilon": 2}]')
    result = subprocess.run([str(BIN), "train", "--data-dir", str(tmp_path), "--candidates", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: candidates[0].epsilon: must lie in [0, 1] (found 2)"


def test_follow_trains_new_parts_as_they_are_joined_and_ctrl_c_stops_cleanly(tmp_path):
    data_dir = tmp_path / "data"
    world = uniform_log(data_dir, 600, 300, seed=9)
    chosen = candidates_file(tmp_path / "candidates.json", [SQUARECB])
    command = [str(BIN), "train", "--data-dir", str(data_dir), "--candidates", str(chosen), "--follow",
               "--interval", "0.2", "--num-cpus", "1", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_part(candidate_dir(data_dir, "squarecb"), 2, timeout_s=90)
        log_and_join(data_dir, world, VWShelfRanker(RankerConfig(epsilon=0.2)), 600, 300, np.random.default_rng(10), "late")
        wait_for_part(candidate_dir(data_dir, "squarecb"), 4, timeout_s=60)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["candidates"][0]["events_trained"] == 1200 and summary["candidates"][0]["next_part"] == 4
    assert "Traceback" not in err


def test_logging_only_events_are_scored_but_never_learned(tmp_path):
    world = uniform_log(tmp_path, 600, 300, seed=12)
    first, second = JoinedLog(tmp_path).parts()
    # events of a logging-only arm: every third one of the first part, all of the second
    records = [json.loads(line) for line in first.jsonl.read_text().splitlines()]
    for i, record in enumerate(records):
        record["_learn"] = i % 3 != 0
    first.jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    second.jsonl.write_text("".join(json.dumps({**json.loads(line), "_learn": False}) + "\n"
                                    for line in second.jsonl.read_text().splitlines()))
    trainer = CandidateTrainer(tmp_path, SQUARECB)
    steps = trainer.train()["steps"]
    kept = [r for r in records if r["_learn"]]
    assert [s["n_events"] for s in steps] == [len(kept), 0]
    assert steps[0]["first_event_id"] == kept[0]["EventId"] and steps[0]["last_event_id"] == kept[-1]["EventId"]
    assert steps[1]["first_event_id"] is None and steps[1]["next_part"] == 2
    assert len(pd.read_parquet(trainer.state.directory / steps[1]["scores"])) == 300 * world.n_slots  # scored all the same
    only_learnable = tmp_path / "learnable.jsonl"
    only_learnable.write_text("".join(json.dumps(r) + "\n" for r in kept))
    expected = VWShelfRanker(SQUARECB.config)
    expected.learn_file(only_learnable)
    assert trainer.status()["model_version"] == steps[-1]["model_version"]
    np.testing.assert_array_equal(trainer.policy.score(world.context(1), world.shelves, world.n_slots)[0],
                                  expected.score(world.context(1), world.shelves, world.n_slots)[0])
