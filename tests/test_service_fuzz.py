"""Fuzzing the decision API from its own OpenAPI schema against a real server: schemathesis
generates valid and invalid bodies and headers (the client key's and the admin token's) for
every POST and PUT operation; the service never answers 5xx.

(schemathesis' pytest plugin does not run under this pytest, so its strategies are driven by
hypothesis directly.)"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.service_support import ADMIN_TOKEN, running_service

EXAMPLES = 120
CLIENT_KEY = "fuzz-client-key-0001"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    with running_service(
        data_dir, reward_window_s=5.0, max_body_bytes=200_000, access_log=False, client_keys={"fuzz": CLIENT_KEY}
    ) as server:
        server.schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(
    "path, method, admin",
    [("/v1/rank", "POST", False), ("/v1/reward", "POST", False), ("/v1/model/activate", "POST", True), ("/v1/arms", "PUT", True)],
)
def test_no_input_makes_the_service_fail(live, path, method, admin, mode):
    operation = live.schema[path][method]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {"X-Shelfbandit-Key": CLIENT_KEY}
    answers = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=live.url, headers=headers, timeout=10)
        answers.append(response.status_code)
        assert response.status_code < 500, f"{response.status_code} for {case.body!r}: {response.text[:300]}"
        if response.status_code >= 400:
            problem = response.json()
            assert problem["error"] and problem["detail"], response.text

    check()
    assert len(answers) >= EXAMPLES // 2
    if mode == GenerationMode.NEGATIVE:
        assert all(400 <= status < 500 for status in answers)
