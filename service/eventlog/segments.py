"""Append-only JSON-lines segment files: one writer per process, durable before the answer.

Layout: `<directory>/<kind>-<created_ns:019d>-<pid>.jsonl`. Names sort by creation time, so
sorting them gives each writer's segments in order. A writer holds an exclusive `flock` on
its open segment; a segment nobody holds is finished (its writer rotated, closed or died),
and only such a segment may be repaired: a torn last line (no trailing newline, left by a
crash in the middle of a write) is moved to `quarantine/<segment>.torn` and cut off. A write
that fails (disk full, read-only, I/O error) is cut back off the open segment at once, so no
line of it, complete or not, stays in the log: a client retrying the same event id after the
503 finds it logged once.

Durability (`Settings.durability`):
- `group`: requests queue their lines and wait; one committer thread writes everything
  queued and fsyncs once, so concurrent requests share an fsync. The committer is supervised
  (service/supervisor.py): a failed commit fails every request of its batch (none is
  acknowledged) and the next batch is tried after a backoff of at most 0.5 s; while no batch
  waits, the committer probes (writes and fsyncs a block beside the segments) at that backoff,
  so its failure ends, and readiness returns, once the disk takes writes again;
- `fsync`: the same committer, writing and fsyncing each line on its own (one fsync per line);
- `write`: each line is written (kernel page cache) but not fsynced: survives `kill -9`
  of the process, not a power cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bandit.durable import append_durably, complete_end, cut_at, fsync_directory, is_locked, torn_tail, try_lock
from bandit.errors import FieldError
from service.eventlog.lines import line_head
from service.supervisor import Supervised

if TYPE_CHECKING:
    from service.ops.metrics import ServiceMetrics

SUFFIX = ".jsonl"
PROBE_BYTES = 4096  # what a probe writes and fsyncs to tell whether the disk takes writes again
COMMIT_RETRY_S, COMMIT_MAX_BACKOFF_S = 0.05, 0.5  # waits after failed group commits (requests queue meanwhile)


DURABILITY_MODES = ("group", "fsync", "write")  # when an appended line counts as durable (docs/service.md)
Durability = Literal["group", "fsync", "write"]


class LogWriteError(FieldError):
    """A line could not be made durable; the request that wrote it must not be acknowledged."""


def segment_paths(directory: Path, kind: str) -> list[Path]:
    """The segments of `kind` in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{kind}-*{SUFFIX}"))


def is_live(path: Path) -> bool:
    """Whether a writer still holds the segment open (it holds the segment's lock)."""
    return is_locked(path)


def read_complete_lines(path: Path, offset: int) -> tuple[bytes, int]:
    """Bytes from `offset` up to and including the last newline, and the offset after them.

    A line still being written (or torn) is never returned.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    return data[:end], offset + end


def probe_write(directory: Path, name: str) -> None:
    """Write and fsync one block to `directory/.probe-<name>` and remove it: raises OSError while
    the directory's file system cannot take a durable write (full, read-only, failing)."""
    path = directory / f".probe-{name}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):  # read-only: nothing was created
            path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class TornTail:
    """The incomplete last line of a finished segment, set aside."""

    segment: Path
    offset: int
    n_bytes: int
    quarantine: Path


def torn_tail_size(path: Path) -> int:
    """Bytes after the last newline of a segment (0 when it ends cleanly)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd).st_size - complete_end(fd)
    finally:
        os.close(fd)


def set_aside_torn_tails(directory: Path, kind: str, quarantine: Path) -> list[TornTail]:
    """Move the torn last line of every finished segment to `quarantine` and cut it off."""
    repaired = []
    for path in segment_paths(directory, kind):
        fd = try_lock(path)
        if fd is None:
            continue  # a live writer owns it
        try:
            end, tail = torn_tail(fd)
            if not tail:
                continue
            quarantine.mkdir(parents=True, exist_ok=True)
            target = quarantine / f"{path.name}.torn"
            append_durably(target, tail + b"\n")
            cut_at(fd, end)
            repaired.append(TornTail(path, end, len(tail), target))
        finally:
            os.close(fd)
    return repaired


class SegmentWriter:
    """Appends lines to this process's own segment of `kind`; `append` returns once the line is
    durable under the configured policy, and raises LogWriteError if it is not."""

    def __init__(
        self,
        directory: Path,
        kind: str,
        *,
        durability: str = "group",
        group_commit_s: float = 0.0,
        max_bytes: int = 64 * 2**20,
        max_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability: must be one of {', '.join(DURABILITY_MODES)} (found {durability!r})")
        self.directory = Path(directory)
        self.kind = kind
        self.durability = durability
        self.group_commit_s = group_commit_s
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._opened_at = 0.0
        self.path: Path | None = None
        self.n_commits = 0
        # group commit state (guarded by _lock)
        self._queue: list[tuple[bytes, Future]] = []
        self._closing = False
        self._unacknowledged = False  # the last write failed (the committer probes until one succeeds)
        self._work = threading.Condition(self._lock)
        self.committer: Supervised | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        if durability != "write":
            self.committer = Supervised(
                f"{kind}-committer", self._commit_step, metrics, base_s=COMMIT_RETRY_S, max_backoff_s=COMMIT_MAX_BACKOFF_S
            ).start()

    # -- public ------------------------------------------------------------------------------
    def append(self, line: bytes) -> None:
        """Append one line (must end with a newline) durably; return once it is."""
        self.submit(line).result()

    def submit(self, line: bytes) -> Future:
        """Queue one line; the future completes once the line is durable (LogWriteError if it
        cannot be made so). Under `write` the line is written before this returns."""
        done: Future = Future()
        with self._lock:
            if self._closing:
                done.set_exception(LogWriteError(f"{self.kind} log is closed"))
            elif self.committer is not None:
                self._queue.append((line, done))
                self._work.notify()
            else:
                try:
                    self._write_now(line, sync=False)
                    done.set_result(None)
                except LogWriteError as err:
                    done.set_exception(err)
        return done

    def close(self) -> None:
        """Flush what is queued, fsync and release the segment."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
        if self.committer is not None:
            self.committer.join(timeout_s=10.0)
        with self._lock:
            self._close_segment()

    # -- segment files -------------------------------------------------------------------------
    def _open_segment(self) -> None:
        now = self._clock()
        path = self.directory / f"{self.kind}-{time.time_ns():019d}-{os.getpid()}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fsync_directory(self.directory)
        self._fd, self.path, self._size, self._opened_at = fd, path, 0, now

    def _close_segment(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the flock: the segment is finished

    def _write_now(self, data: bytes, *, sync: bool) -> None:
        """Write `data` to the current segment (rotating first if due); the caller is the only writer
        (it holds the lock, or it is the committer)."""
        try:
            if self._fd is not None and self._size > 0 and (
                self._size + len(data) > self.max_bytes or self._clock() - self._opened_at >= self.max_seconds
            ):
                self._close_segment()
            if self._fd is None:
                self._open_segment()
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._size += len(data)
            if sync:
                os.fsync(self._fd)
            self.n_commits += 1
        except OSError as err:
            self._unacknowledged = True
            self._cut_back()
            raise LogWriteError(self.kind, f"log write failed: {err.strerror or err}") from None

    def _cut_back(self) -> None:
        """After a failed write: cut the segment back to its last good size, so no line of the
        failed write (complete or partial) stays in the log, and go on appending to it; if the
        cut fails too, finish the segment (a later repair sets its torn tail aside)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            try:
                self._close_segment()
            except OSError:
                self._fd = None

    # -- group commit --------------------------------------------------------------------------
    def _commit_step(self) -> float | None:
        """Write and fsync everything queued (`fsync`: its first line), then complete its futures
        (None once closed and empty)."""
        with self._lock:
            while not self._queue and not self._closing and not self._unacknowledged:
                self._work.wait()
            if not self._queue and self._closing:
                return None
            if not self._queue:  # the last write failed and nothing waits: is the disk back?
                try:
                    probe_write(self.directory, f"{self.kind}-{os.getpid()}")
                except OSError as err:
                    raise LogWriteError(self.kind, f"log write failed: {err.strerror or err}") from None
                self._unacknowledged = False
                return 0.0
        if self.group_commit_s > 0 and self.durability == "group":
            time.sleep(self.group_commit_s)
        with self._lock:
            taken = len(self._queue) if self.durability == "group" else 1
            batch, self._queue = self._queue[:taken], self._queue[taken:]
        self._write_group(batch)
        for _, done in batch:
            done.set_result(None)
        return 0.0

    def _write_group(self, batch: list[tuple[bytes, Future]]) -> None:
        """Write and fsync a group's lines at once (only the committer writes, so no lock is needed
        and requests keep queueing the next group meanwhile); if that fails, for whatever reason,
        no line of the group is acknowledged."""
        try:
            self._write_now(b"".join(line for line, _ in batch), sync=True)
        except BaseException as err:
            failure = err if isinstance(err, LogWriteError) else LogWriteError(self.kind, f"log write failed: {type(err).__name__}: {err}")
            for _, done in batch:
                done.set_exception(failure)
            head = line_head(batch[0][0])
            if head is not None:
                err.event_id = head[0]
            raise
        self._unacknowledged = False
