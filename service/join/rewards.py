"""The accepted rewards, read incrementally from every writer's reward segments (of every replica), and the reward that counts per slot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from service.eventlog.segments import read_complete_lines, segment_paths
from service.layout import REWARD_KIND, DataPaths

AGGREGATIONS = ("earliest", "sum")
REWARD_COLUMNS = ("event_id", "slot", "value", "reward_id", "received", "decided")


def slot_rewards(rewards: pd.DataFrame, aggregation: str) -> pd.Series:
    """Per (event_id, slot), the reward that counts.

    A repeated non-null `reward_id` of an event counts once (its earliest copy). `earliest`: the
    first by `received` (ties: arrival order `seq`); `sum`: the sum of what remains.
    """
    ordered = rewards.sort_values(["received", "seq"])
    with_id = ordered["reward_id"].notna()
    unique = pd.concat([ordered[with_id].drop_duplicates(["event_id", "reward_id"]), ordered[~with_id]])
    if aggregation == "earliest":
        first = unique.sort_values(["received", "seq"]).drop_duplicates(["event_id", "slot"])
        return first.set_index(["event_id", "slot"])["value"]
    return unique.groupby(["event_id", "slot"])["value"].sum()


class RewardReader:
    """The accepted rewards, read incrementally from every writer's reward segments in every
    replica's log directory (a reward may reach a replica other than the deciding one)."""

    def __init__(self, paths: DataPaths) -> None:
        self.paths = paths
        self._offsets: dict[Path, int] = {}  # segment -> bytes read (paths: names repeat across replicas)
        self._seq = 0
        self.frame = _empty_rewards()

    def read_new(self, since: float) -> None:
        """Append lines written since the last call; segments untouched since `since` are skipped."""
        chunks = []
        for path in (path for logs in self.paths.all_logs() for path in segment_paths(logs.rewards, REWARD_KIND)):
            offset = self._offsets.get(path)
            if offset is None and path.stat().st_mtime < since:
                self._offsets[path] = path.stat().st_size
                continue
            data, self._offsets[path] = read_complete_lines(path, offset or 0)
            if data:
                chunks.append(self._parse(data))
        if chunks:
            self.frame = pd.concat([self.frame, *chunks], ignore_index=True)

    def _parse(self, data: bytes) -> pd.DataFrame:
        try:
            frame = pd.read_json(io.BytesIO(data), lines=True, dtype=False)
        except ValueError:
            rows = []
            for raw in data.splitlines():
                try:
                    rows.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue  # `shelfbandit doctor` reports unreadable reward lines
            frame = pd.DataFrame.from_records(rows)
        frame = frame.reindex(columns=list(REWARD_COLUMNS))
        frame["event_id"] = frame["event_id"].astype(str)
        frame["seq"] = self._seq + pd.RangeIndex(len(frame))
        self._seq += len(frame)
        return frame

    def drop(self, event_ids: set[str], received_before: float) -> None:
        """Forget the rewards of joined events, and any received before the watermark."""
        keep = ~self.frame["event_id"].isin(event_ids) & (self.frame["received"] >= received_before)
        self.frame = self.frame[keep].reset_index(drop=True)


def _empty_rewards() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("event_id", "reward_id") else float) for c in REWARD_COLUMNS} | {"seq": pd.Series(dtype=int)})
