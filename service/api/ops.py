"""GET /healthz, /readyz and /metrics: the on-call engineer's endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep, response: Response) -> dict:
    """Ready to rank: a model is loaded and the decision log is open (503 otherwise)."""
    served = service.model.current
    if not service.ready:
        response.status_code = 503
    return {"ready": service.ready, "model_version": served.version if served else None}


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition."""
    return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
