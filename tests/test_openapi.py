"""The API document: docs/openapi.json is current, and the answers built by hand (the /v1/rank
answer, its 409's `served`) hold exactly the fields of their declared models. (The live
answers of every operation are checked against the document in tests/test_service_fuzz.py.)"""

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.types import Context
from bandit.vw.ranker import VWShelfRanker
from service.commands import openapi
from service.http.app import create_app
from service.http.convert import ranking_json, reward_target
from service.http.openapi import document_text
from service.http.schemas import RankResponse, RepeatedEventProblem, RewardRequest, SlotOut
from service.settings import Settings
from tests.service_support import catalogue

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def test_the_checked_in_document_is_current():
    current = document_text(create_app(Settings()).openapi())
    assert DOCUMENT.read_text() == current, "docs/openapi.json is stale: run `shelfbandit openapi --out docs/openapi.json`"


def test_the_command_writes_the_document(tmp_path):
    out = tmp_path / "openapi.json"
    result = CliRunner().invoke(openapi, ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == DOCUMENT.read_text()
    assert json.loads(out.read_text())["openapi"].startswith("3.1")


def test_a_service_documents_the_limits_it_runs_with():
    document = create_app(Settings(max_slots=7, max_shelves=30, max_features=9)).openapi()
    schemas = document["components"]["schemas"]
    rank = schemas["RankRequest"]["properties"]
    assert (rank["slots"]["maximum"], rank["shelves"]["maxItems"], rank["user"]["maxProperties"]) == (7, 30, 9)
    assert schemas["ShelfIn"]["properties"]["features"]["maxProperties"] == 9


@pytest.fixture(scope="module")
def decision():
    ranker = VWShelfRanker(RankerConfig(epsilon=0.2, seed=3))
    return ranker.rank(Context({"country": "SE"}), catalogue(6), 3, event_id="ev-doc-1")


def test_the_rank_answer_holds_exactly_the_fields_of_its_model(decision):
    answer = orjson.loads(ranking_json(decision, "main"))
    assert set(answer) == set(RankResponse.model_fields)
    assert all(set(slot) == set(SlotOut.model_fields) for slot in answer["ranking"])
    assert RankResponse.model_validate(answer).model_dump() == answer


def test_the_409_holds_the_served_answer_as_its_model_says(decision):
    served = orjson.loads(ranking_json(decision, "main"))
    problem = {"error": "event_id: already served", "detail": [{"field": "event_id", "rule": "already served"}], "served": served}
    assert RepeatedEventProblem.model_validate(problem).model_dump(exclude_none=True)["served"] == served


def test_every_error_is_documented_as_a_problem():
    document = create_app(Settings()).openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]["$ref"]
                    assert schema.endswith(("/Problem", "/RepeatedEventProblem")), (method, path, status)


@pytest.mark.parametrize(
    "body, valid",
    [({"event_id": "e", "slot": 0, "value": 1.0}, True), ({"event_id": "e", "shelf_id": "s", "value": 1.0}, True),
     ({"event_id": "e", "shelf_id": None, "slot": 1, "value": 1.0}, True), ({"event_id": "e", "value": 1.0}, False),
     ({"event_id": "e", "shelf_id": "s", "slot": 1, "value": 1.0}, False)],
)
def test_the_documented_reward_rule_is_the_service_rule(body, valid):
    """shelf_id xor slot, as the schema's oneOf says it and as the service checks it."""
    schema = create_app(Settings()).openapi()["components"]["schemas"]["RewardRequest"]
    assert Draft202012Validator({**schema, "$defs": {}}).is_valid(body) is valid
    try:
        reward_target(RewardRequest.model_validate(body))
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is valid
