"""Joined parts the trainer's candidates have not trained yet, and since when (doctor, metrics).

A candidate waits on part `n` when its committed step's `next_part` is `n` and the joiner has
committed part `n`. It has waited since the later of its last step and the commit of part `n`
(the part file's modification time): a following trainer that has waited longer than a few
minutes has stalled. Reads only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bandit.errors import ShelfBanditError
from service.join.parts import JoinedPart
from service.join.reader import JoinedLog
from service.layout import DataPaths
from service.training.publishing import read_status
from service.training.state import CHECKPOINT, training_dir


@dataclass(frozen=True, slots=True)
class CandidateBacklog:
    candidate: str
    next_part: int
    waiting_since: float | None  # None: nothing to train


@dataclass(frozen=True, slots=True)
class TrainerBacklog:
    committed_parts: int  # the joiner's next part
    candidates: tuple[CandidateBacklog, ...]  # () before a trainer has run here

    @property
    def waiting_since(self) -> float | None:
        """Since when the longest-waiting candidate has waited (None if none waits)."""
        times = [c.waiting_since for c in self.candidates if c.waiting_since is not None]
        return min(times) if times else None


def trainer_backlog(data_dir: str | Path) -> TrainerBacklog:
    """The backlog of the candidates the trainer last ran (its `publishing.json`; every one
    under `training/candidates/` before it wrote one: a removed candidate's directory is not a
    backlog); raises ShelfBanditError if the joiner's checkpoint or a candidate's CHECKPOINT is
    unreadable."""
    committed = JoinedLog(data_dir).checkpoint().next_part
    paths = DataPaths(Path(data_dir))
    root = paths.candidates
    configured = (read_status(training_dir(data_dir)) or {}).get("candidates")
    candidates = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if not directory.is_dir() or (configured is not None and directory.name not in configured):
            continue
        try:
            record = json.loads((directory / CHECKPOINT).read_text())
            next_part, last_step = int(record["next_part"]), float(record.get("time") or 0.0)
        except FileNotFoundError:
            next_part, last_step = 0, directory.stat().st_mtime
        except (ValueError, KeyError, TypeError) as err:
            raise ShelfBanditError(f"{directory / CHECKPOINT}: unreadable checkpoint ({err})") from None
        waiting_since = None
        if next_part < committed:
            part = JoinedPart.numbered(paths, next_part).jsonl
            waiting_since = max(last_step, part.stat().st_mtime if part.exists() else 0.0)
        candidates.append(CandidateBacklog(directory.name, next_part, waiting_since))
    return TrainerBacklog(committed, tuple(candidates))
