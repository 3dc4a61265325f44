"""The decision service over HTTP: a real `shelfbandit serve` (uvicorn) on 127.0.0.1."""

import json
import threading
import time

import httpx
import pandas as pd
import pytest

from bandit.vw.format import SHELF_NS, epoch_seconds
from service.eventlog.segments import segment_paths
from service.http.app import create_app
from service.http.body import is_json
from service.join.reader import JoinedLog
from service.layout import DataPaths
from service.models.store import ModelStore
from service.serving import Service
from service.settings import Settings
from tests.service_support import ADMIN_TOKEN, catalogue, rank_body, running_service, served_in_thread, shelves_json
from tests.test_service_model_store import trained_ranker

WINDOW = 3.0
LIMITS = {"max_slots": 10, "max_features": 16, "max_body_bytes": 100_000}
MARKER = "Zanzibar-7731"  # a feature value that must never reach the service's own logs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("service") / "data"
    with running_service(data_dir, reward_window_s=WINDOW, join_grace_s=0.3, join_interval_s=0.2, **LIMITS) as server:
        yield server


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def decision_lines(data_dir) -> list[dict]:
    return [json.loads(line) for path in segment_paths(DataPaths(data_dir).decisions, "decisions")
            for line in path.read_bytes().splitlines()]


def wait_joined(data_dir, event_id: str, timeout_s: float = 20.0) -> tuple[dict, pd.DataFrame]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for part in JoinedLog(data_dir).parts():
            for line in part.jsonl.read_text().splitlines():
                record = json.loads(line)
                if record["EventId"] == event_id:
                    slate = pd.read_parquet(part.slates)
                    return record, slate[slate["event_id"] == event_id].reset_index(drop=True)
        time.sleep(0.2)
    raise AssertionError(f"{event_id} was not joined within {timeout_s} s")


def test_rank_reward_join_round_trip_field_by_field(server, client):
    body = rank_body(6, 3, event_id="round-trip-1", baseline=["shelf-4", "shelf-0"])
    body["user"]["secret_taste"] = MARKER
    before = time.time()
    answer = client.post("/v1/rank", json=body)
    assert answer.status_code == 200, answer.text
    ranking = answer.json()
    assert ranking["event_id"] == "round-trip-1"
    assert ranking["model_version"] == client.get("/v1/model").json()["version"]
    assert [r["slot"] for r in ranking["ranking"]] == [0, 1, 2]
    shown = [r["shelf_id"] for r in ranking["ranking"]]
    assert len(set(shown)) == 3 and set(shown) <= {f"shelf-{i}" for i in range(6)}
    assert all(0.0 < r["probability"] <= 1.0 for r in ranking["ranking"])

    # rewards: slot 0 by shelf id (twice: a repeat changes nothing), slot 2 by index, slot 1 none
    for _ in range(2):
        assert client.post("/v1/reward", json={"event_id": "round-trip-1", "shelf_id": shown[0], "value": 1.0}).json() == {
            "event_id": "round-trip-1", "slot": 0, "status": "accepted"}
    assert client.post("/v1/reward", json={"event_id": "round-trip-1", "slot": 2, "value": 0.5, "reward_id": "r-9"}).status_code == 200
    assert client.post("/v1/reward", json={"event_id": "round-trip-1", "slot": 2, "value": 0.5, "reward_id": "r-9"}).status_code == 200

    record, slate = wait_joined(server.data_dir, "round-trip-1")
    shelves = catalogue(6)
    assert record["EventId"] == "round-trip-1"
    assert before - 0.01 <= epoch_seconds(record["Timestamp"]) <= time.time()
    assert record["c"]["Listener"] == {"country=SE": 1.0, "hour": 20.0, "platform=ios": 1.0, f"secret_taste={MARKER}": 1.0}
    assert [m["_tag"] for m in record["c"]["_multi"]] == [s.shelf_id for s in shelves]
    kinds = ("mix", "recent", "new_releases", "podcasts", "charts", "mood")
    assert [m[SHELF_NS] for m in record["c"]["_multi"]] == [
        {f"shelf=shelf-{i}": 1.0, "age_days": float(i % 5), f"kind={kinds[i % 6]}": 1.0} for i in range(6)]
    assert [s["_id"] for s in record["c"]["_slots"]] == ["0", "1", "2"]
    for k, slot in enumerate(record["_outcomes"]):
        assert record["c"]["_multi"][slot["_a"][0]]["_tag"] == shown[k]
        assert slot["_p"][0] == ranking["ranking"][k]["probability"]
        assert sum(slot["_p"]) == pytest.approx(1.0)
        assert not {shown[j] for j in range(k)} & {record["c"]["_multi"][a]["_tag"] for a in slot["_a"]}
    assert [slot["_label_cost"] for slot in record["_outcomes"]] == [-1.0, -0.0, -0.5]
    assert record["_defaulted"] == [False, True, False]
    assert record["_model_version"] == ranking["model_version"]
    assert record["_baseline"] == ["shelf-4", "shelf-0"]
    assert record["_arm"] == "main"
    assert slate["slot"].tolist() == [0, 1, 2]
    assert slate["action"].tolist() == shown
    assert slate["reward"].tolist() == [1.0, 0.0, 0.5]
    assert slate["logging_prob"].tolist() == [r["probability"] for r in ranking["ranking"]]
    assert slate["logging_marginal"].tolist() == record["_marginals"]


def test_a_repeated_event_id_is_served_once_even_when_the_retries_race(server):
    body = rank_body(6, 3, event_id="raced-1")
    results = []

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as own:
            results.append(own.post("/v1/rank", json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [200, 409, 409, 409, 409, 409]


def test_reward_errors(server, client):
    served = client.post("/v1/rank", json=rank_body(4, 2, event_id="late-1"))
    assert served.status_code == 200
    candidate_not_shown = min({f"shelf-{i}" for i in range(4)} - {r["shelf_id"] for r in served.json()["ranking"]})
    unknown = client.post("/v1/reward", json={"event_id": "never-served", "slot": 0, "value": 1.0})
    assert unknown.status_code == 404 and unknown.json()["detail"][0]["field"] == "event_id"
    out_of_range = client.post("/v1/reward", json={"event_id": "late-1", "slot": 2, "value": 1.0})
    assert out_of_range.status_code == 422 and out_of_range.json()["detail"][0]["field"] == "slot"
    not_shown = client.post("/v1/reward", json={"event_id": "late-1", "shelf_id": "shelf-9", "value": 1.0})  # not a candidate
    assert not_shown.status_code == 422 and not_shown.json()["detail"][0]["field"] == "shelf_id"
    not_shown = client.post("/v1/reward", json={"event_id": "late-1", "shelf_id": candidate_not_shown, "value": 1.0})
    assert not_shown.status_code == 422 and not_shown.json()["detail"][0]["field"] == "shelf_id"
    repeat = client.post("/v1/rank", json=rank_body(4, 2, event_id="late-1"))
    assert repeat.status_code == 409 and repeat.json()["detail"][0]["field"] == "event_id"
    time.sleep(WINDOW + 0.2)
    late = client.post("/v1/reward", json={"event_id": "late-1", "slot": 0, "value": 1.0})
    assert late.status_code == 409 and "window" in late.json()["error"]
    kept = [json.loads(line) for path in segment_paths(DataPaths(server.data_dir).late_rewards, "late")
            for line in path.read_bytes().splitlines()]
    assert [(r["event_id"], r["slot"], r["value"]) for r in kept] == [("late-1", 0, 1.0)]
    record, _ = wait_joined(server.data_dir, "late-1")
    assert record["_defaulted"] == [True, True]  # the late reward is not learned from


def _raw(text: str) -> dict:
    return {"content": text, "headers": {"content-type": "application/json"}}


def _with(**changes) -> dict:
    return {"json": {**rank_body(20, 3), **changes}}


def _user(value) -> dict:
    return _raw(json.dumps({**rank_body(5, 2), "user": {"hour": "__VALUE__"}}).replace('"__VALUE__"', value))


BAD_RANK_REQUESTS = [
    ("too many shelves", _with(shelves=shelves_json(201)), 422, "shelves"),
    ("more slots than the limit", _with(slots=11), 422, "slots"),
    ("more slots than shelves", {"json": rank_body(3, 4)}, 422, "slots"),
    ("zero slots", _with(slots=0), 422, "slots"),
    ("slots as a string", _with(slots="3"), 422, "slots"),
    ("slots as a float", _with(slots=3.0), 422, "slots"),
    ("too many user features", _with(user={f"f{i}": i for i in range(17)}), 422, "user"),
    ("too many shelf features", _with(shelves=[{"id": "a", "features": {f"f{i}": 1 for i in range(17)}}, {"id": "b"}], slots=1),
     422, "shelves[0].features"),
    ("NaN", _user("NaN"), 422, "user.hour"),
    ("infinity", _user("Infinity"), 422, "user.hour"),
    ("overflowing float", _user("1e400"), 422, "user.hour"),
    ("overflowing integer", _user("1" + "0" * 400), 422, "user.hour"),
    ("a list as a value", _user("[1, 2]"), 422, "user.hour"),
    ("null as a value", _user("null"), 422, "user.hour"),
    ("unknown top-level field", _with(colour="red"), 422, "colour"),
    ("unknown shelf field", _with(shelves=[{"id": "a", "colour": "red"}, {"id": "b"}], slots=1), 422, "shelves[0].colour"),
    ("empty shelf list", _with(shelves=[], slots=1), 422, "shelves"),
    ("shelves missing", {"json": {"user": {}, "slots": 1}}, 422, "shelves"),
    ("repeated shelf id", _with(shelves=[{"id": "a"}, {"id": "a"}], slots=1), 422, "shelves[1].id"),
    ("empty shelf id", _with(shelves=[{"id": ""}, {"id": "b"}], slots=1), 422, "shelves[0].id"),
    ("shelf id as a number", _with(shelves=[{"id": 7}, {"id": "b"}], slots=1), 422, "shelves[0].id"),
    ("baseline names a non-candidate", _with(baseline=["nope"]), 422, "baseline[0]"),
    ("baseline repeats a shelf", _with(baseline=["shelf-1", "shelf-1"]), 422, "baseline"),
    ("reserved feature name", _with(shelves=[{"id": "a", "features": {"shelf": "x"}}, {"id": "b"}], slots=1),
     422, "shelves[0].features"),
    ("event id with a space", _with(event_id="a b"), 422, "event_id"),
    ("user not an object", _with(user=["SE"]), 422, "user"),
    ("not JSON", _raw("{'user': 1"), 422, "body"),
    ("an empty body", _raw(""), 422, "body"),
    ("JSON sent as text/plain", {"content": json.dumps(rank_body(3, 2)), "headers": {"content-type": "text/plain"}}, 422, "body"),
    ("JSON sent without a content type", {"content": json.dumps(rank_body(3, 2)), "headers": {"content-type": ""}}, 422, "body"),
    ("JSON but not an object", _raw("[1, 2, 3]"), 422, "body"),
    ("body over the size limit", _with(user={"blob": "x" * 500, **{f"k{i}": "y" * 500 for i in range(15)}},
                                       shelves=[{"id": f"s{i}", "features": {"t": "z" * 500}} for i in range(200)]), 413, "body"),
]


@pytest.mark.parametrize("name, request_kwargs, status, field", BAD_RANK_REQUESTS, ids=[c[0] for c in BAD_RANK_REQUESTS])
def test_bad_rank_requests_get_a_4xx_naming_the_field_and_log_nothing(server, client, name, request_kwargs, status, field):
    logged_before = len(decision_lines(server.data_dir))
    answer = client.post("/v1/rank", **request_kwargs)
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert problem["detail"][0]["field"] == field
    assert problem["error"].startswith(f"{field}: ")
    assert MARKER not in answer.text
    assert len(decision_lines(server.data_dir)) == logged_before


BAD_REWARDS = [
    ("both slot and shelf id", {"event_id": "e", "slot": 0, "shelf_id": "a", "value": 1.0}, "shelf_id/slot"),
    ("neither slot nor shelf id", {"event_id": "e", "value": 1.0}, "shelf_id/slot"),
    ("value as a string", {"event_id": "e", "slot": 0, "value": "1"}, "value"),
    ("value missing", {"event_id": "e", "slot": 0}, "value"),
    ("negative slot", {"event_id": "e", "slot": -1, "value": 1.0}, "slot"),
    ("unknown field", {"event_id": "e", "slot": 0, "value": 1.0, "weight": 2}, "weight"),
    ("value out of range", {"event_id": "e", "slot": 0, "value": 1e9}, "value"),
]


@pytest.mark.parametrize("name, body, field", BAD_REWARDS, ids=[c[0] for c in BAD_REWARDS])
def test_bad_rewards_get_a_422_naming_the_field(client, name, body, field):
    answer = client.post("/v1/reward", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["field"] == field


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(30):
            yield b" " * 5000

    with httpx.Client(base_url=server.url) as client:
        answer = client.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_admin_activation_needs_the_token(server, client):
    current = client.get("/v1/model").json()["version"]
    missing = client.post("/v1/model/activate", json={"version": current})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/v1/model/activate", json={"version": current}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    not_bearer = client.post("/v1/model/activate", json={"version": current}, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert not_bearer.status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post("/v1/model/activate", json={"version": "vw-000000000000"}, headers=admin).status_code == 404
    ok = client.post("/v1/model/activate", json={"version": current}, headers=admin)
    assert ok.status_code == 200 and ok.json()["version"] == current


def test_operations_endpoints_metrics_and_logs(server, client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/rank", "/v1/reward", "/v1/model", "/v1/model/activate", "/healthz", "/readyz", "/metrics"} <= set(paths)
    body = rank_body(5, 2, event_id="ops-1")
    body["user"]["note"] = MARKER
    assert client.post("/v1/rank", json=body).status_code == 200
    assert client.post("/v1/reward", json={"event_id": "ops-1", "slot": 1, "value": 2.0}).status_code == 200
    wait_joined(server.data_dir, "ops-1")
    time.sleep(0.5)  # the joiner's metrics follow its pass
    metrics = client.get("/metrics").text
    for needle in (
        'shelfbandit_requests_total{endpoint="rank",status="200"}',
        'shelfbandit_request_duration_seconds_bucket{endpoint="rank",le="0.015",status="200"}',
        "shelfbandit_decisions_total",
        "shelfbandit_explored_decisions_total",
        'shelfbandit_rewards_total{result="accepted"}',
        "shelfbandit_joined_events_total",
        "shelfbandit_default_reward_slots_total",
        "shelfbandit_joined_slots_total",
        "shelfbandit_join_lag_seconds",
        "shelfbandit_joiner_last_run_timestamp_seconds",
        "shelfbandit_model_created_timestamp_seconds",
        "shelfbandit_model_refused 0.0",
        'shelfbandit_log_commit_seconds_count{log="decisions"}',
    ):
        assert needle in metrics, needle
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line and not line.startswith("#")}
    assert 0.0 < values["shelfbandit_min_logged_probability"] <= 1.0
    assert values["shelfbandit_joined_events_total"] >= 1
    log_lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [entry for entry in log_lines if entry["msg"] == "request"]
    assert any(entry.get("event_id") == "ops-1" and entry["endpoint"] == "rank" and entry["status"] == 200 for entry in requests)
    assert MARKER not in server.log() and ADMIN_TOKEN not in server.log()


def test_hot_swap_under_concurrent_load_fails_no_request(tmp_path):
    with running_service(tmp_path / "data", model_poll_s=0.2) as server:
        store = ModelStore(DataPaths(server.data_dir).models)
        first = store.active().version
        seen: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def load(worker: int) -> None:
            with server.client() as client:
                for i in range(5000):  # bounded in count and, below, in time
                    if stop.is_set():
                        return
                    try:
                        answer = client.post("/v1/rank", json=rank_body(8, 4, event_id=f"swap-{worker}-{i}"))
                        if answer.status_code == 200:
                            seen.append(answer.json()["model_version"])
                        else:
                            failures.append(f"{answer.status_code} {answer.text}")
                    except httpx.HTTPError as err:
                        failures.append(repr(err))

        def wait_for(version: str, timeout_s: float = 10.0) -> None:
            deadline = time.time() + timeout_s
            while time.time() < deadline and (not seen or seen[-1] != version):
                time.sleep(0.05)
            assert seen and seen[-1] == version, f"still serving {seen[-1:]} instead of {version}"

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            second = store.publish(trained_ranker(2), activate=True)  # a trainer publishes (Python API)
            wait_for(second)
            with server.client() as admin:  # rollback through the admin endpoint
                answer = admin.post("/v1/model/activate", json={"version": first}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                assert answer.json() == {"version": first, "previous": second, "pinned": True}
                assert admin.get("/v1/model").json()["pinned"] is True and store.active().pinned  # timed publishing pauses
                assert admin.post("/v1/model/resume").status_code == 401  # resuming is an admin's act too
                resumed = admin.post("/v1/model/resume", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                assert resumed.json() == {"version": first, "pinned": False} and not store.active().pinned
            wait_for(first)
            third = store.publish(trained_ranker(3))
            store.path_of(third).write_bytes(b"corrupt")
            store.activate(third, check=lambda version: None)  # a broken pointer, written without checks
            time.sleep(1.0)
            with server.client() as client:
                model = client.get("/v1/model").json()
                metrics = client.get("/metrics").text
            assert model["version"] == first and model["pointer"] == third
            assert model["refused"]["version"] == third
            assert "shelfbandit_model_refused 1.0" in metrics
            n_before = len(seen)
            time.sleep(0.5)
            assert len(seen) > n_before and set(seen[n_before:]) == {first}  # still serving the old model
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert failures == []
        assert {first, second} <= set(seen)


@pytest.mark.parametrize("content_type, json_body", [
    ("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON", True),
    ("application/problem+json", True), ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("", False), (None, False), ("text/json", False),
])
def test_the_rank_body_is_read_as_json_for_json_content_types_only(content_type, json_body):
    assert is_json(content_type) is json_body


LANE_REQUESTS = [  # (json body or raw text, headers): a good request, and one per kind of refusal
    ({**rank_body(6, 3, event_id="lane-1"), "listener_id": "l-1"}, {}),
    (rank_body(3, 4), {}),
    ({**rank_body(4, 2), "shelves": [{"id": "a"}, {"id": "a"}]}, {}),
    ("{'user': 1", {"content-type": "application/json"}),
    (json.dumps(rank_body(3, 2)), {"content-type": "text/plain"}),
    ({**rank_body(4, 2), "user": {"blob": "x" * 9000}}, {}),
]


def _answers(app) -> list[tuple[int, dict]]:
    with served_in_thread(app, lifespan="on") as url:
        answers = []
        for body, headers in LANE_REQUESTS:
            kwargs = {"content": body} if isinstance(body, str) else {"json": body}
            answers.append(httpx.post(f"{url}/v1/rank", headers=headers, timeout=10, **kwargs))
        answers.append(httpx.get(f"{url}/v1/rank", timeout=10))
        return [(a.status_code, a.headers.get("allow"), a.json()) for a in answers]


def test_the_rank_lane_answers_exactly_as_fastapis_way(tmp_path):
    def app(name: str, lane: bool):
        made = create_app(Settings.checked({"data_dir": str(tmp_path / name), "max_body_bytes": 8192}))
        if not lane:
            made.lane = None
        return made

    through_lane, through_fastapi = _answers(app("lane", True)), _answers(app("fastapi", False))
    assert through_lane == through_fastapi
    assert [status for status, _, _ in through_lane] == [200, 422, 422, 422, 422, 413, 405]
    assert through_lane[-1][1] == "POST"


def test_the_rank_lane_answers_an_unexpected_error_as_a_500_problem(tmp_path, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Service, "rank", broken)
    with served_in_thread(create_app(Settings.checked({"data_dir": str(tmp_path / "data")})), lifespan="on") as url:
        answer = httpx.post(f"{url}/v1/rank", json=rank_body(4, 2), timeout=10)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error (logged by the service)",
                             "detail": [{"field": "", "rule": "internal error (logged by the service)"}]}
