"""A/B arms: named shares of the traffic, each with its policy and learning mode.

A listener falls into an arm by a stable hash: u = SHA-256(salt, key) read as a number in
[0, 1), and arm i takes u in [s_0 + ... + s_{i-1}, s_0 + ... + s_i) (shares s, in config
order). The key is the request's listener id, or its event id when the request names no
listener. The same salt and shares always give a listener the same arm, on every worker and
after every restart; growing one arm's share at the expense of the next one moves only the
listeners in between.

The configuration lives in `<data_dir>/arms.json` (replaced atomically); without it the
service has one arm, `main`, serving the active model online.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bandit.durable import write_atomic
from bandit.errors import ValidationError
from service.eventlog.lines import DEFAULT_ARM, DEFAULT_ARM_MODE
from service.layout import DataPaths

ACTIVE = "active"
BASELINES = ("editorial", "uniform", "popularity")
ONLINE, APPRENTICE, LOGGING_ONLY = DEFAULT_ARM_MODE, "apprentice", "logging-only"
MODES = (ONLINE, APPRENTICE, LOGGING_ONLY)
DEFAULT_SALT = "shelfbandit"
MAX_ARMS = 16
SHARE_TOLERANCE = 1e-6
ARM_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
ARM_FIELDS = ("name", "share", "policy", "mode")
CONFIG_FIELDS = ("salt", "arms")


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm: its name, share of the traffic, policy (`active`, a baseline, or a stored model
    version) and learning mode (`online`, `apprentice`, `logging-only`)."""

    name: str
    share: float
    policy: str = ACTIVE
    mode: str = ONLINE

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not ARM_NAME.match(self.name):
            raise ValidationError("name", "an arm name is 1-64 of a-z, 0-9, '_', '.', '-' (starting with a letter or digit)", self.name)
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0.0 <= self.share <= 1.0:
            raise ValidationError("share", "must be a number in [0, 1]", self.share)
        object.__setattr__(self, "share", float(self.share))
        if not isinstance(self.policy, str) or not (self.policy in (ACTIVE, *BASELINES) or VERSION_ID.match(self.policy)):
            raise ValidationError("policy", f"must be '{ACTIVE}', one of {', '.join(BASELINES)}, or a stored model version", self.policy)
        if self.mode not in MODES:
            raise ValidationError("mode", f"must be one of {', '.join(MODES)}", self.mode)
        if self.mode == APPRENTICE and self.policy in BASELINES:
            raise ValidationError(
                "policy", "an apprentice arm serves the editorial order and compares a model with it: "
                f"name '{ACTIVE}' or a stored model version", self.policy,
            )

    @property
    def pinned_version(self) -> str | None:
        """The stored model version this arm names, if any."""
        return None if self.policy in (ACTIVE, *BASELINES) else self.policy

    @property
    def learn(self) -> bool:
        """Whether the trainer may learn from this arm's decisions (`_learn` in the log)."""
        return self.mode != LOGGING_ONLY

    def to_dict(self) -> dict:
        return {"name": self.name, "share": self.share, "policy": self.policy, "mode": self.mode}


@dataclass(frozen=True, slots=True)
class ArmsConfig:
    """The arms in traffic order and the salt of the hash. Shares sum to 1."""

    arms: tuple[Arm, ...]
    salt: str = DEFAULT_SALT
    _everyone_in: int | None = field(init=False, repr=False, compare=False)  # the arm, when only one has a share

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        open_arms = [i for i, arm in enumerate(self.arms) if arm.share > 0.0]
        object.__setattr__(self, "_everyone_in", open_arms[0] if len(open_arms) == 1 else None)
        if not isinstance(self.salt, str) or len(self.salt) > 128:
            raise ValidationError("salt", "must be a string of at most 128 characters", self.salt)
        if not 1 <= len(self.arms) <= MAX_ARMS:
            raise ValidationError("arms", f"needs 1 to {MAX_ARMS} arms", len(self.arms))
        names = [arm.name for arm in self.arms]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValidationError("arms", "arm names must be unique", repeated)
        total = math.fsum(arm.share for arm in self.arms)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValidationError("arms", "the shares must sum to 1", round(total, 9))

    @classmethod
    def default(cls) -> ArmsConfig:
        """What the service does without an arms file: one arm, the active model, online."""
        return cls((Arm(DEFAULT_ARM, 1.0),))

    @classmethod
    def from_dict(cls, data: object) -> ArmsConfig:
        """A config from parsed JSON; every error names its field (`arms[1].share`)."""
        if not isinstance(data, Mapping):
            raise ValidationError("arms config", "must be a JSON object with 'arms' (and optionally 'salt')", type(data).__name__)
        unknown = sorted(set(data) - set(CONFIG_FIELDS))
        if unknown:
            raise ValidationError("arms config", f"unknown fields (known: {', '.join(CONFIG_FIELDS)})", unknown)
        items = data.get("arms")
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise ValidationError("arms", "must be a list of arms", type(items).__name__)
        arms = tuple(_arm_from_dict(i, item) for i, item in enumerate(items))
        return cls(arms, data.get("salt", DEFAULT_SALT))

    @classmethod
    def from_json(cls, text: str | bytes) -> ArmsConfig:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValidationError("arms config", f"must be valid JSON ({err})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {"salt": self.salt, "arms": [arm.to_dict() for arm in self.arms]}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2).encode() + b"\n"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(arm.name for arm in self.arms)

    def arm_index(self, key: str) -> int:
        """The arm of a listener (or event) id: the first arm whose cumulative share exceeds
        u = SHA-256(salt NUL key) / 2^64 (its first 8 bytes); arms of share 0 get nobody."""
        if self._everyone_in is not None:  # everybody's arm, whatever u is: no hash to compute
            return self._everyone_in
        u = hash_unit(self.salt, key)
        cumulative = 0.0
        last_open = 0
        for i, arm in enumerate(self.arms):
            if arm.share > 0.0:
                cumulative += arm.share
                last_open = i
                if u < cumulative:
                    return i
        return last_open  # u beyond a sum that rounded below 1


def hash_unit(salt: str, key: str) -> float:
    """SHA-256 of salt NUL key, its first 8 bytes as an integer / 2^64: uniform on [0, 1)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _arm_from_dict(i: int, item: object) -> Arm:
    if not isinstance(item, Mapping):
        raise ValidationError(f"arms[{i}]", "must be an object with name, share, policy and mode", type(item).__name__)
    unknown = sorted(set(item) - set(ARM_FIELDS))
    if unknown:
        raise ValidationError(f"arms[{i}]", f"unknown fields (known: {', '.join(ARM_FIELDS)})", unknown)
    for required in ("name", "share"):
        if required not in item:
            raise ValidationError(f"arms[{i}].{required}", "is required")
    try:
        return Arm(**item)
    except ValidationError as err:
        raise ValidationError(f"arms[{i}].{err.field}", err.rule, err.found) from None


class ArmsFile:
    """`<data_dir>/arms.json`: read, replace atomically, remove."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = DataPaths(Path(data_dir)).arms_file

    def read_bytes(self) -> bytes | None:
        """The file's content, or None when there is no arms configuration."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def read(self) -> ArmsConfig | None:
        """The configuration in the file (ValidationError if it is invalid), None without a file."""
        data = self.read_bytes()
        return None if data is None else ArmsConfig.from_json(data)

    def write(self, config: ArmsConfig) -> None:
        """Replace the file (temp file, fsync, rename): workers see the old or the new config."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, config.to_json())

    def clear(self) -> bool:
        """Remove the file (back to the single `main` arm); False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
