"""Faults of the logs and of time: a decision segment gets a corrupt line in its middle, the joiner
is SIGKILLed in the middle of its parts, and the wall clock steps back by an hour. After each,
every acknowledged decision is in the log once and every joined event in the joined log once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from service.eventlog.segments import segment_paths
from service.layout import DECISION_KIND, REWARD_KIND, DataPaths
from tests.faults_support import SHELFBANDIT, FaultHooks, doctor, joined_events, logged_events, metric
from tests.service_support import logged_decisions, rank_body, reward, running_service, wait_until, write_segment

FAST_JOIN = {"reward_window_s": 2.0, "join_grace_s": 0.2, "join_interval_s": 0.3, "background_max_backoff_s": 1.0}


def rank_all(client, event_ids) -> list[str]:
    for event_id in event_ids:
        answer = client.post("/v1/rank", json=rank_body(event_id=event_id))
        assert answer.status_code == 200, answer.text
    return list(event_ids)


def reward_all(client, event_ids, slot: int) -> None:
    for event_id in event_ids:
        answer = client.post("/v1/reward", json={"event_id": event_id, "slot": slot, "value": 1.0})
        assert answer.status_code == 200, answer.text


def joined_rewards(data: Path) -> dict[tuple[str, int], float]:
    from service.join.reader import JoinedLog

    table = JoinedLog(data).slate_table()
    return {(e, int(s)): float(r) for e, s, r in zip(table["event_id"], table["slot"], table["reward"])}


def corrupt_line(path: Path, number: int) -> bytes:
    """Overwrite the middle of line `number` in place (same length, newline kept): bit rot."""
    lines = path.read_bytes().splitlines(keepends=True)
    start = sum(len(line) for line in lines[:number])
    middle = len(lines[number]) // 2
    with open(path, "r+b") as handle:
        handle.seek(start + middle)
        handle.write(b"\x00\xff" * 8)
    return lines[number]


def test_a_corrupt_line_in_the_middle_of_a_segment(tmp_path):
    data = tmp_path / "data"
    settings = {**FAST_JOIN, "reward_window_s": 4.0}
    with running_service(data, **settings) as server, server.client() as client:
        acked = rank_all(client, [f"ev-{i:03d}" for i in range(20)])
        reward_all(client, acked, slot=0)
        [segment] = segment_paths(DataPaths(data).decisions, DECISION_KIND)
        original = corrupt_line(segment, 10)
        broken = json.loads(original)["EventId"]
        assert broken == "ev-010"

        # the joiner sets the line aside, counts it and joins every other decision
        wait_until(lambda: len(joined_events(data)) == 19, 30.0, "the 19 readable decisions joined")
        assert metric(client, "shelfbandit_join_rejected_lines_total") == 1
        assert client.get("/readyz").status_code == 200  # serving is not at fault
        assert client.post("/v1/rank", json=rank_body(event_id="ev-after")).status_code == 200
        found = doctor(data)
        assert found["exit"] == 1
        assert any(s == "problem" and "1 line(s) are not readable" in m for s, m in found["decisions log"]), found
        assert any(s == "warning" and "could not be joined" in m for s, m in found["joiner"]), found
    [rejected] = [json.loads(line) for line in (DataPaths(data).joined / "rejected.jsonl").read_text().splitlines()]
    assert rejected["event_id"] == broken and rejected["reason"].startswith("malformed decision record")
    assert rejected["line"].startswith('{"EventId":"ev-010"')  # kept as found, for whoever investigates
    logged, joined = logged_events(data), joined_events(data)
    assert all(logged[e] == 1 for e in acked if e != broken) and logged[broken] == 0
    assert all(joined[e] == 1 for e in acked if e != broken) and broken not in joined
    assert all(value == 1.0 for (event, slot), value in joined_rewards(data).items() if slot == 0 and event in acked)


def test_the_joiner_killed_in_the_middle_of_its_parts(tmp_path):
    """20 000 decisions (a real decision line repeated under new ids) joined by `shelfbandit join`,
    SIGKILLed six times at seeded moments, then run to the end: every decision in exactly one part."""
    data = tmp_path / "data"
    paths = DataPaths(data)
    ids, lines, _, _ = logged_decisions(200, time.time() - 600, 0.5)
    copies = 100
    all_ids, rewarded = [], []
    for segment in range(4):
        chunk = []
        for k in range(segment * copies // 4, (segment + 1) * copies // 4):
            for event_id, line in zip(ids, lines):
                new_id = f"{event_id}-{k:03d}"
                chunk.append(line.replace(f'"EventId":"{event_id}"'.encode(), f'"EventId":"{new_id}"'.encode(), 1))
                all_ids.append(new_id)
        write_segment(paths.decisions, DECISION_KIND, chunk, created_ns=1_000_000 + segment)
    decided = time.time() - 600
    rewarded = all_ids[::7]
    write_segment(paths.rewards, REWARD_KIND, [reward(e, 1, 1.0, decided + 1, decided) for e in rewarded], created_ns=1)

    join = [*SHELFBANDIT, "join", "--data-dir", str(data), "--reward-window", "60", "--once", "--json"]
    rng = np.random.default_rng(11)
    n_killed_running = 0
    for delay in rng.uniform(0.5, 4.0, size=6):
        process = subprocess.Popen(join, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=float(delay))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            n_killed_running += 1
    assert n_killed_running >= 3, "the joiner finished before most kills: make the log larger"
    done = subprocess.run(join, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    joined = joined_events(data)
    assert len(joined) == len(all_ids) and set(joined) == set(all_ids)
    assert all(n == 1 for n in joined.values()), [e for e, n in joined.items() if n != 1][:5]
    rewards = joined_rewards(data)
    assert all(rewards[(e, 1)] == 1.0 for e in rewarded)
    assert sum(value for value in rewards.values()) == len(rewarded)  # each reward counted once
    found = doctor(data)
    assert not any(s == "warning" and "uncommitted" in m for s, m in found["joiner"]), found


def test_the_clock_steps_back_an_hour(tmp_path, monkeypatch):
    data = tmp_path / "data"
    hooks = FaultHooks(tmp_path / "data", tmp_path / "hook", monkeypatch)
    with running_service(data, **FAST_JOIN) as server, server.client() as client:
        before = rank_all(client, [f"before-{i:03d}" for i in range(10)])
        reward_all(client, before, slot=0)
        hooks.step_clock(-3600.0)
        time.sleep(0.2)  # the service reads the step within 50 ms
        after = rank_all(client, [f"after-{i:03d}" for i in range(10)])
        reward_all(client, after, slot=0)
        reward_all(client, before, slot=1)  # received "an hour before" their decision
        assert client.get("/readyz").status_code == 200
        wait_until(lambda: set(joined_events(data)) >= set(after), 30.0, "the decisions after the step joined")
        found = doctor(data)
        assert found["exit"] == 0, found
        hooks.step_clock(0.0)  # the clock is set right again
        wait_until(lambda: set(joined_events(data)) >= set(before), 30.0, "the decisions before the step joined")
        assert client.get("/readyz").status_code == 200
    logged, joined = logged_events(data), joined_events(data)
    acked = before + after
    assert all(logged[e] == 1 for e in acked) and all(joined[e] == 1 for e in acked)
    rewards = joined_rewards(data)
    assert all(rewards[(e, 0)] == 1.0 for e in acked)
    assert all(rewards[(e, 1)] == 1.0 for e in before)
