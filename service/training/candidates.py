"""Candidate configurations: a name and a RankerConfig, from a JSON file or the default set."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.jsonfile import read_json_file

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A named ranker configuration trained by one worker. The name is its state directory."""

    name: str
    config: RankerConfig

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValidationError("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", self.name)
        if not isinstance(self.config, RankerConfig):
            raise ValidationError("config", "must be a RankerConfig", type(self.config).__name__)

    def to_dict(self) -> dict:
        return {"name": self.name, **self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, field: str = "candidate") -> Candidate:
        if not isinstance(data, dict) or "name" not in data:
            raise ValidationError(field, "must be an object with a name and RankerConfig fields", data)
        fields = {k: v for k, v in data.items() if k != "name"}
        try:
            return cls(str(data["name"]), RankerConfig.from_dict(fields))
        except ValidationError as err:
            raise ValidationError(f"{field}.{err.field}", err.rule, err.found) from None


# Exploration (SquareCB, epsilon-greedy), interactions and learning rate: three ways to learn the
# same stream. SquareCB with listener x shelf is the configuration that learns fastest in the
# simulator's worlds and is the first champion; epsilon 0.05 explores less in the lower slots;
# the third adds the listener x shelf x slot interaction with a lower learning rate. Every one
# serves with a uniform floor of 2% (`uniform_share`): SquareCB grows greedier with the events
# it has seen, and the floor gives the launch gate 1.7 to 2.4 times the effective sample size
# for 0.65% of served value; 5% buys only 1.3 times more for 2.8% (bench/exploration.py,
# docs/training.md). The same floor on every candidate keeps the gate's comparison fair (it
# compares the policies as they would serve).
EXPLORATION_FLOOR = 0.02
DEFAULT_CANDIDATES = (
    Candidate("squarecb", RankerConfig(explorer="squarecb", uniform_share=EXPLORATION_FLOOR)),
    Candidate("epsilon", RankerConfig(explorer="epsilon", epsilon=0.05, uniform_share=EXPLORATION_FLOOR)),
    Candidate(
        "squarecb-slot",
        RankerConfig(explorer="squarecb", interactions=("listener*shelf", "slot*shelf", "listener*shelf*slot"),
                     learning_rate=0.25, uniform_share=EXPLORATION_FLOOR),
    ),
)


def check_candidates(candidates: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """At least one candidate, names unique."""
    candidates = tuple(candidates)
    if not candidates:
        raise ValidationError("candidates", "at least one candidate is needed", 0)
    names = [c.name for c in candidates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValidationError("candidates", "names must be unique", repeated)
    return candidates


def read_candidates(path: str | Path) -> tuple[Candidate, ...]:
    """A JSON list of objects, each a `name` plus RankerConfig fields, e.g.
    `[{"name": "greedy", "explorer": "epsilon", "epsilon": 0.02}]`."""
    data = read_json_file(path, "candidates")
    if not isinstance(data, list):
        raise ValidationError("candidates", "must be a JSON list of candidate objects", type(data).__name__)
    return check_candidates(Candidate.from_dict(item, f"candidates[{i}]") for i, item in enumerate(data))
