"""The API document: FastAPI's OpenAPI schema of the app, with the limits of its settings.

`docs/openapi.json` is this document for the default settings (`shelfbandit openapi --out
docs/openapi.json`; a test checks that it is current). A running service serves its own at
`/openapi.json`, with the limits it was configured with.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.http.body import DOCUMENTED_BODIES
from service.settings import Settings

REF_TEMPLATE = "#/components/schemas/{model}"

DESCRIPTION = """\
Orders a home page's shelves with a contextual bandit (`POST /v1/rank`), logs what it showed
with its probabilities before answering, and takes rewards (`POST /v1/reward`).

Every error answer is a `Problem`: `{"error": "<field>: <rule>", "detail": [{"field", "rule"}]}`,
naming the field the way it appears in the request (or the header).

Client keys: once the service is configured with any, `/v1/rank` and `/v1/reward` need one in
the `X-Shelfbandit-Key` header (401 without, 403 unknown), and only the key that asked for a
decision may reward it. Admin operations take `Authorization: Bearer <admin token>`.
"""


def openapi_document(app: FastAPI, settings: Settings) -> dict:
    """The OpenAPI document of `app` with the configurable limits of `settings` written in."""
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=DESCRIPTION, routes=app.routes
    )
    schemas = document["components"]["schemas"]
    for name, model in DOCUMENTED_BODIES.items():  # bodies read by service.http.body, not by FastAPI
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    rank = schemas["RankRequest"]["properties"]
    rank["slots"]["maximum"] = settings.max_slots
    rank["shelves"]["maxItems"] = settings.max_shelves
    rank["user"]["maxProperties"] = settings.max_features
    schemas["ShelfIn"]["properties"]["features"]["maxProperties"] = settings.max_features
    return document


def use_document(app: FastAPI, settings: Settings) -> None:
    """Serve `openapi_document(app, settings)` at /openapi.json (built once, when first asked)."""
    built: list[dict] = []

    def document() -> dict:
        if not built:
            built.append(openapi_document(app, settings))
        return built[0]

    app.openapi = document


def document_text(document: dict) -> str:
    """The document as written to docs/openapi.json: sorted keys, two-space indents, a final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

