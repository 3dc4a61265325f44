"""Faults of the model store: the active pointer names a version that is not in the store, or one
whose model file was truncated; while the service runs and when it starts on such a pointer.
Decisions go on being served (by the model that was serving, or the pointer's previous one)
and logged; where no model can serve, /v1/rank answers 503 with Retry-After and /readyz says
why."""

from __future__ import annotations

import json
import os

from bandit.config import RankerConfig
from bandit.durable import write_atomic
from bandit.vw.ranker import VWShelfRanker
from service.layout import DataPaths
from service.models.store import ModelStore
from tests.faults_support import doctor, logged_events, metric
from tests.service_support import ADMIN_TOKEN, ServiceProcess, rank_body, running_service, wait_until

MISSING = "vw-0123456789ab"


def point_at(store: ModelStore, version: str, previous: str | None) -> None:
    """A hand-edited or half-deployed pointer (no check that the version loads)."""
    write_atomic(store.pointer_path, json.dumps(
        {"version": version, "activated_at": 2e9, "previous": previous, "pinned": False}).encode())


def refused_version(client) -> str | None:
    refused = client.get("/v1/model").json()["refused"]
    return refused["version"] if refused else None


def rank_served_by(client, event_id: str) -> str:
    answer = client.post("/v1/rank", json=rank_body(event_id=event_id))
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def model_problem(data) -> str:
    found = doctor(data)
    assert found["exit"] == 1, found
    problems = [message for status, message in found["model store"] if status == "problem"]
    assert len(problems) == 1, found
    return problems[0]


def test_pointer_to_a_missing_then_a_truncated_model_while_serving(tmp_path):
    data = tmp_path / "data"
    acked = []
    with running_service(data) as server, server.client() as client:
        served = client.get("/v1/model").json()["version"]
        store = ModelStore(DataPaths(data).models)
        truncated = store.publish(VWShelfRanker(RankerConfig(epsilon=0.2, seed=3)))
        path = store.path_of(truncated)
        os.truncate(path, path.stat().st_size // 2)

        point_at(store, MISSING, previous=served)
        wait_until(lambda: refused_version(client) == MISSING, 10.0, "the missing version refused")
        assert rank_served_by(client, "missing-0") == served
        acked.append("missing-0")
        assert client.get("/readyz").status_code == 200  # the previous model serves on
        assert metric(client, "shelfbandit_model_refused") == 1
        assert "not in the store" in model_problem(data)

        point_at(store, truncated, previous=served)
        wait_until(lambda: refused_version(client) == truncated, 10.0, "the truncated version refused")
        assert rank_served_by(client, "truncated-0") == served
        acked.append("truncated-0")
        assert metric(client, "shelfbandit_model_refusals_total") >= 2
        assert "cannot serve" in model_problem(data)

        # the operator points back at a sound version
        answer = client.post("/v1/model/activate", json={"version": served},
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 200, answer.text
        assert refused_version(client) is None and metric(client, "shelfbandit_model_refused") == 0
        assert rank_served_by(client, "after-0") == served
        acked.append("after-0")
    assert all(logged_events(data)[e] == 1 for e in acked)


def test_start_on_a_pointer_to_a_truncated_model_serves_the_previous_one(tmp_path):
    data = tmp_path / "data"
    with running_service(data) as server, server.client() as client:
        served = client.get("/v1/model").json()["version"]
    store = ModelStore(DataPaths(data).models)
    truncated = store.publish(VWShelfRanker(RankerConfig(epsilon=0.2, seed=3)))
    os.truncate(store.path_of(truncated), 100)
    point_at(store, truncated, previous=served)
    with running_service(data) as server, server.client() as client:
        assert refused_version(client) == truncated
        assert rank_served_by(client, "restarted-0") == served
        assert metric(client, "shelfbandit_model_refused") == 1
    assert logged_events(data)["restarted-0"] == 1


def test_start_on_a_pointer_to_a_missing_model_with_nothing_before_it(tmp_path):
    data = tmp_path / "data"
    with running_service(data):
        pass
    point_at(ModelStore(DataPaths(data).models), MISSING, previous=None)
    server = ServiceProcess(data, {}).start(ready=False)
    try:
        with server.client() as client:
            wait_until(lambda: metric(client, "shelfbandit_model_refused") == 1, 10.0, "the missing version refused")
            answer = client.post("/v1/rank", json=rank_body(event_id="none-0"))
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.json()["detail"][0]["field"] == "model"
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert MISSING in ready.json()["failing"]["model"]
            assert "not in the store" in model_problem(data)
    finally:
        server.stop()
    assert logged_events(data)["none-0"] == 0
