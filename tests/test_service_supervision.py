"""Supervised background work: a real fault fails a task, it is counted, logged once and
retried with backoff, `/readyz` names it while `/v1/rank` serves on, and it recovers by itself."""

import json
import os
import shutil
import time

import pytest

from service.eventlog.segments import LogWriteError, SegmentWriter
from service.join.joiner import JoinConfig, Joiner
from service.layout import DataPaths
from service.ops.doctor import PROBLEM, diagnose
from service.ops.metrics import ServiceMetrics
from service.settings import Settings
from service.supervisor import Supervised
from service.training.publishing import write_status
from service.training.state import training_dir
from tests.service_support import logged_decisions, rank_body, running_service, wait_until, write_segment
from tests.test_service_http import wait_joined


def failures(metrics: ServiceMetrics, task: str) -> float:
    return metrics.registry.get_sample_value("shelfbandit_background_failures_total", {"task": task}) or 0.0


def test_backoff_doubles_up_to_its_cap_and_a_success_ends_the_streak():
    metrics = ServiceMetrics()
    outcomes = [ValueError("one"), ValueError("one"), ValueError("one"), None]
    task = Supervised("t", lambda: 0.0, metrics, base_s=0.01, max_backoff_s=0.03)
    waits = []
    for outcome in outcomes:
        if outcome is None:
            task._succeeded()
        else:
            waits.append(task._failed(outcome))
    assert waits == [0.01, 0.02, 0.03] and task.failing is None and task.n_failures == 0
    assert failures(metrics, "t") == 3
    assert metrics.registry.get_sample_value("shelfbandit_background_failing", {"task": "t"}) == 0


def test_a_failed_group_commit_acknowledges_nothing_and_the_committer_recovers(tmp_path):
    """A real fault: the log directory is replaced by a file, so the next segment cannot be opened."""
    metrics = ServiceMetrics()
    directory = tmp_path / "decisions"
    writer = SegmentWriter(directory, "decisions", durability="group", max_bytes=1, metrics=metrics)
    try:
        writer.append(b'{"ok":1}\n')
        shutil.rmtree(directory)
        directory.write_text("not a directory")
        with pytest.raises(LogWriteError):
            writer.append(b'{"lost":1}\n')
        # the batch's requests fail first, then the committer records the failure
        assert wait_until(lambda: writer.committer.failing).startswith("LogWriteError")
        assert failures(metrics, "decisions-committer") == 1
        directory.unlink()
        directory.mkdir()
        wait_until(lambda: writer.submit(b'{"ok":2}\n').exception(timeout=5) is None)
        assert writer.committer.failing is None
    finally:
        writer.close()
    assert b"lost" not in b"".join(p.read_bytes() for p in directory.glob("*.jsonl"))


def test_a_failing_joiner_makes_readyz_503_while_rank_serves_then_recovers(tmp_path):
    data_dir = tmp_path / "data"
    settings = {"reward_window_s": 0.5, "join_grace_s": 0.1, "join_interval_s": 0.2, "background_max_backoff_s": 0.5}
    with running_service(data_dir, **settings) as server, server.client() as client:
        slates = DataPaths(data_dir).slates
        wait_until(slates.is_dir)
        shutil.rmtree(slates)
        slates.write_text("a file where the joiner expects its slate tables")
        assert client.post("/v1/rank", json=rank_body(event_id="during-fault")).status_code == 200
        unready = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r.json())
        assert unready["ready"] is False and list(unready["failing"]) == ["joiner"]
        assert unready["failing"]["joiner"].startswith(("NotADirectoryError", "FileExistsError"))
        assert client.post("/v1/rank", json=rank_body(event_id="still-serving")).status_code == 200
        time.sleep(1.0)  # several retries of the same failure
        slates.unlink()
        ready = wait_until(lambda: (r := client.get("/readyz")).status_code == 200 and r.json())
        assert ready == {"ready": True, "model_version": ready["model_version"], "failing": {}}
        wait_joined(data_dir, "during-fault")
        wait_joined(data_dir, "still-serving")
        exposition = client.get("/metrics").text
    counted = [line for line in exposition.splitlines() if line.startswith('shelfbandit_background_failures_total{task="joiner"}')]
    assert len(counted) == 1 and float(counted[0].split()[-1]) >= 2
    logged = [json.loads(line) for line in server.log().splitlines() if '"background task failed' in line]
    assert len(logged) == 1 and logged[0]["task"] == "joiner" and "Traceback" in logged[0]["traceback"]
    assert any('"background task recovered"' in line for line in server.log().splitlines())


def test_doctor_names_decisions_overdue_for_joining_and_a_stalled_trainer(tmp_path):
    now = time.time()
    settings = Settings(data_dir=str(tmp_path), reward_window_s=10.0, join_grace_s=0.0, join_interval_s=5.0)
    paths = DataPaths(tmp_path)
    _, recent, _, _ = logged_decisions(2, now - 12.0, 0.1)  # past the window, within 3 join intervals
    write_segment(paths.decisions, "decisions", recent, 1)
    verdict = {f.check: f for f in diagnose(settings)}
    assert verdict["joiner"].status == "ok" and "2 ready for the next join pass" in verdict["joiner"].message
    _, old, _, _ = logged_decisions(3, now - 40.0, 0.1, seed=1)  # 30 s past the window: 6 intervals
    write_segment(paths.decisions, "decisions", old, 0)
    problems = [f.message for f in diagnose(settings) if f.status == PROBLEM and f.check == "joiner"]
    assert len(problems) == 1 and problems[0].startswith("3 decision(s) are past their reward window by more than 3 join intervals (15 s)")

    with Joiner(tmp_path, JoinConfig(10.0, grace_s=0.0)) as joiner:
        assert joiner.run_once().n_events == 5
    candidate = training_dir(tmp_path) / "candidates" / "champion"
    candidate.mkdir(parents=True)  # a trainer that never committed a step
    verdict = {f.check: f for f in diagnose(settings)}
    assert verdict["trainer"].status == "ok" and "1 part(s) behind" in verdict["trainer"].message
    old_time = now - 3600
    os.utime(candidate, (old_time, old_time))
    os.utime(paths.joined / "part-00000000.jsonl", (old_time, old_time))
    verdict = {f.check: f for f in diagnose(settings)}
    assert verdict["trainer"].status == PROBLEM
    assert verdict["trainer"].message.startswith("1 candidate(s) have committed no step for more than 600 s although joined parts wait")
    exposition = ServiceMetrics(training_dir(tmp_path)).exposition().decode()
    assert "shelfbandit_training_parts_behind 1.0" in exposition
    waiting = [line for line in exposition.splitlines() if line.startswith("shelfbandit_training_waiting_since_timestamp_seconds ")]
    assert len(waiting) == 1 and float(waiting[0].split()[-1]) == pytest.approx(old_time, abs=0.01)
    write_status(training_dir(tmp_path), {"candidates": ["renamed"], "interval_s": 60.0, "started": now})
    stalled = [f for f in diagnose(settings) if f.check == "trainer" and f.status == PROBLEM]
    assert stalled == []  # the directory of a candidate the trainer no longer runs is no backlog
