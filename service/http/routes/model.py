"""GET /v1/model, POST /v1/model/activate and /v1/model/resume (admin): what is served,
activation and rollback (which pin the version), and resuming timed publishing."""

from __future__ import annotations

from fastapi import APIRouter

from service.errors import NotReady
from service.http.deps import AdminDep, ServiceDep
from service.http.schemas import ActivateRequest, ActivateResponse, ModelOut, ModelRefusalOut, ResumeResponse, problems
from service.models.store import ModelRefused

router = APIRouter(prefix="/v1/model", tags=["model"])


@router.get("", response_model=ModelOut, responses=problems(503))
def model(service: ServiceDep) -> ModelOut:
    """The version this worker serves, what the active pointer says, and any refused version."""
    served = service.model.current
    if served is None:
        raise NotReady("model", "no model is loaded yet")
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
        pinned=pointer.pinned if pointer else False,
        refused=ModelRefusalOut(version=refused.version, reason=refused.reason, at=refused.at) if refused else None,
        versions=[v.version for v in service.store.versions()],
    )


@router.post(
    "/activate",
    response_model=ActivateResponse,
    dependencies=[AdminDep],
    responses=problems(400, 401, 403, 404, 409, 413, 422),
)
def activate(body: ActivateRequest, service: ServiceDep) -> ActivateResponse:
    """Activate a stored version (rollback = activate an older one) and pin it: the trainer's
    timed publishing leaves it alone until `POST /v1/model/resume`. The model is loaded and
    probed first; a corrupt or unusable one is refused (409) and the current one keeps serving.
    Other workers pick the change up within `model_poll_s`."""
    version, previous = service.model.activate(body.version)
    return ActivateResponse(version=version, previous=previous, pinned=True)


@router.post("/resume", response_model=ResumeResponse, dependencies=[AdminDep],
             responses=problems(401, 403, 503))
def resume(service: ServiceDep) -> ResumeResponse:
    """Unpin the active version: the trainer's timed publishing replaces it again at its next
    publication. Harmless when nothing is pinned."""
    pointer = service.store.resume()
    if pointer is None:
        raise NotReady("model", "no model has been activated yet")
    return ResumeResponse(version=pointer.version, pinned=pointer.pinned)
