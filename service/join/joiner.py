"""Joiner: decision log + reward log -> joined DSJSON parts and slate tables, exactly once.

It reads the logs of every replica sharing the data directory (`DataPaths.all_logs`: the
data directory's own, and each `replicas/<id>/`), so a reward logged by any replica counts.

A decision is ready once its reward window has passed (decision time + window + grace <= now).
Its slots then get the rewards accepted for them (per slot: the earliest, or the sum; a
repeated `reward_id` counts once, and under `earliest` so does any repeat) and the default
reward where none arrived.

Output, in the data directory:

    joined/part-<n:08d>.jsonl      joined DSJSON lines (VW trains on them with
                                   `--ccb_explore_adf --dsjson`), sorted by (decision time, event id)
    slates/part-<n:08d>.parquet    the slate table of the same events, one row per (event, slot)
    joined/checkpoint.json         `next_part`, and per decision segment the bytes consumed
                                   (keyed by `LogDir.segment_key`: `<replica id>/<segment>`
                                   for a replica's, the segment's name for the data directory's)
    joined/rejected.jsonl          decision lines that could not be joined, with the reason

Part n is committed once the checkpoint's `next_part` exceeds n. Parts are written (temp file,
fsync, rename) before the checkpoint is replaced atomically; a part left by a crash before its
checkpoint is deleted and redone at the next start. So every decision lands in exactly one
committed part, however often the joiner is stopped, killed or re-run. One joiner runs at a
time per data directory (`joined/.lock`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bandit.durable import append_durably, try_lock, write_atomic
from bandit.errors import ShelfBanditError, ValidationError
from bandit.types import Outcome
from bandit.vw.format import join_record, nullable_floats
from service.eventlog.lines import DEFAULT_ARM, DEFAULT_ARM_MODE, json_line, line_head, shown_shelves
from service.join.parts import CHECKPOINT, REJECTED, Checkpoint, JoinedPart, decision_segments, read_checkpoint, uncommitted_parts
from service.join.reader import SLATE_TABLE_COLUMNS
from service.join.rewards import AGGREGATIONS, RewardReader, slot_rewards
from service.layout import DataPaths


class JoinerBusy(ShelfBanditError):
    """Another joiner holds the data directory's joiner lock."""


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """How decisions and rewards are joined."""

    reward_window_s: float
    grace_s: float = 2.0
    default_reward: float = 0.0
    aggregation: str = "earliest"
    max_events_per_part: int = 50_000

    def __post_init__(self) -> None:
        if not self.reward_window_s > 0:
            raise ValidationError("reward_window_s", "must be > 0", self.reward_window_s)
        if not self.grace_s >= 0:
            raise ValidationError("grace_s", "must be >= 0", self.grace_s)
        if self.aggregation not in AGGREGATIONS:
            raise ValidationError("aggregation", f"must be one of {', '.join(AGGREGATIONS)}", self.aggregation)
        if self.max_events_per_part < 1:
            raise ValidationError("max_events_per_part", "must be at least 1", self.max_events_per_part)


@dataclass(frozen=True, slots=True)
class JoinReport:
    """What one pass did. `lag_s`: how long the oldest unjoined ready decision has been ready."""

    part: int | None
    n_events: int
    n_slots: int
    n_default_slots: int
    n_rejected: int
    lag_s: float
    more_ready: bool


@dataclass(slots=True)
class _Ready:
    """Ready decision lines of one pass, and where each segment now stands."""

    lines: list[tuple[float, str, bytes]]
    offsets: dict[str, int]
    rejected: list[dict]
    first_pending: float
    more: bool


class Joiner:
    """Joins ready decisions with their rewards; `run_once` commits at most one part."""

    def __init__(self, data_dir: str | Path, config: JoinConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.paths = DataPaths(Path(data_dir))
        self.config = config
        self._clock = clock
        self._lock_fd: int | None = None
        self._checkpoint = Checkpoint()
        self._rewards = RewardReader(self.paths)
        self._recent: dict[str, float] = {}
        self._recent_order: deque[tuple[float, str]] = deque()

    # -- ownership -----------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take the data directory's joiner lock (without waiting); then clean up after a crash."""
        if self._lock_fd is not None:
            return True
        self.paths.joined.mkdir(parents=True, exist_ok=True)
        self.paths.slates.mkdir(parents=True, exist_ok=True)
        self._lock_fd = try_lock(self.paths.joined / ".lock")
        if self._lock_fd is None:
            return False
        self._checkpoint = read_checkpoint(self.paths)
        self._remove_uncommitted_parts()
        self._rewards = RewardReader(self.paths)
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Joiner:
        if not self.acquire():
            raise JoinerBusy(f"another joiner is running on {self.paths.root} (it holds joined/.lock)")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _remove_uncommitted_parts(self) -> None:
        for path in uncommitted_parts(self.paths, self._checkpoint.next_part):
            path.unlink()

    # -- joining -------------------------------------------------------------------------------
    def run_once(self) -> JoinReport:
        """Join every ready decision (up to `max_events_per_part`) into one new committed part."""
        if self._lock_fd is None:
            raise JoinerBusy("run_once needs the joiner lock (use `with joiner:` or acquire())")
        config = self.config
        now = self._clock()
        cutoff = now - config.reward_window_s - config.grace_s
        ready = self._collect_ready(cutoff)
        self._rewards.read_new(since=self._checkpoint.low_watermark - config.grace_s)
        records, rejected = self._parse_ready(ready)
        checkpoint = self._checkpoint
        part = None
        n_slots = n_default = 0
        if records:
            part = checkpoint.next_part
            n_slots, n_default = self._write_part(part, records)
        if rejected:
            self._write_rejected(rejected)
        low_watermark = min(ready.first_pending, cutoff)
        committed = Checkpoint(
            next_part=checkpoint.next_part + (part is not None),
            offsets=self._live_offsets(ready.offsets),
            low_watermark=low_watermark,
            n_events=checkpoint.n_events + len(records),
            updated_at=now,
        )
        committed.write(self.paths.joined / CHECKPOINT)
        self._checkpoint = committed
        self._rewards.drop({event_id for _, event_id, _ in records}, low_watermark - config.grace_s)
        self._remember(records, now)
        return JoinReport(
            part=part,
            n_events=len(records),
            n_slots=n_slots,
            n_default_slots=n_default,
            n_rejected=len(rejected),
            lag_s=max(0.0, cutoff - ready.first_pending),
            more_ready=ready.more,
        )

    def run(self, stop: threading.Event, interval_s: float, on_report: Callable[[JoinReport], None] | None = None) -> None:
        """Join until `stop` is set: a pass every `interval_s`, back to back while a backlog
        remains; JoinerBusy if another joiner holds the lock (`shelfbandit join`; the service
        supervises its joiner passes itself)."""
        try:
            while not stop.is_set():
                if not self.acquire():
                    raise JoinerBusy(f"another joiner is running on {self.paths.root} (it holds joined/.lock)")
                report = self.run_once()
                if on_report is not None:
                    on_report(report)
                if not report.more_ready:
                    stop.wait(interval_s)
        finally:
            self.release()

    def _collect_ready(self, cutoff: float) -> _Ready:
        budget = self.config.max_events_per_part
        lines: list[tuple[float, str, bytes]] = []
        offsets = dict(self._checkpoint.offsets)
        rejected: list[dict] = []
        first_pending = float("inf")
        more = False
        for key, path in decision_segments(self.paths):
            offset = offsets.get(key, 0)
            with open(path, "rb") as handle:
                handle.seek(offset)
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # still being written, or torn (set aside at the service's restart)
                    head = line_head(raw)
                    if head is None:
                        rejected.append(_rejection(key, offset, "unreadable decision line", raw))
                    elif head[1] > cutoff or len(lines) >= budget:
                        first_pending = min(first_pending, head[1])
                        more = more or head[1] <= cutoff
                        break
                    else:
                        lines.append((head[1], head[0], raw))
                    offset += len(raw)
            offsets[key] = offset
        return _Ready(lines, offsets, rejected, first_pending, more)

    def _parse_ready(self, ready: _Ready) -> tuple[list[tuple[float, str, dict]], list[dict]]:
        """Parse ready lines, oldest first; drop repeats of an event id (the first one counts)."""
        records: list[tuple[float, str, dict]] = []
        rejected = list(ready.rejected)
        seen = set(self._recent)
        for timestamp, event_id, raw in sorted(ready.lines, key=lambda item: (item[0], item[1])):
            if event_id in seen:
                rejected.append({"event_id": event_id, "reason": "repeated event id", "line": raw.decode(errors="replace")})
                continue
            try:
                record = json.loads(raw)
                shown_shelves(record)
            except (ValueError, KeyError, IndexError, TypeError) as err:
                rejected.append({"event_id": event_id, "reason": f"malformed decision record ({err})", "line": raw.decode(errors="replace")})
                continue
            seen.add(event_id)
            records.append((timestamp, event_id, record))
        return records, rejected

    def _write_part(self, part: int, records: list[tuple[float, str, dict]]) -> tuple[int, int]:
        """Write the joined lines and slate table of `records`; return (slots, defaulted slots)."""
        n_slots = np.array([len(record["_outcomes"]) for _, _, record in records])
        rewards, defaulted = self._slot_outcomes(records, n_slots)
        ends = np.cumsum(n_slots)
        lines = [
            json_line(join_record(record, Outcome(tuple(rewards[end - n:end]), tuple(defaulted[end - n:end]))))
            for (_, _, record), n, end in zip(records, n_slots.tolist(), ends.tolist())
        ]
        sink = pa.BufferOutputStream()
        pq.write_table(_slate_table(records, n_slots, rewards, defaulted), sink)
        target = JoinedPart.numbered(self.paths, part)
        write_atomic(target.slates, sink.getvalue().to_pybytes())
        write_atomic(target.jsonl, b"".join(lines))
        return int(n_slots.sum()), sum(defaulted)

    def _slot_outcomes(self, records: list[tuple[float, str, dict]], n_slots: np.ndarray) -> tuple[list[float], list[bool]]:
        """Per (event, slot), in order: the reward that counts within the window (or the
        default), and whether it was defaulted."""
        config = self.config
        events = pd.DataFrame(
            {"event_id": [event_id for _, event_id, _ in records], "decided": [timestamp for timestamp, _, _ in records]}
        )
        rewards = self._rewards.frame.drop(columns="decided").merge(events, on="event_id")
        rewards = rewards[rewards["received"] - rewards["decided"] <= config.reward_window_s]
        slots = pd.MultiIndex.from_arrays([np.repeat(events["event_id"].to_numpy(), n_slots), _slot_numbers(n_slots)])
        found = slot_rewards(rewards, config.aggregation).reindex(slots).to_numpy(dtype=float)
        defaulted = np.isnan(found)
        return np.where(defaulted, config.default_reward, found).tolist(), defaulted.tolist()

    def _write_rejected(self, rejected: list[dict]) -> None:
        append_durably(self.paths.joined / REJECTED, "".join(json.dumps(item) + "\n" for item in rejected).encode())

    def _live_offsets(self, offsets: dict[str, int]) -> dict[str, int]:
        """Offsets of segments that still exist (deleted segments need no bookkeeping)."""
        existing = {key for key, _ in decision_segments(self.paths)}
        return {name: offset for name, offset in offsets.items() if name in existing}

    def _remember(self, records: list[tuple[float, str, dict]], now: float) -> None:
        """Keep joined ids for two reward windows, to refuse a repeated event id."""
        for timestamp, event_id, _ in records:
            self._recent[event_id] = timestamp
            self._recent_order.append((timestamp, event_id))
        horizon = now - 2 * self.config.reward_window_s
        while self._recent_order and self._recent_order[0][0] < horizon:
            _, event_id = self._recent_order.popleft()
            self._recent.pop(event_id, None)


def _rejection(key: str, offset: int, reason: str, raw: bytes) -> dict:
    return {"segment": key, "offset": offset, "reason": reason, "line": raw.decode(errors="replace")}


def _slot_numbers(n_slots: np.ndarray) -> np.ndarray:
    """0..n-1 for each event's n slots, concatenated."""
    return np.arange(int(n_slots.sum())) - np.repeat(np.cumsum(n_slots) - n_slots, n_slots)


def _slate_table(records: list[tuple[float, str, dict]], n_slots: np.ndarray, rewards: list[float], defaulted: list[bool]) -> pa.Table:
    """The slate table of joined `records`: one row per (event, slot), columns SLATE_TABLE_COLUMNS."""

    def per_event(values: list, kind: pa.DataType) -> pa.Array:
        return pa.array(np.repeat(np.array(values, dtype=object), n_slots), kind)

    def per_slot(lists: list[list], kind: pa.DataType) -> pa.Array:
        return pa.array([value for values in lists for value in values], kind)

    outcomes = [record["_outcomes"] for _, _, record in records]
    columns = {
        "event_id": per_event([event_id for _, event_id, _ in records], pa.string()),
        "slot": pa.array(_slot_numbers(n_slots), pa.int32()),
        "action": per_slot([shown_shelves(record) for _, _, record in records], pa.string()),
        "reward": pa.array(rewards, pa.float64()),
        "logging_prob": per_slot([[slot["_p"][0] for slot in slots] for slots in outcomes], pa.float64()),
        "logging_marginal": per_slot(
            [nullable_floats(record.get("_marginals"), n) for (_, _, record), n in zip(records, n_slots.tolist())], pa.float64()
        ),
        "defaulted": pa.array(defaulted, pa.bool_()),
        "timestamp": pa.array(np.repeat([timestamp for timestamp, _, _ in records], n_slots), pa.float64()),
        "model_version": per_event([str(record.get("_model_version", "")) for _, _, record in records], pa.string()),
        "listener_id": per_event([record.get("_listener_id") for _, _, record in records], pa.string()),
        "arm": per_event([record.get("_arm", DEFAULT_ARM) for _, _, record in records], pa.string()),
        "arm_mode": per_event([record.get("_arm_mode", DEFAULT_ARM_MODE) for _, _, record in records], pa.string()),
        "learn": per_event([record.get("_learn", True) is not False for _, _, record in records], pa.bool_()),
        "agreement": per_slot(
            [record.get("_agreement") or [None] * n for (_, _, record), n in zip(records, n_slots.tolist())], pa.bool_()
        ),
    }
    return pa.table({name: columns[name] for name in SLATE_TABLE_COLUMNS})
