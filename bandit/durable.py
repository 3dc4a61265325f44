"""Durable-file primitives: atomic replacement, durable appends, directory fsync, locks, torn tails.

Every module that makes a file durable uses these, so each choice is made once: a replaced
file is written to a temporary name, fsynced, renamed and its directory fsynced; an append
is flushed and fsynced before it returns; locks are `flock` locks, released when the file
descriptor closes (so a killed process never leaves one behind).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READ_CHUNK = 1 << 16


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a create, rename or unlink in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` durably: a reader sees the old or the new content, never a mix,
    and after a crash the new content if this returned (temp file, fsync, rename, fsync the directory)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def append_durably(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created if missing) and fsync before returning."""
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def try_lock(path: Path) -> int | None:
    """Take the exclusive lock of `path` (created if missing) without waiting.

    Returns the descriptor that holds it (close it to release), or None while another holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of `path` (created if missing), waiting for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether some process holds the exclusive lock of an existing file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def complete_end(fd: int) -> int:
    """Offset just after the file's last newline: the end of its complete lines (0 if none)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    position = size
    while position > 0:
        start = max(0, position - READ_CHUNK)
        found = os.pread(fd, position - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def torn_tail(fd: int) -> tuple[int, bytes]:
    """The end of the file's complete lines and the bytes after it (empty when it ends cleanly)."""
    end = complete_end(fd)
    return end, os.pread(fd, os.fstat(fd).st_size - end, end)


def cut_at(fd: int, end: int) -> None:
    """Truncate the file to `end` bytes durably."""
    os.ftruncate(fd, end)
    os.fsync(fd)
