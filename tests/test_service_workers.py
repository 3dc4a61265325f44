"""Crash safety and several workers: `kill -9` under load, two uvicorn workers sharing a
data directory, each on a listening socket of its own, and a worker that dies replaced."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.eventlog.segments import segment_paths
from service.join.reader import JoinedLog
from service.layout import DataPaths
from service.workers import spreads_connections
from tests.service_support import ServiceProcess, rank_body, running_service, wait_until


def logged_event_ids(data_dir) -> list[str]:
    ids = []
    for path in segment_paths(DataPaths(data_dir).decisions, "decisions"):
        for line in path.read_bytes().splitlines():
            ids.append(json.loads(line)["EventId"])  # every line must parse
    return ids


def test_kill_9_under_load_loses_no_acknowledged_decision(tmp_path):
    data_dir = tmp_path / "data"
    server = ServiceProcess(data_dir, {"reward_window_s": 60.0}).start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with server.client(timeout=5.0) as client:
            for i in range(20_000):  # bounded in count; the kill ends it much sooner
                if stop.is_set():
                    return
                event_id = f"k-{worker}-{i}"
                try:
                    answer = client.post("/v1/rank", json=rank_body(10, 4, event_id=event_id))
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged
                if answer.status_code == 200:
                    acknowledged.append(event_id)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.time() + 10
        while len(acknowledged) < 200 and time.time() < deadline:
            time.sleep(0.05)
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()
    assert len(acknowledged) >= 200
    logged = set(logged_event_ids(data_dir))  # (a torn last line would fail to parse here...)
    assert set(acknowledged) <= logged

    with running_service(data_dir, reward_window_s=60.0) as restarted:  # (...after the restart it is set aside)
        logged_after = logged_event_ids(data_dir)
        assert set(acknowledged) <= set(logged_after)
        assert len(logged_after) == len(set(logged_after))
        with restarted.client() as client:  # the restarted service knows the events served before
            answer = client.post("/v1/reward", json={"event_id": acknowledged[0], "slot": 0, "value": 1.0})
            assert answer.status_code == 200, answer.text
    quarantine = DataPaths(data_dir).quarantine
    torn = list(quarantine.glob("*.torn")) if quarantine.exists() else []
    for path in torn:  # whatever was set aside was never acknowledged
        assert not any(event_id in path.read_text(errors="replace") for event_id in acknowledged)


def writer_of(data_dir, directory: str, kind: str) -> dict[str, str]:
    """event id -> pid of the worker whose segment holds its line."""
    found = {}
    for path in segment_paths(DataPaths(data_dir).root / directory, kind):
        pid = re.search(r"-(\d+)\.jsonl$", path.name).group(1)
        for line in path.read_bytes().splitlines():
            record = json.loads(line)
            found[record.get("EventId") or record.get("event_id")] = pid
    return found


def test_two_workers_share_a_data_directory(tmp_path):
    data_dir = tmp_path / "data"
    window = 4.0
    with running_service(data_dir, workers=2, reward_window_s=window, join_grace_s=0.3, join_interval_s=0.2) as server:
        event_ids: list[str] = []
        fresh_connections = httpx.Limits(max_keepalive_connections=0)  # each request may reach either worker
        with server.client(limits=fresh_connections) as client:
            # which worker accepts a connection is up to the kernel: go on (bounded) until both
            # workers have served and some reward went to the worker that did not serve its event
            for i in range(300):
                event_id = f"w-{i}"
                assert client.post("/v1/rank", json=rank_body(6, 3, event_id=event_id)).status_code == 200
                answer = client.post("/v1/reward", json={"event_id": event_id, "slot": 1, "value": 1.0})
                assert answer.status_code == 200, answer.text
                event_ids.append(event_id)
                decided_by = writer_of(data_dir, "decisions", "decisions")
                rewarded_by = writer_of(data_dir, "rewards", "rewards")
                crossed = [e for e in event_ids if decided_by[e] != rewarded_by[e]]
                if len(event_ids) >= 20 and len(set(decided_by.values())) == 2 and crossed:
                    break
            assert len(set(decided_by.values())) == 2  # both workers served, each into its own segment
            assert crossed  # a worker accepted rewards for events the other worker served
            assert client.post("/v1/reward", json={"event_id": "w-unknown", "slot": 0, "value": 1.0}).status_code == 404
            time.sleep(window + 0.2)
            late = [client.post("/v1/reward", json={"event_id": e, "slot": 0, "value": 1.0}).status_code for e in event_ids[:6]]
            assert late == [409] * 6
            deadline = time.time() + 20
            while JoinedLog(data_dir).checkpoint().n_events < len(event_ids) and time.time() < deadline:
                time.sleep(0.2)
            metrics = client.get("/metrics").text
        joined = [json.loads(line) for part in JoinedLog(data_dir).parts() for line in part.jsonl.read_text().splitlines()]
        assert sorted(r["EventId"] for r in joined) == sorted(event_ids)  # each exactly once
        assert all(r["_defaulted"] == [True, False, True] for r in joined)
        assert all(r["_outcomes"][1]["_label_cost"] == -1.0 for r in joined)
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line and not line.startswith("#")}
        assert values["shelfbandit_decisions_total"] == len(event_ids)  # summed over both workers
        assert values['shelfbandit_rewards_total{result="accepted"}'] == len(event_ids)
        assert values['shelfbandit_rewards_total{result="late"}'] == 6


def worker_pids(serve_pid: int) -> set[int]:
    """The worker processes of a `shelfbandit serve` (its spawned children, not the resource tracker)."""
    pids = set()
    for pid in Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(int(pid))
        except FileNotFoundError:  # it exited meanwhile
            pass
    return pids


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:port (state 0A in /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


@pytest.mark.skipif(not spreads_connections(), reason="a socket per worker needs Linux's SO_REUSEPORT")
def test_each_worker_listens_on_its_own_socket_and_a_worker_that_dies_is_replaced(tmp_path):
    with running_service(tmp_path / "data", workers=2) as server:
        serve_pid = server.process.pid
        wait_until(lambda: len(worker_pids(serve_pid)) == 2 and len(listening_inodes(server.port)) == 2, what="two listening workers")
        workers = worker_pids(serve_pid)
        listening = listening_inodes(server.port)
        assert all(len(socket_inodes(pid) & listening) == 1 for pid in workers)  # one listening socket each
        assert not socket_inodes(serve_pid) & listening  # the parent holds the port but takes no connection

        dead = min(workers)
        os.kill(dead, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(serve_pid) - {dead}) == 2 and len(listening_inodes(server.port)) == 2,
                   what="a new worker in place of the killed one")
        workers |= worker_pids(serve_pid)
        fresh_connections = httpx.Limits(max_keepalive_connections=0)
        with server.client(limits=fresh_connections) as client:
            answers = [client.post("/v1/rank", json=rank_body(6, 3)).status_code for _ in range(40)]
        assert answers == [200] * 40
        assert "worker exited; starting another" in server.log()
        with server.client() as client:  # counted where every worker's metrics are summed
            metrics = client.get("/metrics").text
        assert "shelfbandit_worker_restarts_total 1.0" in metrics.splitlines()
        found = doctor_workers(tmp_path / "data")
        assert found["status"] == "warning" and "1 worker(s) exited" in found["message"]
        assert f"pid {dead} with exit code -9" in found["message"]
    assert not any(running(pid) for pid in workers | {serve_pid})  # SIGTERM stopped every worker
    assert "before the service stopped" in doctor_workers(tmp_path / "data")["message"]


def doctor_workers(data_dir: Path) -> dict:
    """`shelfbandit doctor --json`'s finding on the workers, from a process of its own."""
    out = subprocess.run([sys.executable, "-c", "from shelfbandit.cli import main; main()", "doctor", "--data-dir", str(data_dir),
                          "--json"], capture_output=True, text=True, timeout=120)
    return next(f for f in json.loads(out.stdout)["findings"] if f["check"] == "workers")


@pytest.mark.skipif(not spreads_connections(), reason="a socket per worker needs Linux's SO_REUSEPORT")
def test_serve_with_workers_refuses_a_port_another_server_listens_on(tmp_path):
    with running_service(tmp_path / "first", workers=2) as first:
        second = subprocess.run(
            [sys.executable, "-c", "from shelfbandit.cli import main; main()", "serve", "--data-dir", str(tmp_path / "second"),
             "--host", "127.0.0.1", "--port", str(first.port), "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0
        assert f"cannot listen on 127.0.0.1:{first.port}" in second.stderr
        assert "Traceback" not in second.stderr
        with first.client() as client:
            assert client.get("/readyz").status_code == 200
