"""The FastAPI application: `create_app(settings)` builds it; nothing is built at import time.

uvicorn workers use `service.http.app:app_from_environment` (a factory) with the settings that
`shelfbandit serve` put in the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import multiprocess
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bandit.errors import FieldError, ValidationError
from service.errors import Forbidden, LateReward, NotReady, RepeatedEvent, Unauthenticated, UnknownEvent
from service.eventlog.segments import LogWriteError
from service.http.convert import ranking_json
from service.http.keys import KEY_HEADER, ClientKeys, MissingKey
from service.http.openapi import use_document
from service.http.rank_lane import DecisionApp
from service.http.routes import arms, model, ops, rank, reward
from service.logs import get_logger
from service.models.store import ModelRefused, UnknownModelVersion
from service.ops.metrics import multiprocess_enabled
from service.serving import Service
from service.settings import Settings

log = get_logger()

# metric and log label of each route (anything else is "other", so no label explodes)
ENDPOINTS = {
    "/v1/rank": "rank",
    "/v1/reward": "reward",
    "/v1/model": "model",
    "/v1/model/activate": "activate",
    "/v1/model/resume": "resume",
    "/v1/arms": "arms",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}
ERROR_STATUS = {
    UnknownEvent: 404,
    UnknownModelVersion: 404,
    LateReward: 409,
    ModelRefused: 409,
    ValidationError: 422,
    LogWriteError: 503,
    NotReady: 503,
    Unauthenticated: 401,
    MissingKey: 401,
    Forbidden: 403,
}
HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
DISCARD_BYTES, DISCARD_S = 64 * 2**20, 10.0  # how much of a refused body is read before the 413
RETRY_AFTER = {"Retry-After": "1"}  # seconds: a failed log write is retried within 0.5 s, and probed meanwhile
ERROR_HEADERS = {
    Unauthenticated: {"WWW-Authenticate": "Bearer"},
    MissingKey: {"WWW-Authenticate": f'ApiKey header="{KEY_HEADER}"'},
    LogWriteError: RETRY_AFTER,
    NotReady: RETRY_AFTER,
}


def create_app(settings: Settings) -> FastAPI:
    """The decision service for `settings` (one per worker process)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings)
        keys = ClientKeys(settings, service.metrics)
        service.start()
        app.state.service, app.state.keys = service, keys.start()
        try:
            yield
        finally:
            keys.stop()
            service.stop()
            if multiprocess_enabled():
                multiprocess.mark_process_dead(os.getpid())

    app = DecisionApp(
        title="shelf-bandit decision service",
        version="1",
        summary="Orders home-page shelves with a contextual bandit, logs what it showed, joins rewards.",
        lifespan=lifespan,
    )
    for router in (rank.router, reward.router, model.router, arms.router, ops.router):
        app.include_router(router)
    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, _domain_error_handler(status, ERROR_HEADERS.get(error)))
    app.add_exception_handler(RepeatedEvent, _repeated_event)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(ObserveAndLimit, max_body_bytes=settings.max_body_bytes, access_log=settings.access_log)
    app.lane = ObserveAndLimit(app.rank_lane, max_body_bytes=settings.max_body_bytes, access_log=settings.access_log)
    use_document(app, settings)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory: the settings `shelfbandit serve` handed to the workers."""
    return create_app(Settings.from_env())


# -- error answers: {"error": "<field>: <rule>", "detail": [{"field", "rule", ...}]} -----------------
def problem(
    status: int, field: str, rule: str, detail: list[dict] | None = None, headers: dict | None = None, **extra
) -> JSONResponse:
    message = f"{field}: {rule}" if field else rule
    return JSONResponse({"error": message, "detail": detail or [{"field": field, "rule": rule}], **extra}, status, headers=headers)


def _domain_error_handler(status: int, headers: dict | None = None):
    async def handle(request: Request, err: FieldError) -> JSONResponse:
        return problem(status, err.field, err.rule, headers=headers)

    return handle


def field_path(loc: tuple) -> str:
    """('body', 'shelves', 3, 'features', 'x') -> 'shelves[3].features.x'."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc) or list(loc[:1])
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


async def _repeated_event(request: Request, err: RepeatedEvent) -> JSONResponse:
    """409 with `served`, the answer this worker gave the event (null once forgotten, or while it is
    still being decided): a client's retry gets the decision made for it, logged once."""
    served = None if err.served is None else orjson.loads(ranking_json(err.served, err.served.arm))
    return problem(409, err.field, err.rule, served=served)


async def _request_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    # no "input" in the answer: it would echo feature values back
    detail = [
        {"field": "body" if e["type"] == "json_invalid" else field_path(tuple(e["loc"])), "rule": e["msg"], "type": e["type"]}
        for e in err.errors()
    ]
    first = detail[0]
    return problem(422, first["field"], first["rule"], detail)


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (no such route, method not allowed): no field to name. A 405's
    `Allow` lists the methods of every route of the path (Starlette names only the first's)."""
    headers = getattr(err, "headers", None)
    if err.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return problem(err.status_code, "", str(err.detail), headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods the app's routes take at the request's path (asked of the routing itself)."""
    scope = request.scope
    return [
        method for method in HTTP_METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    ]


async def _unexpected_error(request: Request, err: Exception) -> JSONResponse:
    log.error("unexpected error", exc_info=err, extra={"fields": {"endpoint": ENDPOINTS.get(request.url.path, "other")}})
    return problem(500, "", "internal error (logged by the service)")


# -- middleware ------------------------------------------------------------------------------
class ObserveAndLimit:
    """Pure ASGI middleware: body size limit (413), request metrics and one access log line.

    The body is read here, bounded, before the app sees it (chunked bodies included), and
    replayed to the app.
    """

    def __init__(self, app, *, max_body_bytes: int, access_log: bool) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = ENDPOINTS.get(scope["path"], "other")
        status_holder = [500]

        async def send_observed(message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        body = await self._read_body(scope, receive)
        if body is None:
            await _send_json(send_observed, 413, {
                "error": f"body: at most {self.max_body_bytes} bytes",
                "detail": [{"field": "body", "rule": f"at most {self.max_body_bytes} bytes"}],
            })
        else:
            await self.app(scope, _replay(body, receive), send_observed)
        self._observe(scope, endpoint, status_holder[0], time.perf_counter() - started)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole request body, or None if it exceeds the limit (the rest of it discarded)."""
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # else the body was never sent
                await _discard_body(receive, 0)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                if message.get("more_body", False):
                    await _discard_body(receive, size)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _observe(self, scope, endpoint: str, status: int, seconds: float) -> None:
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:
            label = str(status)
            metrics = service.metrics
            metrics.child(metrics.requests, endpoint, label).inc()
            metrics.child(metrics.latency, endpoint, label).observe(seconds)
        if self.access_log:
            fields = {"endpoint": endpoint, "method": scope["method"], "status": status, "ms": round(seconds * 1e3, 3)}
            event_id = scope.get("state", {}).get("event_id")
            if event_id is not None:
                fields["event_id"] = event_id
            log.info("request", extra={"fields": fields})


async def _discard_body(receive, n_read: int) -> None:
    """Read and drop the rest of a refused body, up to DISCARD_BYTES in all and DISCARD_S: a
    socket closed with unread data in it is reset, so a client that sends its whole body before
    reading the answer (urllib, requests) would see a reset instead of the 413. A body larger
    still is cut off with the reset."""

    async def drain() -> None:
        size = n_read
        while size <= DISCARD_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with suppress(TimeoutError):
        await asyncio.wait_for(drain(), DISCARD_S)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
