"""EventIndex: which decisions exist, when they were made and what they showed, across workers.

Each worker adds its own decisions as it logs them. A reward for an event this worker has not
seen (another worker served it, or this worker restarted) triggers a refresh: the new complete
lines of every other writer's decision segments are read from where the last refresh stopped:
those in this replica's decision directory and in its peers' (`peers()`: the other replicas'
decision directories in the shared data directory), so a reward may reach any replica.
The log itself is the only shared state, so nothing extra is written on the decision path.
Events older than `memory_s` are forgotten (a reward for them gets 404).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bandit.vw.format import epoch_seconds
from service.eventlog.lines import KEY_ID_FIELD, shown_shelves
from service.eventlog.segments import SUFFIX, read_complete_lines, segment_paths
from service.layout import DECISION_KIND

FORGET_EVERY = 4096


@dataclass(frozen=True, slots=True)
class KnownEvent:
    """A served decision: when, the shelf shown at each slot, and the name of the client key
    that asked for it (None: no key was required)."""

    timestamp: float
    shelf_ids: tuple[str, ...]
    key_id: str | None = None


class EventIndex:
    """event id -> KnownEvent for the decisions of the last `memory_s` seconds, all workers."""

    def __init__(
        self, decisions_dir: Path, memory_s: float, *, clock: Callable[[], float] = time.time,
        peers: Callable[[], Iterable[Path]] = tuple,
    ) -> None:
        self.decisions_dir = Path(decisions_dir)
        self._peers = peers
        self.memory_s = memory_s
        self._clock = clock
        # event id -> (time, shelf ids, key id): tuples of atomic values, which the garbage
        # collector stops tracking, so a large index does not lengthen its pauses
        self._events: dict[str, tuple[float, tuple[str, ...], str | None]] = {}
        self._order: deque[tuple[float, str]] = deque()
        self._offsets: dict[Path, int] = {}  # segment -> bytes read (paths: names repeat across replicas)
        self._refresh_lock = threading.Lock()
        self._forget_lock = threading.Lock()
        self._own_suffix = f"-{os.getpid()}{SUFFIX}"
        self._started_ns = time.time_ns()
        self.n_refreshes = 0

    def add(self, event_id: str, timestamp: float, shelf_ids: tuple[str, ...], key_id: str | None = None) -> None:
        """Remember a decision this worker logged."""
        key = None if key_id is None else sys.intern(key_id)
        self._events[event_id] = (timestamp, tuple(sys.intern(s) for s in shelf_ids), key)
        self._order.append((timestamp, event_id))
        if len(self._order) % FORGET_EVERY == 0:
            self._forget(self._clock() - self.memory_s)

    def seen_here(self, event_id: str) -> bool:
        """Whether this worker already knows the id (no refresh)."""
        return event_id in self._events

    def find(self, event_id: str) -> KnownEvent | None:
        """The event, reading other workers' new decisions on a miss."""
        known = self._events.get(event_id)
        if known is None:
            self.refresh()
            known = self._events.get(event_id)
        return None if known is None else KnownEvent(*known)

    def refresh(self) -> None:
        """Read the decisions other writers logged since the last refresh, and forget old ones."""
        with self._refresh_lock:
            self.n_refreshes += 1
            horizon = self._clock() - self.memory_s
            for directory in (self.decisions_dir, *self._peers()):
                for path in segment_paths(directory, DECISION_KIND):
                    if directory == self.decisions_dir and self._is_own(path):
                        continue
                    self._read_new(path, horizon)
            self._forget(horizon)

    def _read_new(self, path: Path, horizon: float) -> None:
        offset = self._offsets.get(path)
        if offset is None and path.stat().st_mtime < horizon:
            self._offsets[path] = path.stat().st_size  # too old to matter
            return
        data, self._offsets[path] = read_complete_lines(path, offset or 0)
        self._add_lines(data, horizon)

    def _is_own(self, path: Path) -> bool:
        # this process's segments (created after it started) are added as they are written
        if not path.name.endswith(self._own_suffix):
            return False
        created_ns = int(path.name.split("-")[1])
        return created_ns >= self._started_ns

    def _add_lines(self, data: bytes, horizon: float) -> None:
        for raw in data.splitlines():
            try:
                record = json.loads(raw)
                timestamp = epoch_seconds(record["Timestamp"])
                if timestamp >= horizon:
                    key_id = record.get(KEY_ID_FIELD)
                    self.add(str(record["EventId"]), timestamp, shown_shelves(record), None if key_id is None else str(key_id))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # unreadable lines are the doctor's and the joiner's business

    def _forget(self, horizon: float) -> None:
        if not self._forget_lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            order = self._order
            while order and order[0][0] < horizon:
                _, event_id = order.popleft()
                known = self._events.get(event_id)
                if known is not None and known[0] < horizon:
                    self._events.pop(event_id, None)
        finally:
            self._forget_lock.release()
