"""The HTTP driver against a real uvicorn on 127.0.0.1 serving a minimal app that follows the
decision API contract of DESIGN.md (POST /v1/rank, POST /v1/reward)."""

import asyncio
import json
import socket
import time

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, HTTPException, Request

from bandit.errors import ShelfBanditError
from shelfbandit.cli import cli
from simulator.http_driver import DriverConfig, drive
from simulator.world import World, WorldConfig
from tests.service_support import served_in_thread


class ContractApp:
    """Ranks by the request's editorial baseline (probability 1.0), remembers decisions,
    takes rewards until `window_s` after the decision (409 after, 404 for unknown events,
    duplicates harmless). `mode` switches in misbehaviour for a test."""

    def __init__(self):
        self.app = FastAPI()
        self.reset()
        self.app.post("/v1/rank")(self.rank)
        self.app.post("/v1/reward")(self.reward)

    def reset(self, *, window_s=60.0, rank_delay_s=0.0, mode="ok"):
        self.window_s, self.rank_delay_s, self.mode = window_s, rank_delay_s, mode
        self.decisions = {}  # event id -> (decided at, shelf ids)
        self.rewards = {}  # (event id, slot) -> value
        self.in_flight = self.max_in_flight = 0

    async def rank(self, request: Request):
        body = await request.json()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rank_delay_s)
            ids = [s["id"] for s in body["shelves"]]
            shown = body.get("baseline", ids)[: body["slots"]]
            if self.mode == "wrong_shelf":
                shown = ["not-a-candidate", *shown[1:]]
            event_id = body.get("event_id") or f"e{len(self.decisions)}"
            if self.mode != "forget":
                self.decisions[event_id] = (time.monotonic(), shown)
            return {"event_id": event_id, "model_version": "contract-test",
                    "ranking": [{"slot": k, "shelf_id": s, "probability": 1.0} for k, s in enumerate(shown)]}
        finally:
            self.in_flight -= 1

    async def reward(self, request: Request):
        body = await request.json()
        decision = self.decisions.get(body["event_id"])
        if decision is None:
            raise HTTPException(404, "unknown event_id")
        if time.monotonic() - decision[0] > self.window_s:
            raise HTTPException(409, "reward window closed")
        self.rewards[(body["event_id"], body["slot"])] = body["value"]
        return {"accepted": True}


@pytest.fixture(scope="module")
def server():
    """The contract app on a real uvicorn, on a free port of 127.0.0.1, in a thread."""
    contract = ContractApp()
    with served_in_thread(contract.app) as url:
        yield contract, url


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(delay_mean_s=1.0), np.random.default_rng(31))


def test_sessions_streams_and_rewards_reach_the_service(server, world):
    contract, url = server
    contract.reset(rank_delay_s=0.01)
    requests = world.draw_requests(80, np.random.default_rng(1))
    result = drive(url, world, requests, np.random.default_rng(2), DriverConfig(concurrency=4))
    summary, metrics = result.summary, result.metrics
    assert summary["sessions_completed"] == 80 and not summary["stopped_by_deadline"]
    assert summary["model_versions"] == ["contract-test"]
    assert 1 <= contract.max_in_flight <= 4
    # the app showed the editorial order, so the truth of what was shown is the editorial truth
    assert np.allclose(metrics["expected_reward"], metrics["editorial_reward"])
    streams = metrics[[f"streams_slot_{k}" for k in range(6)]].to_numpy()
    assert summary["rewards_sent"] == summary["rewards_accepted"] == streams.sum() == len(contract.rewards) > 0
    per_slot = np.bincount([slot for _, slot in contract.rewards], minlength=6)
    assert np.array_equal(per_slot, streams.sum(axis=0).astype(int))
    assert summary["latency_ms_p50"] >= 10.0


def test_listeners_behave_the_same_whatever_the_concurrency(server, world):
    contract, url = server
    requests = world.draw_requests(40, np.random.default_rng(3))
    runs = []
    for concurrency in (1, 6):
        contract.reset()
        runs.append(drive(url, world, requests, np.random.default_rng(4), DriverConfig(concurrency=concurrency)).metrics)
    assert runs[0]["streams"].equals(runs[1]["streams"])


def test_rewards_after_the_window_are_refused_as_late(server, world):
    contract, url = server
    contract.reset(window_s=0.05)
    requests = world.draw_requests(60, np.random.default_rng(5))
    # delays ~ Exp(1 s) simulated, times 0.5 wall seconds: P(later than 0.05 s) = exp(-0.1) ~ 0.9
    summary = drive(url, world, requests, np.random.default_rng(6), DriverConfig(concurrency=8, delay_scale=0.5)).summary
    assert summary["rewards_late"] > 0
    assert summary["rewards_late"] + summary.get("rewards_accepted", 0) == summary["rewards_sent"]
    assert summary["rewards_late"] > summary.get("rewards_accepted", 0)


def test_rewards_for_unknown_events_are_counted(server, world):
    contract, url = server
    contract.reset(mode="forget")
    summary = drive(url, world, world.draw_requests(30, np.random.default_rng(7)), np.random.default_rng(8)).summary
    assert summary["rewards_unknown_event"] == summary["rewards_sent"] > 0


def test_the_drive_is_bounded_in_time(server, world):
    contract, url = server
    contract.reset(rank_delay_s=0.05)
    started = time.monotonic()
    summary = drive(url, world, world.draw_requests(500, np.random.default_rng(9)), np.random.default_rng(10),
                    DriverConfig(concurrency=2, max_seconds=0.5)).summary
    assert time.monotonic() - started < 5.0
    assert summary["stopped_by_deadline"] and 2 <= summary["sessions_completed"] < 500


def test_answers_that_break_the_contract_are_not_counted_as_sessions(server, world):
    contract, url = server
    contract.reset(mode="wrong_shelf")
    with pytest.raises(ShelfBanditError, match=r"no session completed .*rank_bad_answer"):
        drive(url, world, world.draw_requests(5, np.random.default_rng(11)), np.random.default_rng(12))


def test_a_service_that_is_not_there_fails_clearly(world):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ShelfBanditError, match=r"no session completed .*rank_error_ConnectError"):
        drive(f"http://127.0.0.1:{port}", world, world.draw_requests(3, np.random.default_rng(13)), np.random.default_rng(14))


def test_simulate_command_drives_a_url(server, tmp_path):
    contract, url = server
    contract.reset()
    result = CliRunner().invoke(cli, ["simulate", "--url", url, "--sessions", "30", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["policies"][url]["sessions_completed"] == 30
    assert (tmp_path / "metrics.parquet").exists()
