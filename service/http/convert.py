"""The edge between HTTP schemas and the domain: requests -> `bandit.types`, decisions -> answers.

Every rule broken raises `bandit.errors.ValidationError(field, rule, found)` (422).
"""

from __future__ import annotations

import orjson

from bandit.errors import ValidationError
from bandit.features import Features
from bandit.types import Context, Decision, Shelf
from bandit.vw.format import SHELF_ID_FEATURE
from service.http.schemas import RankRequest, RewardRequest, ShelfIn
from service.settings import Settings

SHELVES_KEPT = 65_536  # validated shelves a worker keeps (a catalogue's candidates recur on every page)


def rank_inputs(body: RankRequest, limits: Settings) -> tuple[Context, tuple[Shelf, ...], tuple[str, ...]]:
    """Check the request against the rules and limits; return (context, shelves, baseline)."""
    n_shelves = len(body.shelves)
    if n_shelves > limits.max_shelves:
        raise ValidationError("shelves", f"at most {limits.max_shelves} candidate shelves", n_shelves)
    if body.slots > limits.max_slots:
        raise ValidationError("slots", f"at most {limits.max_slots}", body.slots)
    if body.slots > n_shelves:
        raise ValidationError("slots", f"must not exceed the number of shelves ({n_shelves})", body.slots)
    if len(body.user) > limits.max_features:
        raise ValidationError("user", f"at most {limits.max_features} features per object", len(body.user))
    positions: dict[str, int] = {}
    for i, shelf in enumerate(body.shelves):
        if shelf.id in positions:
            raise ValidationError(f"shelves[{i}].id", "shelf ids must be unique", shelf.id)
        positions[shelf.id] = i
        if len(shelf.features) > limits.max_features:
            raise ValidationError(f"shelves[{i}].features", f"at most {limits.max_features} features per object", len(shelf.features))
        if SHELF_ID_FEATURE in shelf.features:
            raise ValidationError(f"shelves[{i}].features", f"'{SHELF_ID_FEATURE}' is reserved for the shelf id", SHELF_ID_FEATURE)
    baseline = tuple(body.baseline or ())
    for i, shelf_id in enumerate(baseline):
        if shelf_id not in positions:
            raise ValidationError(f"baseline[{i}]", "must be one of the candidate shelf ids", shelf_id)
    if len(set(baseline)) != len(baseline):
        raise ValidationError("baseline", "must not list a shelf twice")
    context = Context(Features(body.user, field="user"), body.listener_id)
    shelves = tuple(_shelf(shelf, i) for i, shelf in enumerate(body.shelves))
    return context, shelves, baseline


_shelves: dict[tuple, Shelf] = {}  # (id, feature items, their types) -> the shelf validated from them


def _shelf(shelf: ShelfIn, i: int) -> Shelf:
    """The validated Shelf of a request's shelf, validated once for every page that lists it
    (the same object each time). The key holds each value's type: 1, 1.0 and True are equal
    keys in Python but distinct features; a value that cannot be a key is validated (and refused)."""
    features = shelf.features
    key = (shelf.id, tuple(features.items()), tuple(map(type, features.values())))
    try:
        return _shelves[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable value (a list, an object): refused by the validation below
        key = None
    made = Shelf(shelf.id, Features(features, field=f"shelves[{i}].features"))
    if key is not None:
        if len(_shelves) >= SHELVES_KEPT:
            _shelves.clear()
        _shelves[key] = made
    return made


def reward_target(body: RewardRequest) -> tuple[int | None, str | None]:
    """(slot, shelf_id): exactly one of them names the rewarded slot."""
    if (body.shelf_id is None) == (body.slot is None):
        raise ValidationError("shelf_id/slot", "give exactly one of them")
    return body.slot, body.shelf_id


def ranking_json(decision: Decision, arm: str) -> bytes:
    """The answer to /v1/rank: event id, model version, arm, and per slot the shelf and its probability."""
    ranking = [
        {"slot": k, "shelf_id": shelf_id, "probability": probability}
        for k, (shelf_id, probability) in enumerate(zip(decision.shelf_ids, decision.slot_probs))
    ]
    answer = {"event_id": decision.event_id, "model_version": decision.model_version, "arm": arm, "ranking": ranking}
    return orjson.dumps(answer)
