"""The joined log's bookkeeping: part names, the checkpoint (and its keys of decision segments), and which parts are committed.

Part n is committed once the checkpoint's `next_part` exceeds n; parts numbered at or above it
are leftovers of a crash, deleted by the next joiner to start (and reported by `doctor`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bandit.durable import write_atomic
from bandit.errors import ShelfBanditError
from service.eventlog.segments import segment_paths
from service.layout import DECISION_KIND, DataPaths

CHECKPOINT = "checkpoint.json"
REJECTED = "rejected.jsonl"
PART_SUFFIXES = (".jsonl", ".parquet")


def part_name(number: int, suffix: str) -> str:
    return f"part-{number:08d}{suffix}"


def part_number(path: Path) -> int:
    """The number in a part's file name (`part-00000012.jsonl` -> 12)."""
    return int(path.name[5:13])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    next_part: int = 0
    offsets: dict = field(default_factory=dict)
    low_watermark: float = 0.0
    n_events: int = 0
    updated_at: float = 0.0

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ShelfBanditError(f"{path}: joiner checkpoint is not valid JSON ({err})") from None
        try:
            return cls(**data)
        except TypeError as err:  # a missing or unknown field, or not an object at all
            raise ShelfBanditError(f"{path}: joiner checkpoint has the wrong fields ({err})") from None

    def write(self, path: Path) -> None:
        data = {
            "next_part": self.next_part,
            "offsets": self.offsets,
            "low_watermark": self.low_watermark,
            "n_events": self.n_events,
            "updated_at": self.updated_at,
        }
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


@dataclass(frozen=True, slots=True)
class JoinedPart:
    """One committed part of the joined log."""

    number: int
    jsonl: Path
    slates: Path

    @classmethod
    def numbered(cls, paths: DataPaths, number: int) -> JoinedPart:
        return cls(number, paths.joined / part_name(number, ".jsonl"), paths.slates / part_name(number, ".parquet"))


def decision_segments(paths: DataPaths) -> list[tuple[str, Path]]:
    """(checkpoint key, path) of every replica's decision segments, each replica's oldest first."""
    return [(logs.segment_key(path), path) for logs in paths.all_logs() for path in segment_paths(logs.decisions, DECISION_KIND)]


def read_checkpoint(paths: DataPaths) -> Checkpoint:
    return Checkpoint.read(paths.joined / CHECKPOINT)


def uncommitted_parts(paths: DataPaths, next_part: int) -> list[Path]:
    """Part files numbered `next_part` or above: what a crash left before its checkpoint."""
    found = []
    for directory, suffix in zip((paths.joined, paths.slates), PART_SUFFIXES):
        if directory.is_dir():
            found.extend(p for p in sorted(directory.glob(f"part-*{suffix}")) if part_number(p) >= next_part)
    return found


def missing_parts(paths: DataPaths, next_part: int) -> list[str]:
    """Names of committed joined parts that are not on disk."""
    return [part_name(n, ".jsonl") for n in range(next_part) if not JoinedPart.numbered(paths, n).jsonl.exists()]
