"""HTTP request and response schemas (pydantic lives here, at the edge, and nowhere else).

The schemas check structure and the hard limits (so both appear in the OpenAPI document);
rules that relate fields (unique shelf ids, slots <= shelves, baseline ids among the
candidates, shelf_id xor slot) and the configurable limits are checked in `service.http.convert`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, WithJsonSchema

from bandit.features import MAX_FEATURES, MAX_NAME_LENGTH, MAX_VALUE_LENGTH
from bandit.types import MAX_SHELVES
from service.experiments.arms import ACTIVE, DEFAULT_SALT, ONLINE

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
MAX_ID_LENGTH = 128

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
ShelfId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
ListenerId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
# values are checked by bandit.features (one rule for every entry point) in service.http.convert;
# the schema only documents them
FeatureValue = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": MAX_VALUE_LENGTH},
                {"type": "boolean"},
                {"type": "number", "description": "finite"},
            ]
        }
    ),
]
FeatureName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
FeatureMap = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ShelfIn(_Strict):
    """A candidate shelf: its id and features."""

    id: ShelfId
    features: FeatureMap = Field(default_factory=dict)


class RankRequest(_Strict):
    """Order `shelves` into `slots` positions for one listener."""

    event_id: Identifier | None = Field(None, description="client-chosen id; generated when absent")
    listener_id: ListenerId | None = Field(
        None,
        description="the listener's stable id: it decides the A/B arm (a listener always gets the same arm); "
        "without it the event id decides. Logged as `_listener_id`, never a feature of the model.",
    )
    user: FeatureMap = Field(default_factory=dict, description="listener and request features")
    shelves: list[ShelfIn] = Field(min_length=1, max_length=MAX_SHELVES)
    slots: Annotated[int, Field(strict=True, ge=1)]
    baseline: list[ShelfId] | None = Field(None, max_length=MAX_SHELVES, description="the editorial order, if any")


class SlotOut(BaseModel):
    slot: int = Field(description="0 = top")
    shelf_id: str
    probability: float = Field(description="P(this shelf at this slot | the shelves above it)")


class RankResponse(BaseModel):
    event_id: str
    model_version: str = Field(description="the version of the policy that served (the arm's)")
    arm: str = Field(description="the A/B arm that served (`main` without an arms configuration)")
    ranking: list[SlotOut]


class RewardRequest(_Strict):
    """A reward for one slot of a served decision, named by slot or by shelf id."""

    event_id: Identifier
    shelf_id: ShelfId | None = None
    slot: Annotated[int, Field(strict=True, ge=0)] | None = None
    value: Annotated[float, Field(strict=True, ge=-1e6, le=1e6)]
    reward_id: Identifier | None = Field(None, description="client id; a repeated id counts once")


class RewardResponse(BaseModel):
    event_id: str
    slot: int
    status: Literal["accepted"]


class ActivateRequest(_Strict):
    version: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+\-]*$")]


class ModelRefusalOut(BaseModel):
    version: str
    reason: str
    at: float


class ModelOut(BaseModel):
    version: str = Field(description="the version this worker serves")
    kind: str
    created: float
    loaded_at: float
    pointer: str | None = Field(description="the version the store's active pointer names")
    previous: str | None = Field(description="the version active before (rollback target)")
    pinned: bool = Field(description="an operator pinned the active version: timed publishing waits for /v1/model/resume")
    refused: ModelRefusalOut | None = Field(description="the last version this worker refused, if any")
    versions: list[str] = Field(description="stored versions, oldest first")


class ActivateResponse(BaseModel):
    version: str
    previous: str | None
    pinned: bool = Field(description="always true: an activation by hand pins the version")


class ResumeResponse(BaseModel):
    version: str = Field(description="the active version, now open to timed publishing again")
    pinned: bool


# the rules of an arms configuration live in `service.experiments.arms` (one place for the API, the file
# and the CLI); these schemas give its shape
class ArmIn(_Strict):
    """One arm: a share of the traffic, the policy that serves it and its learning mode."""

    name: StrictStr = Field(description="1-64 of a-z, 0-9, '_', '.', '-'")
    share: float = Field(strict=True, description="share of the listeners, in [0, 1]; the shares sum to 1")
    policy: StrictStr = Field(ACTIVE, description="`active`, `editorial`, `uniform`, `popularity`, or a stored model version")
    mode: StrictStr = Field(ONLINE, description="`online`, `apprentice` or `logging-only`")


class ArmsIn(_Strict):
    """The arms in traffic order and the salt of the listener hash."""

    salt: StrictStr = DEFAULT_SALT
    arms: list[ArmIn]


class ArmOut(ArmIn):
    serving_version: str | None = Field(description="the version that serves this arm now (None: no model loaded)")
    model_version: str | None = Field(description="the version of the arm's policy (for an apprentice arm: the model it compares)")
    apprentice_slots: int | None = Field(None, description="apprentice arms: slots this worker compared")
    apprentice_agreement: float | None = Field(None, description="apprentice arms: share of compared slots where the model's top choice was the editorial one")


class ArmsRefusalOut(BaseModel):
    reason: str
    at: float


class ArmsOut(BaseModel):
    source: Literal["default", "file"] = Field(description="file: arms.json; default: the single `main` arm")
    salt: str
    loaded_at: float
    arms: list[ArmOut]
    refused: ArmsRefusalOut | None = Field(description="the last arms.json this worker refused (the previous arms keep serving)")


class Problem(BaseModel):
    """Every 4xx/5xx body: a message naming the field and the rule, and the details."""

    error: str
    detail: list[dict] = Field(default_factory=list)


class RepeatedEventProblem(Problem):
    """409 of /v1/rank: the event id was served already."""

    served: RankResponse | None = Field(
        description="the answer served for this event id (null once the worker has forgotten it, or while it is still being decided)"
    )
