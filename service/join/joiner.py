"""Joiner: decision log + reward log -> joined DSJSON parts and slate tables, exactly once.

A decision is ready once its reward window has passed (decision time + window + grace <= now).
Its slots then get the rewards accepted for them (per slot: the earliest, or the sum; a
repeated `reward_id` counts once, and under `earliest` so does any repeat) and the default
reward where none arrived.

Output, in the data directory:

    joined/part-<n:08d>.jsonl      joined DSJSON lines (VW trains on them with
                                   `--ccb_explore_adf --dsjson`), sorted by (decision time, event id)
    slates/part-<n:08d>.parquet    the slate table of the same events, one row per (event, slot)
    joined/checkpoint.json         `next_part`, and per decision segment the bytes consumed
    joined/rejected.jsonl          decision lines that could not be joined, with the reason

Part n is committed once the checkpoint's `next_part` exceeds n. Parts are written (temp file,
fsync, rename) before the checkpoint is replaced atomically; a part left by a crash before its
checkpoint is deleted and redone at the next start. So every decision lands in exactly one
committed part, however often the joiner is stopped, killed or re-run. One joiner runs at a
time per data directory (`joined/.lock`).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bandit.errors import ShelfBanditError, ValidationError
from bandit.model_file import write_atomic
from bandit.types import Outcome
from bandit.vw.format import join_record, nullable_floats
from service.experiments.arms import DEFAULT_ARM, ONLINE
from service.layout import DECISION_KIND, REWARD_KIND, DataPaths
from service.eventlog.lines import json_line, line_head, shown_shelves
from service.eventlog.segments import fsync_directory, read_complete_lines, segment_paths

CHECKPOINT = "checkpoint.json"
REJECTED = "rejected.jsonl"
AGGREGATIONS = ("earliest", "sum")
REWARD_COLUMNS = ("event_id", "slot", "value", "reward_id", "received", "decided")


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


def part_name(number: int, suffix: str) -> str:
    return f"part-{number:08d}{suffix}"


class JoinedLog:
    """Reader of the joined log: committed parts in order (a trainer remembers the next number),
    and the one reader of their slate tables."""

    def __init__(self, data_dir: str | Path) -> None:
        self.paths = DataPaths(Path(data_dir))

    def checkpoint(self) -> Checkpoint:
        return Checkpoint.read(self.paths.joined / CHECKPOINT)

    def parts(self, start: int = 0) -> list[JoinedPart]:
        """Committed parts numbered `start` and above."""
        return [
            JoinedPart(n, self.paths.joined / part_name(n, ".jsonl"), self.paths.slates / part_name(n, ".parquet"))
            for n in range(start, self.checkpoint().next_part)
        ]

    def slate_part(self, number: int, columns: Sequence[str] | None = None, *, learnable: bool = False) -> pd.DataFrame:
        """Part `number`'s slate rows, with the `columns` it holds (default: all). `learnable`:
        only the rows of events a trainer learns (`learn` true; every row of a part written
        before that column existed)."""
        path = self.paths.slates / part_name(number, ".parquet")
        held = pq.read_schema(path).names
        selected = None if columns is None else [name for name in columns if name in held]
        filters = [("learn", "==", True)] if learnable and "learn" in held else None
        return pd.read_parquet(path, columns=selected, filters=filters)

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


SLATE_TABLE_COLUMNS = (
    "event_id", "slot", "action", "reward", "logging_prob", "logging_marginal",
    "defaulted", "timestamp", "model_version", "listener_id", "arm", "arm_mode", "learn", "agreement",
)


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
    """The accepted rewards, read incrementally from every writer's reward segments."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[str, int] = {}
        self._seq = 0
        self.frame = _empty_rewards()

    def read_new(self, since: float) -> None:
        """Append lines written since the last call; segments untouched since `since` are skipped."""
        chunks = []
        for path in segment_paths(self.directory, REWARD_KIND):
            offset = self._offsets.get(path.name)
            if offset is None and path.stat().st_mtime < since:
                self._offsets[path.name] = path.stat().st_size
                continue
            data, self._offsets[path.name] = read_complete_lines(path, offset or 0)
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
        self._rewards = RewardReader(self.paths.rewards)
        self._recent: dict[str, float] = {}
        self._recent_order: deque[tuple[float, str]] = deque()

    # -- ownership -----------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take the data directory's joiner lock (without waiting); then clean up after a crash."""
        if self._lock_fd is not None:
            return True
        self.paths.joined.mkdir(parents=True, exist_ok=True)
        self.paths.slates.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.joined / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self._checkpoint = Checkpoint.read(self.paths.joined / CHECKPOINT)
        self._remove_uncommitted_parts()
        self._rewards = RewardReader(self.paths.rewards)
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
        for directory, suffix in ((self.paths.joined, ".jsonl"), (self.paths.slates, ".parquet")):
            for path in directory.glob(f"part-*{suffix}"):
                if int(path.name[5:13]) >= self._checkpoint.next_part:
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
        for path in segment_paths(self.paths.decisions, DECISION_KIND):
            offset = offsets.get(path.name, 0)
            with open(path, "rb") as handle:
                handle.seek(offset)
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # still being written, or torn (set aside at the service's restart)
                    head = line_head(raw)
                    if head is None:
                        rejected.append(_rejection(path, offset, "unreadable decision line", raw))
                    elif head[1] > cutoff or len(lines) >= budget:
                        first_pending = min(first_pending, head[1])
                        more = more or head[1] <= cutoff
                        break
                    else:
                        lines.append((head[1], head[0], raw))
                    offset += len(raw)
            offsets[path.name] = offset
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
        config = self.config
        events = pd.DataFrame(
            {
                "event_id": [event_id for _, event_id, _ in records],
                "decided": [timestamp for timestamp, _, _ in records],
                "n_slots": [len(record["_outcomes"]) for _, _, record in records],
            }
        )
        rewards = self._rewards.frame.drop(columns="decided").merge(events, on="event_id")
        rewards = rewards[rewards["received"] - rewards["decided"] <= config.reward_window_s]
        counted = slot_rewards(rewards, config.aggregation).to_dict()
        lines: list[bytes] = []
        columns: dict[str, list] = {name: [] for name in SLATE_TABLE_COLUMNS}
        for timestamp, event_id, record in records:
            n_slots = len(record["_outcomes"])
            found = [counted.get((event_id, k)) for k in range(n_slots)]
            outcome = Outcome(
                tuple(config.default_reward if r is None else r for r in found), tuple(r is None for r in found)
            )
            joined = join_record(record, outcome)
            lines.append(json_line(joined))
            columns["event_id"].extend([event_id] * n_slots)
            columns["slot"].extend(range(n_slots))
            columns["action"].extend(shown_shelves(record))
            columns["reward"].extend(outcome.rewards)
            columns["logging_prob"].extend(slot["_p"][0] for slot in record["_outcomes"])
            columns["logging_marginal"].extend(nullable_floats(record.get("_marginals"), n_slots))
            columns["defaulted"].extend(outcome.defaulted)
            columns["timestamp"].extend([timestamp] * n_slots)
            columns["model_version"].extend([str(record.get("_model_version", ""))] * n_slots)
            columns["listener_id"].extend([record.get("_listener_id")] * n_slots)
            columns["arm"].extend([record.get("_arm", DEFAULT_ARM)] * n_slots)
            columns["arm_mode"].extend([record.get("_arm_mode", ONLINE)] * n_slots)
            columns["learn"].extend([record.get("_learn", True) is not False] * n_slots)
            columns["agreement"].extend(record.get("_agreement") or [None] * n_slots)
        table = pa.table(
            {
                **columns,
                "slot": pa.array(columns["slot"], pa.int32()),
                "logging_marginal": pa.array(columns["logging_marginal"], pa.float64()),
                "listener_id": pa.array(columns["listener_id"], pa.string()),
                "agreement": pa.array(columns["agreement"], pa.bool_()),
            }
        )
        slate_path = self.paths.slates / part_name(part, ".parquet")
        tmp = slate_path.with_name(f".{slate_path.name}.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, slate_path)
        fsync_directory(self.paths.slates)
        write_atomic(self.paths.joined / part_name(part, ".jsonl"), b"".join(lines))
        n_default = sum(columns["defaulted"])
        return len(columns["slot"]), n_default

    def _write_rejected(self, rejected: list[dict]) -> None:
        with open(self.paths.joined / REJECTED, "a") as handle:
            handle.writelines(json.dumps(item) + "\n" for item in rejected)
            handle.flush()
            os.fsync(handle.fileno())

    def _live_offsets(self, offsets: dict[str, int]) -> dict[str, int]:
        """Offsets of segments that still exist (deleted segments need no bookkeeping)."""
        existing = {p.name for p in segment_paths(self.paths.decisions, DECISION_KIND)}
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


def _rejection(path: Path, offset: int, reason: str, raw: bytes) -> dict:
    return {"segment": path.name, "offset": offset, "reason": reason, "line": raw.decode(errors="replace")}
