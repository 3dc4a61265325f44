"""VW text lines and CCB DSJSON for shelves, contexts and logged events.

Rewards are "higher is better" everywhere in the project; `reward_to_cost` is the one
place where a reward becomes a VW cost. Text lines and DSJSON encode every feature under
the same name, so a model trained from the joined DSJSON log by VW's own parser is the
same model the ranker trains from text lines.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from bandit.errors import ValidationError
from bandit.features import Features, FeatureValue
from bandit.types import Context, Decision, LoggedEvent, Outcome, Shelf

LISTENER_NS = "Listener"
SHELF_NS = "Shelf"
SLOT_NS = "Position"
SHELF_ID_FEATURE = "shelf"
SLOT_FEATURE = "slot"
DSJSON_VERSION = "1"

_SPECIAL = re.compile(r"[\s|:%]")
_SPECIAL_NAME = re.compile(r"[\s|:%=]|^_")


def reward_to_cost(reward: float) -> float:
    """VW minimises cost; the project maximises reward."""
    return -reward


def cost_to_reward(cost: float) -> float:
    """The inverse of reward_to_cost."""
    return -cost


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group(0).encode("utf-8"))


def escape_name(name: str) -> str:
    """Escape VW's special characters (whitespace, '|', ':', '%', '=' and a leading '_')."""
    return _SPECIAL_NAME.sub(_percent, name) if _SPECIAL_NAME.search(name) else name


def escape_value(value: str) -> str:
    """Escape VW's special characters in a categorical value (whitespace, '|', ':', '%')."""
    return _SPECIAL.sub(_percent, value) if _SPECIAL.search(value) else value


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    return re.sub(r"(%[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode("utf-8"), text)


_ANY_SPECIAL_NAME = re.compile(r"[\s|:%=]|(?:^|/)_")


def _encoded(features: Features) -> list[tuple[str, float | None]]:
    """(VW feature name, value) pairs; categoricals become 'name=value' with value None (= 1)."""
    items = features.items_sorted()
    # one scan decides whether any name or value needs escaping (the usual answer is no)
    plain_names = not _ANY_SPECIAL_NAME.search("/".join(name for name, _ in items))
    plain_values = not _SPECIAL.search("/".join(v for _, v in items if isinstance(v, str)))
    encoded: list[tuple[str, float | None]] = []
    for name, value in items:
        key = name if plain_names else escape_name(name)
        if isinstance(value, str):
            encoded.append((f"{key}={value if plain_values else escape_value(value)}", None))
        elif isinstance(value, bool):
            encoded.append((f"{key}={'true' if value else 'false'}", None))
        else:
            encoded.append((key, value))
    return encoded


def encode_features(features: Features) -> dict[str, float]:
    """Feature map -> VW feature name -> value (the DSJSON form); categoricals have value 1."""
    return {key: 1.0 if value is None else value for key, value in _encoded(features)}


_NAME_KEYS: dict[str, str] = {}  # feature name -> its escaped form (names come from a schema: few)
_NAME_KEYS_SIZE = 100_000


def _name_key(name: str) -> str:
    key = _NAME_KEYS.get(name)
    if key is None:
        if len(_NAME_KEYS) >= _NAME_KEYS_SIZE:
            _NAME_KEYS.clear()
        key = _NAME_KEYS[name] = escape_name(name)
    return key


def features_text(features: Features) -> str:
    """Feature map -> the features of one VW text namespace (the text of `_encoded`, built in one
    pass, names' escaped forms remembered: a listener line is encoded on every request)."""
    items = features.items_sorted()
    texts = [value for _, value in items if isinstance(value, str)]
    plain_values = not texts or not _SPECIAL.search("/".join(texts))
    parts = []
    for name, value in items:
        key = _NAME_KEYS.get(name) or _name_key(name)
        if value.__class__ is float:
            parts.append(f"{key}:{value!r}")
        elif isinstance(value, str):
            parts.append(f"{key}={value if plain_values else escape_value(value)}")
        elif isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        else:
            parts.append(f"{key}:{value!r}")
    return " ".join(parts)


def decode_features(encoded: Mapping[str, float], field: str) -> Features:
    """Inverse of encode_features (booleans come back as the strings 'true'/'false')."""
    features: dict[str, FeatureValue] = {}
    for key, value in encoded.items():
        if "=" in key:
            name, _, text = key.partition("=")
            features[_unescape(name)] = _unescape(text)
        else:
            features[_unescape(key)] = float(value)
    return Features(features, field=field)


def _shelf_id_feature(shelf: Shelf) -> str:
    if SHELF_ID_FEATURE in shelf.features:
        raise ValidationError(
            f"shelves[{shelf.shelf_id}].features", f"'{SHELF_ID_FEATURE}' is reserved for the shelf id", SHELF_ID_FEATURE
        )
    return f"{SHELF_ID_FEATURE}={escape_value(shelf.shelf_id)}"


@functools.lru_cache(maxsize=65_536)
def _shelf_features(shelf: Shelf) -> tuple[tuple[str, float], ...]:
    return ((_shelf_id_feature(shelf), 1.0), *encode_features(shelf.features).items())


def shelf_features(shelf: Shelf) -> dict[str, float]:
    """The shelf's VW features: its id plus its own features (encoded once per shelf)."""
    return dict(_shelf_features(shelf))


@functools.lru_cache(maxsize=65_536)
def _shelf_entry(shelf: Shelf) -> dict:
    """The shelf's `_multi` entry of a decision record, built once per shelf and shared by the
    records of every decision that lists it (records are serialised, never changed)."""
    return {"_tag": shelf.shelf_id, SHELF_NS: shelf_features(shelf)}


def slot_features(slot: int) -> dict[str, float]:
    """The slot's VW features: its index."""
    return {f"{SLOT_FEATURE}={slot}": 1.0}


def listener_line(context: Context) -> str:
    return f"ccb shared |{LISTENER_NS} {features_text(context.features)}"


@functools.lru_cache(maxsize=1024)
def _listener_features(features: Features) -> dict[str, float]:
    """`encode_features` of a listener, once per request: its scoring and its decision record
    both read it (records are serialised, never changed)."""
    return encode_features(features)


def listener_features(context: Context) -> tuple[list[str], list[float]]:
    """The listener's VW features as names and values, in `listener_line`'s order: each name
    alone (value 1) is one feature of its namespace; features at value 0 are left out."""
    encoded = _listener_features(context.features)
    names = [name for name, value in encoded.items() if value]
    return names, [encoded[name] for name in names]


def listener_probe_line(name: str, value: float) -> str:
    """The shared line of a listener with the one VW feature `name` at `value` (none if empty)."""
    return f"ccb shared |{LISTENER_NS} {name}:{value!r}" if name else f"ccb shared |{LISTENER_NS}"


def shelf_line(shelf: Shelf) -> str:
    return f"ccb action |{SHELF_NS} {_shelf_id_feature(shelf)} {features_text(shelf.features)}"


def slot_line(slot: int, *, include: Iterable[int] = (), label: tuple[int, float, float] | None = None) -> str:
    """A CCB slot line; `label` = (chosen action index, reward, logging probability)."""
    label_text = ""
    if label is not None:
        action, reward, prob = label
        label_text = f"{action}:{reward_to_cost(reward)!r}:{prob!r}"
    include_text = ",".join(map(str, include))
    return f"ccb slot {label_text} {include_text} |{SLOT_NS} {SLOT_FEATURE}={slot}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat().replace("+00:00", "Z")


def epoch_seconds(text: str) -> float:
    """'2024-05-01T12:00:00.123456Z' (a DSJSON Timestamp) -> seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def decision_record(
    context: Context,
    shelves: Sequence[Shelf],
    decision: Decision,
    *,
    timestamp: float,
    baseline: Sequence[str] = (),
    extra: Mapping[str, object] | None = None,
) -> dict:
    """The DSJSON record of a decision before any reward (no `_label_cost` yet).

    `_outcomes[k]` lists slot k's shelves (indices into `_multi`, chosen first) in `_a` and
    their probabilities in `_p`. Fields VW does not read start with '_' and sit at top level.
    """
    position = {s.shelf_id: i for i, s in enumerate(shelves)}
    outcomes = []
    for k, distribution in enumerate(decision.slot_distributions):
        outcomes.append(
            {"_id": str(k), "_a": [position[s] for s, _ in distribution], "_p": [p for _, p in distribution]}
        )
    record = {
        "EventId": decision.event_id,
        "Timestamp": _iso(timestamp),
        "Version": DSJSON_VERSION,
        "c": {
            LISTENER_NS: _listener_features(context.features),
            "_multi": [_shelf_entry(s) for s in shelves],
            "_slots": [{"_id": str(k), SLOT_NS: slot_features(k)} for k in range(decision.n_slots)],
        },
        "_outcomes": outcomes,
        "_model_version": decision.model_version,
        "_marginals": _nullable(decision.slot_marginals),
        "_marginal_stderr": _nullable(decision.marginal_stderr),
    }
    if context.listener_id is not None:
        record["_listener_id"] = context.listener_id
    if baseline:
        record["_baseline"] = list(baseline)
    if extra:
        record.update(extra)
    return record


def _nullable(values: Iterable[float]) -> list[float | None]:
    """JSON has no NaN: an unknown value is written as null."""
    return [None if math.isnan(v) else v for v in values]


def nullable_floats(values: list | None, n: int) -> tuple[float, ...]:
    """Read back a list written by _nullable: n floats, NaN for a null (or for all n when absent)."""
    return tuple(float("nan") if v is None else float(v) for v in (values or [None] * n))


def join_record(record: Mapping, outcome: Outcome) -> dict:
    """A decision record with its rewards: `_label_cost` per slot plus `_defaulted` flags."""
    if len(outcome.rewards) != len(record["_outcomes"]):
        raise ValidationError("outcome.rewards", f"needs one reward per slot ({len(record['_outcomes'])})")
    joined = dict(record)
    joined["_outcomes"] = [
        {**slot, "_label_cost": reward_to_cost(r)} for slot, r in zip(record["_outcomes"], outcome.rewards)
    ]
    joined["_defaulted"] = list(outcome.defaulted)
    return joined


def event_line(event: LoggedEvent) -> str:
    """One joined DSJSON line for a logged event."""
    record = decision_record(
        event.context, event.shelves, event.decision, timestamp=event.timestamp, baseline=event.baseline
    )
    return json.dumps(join_record(record, event.outcome), separators=(",", ":"))


def parse_event(line: str | Mapping) -> LoggedEvent:
    """A joined DSJSON line (or its parsed dict) -> LoggedEvent. Raises ValidationError naming the field."""
    record = _load(line)
    try:
        c = record["c"]
        shelves = tuple(_shelf_from_json(i, item) for i, item in enumerate(c["_multi"]))
        context = Context(decode_features(c.get(LISTENER_NS, {}), "c.Listener"), record.get("_listener_id"))
        outcomes = record["_outcomes"]
        shelf_ids, probs, distributions, rewards = [], [], [], []
        for k, slot in enumerate(outcomes):
            actions, slot_probs = slot["_a"], slot["_p"]
            if not actions or len(actions) != len(slot_probs):
                raise ValidationError(f"_outcomes[{k}]", "_a and _p must be non-empty and of equal length")
            shelf_ids.append(shelves[actions[0]].shelf_id)
            probs.append(float(slot_probs[0]))
            distributions.append(tuple((shelves[a].shelf_id, float(p)) for a, p in zip(actions, slot_probs)))
            if "_label_cost" not in slot:
                raise ValidationError(f"_outcomes[{k}]._label_cost", "a joined event needs a cost for every slot")
            rewards.append(cost_to_reward(float(slot["_label_cost"])))
        n_slots = len(outcomes)
        decision = Decision(
            event_id=str(record["EventId"]),
            model_version=str(record.get("_model_version", "unknown")),
            shelf_ids=tuple(shelf_ids),
            slot_probs=tuple(probs),
            slot_marginals=nullable_floats(record.get("_marginals"), n_slots),
            marginal_stderr=nullable_floats(record.get("_marginal_stderr"), n_slots),
            slot_distributions=tuple(distributions),
        )
        outcome = Outcome(tuple(rewards), tuple(record.get("_defaulted") or ()))
        return LoggedEvent(
            context=context,
            shelves=shelves,
            decision=decision,
            outcome=outcome,
            timestamp=epoch_seconds(record["Timestamp"]) if "Timestamp" in record else 0.0,
            baseline=tuple(record.get("_baseline") or ()),
        )
    except ValidationError:
        raise
    except KeyError as missing:
        raise ValidationError(str(missing.args[0]), "required DSJSON field is missing") from None
    except (IndexError, TypeError, ValueError) as broken:
        raise ValidationError("line", f"malformed CCB DSJSON ({broken})") from None


def _load(line: str | Mapping) -> Mapping:
    if isinstance(line, Mapping):
        return line
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValidationError("line", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise ValidationError("line", "a DSJSON line must be a JSON object", type(record).__name__)
    return record


def dsjson_action_texts(line: str) -> list[str] | None:
    """The JSON text of each shelf in a DSJSON line's `_multi` list, in order, found without parsing
    the line (None when the layout is not the one the service writes: `_tag` first, `_slots` next)."""
    start = line.find('"_multi"')
    stop = line.find('"_slots"', start)
    if start < 0 or stop < 0:
        return None
    body = line[line.find("[", start) + 1 : line.rfind("]", start, stop)]
    items = body.split('{"_tag"')
    if len(items) < 2 or items[0].strip():
        return None
    return ['{"_tag"' + item.rstrip().rstrip(",") for item in items[1:]]


def shelf_from_json(item: str | Mapping, i: int = 0) -> Shelf:
    """One `_multi` entry of a DSJSON line (its JSON text or parsed dict) -> Shelf."""
    return _shelf_from_json(i, json.loads(item) if isinstance(item, str) else item)


def _shelf_from_json(i: int, item: Mapping) -> Shelf:
    encoded = dict(item[SHELF_NS])
    shelf_id = item.get("_tag")
    prefix = f"{SHELF_ID_FEATURE}="
    for key in list(encoded):
        if key.startswith(prefix):
            shelf_id = shelf_id or _unescape(key[len(prefix) :])
            del encoded[key]
    if shelf_id is None:
        raise ValidationError(f"c._multi[{i}]", "a shelf needs its id (_tag or the shelf= feature)")
    return Shelf(str(shelf_id), decode_features(encoded, f"c._multi[{i}].{SHELF_NS}"))
