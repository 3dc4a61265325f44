"""POST /v1/rank: order the candidate shelves for one listener and log the decision."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.http.body import body_document, parsed_body
from service.http.convert import rank_inputs, ranking_json
from service.http.deps import caller_key_id, client_key, service_of
from service.http.keys import KEY_FIELD
from service.http.schemas import RankRequest, RankResponse, RepeatedEventProblem, problems

router = APIRouter(prefix="/v1", tags=["decisions"])


# The hot path: no FastAPI body parameter or dependency (see service.http.body); the body and
# the client-key header are documented as a body parameter and KeyIdDep would document them.
@router.post(
    "/rank",
    response_model=RankResponse,
    responses={**problems(400, 401, 403, 413, 422, 503), 409: {"model": RepeatedEventProblem}},
    openapi_extra={**body_document(RankRequest), "security": [{client_key.scheme_name: []}]},
)
async def rank(request: Request) -> Response:
    """Rank `shelves` into `slots` slots. The decision is logged durably before the answer.

    `probability` is P(this shelf at this slot | the shelves above it) under the policy of the
    arm that served (`arm`; the listener id decides it, see docs/experiments.md). The log line's
    write and fsync run on the decision log's committer thread, so the event loop never waits
    for the disk.

    Rules beyond the schema (422 naming the field): shelf ids are unique, `slots` is at most
    the number of shelves, and every `baseline` id is a candidate's. 401/403: a client key is
    configured and `X-Shelfbandit-Key` is missing or unknown. 409: the event id was served
    already (`served`: the answer it got, for the key that asked). 413: the body is larger
    than the service's `max_body_bytes`. 503 (`Retry-After`): the decision could not be logged
    durably, or no model can serve.
    """
    service = service_of(request)
    key_id = caller_key_id(request, request.headers.get(KEY_FIELD))
    body = await parsed_body(request, RankRequest)
    context, shelves, baseline = rank_inputs(body, service.settings)
    decision, served_by = await service.rank(context, shelves, body.slots, body.event_id, baseline, key_id)
    request.state.event_id = decision.event_id
    return Response(ranking_json(decision, served_by.arm), media_type="application/json")
