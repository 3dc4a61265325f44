"""GET /v1/arms, PUT /v1/arms and DELETE /v1/arms (admin): the A/B arms and their learning modes."""

from __future__ import annotations

from fastapi import APIRouter

from service.errors import NotReady
from service.experiments.arms import APPRENTICE, ArmsConfig
from service.experiments.live import LiveArms
from service.http.deps import AdminDep, ServiceDep
from service.http.schemas import ArmOut, ArmsIn, ArmsOut, ArmsRefusalOut, problems
from service.serving import Service

router = APIRouter(prefix="/v1/arms", tags=["experiments"])



def arms_out(service: Service, live: LiveArms) -> ArmsOut:
    experiment = service.experiment
    arms = []
    for arm in live.config.arms:
        try:
            model_version = experiment.policy_of(live, arm).model_version
            serving_version = experiment.serving_policy(live, arm).model_version
        except NotReady:
            model_version = serving_version = None
        count = experiment.agreement.get(arm.name)
        compared = count.slots if count else 0
        arms.append(ArmOut(
            **arm.to_dict(),
            serving_version=serving_version,
            model_version=model_version,
            apprentice_slots=compared if arm.mode == APPRENTICE else None,
            apprentice_agreement=count.agreed / compared if arm.mode == APPRENTICE and compared else None,
        ))
    refused = experiment.refused
    return ArmsOut(
        source=live.source,
        salt=live.config.salt,
        loaded_at=live.loaded_at,
        arms=arms,
        refused=ArmsRefusalOut(reason=refused.reason, at=refused.at) if refused else None,
    )


@router.get("", response_model=ArmsOut)
def arms(service: ServiceDep) -> ArmsOut:
    """The arms this worker serves (with the versions behind them), the last refused arms.json,
    and, for apprentice arms, how often the model's top choice agreed with the editorial one here."""
    return arms_out(service, service.experiment.current)


@router.put("", response_model=ArmsOut, dependencies=[AdminDep], responses=problems(400, 401, 403, 413, 422))
def put_arms(body: ArmsIn, service: ServiceDep) -> ArmsOut:
    """Replace the arms (admin). The configuration is checked and its pinned versions loaded and
    probed first (422 naming the field otherwise; nothing changes then), then written to
    `arms.json`; other workers pick it up within `model_poll_s`."""
    config = ArmsConfig.from_dict(body.model_dump())
    return arms_out(service, service.experiment.apply(config))


@router.delete("", response_model=ArmsOut, dependencies=[AdminDep], responses=problems(401, 403))
def delete_arms(service: ServiceDep) -> ArmsOut:
    """End the experiment (admin): remove `arms.json`, back to the single `main` arm."""
    return arms_out(service, service.experiment.clear())
