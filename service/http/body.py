"""JSON request bodies read, decoded and validated in one pass by pydantic-core.

FastAPI's own body handling decodes JSON with the standard library, validates the Python
objects it built, and solves the route's dependencies on every request: together a fifth of
the event loop's time per decision (docs/service.md). `/v1/rank` reads its body with
`parsed_body` instead and answers a broken one exactly as FastAPI's path does (422, naming
`body` or the field). `body_document` writes the body into the route's OpenAPI operation, and
`openapi_document` puts the model's schema into the document's components.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

Model = TypeVar("Model", bound=BaseModel)
DOCUMENTED_BODIES: dict[str, type[BaseModel]] = {}  # schema name -> model of the bodies read by `parsed_body`


def body_document(model: type[BaseModel]) -> dict:
    """The `openapi_extra` of an operation whose JSON body `parsed_body` reads as `model`."""
    DOCUMENTED_BODIES[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


def is_json(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, parameters (charset) aside."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def parsed_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as `model`; RequestValidationError (422) with each error's field."""
    if not is_json(request.headers.get("content-type")):
        raise _refused("content_type", "must be JSON (Content-Type: application/json)")
    raw = await request.body()
    if not raw:
        raise _refused("missing", "Field required")
    try:
        return model.model_validate_json(raw)
    except PydanticError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _refused(kind: str, rule: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": rule}])
