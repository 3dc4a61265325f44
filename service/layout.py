"""Where everything lives in a data directory (one directory per deployment, shared by workers
and by replicas), and in each replica's log directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("shelfbandit-data")
DECISION_KIND = "decisions"
REWARD_KIND = "rewards"
LATE_KIND = "late"
REPLICA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


@dataclass(frozen=True, slots=True)
class LogDir:
    """One replica's logs under `root`: decisions/, rewards/, late_rewards/, quarantine/, run/.
    `replica_id` None: the data directory's own logs (one host, the default)."""

    root: Path
    replica_id: str | None = None

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
    def run(self) -> Path:
        return self.root / "run"

    @property
    def lock(self) -> Path:
        """Held by the replica's `shelfbandit serve` while it runs: one replica per id."""
        return self.root / ".lock"

    def segment_key(self, segment: Path) -> str:
        """A segment's name in the joiner's checkpoint: its file name, prefixed by the replica id
        for a replica's logs (segment names are unique in one directory, not across hosts)."""
        return segment.name if self.replica_id is None else f"{self.replica_id}/{segment.name}"


@dataclass(frozen=True, slots=True)
class DataPaths:
    """The layout of a data directory; see docs/service.md. `replica_id`: whose logs `decisions`,
    `rewards`, `late_rewards`, `quarantine` and `run` are (None: the data directory's own;
    else `replicas/<replica_id>/`); everything else is shared by every replica."""

    root: Path
    replica_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def replicas(self) -> Path:
        return self.root / "replicas"

    @property
    def logs(self) -> LogDir:
        """This replica's log directory."""
        if self.replica_id is None:
            return LogDir(self.root)
        return LogDir(self.replicas / self.replica_id, self.replica_id)

    def all_logs(self) -> list[LogDir]:
        """Every replica's log directory that the joiner reads: the data directory's own, then
        each `replicas/<id>/` in the order of their ids."""
        found = sorted(p for p in self.replicas.iterdir() if p.is_dir()) if self.replicas.is_dir() else []
        return [LogDir(self.root), *(LogDir(p, p.name) for p in found)]

    @property
    def decisions(self) -> Path:
        return self.logs.decisions

    @property
    def rewards(self) -> Path:
        return self.logs.rewards

    @property
    def late_rewards(self) -> Path:
        return self.logs.late_rewards

    @property
    def quarantine(self) -> Path:
        return self.logs.quarantine

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
        return self.logs.run

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
