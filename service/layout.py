"""Where everything lives in a data directory (one directory per deployment, shared by workers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("shelfbandit-data")
DECISION_KIND = "decisions"
REWARD_KIND = "rewards"
LATE_KIND = "late"


@dataclass(frozen=True, slots=True)
class DataPaths:
    """The layout of a data directory; see docs/service.md."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def decisions(self) -> Path:
        return self.root / "decisions"

    @property
    def rewards(self) -> Path:
        return self.root / "rewards"

    @property
    def late_rewards(self) -> Path:
        return self.root / "late_rewards"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def joined(self) -> Path:
        return self.root / "joined"

    @property
    def slates(self) -> Path:
        return self.root / "slates"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def arms_file(self) -> Path:
        return self.root / "arms.json"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def training_records(self) -> Path:
        return self.training / "records.jsonl"

    @property
    def candidates(self) -> Path:
        return self.training / "candidates"
