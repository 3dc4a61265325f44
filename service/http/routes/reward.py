"""POST /v1/reward: a reward for one slot of a served decision."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.http.convert import reward_target
from service.http.deps import KeyIdDep, ServiceDep
from service.http.schemas import RewardRequest, RewardResponse, problems

router = APIRouter(prefix="/v1", tags=["decisions"])


@router.post(
    "/reward",
    response_model=RewardResponse,
    responses=problems(400, 401, 403, 404, 409, 413, 422, 503),
)
def reward(body: RewardRequest, service: ServiceDep, key_id: KeyIdDep, request: Request) -> RewardResponse:
    """Record a reward (higher is better) for the slot named by `slot` or by `shelf_id`.

    404: the event is unknown. 403: the event was decided for another client key (only the key
    that asked for a decision may reward it). 409: its reward window has closed (the reward is kept aside
    for analysis, not learned from). Repeats are harmless: a repeated `reward_id` counts once,
    and under the default `earliest` aggregation only a slot's first reward counts. 422 beyond
    the schema: the slot or shelf was not shown in the event. 401: a client key is configured
    and `X-Shelfbandit-Key` is missing (403: unknown).
    """
    request.state.event_id = body.event_id
    slot, shelf_id = reward_target(body)
    accepted = service.reward(body.event_id, slot, shelf_id, body.value, body.reward_id, key_id)
    return RewardResponse(event_id=accepted.event_id, slot=accepted.slot, status="accepted")
