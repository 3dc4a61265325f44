"""HTTP request and response schemas (pydantic lives here, at the edge, and nowhere else).

The schemas check structure and the hard limits. Every other rule a JSON schema can express is
written into the document too (`json_schema_extra`), while the check itself stays in one place
(`service.http.convert`, `service.experiments.arms`, `bandit.features`), so the answers name
the same field and rule whatever the schema says: shelf_id xor slot, a baseline without
repeats, the reserved feature name, the arms' names, shares, policies and modes. The
configurable limits (`max_slots`, `max_shelves`, `max_features`) are put in by
`service.http.openapi` for the settings the app runs with. Rules no schema can express
(unique shelf ids, slots <= shelves, baseline ids among the candidates, arm names unique,
shares summing to 1, a stored model version) are in the operations' descriptions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, WithJsonSchema

from bandit.features import MAX_FEATURES, MAX_MAGNITUDE, MAX_NAME_LENGTH, MAX_VALUE_LENGTH, MIN_MAGNITUDE
from bandit.types import MAX_SHELVES
from bandit.vw.format import SHELF_ID_FEATURE
from service.experiments.arms import ACTIVE, APPRENTICE, ARM_NAME, BASELINES, DEFAULT_SALT, MAX_ARMS, MODES, ONLINE, VERSION_ID

MAX_SALT_LENGTH = 128
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
                {"type": "number", "const": 0},
                {"type": "number", "minimum": MIN_MAGNITUDE, "maximum": MAX_MAGNITUDE},
                {"type": "number", "minimum": -MAX_MAGNITUDE, "maximum": -MIN_MAGNITUDE},
            ]
        }
    ),
]
FeatureName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
FeatureMap = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Out(BaseModel):
    """An answer: the document lists every field it holds (additionalProperties: false)."""

    model_config = ConfigDict(extra="forbid")


class ShelfIn(_Strict):
    """A candidate shelf: its id and features."""

    id: ShelfId
    features: FeatureMap = Field(
        default_factory=dict,
        description=f"`{SHELF_ID_FEATURE}` is reserved for the shelf id",
        json_schema_extra={"propertyNames": {"minLength": 1, "maxLength": MAX_NAME_LENGTH, "not": {"const": SHELF_ID_FEATURE}}},
    )


class RankRequest(_Strict):
    """Order `shelves` into `slots` positions for one listener.

    Beyond this schema: shelf ids are unique, `slots` is at most the number of shelves, and the
    `baseline` ids are candidate shelf ids (422 naming the field otherwise)."""

    event_id: Identifier | None = Field(None, description="client-chosen id; generated when absent")
    listener_id: ListenerId | None = Field(
        None,
        description="the listener's stable id: it decides the A/B arm (a listener always gets the same arm); "
        "without it the event id decides. Logged as `_listener_id`, never a feature of the model.",
    )
    user: FeatureMap = Field(default_factory=dict, description="listener and request features")
    shelves: list[ShelfIn] = Field(min_length=1, max_length=MAX_SHELVES)
    slots: Annotated[int, Field(strict=True, ge=1)]
    baseline: list[ShelfId] | None = Field(
        None, max_length=MAX_SHELVES, description="the editorial order, if any: candidate shelf ids, each once",
        json_schema_extra={"uniqueItems": True},
    )


class SlotOut(_Out):
    slot: int = Field(description="0 = top")
    shelf_id: str
    probability: float = Field(description="P(this shelf at this slot | the shelves above it)")


class RankResponse(_Out):
    event_id: str
    model_version: str = Field(description="the version of the policy that served (the arm's)")
    arm: str = Field(description="the A/B arm that served (`main` without an arms configuration)")
    ranking: list[SlotOut]


class RewardRequest(_Strict):
    """A reward for one slot of a served decision, named by slot or by shelf id (exactly one of them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["shelf_id"], "properties": {"shelf_id": {"type": "string"}}},
                {"required": ["slot"], "properties": {"slot": {"type": "integer"}}},
            ]
        }
    )

    event_id: Identifier
    shelf_id: ShelfId | None = None
    slot: Annotated[int, Field(strict=True, ge=0)] | None = None
    value: Annotated[float, Field(strict=True, ge=-1e6, le=1e6)]
    reward_id: Identifier | None = Field(None, description="client id; a repeated id counts once")


class RewardResponse(_Out):
    event_id: str
    slot: int
    status: Literal["accepted"]


class ActivateRequest(_Strict):
    version: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+\-]*$")]


class ModelRefusalOut(_Out):
    version: str
    reason: str
    at: float


class ModelOut(_Out):
    version: str = Field(description="the version this worker serves")
    kind: str
    created: float
    loaded_at: float
    pointer: str | None = Field(description="the version the store's active pointer names")
    previous: str | None = Field(description="the version active before (rollback target)")
    pinned: bool = Field(description="an operator pinned the active version: timed publishing waits for /v1/model/resume")
    refused: ModelRefusalOut | None = Field(description="the last version this worker refused, if any")
    versions: list[str] = Field(description="stored versions, oldest first")


class ActivateResponse(_Out):
    version: str
    previous: str | None
    pinned: bool = Field(description="always true: an activation by hand pins the version")


class ResumeResponse(_Out):
    version: str = Field(description="the active version, now open to timed publishing again")
    pinned: bool


# the rules of an arms configuration live in `service.experiments.arms` (one place for the API, the file
# and the CLI); these schemas give its shape
class ArmIn(_Strict):
    """One arm: a share of the traffic, the policy that serves it and its learning mode."""

    model_config = ConfigDict(
        json_schema_extra={  # an apprentice arm compares a model with the editorial order: no baseline policy
            "if": {"required": ["mode"], "properties": {"mode": {"const": APPRENTICE}}},
            "then": {"properties": {"policy": {"not": {"enum": list(BASELINES)}}}},
        }
    )

    name: StrictStr = Field(description="1-64 of a-z, 0-9, '_', '.', '-'", json_schema_extra={"pattern": ARM_NAME.pattern})
    share: float = Field(
        strict=True, description="share of the listeners, in [0, 1]; the shares sum to 1", json_schema_extra={"minimum": 0, "maximum": 1}
    )
    policy: StrictStr = Field(
        ACTIVE, description="`active`, `editorial`, `uniform`, `popularity`, or a stored model version",
        json_schema_extra={"pattern": VERSION_ID.pattern},
    )
    mode: StrictStr = Field(ONLINE, description="`online`, `apprentice` or `logging-only`", json_schema_extra={"enum": list(MODES)})


class ArmsIn(_Strict):
    """The arms in traffic order and the salt of the listener hash.

    Beyond this schema: arm names are unique, the shares sum to 1, and a policy that is not
    `active` or a baseline names a stored model version (422 naming the field otherwise)."""

    salt: StrictStr = Field(DEFAULT_SALT, json_schema_extra={"maxLength": MAX_SALT_LENGTH})
    arms: list[ArmIn] = Field(json_schema_extra={"minItems": 1, "maxItems": MAX_ARMS})


class ArmOut(ArmIn):
    serving_version: str | None = Field(description="the version that serves this arm now (None: no model loaded)")
    model_version: str | None = Field(description="the version of the arm's policy (for an apprentice arm: the model it compares)")
    apprentice_slots: int | None = Field(None, description="apprentice arms: slots this worker compared")
    apprentice_agreement: float | None = Field(None, description="apprentice arms: share of compared slots where the model's top choice was the editorial one")


class ArmsRefusalOut(_Out):
    reason: str
    at: float


class ArmsOut(_Out):
    source: Literal["default", "file"] = Field(description="file: arms.json; default: the single `main` arm")
    salt: str
    loaded_at: float
    arms: list[ArmOut]
    refused: ArmsRefusalOut | None = Field(description="the last arms.json this worker refused (the previous arms keep serving)")


class ProblemItem(_Out):
    """One broken rule: the field as it appears in the request (`shelves[3].features.age`, `slots`,
    `body`, a header's name; empty when no field is to blame) and the rule."""

    field: str
    rule: str
    type: str | None = Field(None, description="the kind of structural error, for errors found by the schema")


class Problem(_Out):
    """Every 4xx/5xx body: a message naming the field and the rule, and the details."""

    error: str = Field(description="`<field>: <rule>` of the first broken rule")
    detail: list[ProblemItem] = Field(min_length=1)


def problems(*statuses: int) -> dict[int | str, dict]:
    """The `responses` of an operation for these error statuses, each answered with a Problem."""
    return {status: {"model": Problem} for status in statuses}


class Health(_Out):
    status: Literal["ok"]


class Readiness(_Out):
    ready: bool
    model_version: str | None = Field(description="the version this worker serves (None: no model loaded)")
    failing: dict[str, str] = Field(description="each failing background task (and `model`, while none serves) -> its last error")


class RepeatedEventProblem(Problem):
    """409 of /v1/rank: the event id was served already."""

    served: RankResponse | None = Field(
        description="the answer served for this event id (null once the worker has forgotten it, or while it is still being decided)"
    )
