"""POST /v1/rank: order the candidate shelves for one listener and log the decision."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.http.convert import rank_inputs, ranking_json
from service.http.deps import KeyIdDep, ServiceDep
from service.http.schemas import (
    Problem,
    RankRequest,
    RankResponse,
    RepeatedEventProblem,
)

router = APIRouter(prefix="/v1", tags=["decisions"])


@router.post(
    "/rank",
    response_model=RankResponse,
    responses={409: {"model": RepeatedEventProblem}, 413: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
)
async def rank(body: RankRequest, service: ServiceDep, key_id: KeyIdDep, request: Request) -> Response:
    """Rank `shelves` into `slots` slots. The decision is logged durably before the answer.

    `probability` is P(this shelf at this slot | the shelves above it) under the policy of the
    arm that served (`arm`; the listener id decides it, see docs/experiments.md). Ranking runs
    on the service's ranking thread, so the event loop is never blocked by it.
    """
    context, shelves, baseline = rank_inputs(body, service.settings)
    decision, served_by = await service.rank(context, shelves, body.slots, body.event_id, baseline, key_id)
    request.state.event_id = decision.event_id
    return Response(ranking_json(decision, served_by.arm), media_type="application/json")
