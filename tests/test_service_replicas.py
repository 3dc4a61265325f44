"""Replicas on several hosts: each replica logs in its own directory under the shared data
directory, one joiner joins every replica's decisions and rewards exactly once (a reward may
reach a replica other than the deciding one), and every replica serves the published model."""

import json
import subprocess
import time

import pytest

from bandit.config import RankerConfig
from bandit.vw.ranker import VWShelfRanker
from service.join.joiner import JoinConfig, Joiner
from service.join.parts import Checkpoint, read_checkpoint
from service.join.reader import JoinedLog
from service.layout import DataPaths
from service.local import free_port
from service.models.store import ModelStore
from tests.faults_support import SHELFBANDIT
from tests.service_support import logged_decisions, rank_body, reward, running_service, wait_until, write_segment

T0 = 1_800_000_000.0
WINDOW_S = 3.0
GRACE_S = 0.5
N_SLOTS = 3


def test_segments_of_the_same_name_on_two_replicas_are_joined_once_each_with_rewards_from_either(tmp_path):
    a, b = DataPaths(tmp_path, "a"), DataPaths(tmp_path, "b")
    ids_a, lines_a, _, _ = logged_decisions(4, T0, 1.0, seed=1)
    ids_b, lines_b, _, _ = logged_decisions(4, T0 + 0.5, 1.0, seed=2)
    # the same creation time and pid on two hosts: the same segment name in both directories
    write_segment(a.decisions, "decisions", lines_a, 7, pid=100)
    write_segment(b.decisions, "decisions", lines_b, 7, pid=100)
    write_segment(b.rewards, "rewards", [reward(ids_a[0], 0, 1.0, T0 + 1, T0, "r-1")], 7, pid=100)  # A's decision, rewarded at B
    write_segment(a.rewards, "rewards", [
        reward(ids_a[0], 0, 1.0, T0 + 2, T0, "r-1"),  # the same reward id again, at A: counts once
        reward(ids_b[1], 2, 0.5, T0 + 2, T0 + 1.5),  # B's decision, rewarded at A
    ], 7, pid=100)
    config = JoinConfig(60.0, grace_s=0.0, aggregation="sum")
    with Joiner(tmp_path, config, clock=lambda: T0 + 1000) as joiner:
        assert joiner.run_once().n_events == 8
        assert joiner.run_once().n_events == 0
    name = "decisions-0000000000000000007-100.jsonl"
    assert set(read_checkpoint(DataPaths(tmp_path)).offsets) == {f"a/{name}", f"b/{name}"}
    rows = JoinedLog(tmp_path).slate_table()
    assert sorted(rows["event_id"].unique()) == sorted(ids_a + ids_b) and len(rows) == 8 * N_SLOTS
    credited = rows[~rows["defaulted"]].set_index(["event_id", "slot"])["reward"].to_dict()
    assert credited == {(ids_a[0], 0): 1.0, (ids_b[1], 2): 0.5}


def shelfbandit(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*SHELFBANDIT, *args], capture_output=True, text=True, timeout=timeout_s)


def test_two_replicas_one_joiner_every_decision_once_every_reward_once_and_one_model(tmp_path):
    data_dir = tmp_path / "shared"
    settings = {"reward_window_s": WINDOW_S, "join_grace_s": GRACE_S, "reward_aggregation": "sum", "run_joiner": False}
    with running_service(data_dir, replica_id="a", **settings) as a, running_service(data_dir, replica_id="b", **settings) as b:
        replicas = [a.client(), b.client()]
        expected: dict[tuple[str, int], float] = {}
        decided: list[str] = []
        for i in range(24):  # alternately decided at A and at B
            deciding, other = replicas[i % 2], replicas[(i + 1) % 2]
            answer = deciding.post("/v1/rank", json=rank_body(n_slots=N_SLOTS, event_id=f"ev-{i:03d}"))
            assert answer.status_code == 200, answer.text
            decided.append(f"ev-{i:03d}")
            target = other if i % 3 else deciding  # two rewards in three reach the other replica
            body = {"event_id": f"ev-{i:03d}", "slot": i % N_SLOTS, "value": float(i + 1), "reward_id": f"r-{i}"}
            assert target.post("/v1/reward", json=body).status_code == 200
            if i % 4 == 0:  # the same reward id again, at the other replica: credited once
                assert (other if target is deciding else deciding).post("/v1/reward", json=body).status_code == 200
            expected[(f"ev-{i:03d}", i % N_SLOTS)] = float(i + 1)
        for replica in replicas:
            assert replica.post("/v1/reward", json={"event_id": "never-decided", "slot": 0, "value": 1.0}).status_code == 404

        for replica_id in ("a", "b"):
            logs = DataPaths(data_dir, replica_id)
            assert len(list(logs.decisions.glob("decisions-*.jsonl"))) == 1
            assert list(logs.rewards.glob("rewards-*.jsonl"))
        assert not DataPaths(data_dir).decisions.exists()
        twin = shelfbandit("serve", "--data-dir", str(data_dir), "--replica-id", "a", "--port", str(free_port()), timeout_s=60.0)
        assert twin.returncode == 2 and "another replica with this id is serving" in twin.stderr, twin.stderr

        # a model published to the shared store: both replicas swap to it
        new_version = ModelStore(DataPaths(data_dir).models).publish(VWShelfRanker(RankerConfig(epsilon=0.4, seed=9)), activate=True)
        for replica in replicas:
            wait_until(lambda r=replica: r.get("/v1/model").json()["version"] == new_version, 30.0, "the published model")
            answer = replica.post("/v1/rank", json=rank_body(n_slots=N_SLOTS)).json()  # a generated id, no reward
            assert answer["model_version"] == new_version
            decided.append(answer["event_id"])
        last_decided = time.time()
        for replica in replicas:
            replica.close()

        # one joiner, once every window (and its grace) has passed
        time.sleep(max(0.0, last_decided + WINDOW_S + GRACE_S + 0.5 - time.time()))
        doctor = shelfbandit("doctor", "--data-dir", str(data_dir), "--replica-id", "b", "--json")
        verdict = json.loads(doctor.stdout.splitlines()[-1])
        assert verdict["healthy"], doctor.stdout + doctor.stderr
        join_settings = tmp_path / "join.json"
        join_settings.write_text(json.dumps({"data_dir": str(data_dir), **settings}))
        joined = shelfbandit("join", "--once", "--settings", str(join_settings), "--json")
        assert joined.returncode == 0, joined.stderr
        assert json.loads(joined.stdout.splitlines()[-1])["events"] == len(decided)
        again = shelfbandit("join", "--once", "--settings", str(join_settings), "--json")
        assert json.loads(again.stdout.splitlines()[-1])["events"] == 0

    rows = JoinedLog(data_dir).slate_table()
    per_event = rows.groupby("event_id").size()
    assert sorted(per_event.index) == sorted(decided) and (per_event == N_SLOTS).all()
    credited = rows[~rows["defaulted"]].set_index(["event_id", "slot"])["reward"]
    assert credited.to_dict() == expected
    served = rows.drop_duplicates("event_id")
    assert (served["model_version"] == new_version).sum() == 2
    assert not (DataPaths(data_dir).joined / "rejected.jsonl").exists()


def checkpoint_lost(checkpoint: Checkpoint, path) -> None:
    raise OSError("disk vanished")


def test_a_crash_between_part_and_checkpoint_and_a_replica_that_appears_later_still_join_each_decision_once(tmp_path, monkeypatch):
    ids_a, lines_a, _, _ = logged_decisions(12, T0, 2.0, seed=3)
    ids_c, lines_c, _, _ = logged_decisions(12, T0 + 1.0, 2.0, seed=4)
    write_segment(DataPaths(tmp_path).decisions, "decisions", lines_a[:6], 1)  # the data directory's own logs
    write_segment(DataPaths(tmp_path, "a").decisions, "decisions", lines_a[6:], 1)
    config = JoinConfig(60.0, grace_s=0.0, max_events_per_part=5)
    with Joiner(tmp_path, config, clock=lambda: T0 + 1000) as joiner:
        joiner.run_once()
        write_segment(DataPaths(tmp_path, "c").decisions, "decisions", lines_c, 1)  # a replica joins the fleet
        monkeypatch.setattr(Checkpoint, "write", checkpoint_lost)
        with pytest.raises(OSError, match="disk vanished"):
            joiner.run_once()
        monkeypatch.undo()
    assert (DataPaths(tmp_path).joined / "part-00000001.jsonl").exists()  # the second part is on disk...
    assert len(JoinedLog(tmp_path).parts()) == 1  # ...but not committed
    for _ in range(2):  # a restart, then one that finds nothing new
        with Joiner(tmp_path, config, clock=lambda: T0 + 1000) as joiner:
            while joiner.run_once().more_ready:
                pass
    rows = JoinedLog(tmp_path).slate_table()
    per_event = rows.groupby("event_id").size()
    assert sorted(per_event.index) == sorted(ids_a + ids_c) and (per_event == N_SLOTS).all()
