"""GET /v1/model and POST /v1/model/activate (admin): what is served, activation and rollback."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdminDep, ServiceDep
from service.errors import NotReady
from service.model_store import ModelRefused
from service.schemas import ActivateRequest, ActivateResponse, ModelOut, ModelRefusalOut, Problem

router = APIRouter(prefix="/v1/model", tags=["model"])


@router.get("", response_model=ModelOut, responses={503: {"model": Problem}})
def model(service: ServiceDep) -> ModelOut:
    """The version this worker serves, what the active pointer says, and any refused version."""
    served = service.model.current
    if served is None:
        raise NotReady("model: no model is loaded yet")
    try:
        pointer = service.store.active()
    except ModelRefused:
        pointer = None
    refused = service.model.refused
    return ModelOut(
        version=served.version,
        kind=served.stored.kind,
        created=served.stored.created,
        loaded_at=served.loaded_at,
        pointer=pointer.version if pointer else None,
        previous=pointer.previous if pointer else None,
        refused=ModelRefusalOut(version=refused.version, reason=refused.reason, at=refused.at) if refused else None,
        versions=[v.version for v in service.store.versions()],
    )


@router.post(
    "/activate",
    response_model=ActivateResponse,
    dependencies=[AdminDep],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}},
)
def activate(body: ActivateRequest, service: ServiceDep) -> ActivateResponse:
    """Activate a stored version (rollback = activate an older one). The model is loaded and
    probed first; a corrupt or unusable one is refused (409) and the current one keeps serving.
    Other workers pick the change up within `model_poll_s`."""
    version, previous = service.model.activate(body.version)
    return ActivateResponse(version=version, previous=previous)
