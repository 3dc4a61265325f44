"""Fuzzing the decision API from its own OpenAPI document against a real server (uvicorn on
127.0.0.1, client keys configured): schemathesis generates valid and invalid requests for every
operation and runs every one of its checks on each answer (no 5xx, documented statuses, content
types, headers and schemas, valid data accepted, invalid data refused, authentication not
ignored, `Allow` of a 405). The one exclusion: a schema-valid body refused for a rule that no JSON
schema can express, named in CROSS_FIELD_RULES (the operation's description states it).
The client key and admin token headers are fuzzed too.

(schemathesis' pytest plugin does not run under this pytest, so its strategies are driven by
hypothesis directly; no shrinking, so each test is bounded by its examples.)"""

import re
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from tests.service_support import ADMIN_TOKEN, rank_body, running_service

EXAMPLES = 40
BUDGET_S = 120.0  # per operation and mode: examples stop being drawn after it
CLIENT_KEY = "fuzz-client-key-0001"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Shelfbandit-Key": CLIENT_KEY}
# (operation, field, rule) of the rules that relate fields, depend on what is stored (an event, a model)
# or on how a number is written: a schema-valid
# body may break them, and the answer is then the 422 naming the field, not a failure
CROSS_FIELD_RULES = (
    # JSON Schema's integers include 3.0; the service takes integers written as integers only
    ("POST /v1/rank", r"slots", "Input should be a valid integer"),
    ("POST /v1/reward", r"slot", "Input should be a valid integer"),
    ("POST /v1/rank", r"shelves\[\d+\]\.id", "shelf ids must be unique"),
    ("POST /v1/rank", r"slots", "must not exceed the number of shelves"),
    ("POST /v1/rank", r"baseline\[\d+\]", "must be one of the candidate shelf ids"),
    ("POST /v1/reward", r"shelf_id", "was not shown in event"),  # a served event's own shelves and slots
    ("POST /v1/reward", r"slot", "event "),
    ("PUT /v1/arms", r"arms", "the shares must sum to 1"),
    ("PUT /v1/arms", r"arms", "arm names must be unique"),
    ("PUT /v1/arms", r"arms\[\d+\]\.policy", "no model "),  # a version that is not in the store
)
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
POSITIVE_ACCEPTANCE = CHECKS.get_one("positive_data_acceptance")


def cross_field_rule(operation: str, response) -> str | None:
    """The named cross-field rule a 422 answer names, if any."""
    if response.status_code != 422:
        return None
    for item in response.json()["detail"]:
        for op, field, rule in CROSS_FIELD_RULES:
            if op == operation and re.fullmatch(field, item["field"]) and item["rule"].startswith(rule):
                return f"{item['field']}: {rule}"
    return None


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    with running_service(
        data_dir, reward_window_s=5.0, max_body_bytes=200_000, access_log=False, client_keys={"fuzz": CLIENT_KEY}
    ) as server:
        server.schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        yield server


# every operation, and whether it takes input (a body or credentials) that can be made invalid
OPERATIONS = [
    ("/v1/rank", "POST", True), ("/v1/reward", "POST", True), ("/v1/model", "GET", False),
    ("/v1/model/activate", "POST", True), ("/v1/model/resume", "POST", True), ("/v1/arms", "GET", False),
    ("/v1/arms", "PUT", True), ("/v1/arms", "DELETE", True), ("/healthz", "GET", False), ("/readyz", "GET", False),
    ("/metrics", "GET", False),
]
CASES = [(path, method, GenerationMode.POSITIVE) for path, method, _ in OPERATIONS] + [
    (path, method, GenerationMode.NEGATIVE) for path, method, takes_input in OPERATIONS if takes_input
]
# random arms rarely have shares summing to 1: their valid configurations are tested in test_service_arms.py
RARELY_VALID = {"PUT /v1/arms"}


def test_every_operation_is_fuzzed(live):
    documented = {(path, method.upper()) for path, methods in live.schema.raw_schema["paths"].items() for method in methods}
    assert documented == {(path, method) for path, method, _ in OPERATIONS}


@pytest.mark.parametrize("path, method, mode", CASES, ids=[f"{m} {p} {mode.value}" for p, m, mode in CASES])
def test_the_service_answers_as_its_document_says(live, path, method, mode):
    operation = live.schema[path][method]
    label = f"{method} {path}"
    statuses, excused = [], []
    deadline = time.monotonic() + BUDGET_S
    transport = {"base_url": live.url, "headers": HEADERS, "timeout": 10}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        if time.monotonic() > deadline:
            return
        response = case.call(base_url=live.url, headers=HEADERS, timeout=10)
        statuses.append(response.status_code)
        excluded = []
        if mode == GenerationMode.POSITIVE:
            rule = cross_field_rule(label, response)
            if rule is not None:
                excused.append(rule)
                excluded = [POSITIVE_ACCEPTANCE]
        case.validate_response(response, checks=ALL_CHECKS, excluded_checks=excluded, headers=HEADERS, transport_kwargs=transport)

    check()
    assert statuses, "no example was run"
    assert all(status < 500 for status in statuses), statuses
    if mode == GenerationMode.POSITIVE and label not in RARELY_VALID:
        assert len(excused) < len(statuses), f"every valid example broke a cross-field rule: {sorted(set(excused))}"


def test_a_405_lists_every_method_of_the_path(live):
    answer = httpx.request("OPTIONS", f"{live.url}/v1/arms", timeout=10)
    assert answer.status_code == 405 and answer.headers["allow"] == "DELETE, GET, PUT"
    assert httpx.request("PATCH", f"{live.url}/v1/rank", timeout=10).headers["allow"] == "POST"


header_values = st.one_of(  # what HTTP lets a header hold: no control characters, no surrounding spaces
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300).map(str.strip),
    st.just(CLIENT_KEY), st.just(CLIENT_KEY[:-1]), st.just(f"Bearer {CLIENT_KEY}"), st.just(f"Bearer {ADMIN_TOKEN}"), st.just(ADMIN_TOKEN),
)


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/reward", "/v1/model/activate"])
def test_fuzzed_key_and_token_headers_are_answered_401_403_or_served(live, path):
    """Any value of `X-Shelfbandit-Key` and `Authorization` gets 401 or 403 unless it is the key or
    the token itself; never a 5xx."""
    bodies = {"/v1/rank": rank_body(), "/v1/reward": {"event_id": "no-such-event", "slot": 0, "value": 1.0},
              "/v1/model/activate": {"version": "no-such-version"}}
    answered = {"/v1/rank": 200, "/v1/reward": 404, "/v1/model/activate": 404}
    with httpx.Client(base_url=live.url, timeout=10) as http:
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(key=header_values, token=header_values)
        def check(key, token):
            headers = {"X-Shelfbandit-Key": key.encode("latin-1"), "Authorization": token.encode("latin-1")}
            status = http.post(path, json=bodies[path], headers=headers).status_code
            admin = path == "/v1/model/activate"
            valid = token == f"Bearer {ADMIN_TOKEN}" if admin else key == CLIENT_KEY
            assert status in ({answered[path]} if valid else {401, 403}), (key, token, status)

        check()
