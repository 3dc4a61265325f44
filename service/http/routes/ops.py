"""GET /healthz, /readyz and /metrics: the on-call engineer's endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from service.http.deps import ServiceDep
from service.http.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(service: ServiceDep, request: Request, response: Response) -> dict:
    """Ready: a model is loaded, the decision log is open and no background task is failing
    (503 otherwise, naming each failing task and its error; `/v1/rank` serves on meanwhile)."""
    served = service.model.current
    failing = {**service.failing, **request.app.state.keys.failing}
    ready = service.ready and not failing
    if not ready:
        response.status_code = 503
    return {"ready": ready, "model_version": served.version if served else None, "failing": failing}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition (every worker's values summed)."""
    return Response(service.metrics.exposition(), media_type=PROMETHEUS_TEXT)
