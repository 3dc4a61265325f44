"""GET /healthz, /readyz and /metrics: the on-call engineer's endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.http.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep, request: Request, response: Response) -> dict:
    """Ready: a model is loaded, the decision log is open and no background task is failing
    (503 otherwise, naming each failing task and its error; `/v1/rank` serves on meanwhile)."""
    served = service.model.current
    failing = {**service.failing, **request.app.state.keys.failing}
    ready = service.ready and not failing
    if not ready:
        response.status_code = 503
    return {"ready": ready, "model_version": served.version if served else None, "failing": failing}


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition."""
    return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
