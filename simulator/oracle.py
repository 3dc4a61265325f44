"""The oracle: a policy that reads the world's hidden truth and always shows the best ranking."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bandit.baselines import PrioritySlots
from bandit.errors import ShelfBanditError
from bandit.policy import Policy
from bandit.types import Context, Shelf
from simulator.world import World


class OraclePolicy(Policy):
    """Candidates by decreasing true stream probability: the best ranking under both click
    models (see simulator.click_models). Deterministic (probability 1.0); needs contexts the
    world drew (`ListenerContext`)."""

    kind = "oracle"

    def __init__(self, world: World, *, seed: int = 0) -> None:
        self.world = world
        self.seed = seed

    @property
    def model_version(self) -> str:
        return "oracle"

    def slot_model(self, context: Context, shelves: Sequence[Shelf], n_slots: int, baseline: Sequence[str] = ()):
        attraction = self.world.attraction_of(context)
        index_of = self.world.index_of
        return PrioritySlots(-attraction[[index_of[s.shelf_id] for s in shelves]])

    def save(self, path: str | Path) -> str:
        raise ShelfBanditError("the oracle cannot be saved: it reads the simulator's hidden truth")

    @classmethod
    def load(cls, path: str | Path, **overrides) -> OraclePolicy:
        raise ShelfBanditError("the oracle cannot be loaded: it is built from a world, never saved")
