"""Baseline apps for bench/decision_api.py, served by uvicorn exactly like the service.

- `parse_only_app`: parses the /v1/rank body with the service's pydantic schema, answers a constant;
- `vw_predict_app`: parses it, then runs the same VW model's predict on example lines built
  once at start (shared, one line per shelf, one per slot): the floor of a ranking's cost.

Both read the bench settings from the environment variable the service uses.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

# bench/ is on sys.path so that this package imports; its service.py must not hide the
# `service` package, so bench/ leaves the path again before anything imports `service`
_BENCH = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]

from fastapi import FastAPI, Response  # noqa: E402

from bandit.registry import load_policy  # noqa: E402
from bandit.types import Context, Shelf  # noqa: E402
from bandit.vw.format import listener_line, shelf_line, slot_line  # noqa: E402
from service.http.schemas import RankRequest  # noqa: E402
from service.layout import DataPaths  # noqa: E402
from service.models.store import ModelStore  # noqa: E402
from service.settings import Settings  # noqa: E402

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
    n_shelves, n_slots = int(os.environ["BENCH_SHELVES"]), int(os.environ["BENCH_SLOTS"])
    context = Context({"country": "SE", "platform": "ios", "hour": 20.0})
    shelves = [Shelf(f"shelf-{i}", {"kind": f"kind-{i % 8}", "age_days": float(i)}) for i in range(n_shelves)]
    lines = [listener_line(context), *(shelf_line(s) for s in shelves), *(slot_line(k) for k in range(n_slots))]
    lock = threading.Lock()  # a VW workspace is not thread-safe (the ranker has the same lock)
    app = FastAPI()

    @app.post("/v1/rank")
    def rank(body: RankRequest) -> Response:
        with lock:
            vw.predict(lines)
        return Response(ANSWER, media_type="application/json")

    return app
