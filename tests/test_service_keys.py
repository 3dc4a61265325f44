"""Client keys: who may call /v1/rank and /v1/reward, and which key may reward which decision.

Against a real service on 127.0.0.1: 401 without a key, 403 with an unknown one, the key's name
(never its secret) in the decision line, a reward refused (403, naming the field) when another
key asked for the decision, also for a decision another worker logged, and keys rotated
through the keys file without a restart."""

import json
import time

import pytest
from click.testing import CliRunner

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.vw.ranker import VWShelfRanker
from service.commands import is_loopback, serve
from service.eventlog.lines import decision_line
from service.join.joiner import JoinConfig, Joiner
from service.join.reader import JoinedLog
from service.layout import DECISION_KIND, DataPaths
from service.settings import Settings
from shelfbandit.client import DecisionClient, InvalidRequest
from tests.service_support import ADMIN_TOKEN, catalogue, logged_decisions, rank_body, running_service, wait_until, write_segment

HOME_1, HOME_2, PODS = "home-secret-0001-aaaa", "home-secret-0002-bbbb", "pods-secret-0001-cccc"
KEY = "X-Shelfbandit-Key"


def decision_records(data_dir):
    return [json.loads(line) for path in sorted((data_dir / "decisions").glob("*.jsonl")) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(
    "keys, field, rule",
    [
        ({"home": "short"}, "settings.client_keys.home", "at least 16 characters"),
        ({"home": []}, "settings.client_keys.home", "at least one secret"),
        ({"ho me": HOME_1}, "settings.client_keys", "a key name is 1-64"),
        ({"home": HOME_1, "pods": HOME_1}, "settings.client_keys.pods", "belongs to one key name"),
        ({"home": ADMIN_TOKEN + "-long-enough"}, None, None),
        ({"home": [HOME_1, f" {HOME_2}"]}, "settings.client_keys.home", "without surrounding spaces"),
    ],
)
def test_key_settings_are_checked(keys, field, rule):
    if field is None:
        Settings.load(env={}, client_keys=keys, admin_token=ADMIN_TOKEN)
        with pytest.raises(ValidationError, match="not the admin token"):
            Settings.load(env={}, client_keys={"home": ADMIN_TOKEN + "-long-enough"}, admin_token=ADMIN_TOKEN + "-long-enough")
        return
    with pytest.raises(ValidationError) as err:
        Settings.load(env={}, client_keys=keys)
    assert err.value.field == field and rule in err.value.rule


def test_keys_come_from_the_environment_and_reach_the_workers():
    settings = Settings.load(env={"SHELFBANDIT_CLIENT_KEYS": json.dumps({"home": [HOME_1, HOME_2], "pods": PODS})})
    assert settings.key_table() == {"home": (HOME_1, HOME_2), "pods": (PODS,)}
    assert HOME_1 not in repr(settings)
    assert Settings.from_env({"SHELFBANDIT_SETTINGS_JSON": settings.to_env()}).key_table() == settings.key_table()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("keys") / "data"
    with running_service(data_dir, client_keys={"home": [HOME_1, HOME_2], "pods": PODS}, reward_window_s=60.0) as server:
        yield server


def test_a_client_endpoint_needs_a_known_key(keyed):
    with keyed.client() as http:
        missing = http.post("/v1/rank", json=rank_body())
        assert missing.status_code == 401
        assert missing.json()["detail"][0]["field"] == "x-shelfbandit-key"
        assert missing.headers["www-authenticate"].startswith("ApiKey")
        wrong = http.post("/v1/rank", json=rank_body(), headers={KEY: "home-secret-0001-aaab"})
        assert wrong.status_code == 403 and wrong.json()["detail"][0]["field"] == "x-shelfbandit-key"
        admin_as_key = http.post("/v1/reward", json={"event_id": "e", "slot": 0, "value": 1.0}, headers={KEY: ADMIN_TOKEN})
        assert admin_as_key.status_code == 403
        bearer = http.post("/v1/rank", json=rank_body(), headers={"Authorization": f"Bearer {HOME_1}"})
        assert bearer.status_code == 401  # the key travels in its own header, never as the admin's bearer token
        assert http.post("/v1/rank", json=rank_body(), headers={KEY: HOME_1}).status_code == 200
        assert http.get("/healthz").status_code == 200 and http.get("/v1/model").status_code == 200


def test_only_the_key_that_asked_may_reward(keyed):
    with keyed.client() as http:
        ranked = http.post("/v1/rank", json=rank_body(event_id="ev-home-1"), headers={KEY: HOME_1})
        assert ranked.status_code == 200
        poisoned = http.post("/v1/reward", json={"event_id": "ev-home-1", "slot": 0, "value": 1.0}, headers={KEY: PODS})
        assert poisoned.status_code == 403
        assert poisoned.json()["detail"][0] == {"field": "event_id", "rule": poisoned.json()["detail"][0]["rule"]}
        assert "another client key" in poisoned.json()["error"]
        # the key's other secret (a rotation under way) is the same key
        accepted = http.post("/v1/reward", json={"event_id": "ev-home-1", "slot": 1, "value": 1.0}, headers={KEY: HOME_2})
        assert accepted.status_code == 200, accepted.text
    records = [r for r in decision_records(keyed.data_dir) if r["EventId"] == "ev-home-1"]
    assert len(records) == 1 and records[0]["_key_id"] == "home"
    logged = b"".join(p.read_bytes() for d in ("decisions", "rewards") for p in (keyed.data_dir / d).glob("*.jsonl"))
    assert not any(secret.encode() in logged for secret in (HOME_1, HOME_2, PODS))
    rewards = [json.loads(line) for p in (keyed.data_dir / "rewards").glob("*.jsonl") for line in p.read_bytes().splitlines()]
    assert [(r["event_id"], r["slot"]) for r in rewards if r["event_id"] == "ev-home-1"] == [("ev-home-1", 1)]


def test_a_repeated_event_id_gets_its_answer_only_with_its_key(keyed):
    with keyed.client() as http:
        first = http.post("/v1/rank", json=rank_body(event_id="ev-home-2"), headers={KEY: HOME_1})
        again = http.post("/v1/rank", json=rank_body(event_id="ev-home-2"), headers={KEY: HOME_2})
        other = http.post("/v1/rank", json=rank_body(event_id="ev-home-2"), headers={KEY: PODS})
    assert first.status_code == 200 and again.status_code == other.status_code == 409
    assert again.json()["served"] == first.json()
    assert other.json()["served"] is None


def test_the_client_library_sends_its_key(keyed):
    with DecisionClient(keyed.url, key=HOME_1, timeout_s=10.0) as client:
        ranking = client.rank(catalogue(5), 2)
        assert client.reward(ranking, 1.0, slot=0).status == "accepted"
    with DecisionClient(keyed.url, key=PODS, timeout_s=10.0) as other, pytest.raises(InvalidRequest) as refused:
        other.reward(ranking, 1.0, slot=1)
    assert refused.value.status == 403 and refused.value.field == "event_id"
    with DecisionClient(keyed.url, timeout_s=10.0) as keyless, pytest.raises(InvalidRequest) as missing:
        keyless.rank(catalogue(5), 2)
    assert missing.value.status == 401 and missing.value.field == "x-shelfbandit-key"


def test_a_reward_reaching_another_worker_is_checked_against_the_key_in_its_log(keyed):
    """Decisions another writer logged (a segment of another pid) are read from the log with
    their key; a line without `_key_id` (written before keys were configured) is refused."""
    shelves = catalogue(5)
    _, _, decisions, _ = logged_decisions(2, start=0.0, spacing=1.0)
    now = time.time()
    lines = []
    for (context, decision), key_id in zip(decisions, ("pods", None)):
        lines.append(decision_line(context, shelves, decision, timestamp=now, baseline=(), key_id=key_id))
    write_segment(keyed.data_dir / "decisions", DECISION_KIND, lines, time.time_ns(), pid=4243)
    pods_event, keyless_event = (decision.event_id for _, decision in decisions)
    with keyed.client() as http:
        def reward(event_id, secret):
            return http.post("/v1/reward", json={"event_id": event_id, "slot": 0, "value": 1.0}, headers={KEY: secret}).status_code

        assert reward(pods_event, HOME_1) == 403
        assert reward(pods_event, PODS) == 200
        assert reward(keyless_event, HOME_1) == 403
        assert reward(keyless_event, PODS) == 403


def test_keys_rotate_through_the_keys_file_without_a_restart(tmp_path):
    keys_file = tmp_path / "client-keys.json"
    keys_file.write_text(json.dumps({"home": HOME_1}))
    with running_service(tmp_path / "data", client_keys_file=str(keys_file)) as server, server.client() as http:
        def rank(secret):
            return http.post("/v1/rank", json=rank_body(), headers={KEY: secret}).status_code

        assert rank(HOME_1) == 200 and rank(HOME_2) == 403
        keys_file.write_text(json.dumps({"home": [HOME_1, HOME_2]}))  # the new secret beside the old one
        wait_until(lambda: rank(HOME_2) == 200, 10.0, "the keys file change picked up")
        assert rank(HOME_1) == 200
        keys_file.write_text(json.dumps({"home": [HOME_2]}))  # the old one retired
        wait_until(lambda: rank(HOME_1) == 403, 10.0, "the keys file change picked up")
        keys_file.write_text('{"home": ')  # broken: readiness says so, the keys read before still work
        wait_until(lambda: http.get("/readyz").status_code == 503, 10.0, "the keys file change picked up")
        assert "client-keys" in http.get("/readyz").json()["failing"]
        assert rank(HOME_2) == 200 and rank(HOME_1) == 403
        keys_file.write_text(json.dumps({"home": [HOME_2], "pods": PODS}))
        wait_until(lambda: http.get("/readyz").status_code == 200, 10.0, "the keys file change picked up")
        assert rank(PODS) == 200
        keys_file.unlink()  # no file, no key: open again
        wait_until(lambda: http.post("/v1/rank", json=rank_body()).status_code == 200, 10.0, "the keys file change picked up")


def test_without_keys_the_endpoints_are_open_and_lines_name_no_key(tmp_path):
    with running_service(tmp_path / "data") as server, server.client() as http:
        assert http.post("/v1/rank", json=rank_body(event_id="open-1")).status_code == 200
        assert http.post("/v1/rank", json=rank_body(event_id="open-2"), headers={KEY: "anything-at-all-here"}).status_code == 200
        assert http.post("/v1/reward", json={"event_id": "open-1", "slot": 0, "value": 1.0}).status_code == 200
        records = decision_records(server.data_dir)
    assert {r["EventId"] for r in records} == {"open-1", "open-2"}
    assert not any("_key_id" in r for r in records)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
                                            ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("decisions.internal", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("keys, warned", [({}, True), ({"home": HOME_1}, False)])
def test_serve_warns_when_open_endpoints_bind_a_public_interface(tmp_path, monkeypatch, keys, warned):
    """`serve` itself, up to the point where uvicorn would bind (a public port is not opened in tests)."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"client_keys": keys}))
    monkeypatch.setenv("SHELFBANDIT_SETTINGS_JSON", "")  # serve sets it; restored after the test
    result = CliRunner().invoke(serve, ["--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"), "--settings", str(settings_file)])
    assert result.exit_code == 0, result.output
    assert ("WARNING: /v1/rank and /v1/reward are open" in result.stderr) is warned
    assert ("client endpoints open on a public interface" in result.stderr) is warned
    local = CliRunner().invoke(serve, ["--host", "127.0.0.1", "--data-dir", str(tmp_path / "d"), "--settings", str(settings_file)])
    assert "WARNING" not in local.stderr


def test_vw_trains_on_joined_lines_that_name_their_key(tmp_path):
    """`_key_id` is one more field VW's own DSJSON reader ignores."""
    _, _, decisions, shelves = logged_decisions(3, start=1_700_000_000.0, spacing=1.0)
    lines = [decision_line(context, shelves, decision, timestamp=1_700_000_000.0 + i, baseline=(), key_id="home")
             for i, (context, decision) in enumerate(decisions)]
    paths = DataPaths(tmp_path)
    write_segment(paths.decisions, DECISION_KIND, lines, 1)
    with Joiner(tmp_path, JoinConfig(60.0, grace_s=0.0)) as joiner:
        assert joiner.run_once().n_events == 3
    [part] = JoinedLog(tmp_path).parts()
    assert all(json.loads(line)["_key_id"] == "home" for line in part.jsonl.read_bytes().splitlines())
    assert VWShelfRanker(RankerConfig()).learn_file(part.jsonl) == 3
