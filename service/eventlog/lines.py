"""The service's log lines: decision lines (DSJSON, `bandit.vw.format`) and reward lines.

Decision lines are written with `EventId` and `Timestamp` first, so readers that only need
those (the joiner deciding what is ready, the event index) read them from the line's head
without parsing the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from bandit.types import Context, Decision, Shelf
from bandit.vw.format import decision_record, epoch_seconds

DEFAULT_ARM, DEFAULT_ARM_MODE = "main", "online"  # what served a line that names no arm
KEY_ID_FIELD = "_key_id"  # the name (never the secret) of the client key that asked for a decision
_HEAD = re.compile(rb'^\{"EventId":"([^"\\]*)","Timestamp":"([^"\\]*)"')


@dataclass(frozen=True, slots=True)
class ServedBy:
    """Which arm served a decision, in which mode, whether it may be learned from, and (apprentice
    arms) per slot whether the compared model's top choice agreed with the editorial one."""

    arm: str = DEFAULT_ARM
    mode: str = DEFAULT_ARM_MODE
    learn: bool = True
    agreement: tuple[bool, ...] | None = None
    learner_version: str | None = None

    def fields(self) -> dict:
        """The decision record's `_arm`, `_arm_mode`, `_learn` (and `_agreement`, `_learner_version`)."""
        out: dict = {"_arm": self.arm, "_arm_mode": self.mode, "_learn": self.learn}
        if self.agreement is not None:
            out["_agreement"] = list(self.agreement)
            out["_learner_version"] = self.learner_version
        return out


MAIN = ServedBy()


def decision_line(
    context: Context,
    shelves: Sequence[Shelf],
    decision: Decision,
    *,
    timestamp: float,
    baseline: Sequence[str],
    served_by: ServedBy = MAIN,
    key_id: str | None = None,
) -> bytes:
    """One DSJSON decision line (no rewards yet), newline-terminated. `key_id`: the name of the
    client key that asked for the decision (`_key_id`; absent when no key was required)."""
    extra = served_by.fields()
    if key_id is not None:
        extra[KEY_ID_FIELD] = key_id
    record = decision_record(context, shelves, decision, timestamp=timestamp, baseline=baseline, extra=extra)
    return json_line(record)


def json_line(record: dict) -> bytes:
    """One compact JSON line (orjson: about ten times faster than `json.dumps`, the same numbers).
    JSON has no NaN: an unknown value (an unestimated marginal) is written as null, and every
    reader of logged marginals reads null as NaN (`bandit.vw.format.nullable_floats`)."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)


def line_head(raw: bytes) -> tuple[str, float] | None:
    """(event id, decision time) from a decision line's head, None if the head is not as written."""
    match = _HEAD.match(raw)
    if match is None:
        return None
    try:
        return match.group(1).decode(), epoch_seconds(match.group(2).decode())
    except ValueError:
        return None


def shown_shelves(record: dict) -> tuple[str, ...]:
    """The shelf ids a decision record shows, slot 0 first."""
    multi = record["c"]["_multi"]
    return tuple(multi[slot["_a"][0]]["_tag"] for slot in record["_outcomes"])


def reward_line(
    event_id: str, slot: int, value: float, reward_id: str | None, *, received: float, decided: float
) -> bytes:
    """One reward line: which slot of which event, the value, and when it arrived."""
    record = {
        "event_id": event_id,
        "slot": slot,
        "value": value,
        "reward_id": reward_id,
        "received": received,
        "decided": decided,
    }
    return json_line(record)
