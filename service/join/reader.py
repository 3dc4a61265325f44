"""JoinedLog: the one reader of the joined log, its committed parts and their slate tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from service.join.parts import Checkpoint, JoinedPart, read_checkpoint
from service.layout import DataPaths

SLATE_TABLE_COLUMNS = (
    "event_id", "slot", "action", "reward", "logging_prob", "logging_marginal",
    "defaulted", "timestamp", "model_version", "listener_id", "arm", "arm_mode", "learn", "agreement",
)


def learnable_rows(rows: pd.DataFrame) -> np.ndarray:
    """Rows of events a trainer learns (not those of logging-only arms): `learn` true, or every
    row of a part written before that column existed. Shape (n,) bool."""
    return rows["learn"].to_numpy(dtype=bool) if "learn" in rows else np.ones(len(rows), dtype=bool)


def slate_columns(part: JoinedPart, columns: Sequence[str]) -> pa.Table:
    """A committed part's slate `columns` as Arrow, for readers that stay columnar (the trainer)."""
    return pq.read_table(part.slates, columns=list(columns))


class JoinedLog:
    """Reader of the joined log: committed parts in order (a trainer remembers the next number),
    and the one reader of their slate tables."""

    def __init__(self, data_dir: str | Path) -> None:
        self.paths = DataPaths(Path(data_dir))

    def checkpoint(self) -> Checkpoint:
        return read_checkpoint(self.paths)

    def parts(self, start: int = 0) -> list[JoinedPart]:
        """Committed parts numbered `start` and above."""
        return [JoinedPart.numbered(self.paths, n) for n in range(start, self.checkpoint().next_part)]

    def slate_part(self, number: int, columns: Sequence[str] | None = None, *, learnable: bool = False) -> pd.DataFrame:
        """Part `number`'s slate rows, with the `columns` it holds (default: all). `learnable`:
        only the rows of events a trainer learns (`learn` true; every row of a part written
        before that column existed)."""
        path = JoinedPart.numbered(self.paths, number).slates
        held = pq.read_schema(path).names
        selected = None if columns is None else [name for name in columns if name in held]
        if not (learnable and "learn" in held):
            return pd.read_parquet(path, columns=selected)
        rows = pd.read_parquet(path, columns=None if selected is None else list(dict.fromkeys([*selected, "learn"])))
        rows = rows[learnable_rows(rows)].reset_index(drop=True)
        return rows if selected is None or "learn" in selected else rows.drop(columns="learn")

    def slate_table(
        self, start: int = 0, stop: int | None = None, columns: Sequence[str] | None = None, *,
        learnable: bool = False, progress: Callable[[int], object] | None = None,
    ) -> pd.DataFrame:
        """The slate rows (as `slate_part`) of the committed parts numbered `start` up to `stop`
        (exclusive; default: every committed part); `progress(1)` after each part read."""
        committed = self.checkpoint().next_part
        frames = []
        for number in range(start, committed if stop is None else min(stop, committed)):
            frames.append(self.slate_part(number, columns, learnable=learnable))
            if progress is not None:
                progress(1)
        if not frames:
            return pd.DataFrame(columns=list(SLATE_TABLE_COLUMNS if columns is None else columns))
        return pd.concat(frames, ignore_index=True)
