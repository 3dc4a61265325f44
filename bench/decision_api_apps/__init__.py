"""Baseline apps for bench/decision_api.py, served by uvicorn exactly like the service.

- `parse_only_app`: parses the /v1/rank body with the service's pydantic schema, answers a constant;
- `vw_predict_app`: parses it, then runs the same VW model's predict on example lines built
  once at start from the body the load sends (environment variable BENCH_BODY), through the
  service's own conversion (shared, one line per shelf, one per slot): the floor of a ranking's cost.

Both read the service's settings from the environment variables the service uses.
"""

from __future__ import annotations

import os
import threading

from fastapi import FastAPI, Response

from bandit.registry import load_policy
from bandit.vw.format import listener_line, shelf_line, slot_line
from service.http.convert import rank_inputs
from service.http.schemas import RankRequest
from service.layout import DataPaths
from service.models.store import ModelStore
from service.settings import Settings

ANSWER = b'{"ok":true}'


def parse_only_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/rank")
    def rank(body: RankRequest) -> Response:
        return Response(ANSWER, media_type="application/json")

    return app


def vw_predict_app() -> FastAPI:
    settings = Settings.from_env()
    store = ModelStore(DataPaths(settings.data_dir).models)
    policy = load_policy(store.path_of(store.active().version))
    vw = policy.workspace
    body = RankRequest.model_validate_json(os.environ["BENCH_BODY"])  # the body the load sends
    context, shelves, _ = rank_inputs(body, settings)
    lines = [listener_line(context), *(shelf_line(s) for s in shelves), *(slot_line(k) for k in range(body.slots))]
    lock = threading.Lock()  # a VW workspace is not thread-safe (the ranker has the same lock)
    app = FastAPI()

    @app.post("/v1/rank")
    def rank(body: RankRequest) -> Response:
        with lock:
            vw.predict(lines)
        return Response(ANSWER, media_type="application/json")

    return app
