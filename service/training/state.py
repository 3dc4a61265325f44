"""A candidate's training state on disk, committed one step at a time.

A step is one joined part: its progressive scores, then the model after learning it. The
commit of step n, in this order:

1. `models/step-<n>.model` and its `.json` metadata (each written to a temporary name,
   fsynced and renamed by `policy.save`);
2. the step record appended to `steps.jsonl` (fsynced);
3. `CHECKPOINT` replaced by the step record (temporary file, fsync, rename): the commit point.

`CHECKPOINT` names the model file, its version (the SHA-256 of the payload) and the next part,
so a model is never paired with another step's offset. At start, whatever a crash left past
the committed step (a model file, a journal line, a torn line) is removed, and training goes
on from `next_part` with the committed model: no event is trained twice and none is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bandit.durable import append_durably, write_atomic
from bandit.errors import ModelFileError, ShelfBanditError, ValidationError
from bandit.vw.ranker import VWShelfRanker
from service.layout import DataPaths
from service.training.candidates import Candidate

CHECKPOINT = "CHECKPOINT"
JOURNAL = "steps.jsonl"
CANDIDATE_FILE = "candidate.json"
KEEP_MODELS = 2


def training_dir(data_dir: str | Path) -> Path:
    return DataPaths(Path(data_dir)).training


def candidate_dir(data_dir: str | Path, name: str) -> Path:
    return DataPaths(Path(data_dir)).candidates / name


def model_name(step: int) -> str:
    return f"models/step-{step:08d}.model"


def scores_name(part: int) -> str:
    return f"scores/part-{part:08d}.parquet"


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One committed training step: which events trained which model (see docs/training.md)."""

    step: int
    candidate: str
    config_id: str
    parts: tuple[int, ...]
    n_events: int
    first_event_id: str | None  # None when every event of the part was logging-only (`_learn: false`)
    last_event_id: str | None
    events_sha256: str      # SHA-256 of the step's event ids, one per line, in training order
    events_trained: int     # by this candidate, this step included
    next_part: int
    model_version: str
    scored_by: str          # the model version as the step began (it scored the first event; each later one is scored after learning those before it)
    model: str              # model file, relative to the candidate's directory
    scores: str             # progressive scores file, relative to the candidate's directory
    seconds: dict = field(default_factory=dict)
    time: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(int(p) for p in self.parts))
        if self.step < 1:
            raise ValidationError("step", "must be at least 1", self.step)
        if self.n_events < 0:
            raise ValidationError("n_events", "must be >= 0", self.n_events)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["parts"] = list(self.parts)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StepRecord:
        return cls(**data)


def check_candidate(directory: Path, candidate: Candidate) -> None:
    """Refuse a state directory trained with another configuration under the same name."""
    try:
        stored = json.loads((directory / CANDIDATE_FILE).read_text())
    except FileNotFoundError:
        return
    except json.JSONDecodeError as err:
        raise ShelfBanditError(f"{directory / CANDIDATE_FILE}: not valid JSON ({err})") from None
    stored_config = Candidate.from_dict(stored).config.model_fields()
    differing = sorted(k for k, v in candidate.config.model_fields().items() if stored_config.get(k) != v)
    if differing:
        raise ValidationError(
            f"candidates.{candidate.name}",
            f"its state in {directory} was trained with another configuration ({', '.join(differing)} differ); "
            "give the candidate a new name or remove that directory",
        )


class TrainerState:
    """The files of one candidate: checkpoint pointer, step journal, models, progressive scores."""

    def __init__(self, directory: str | Path, candidate: Candidate) -> None:
        self.directory = Path(directory)
        self.candidate = candidate

    def recover(self) -> StepRecord | None:
        """The committed step (None before the first); removes what a crash left beyond it."""
        check_candidate(self.directory, self.candidate)
        for sub in ("models", "scores"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        if not (self.directory / CANDIDATE_FILE).exists():
            write_atomic(self.directory / CANDIDATE_FILE, json.dumps(self.candidate.to_dict(), indent=1).encode())
        committed = self.committed()
        last = committed.step if committed else 0
        self._trim_journal(last)
        for path in (self.directory / "models").iterdir():
            if path.name.startswith(".") or _step_of(path) > last:
                path.unlink()
        return committed

    def committed(self) -> StepRecord | None:
        try:
            return StepRecord.from_dict(json.loads((self.directory / CHECKPOINT).read_text()))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError, ValidationError) as err:
            raise ShelfBanditError(f"{self.directory / CHECKPOINT}: unreadable checkpoint ({err})") from None

    def _trim_journal(self, last: int) -> None:
        """Keep the journal's complete lines of committed steps (a crash may leave one more, or a torn line)."""
        path = self.directory / JOURNAL
        data = path.read_bytes() if path.exists() else b""
        kept = [line for line in data.splitlines(keepends=True) if line.endswith(b"\n") and json.loads(line)["step"] <= last]
        if len(kept) != last:
            raise ShelfBanditError(f"{path}: holds {len(kept)} committed steps, the checkpoint says {last}")
        if path.exists() and sum(map(len, kept)) != len(data):
            write_atomic(path, b"".join(kept))

    def load_policy(self, step: StepRecord | None) -> VWShelfRanker:
        """The committed model (its payload checked against its metadata), or a fresh one."""
        if step is None:
            return VWShelfRanker(self.candidate.config)
        path = self.directory / step.model
        try:
            policy = VWShelfRanker.load(path, config=self.candidate.config)
        except ModelFileError as err:
            raise ShelfBanditError(f"the checkpoint's model is unusable ({err})") from None
        if policy.model_version != step.model_version:
            raise ShelfBanditError(f"{path}: holds {policy.model_version}, the checkpoint names {step.model_version}")
        return policy

    def write_scores(self, part: int, frame: pd.DataFrame) -> str:
        """Write a part's progressive scores (atomically); return the file's relative name."""
        name = scores_name(part)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
        write_atomic(self.directory / name, sink.getvalue().to_pybytes())
        return name

    def commit(self, policy: VWShelfRanker, record: StepRecord) -> StepRecord:
        """Save the model, journal the step and move the checkpoint pointer (in that order)."""
        version = policy.save(self.directory / record.model)
        committed = StepRecord.from_dict({**record.to_dict(), "model_version": version})
        line = json.dumps(committed.to_dict(), sort_keys=True).encode() + b"\n"
        append_durably(self.directory / JOURNAL, line)
        write_atomic(self.directory / CHECKPOINT, line)
        self._drop_old_models(committed.step)
        return committed

    def _drop_old_models(self, step: int) -> None:
        for path in (self.directory / "models").iterdir():
            if _step_of(path) <= step - KEEP_MODELS:
                path.unlink()

    def steps_after(self, step: int) -> list[StepRecord]:
        """Committed steps numbered above `step`, in order."""
        path = self.directory / JOURNAL
        if not path.exists():
            return []
        records = (json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n"))
        return [StepRecord.from_dict(r) for r in records if r["step"] > step]


def _step_of(path: Path) -> int:
    """The step number of a model file (`step-<n>.model` or its `.json`); -1 for anything else."""
    stem = path.name.split(".")[0]
    return int(stem[5:]) if stem.startswith("step-") and stem[5:].isdigit() else -1
