"""Helpers for the fault tests: small file systems to fill or break, hooks for the faults nothing
real can make here (a full disk where mounting is not permitted, a clock step), and readers that
count what the logs hold."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.eventlog.segments import segment_paths
from service.layout import DECISION_KIND, DataPaths

SHELFBANDIT = [sys.executable, "-c", "from shelfbandit.cli import main; main()"]  # as service.local runs it


def mount_or_skip(args: list[str], target: Path, why: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"{why}: mount is not permitted here ({done.stderr.strip() or done.returncode})")


def unmount(target: Path) -> None:
    subprocess.run(["umount", str(target)], capture_output=True)


@contextmanager
def tmpfs(target: Path, size: str):
    """A tmpfs of `size` at `target` (the test is skipped where mounting is not permitted)."""
    mount_or_skip(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], target, "a small tmpfs")
    try:
        yield target
    finally:
        unmount(target)


@contextmanager
def ext4(target: Path, image: Path, size_mb: int = 32):
    """An ext4 file system on a loop device at `target`, mounted `errors=remount-ro` as a data disk
    would be (skipped where loop mounts are not permitted)."""
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mount_or_skip(["-o", "loop,errors=remount-ro", str(image)], target, "an ext4 loop device")
    try:
        yield target
    finally:
        unmount(target)


def break_ext4(target: Path) -> None:
    """Make ext4 hit an error: with `errors=remount-ro` the kernel turns it read-only at once,
    files open for writing included (what a failing disk does; `mount -o remount,ro` refuses
    while a file is open for writing)."""
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(target)], capture_output=True, text=True, check=True)
    Path(f"/sys/fs/ext4/{Path(device.stdout.strip()).name}/trigger_fs_error").write_text("1")


def repair_ext4(target: Path, image: Path) -> None:
    """What the operator does after the disk error: unmount, check the file system, mount it again."""
    unmount(target)
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(target)], check=True)


class FullTmpfs:
    """A disk that fills for real: a filler file takes every free block of a small tmpfs."""

    name = "tmpfs"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        with open(self.filler, "ab") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass

    def free(self) -> None:
        self.filler.unlink()


SITECUSTOMIZE = '''\
import errno, os, time
_write, _time, _time_ns, _monotonic = os.write, time.time, time.time_ns, time.monotonic
_full, _root, _offset_file = {full!r}, {root!r}, {offset!r}
_offset = [0.0, -1.0]  # seconds the wall clock is stepped by, when it was last read (monotonic)
def _failing_write(fd, data):
    if os.path.exists(_full) and os.readlink(f"/proc/self/fd/{{fd}}").startswith(_root):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _write(fd, data)
def _step():
    if _monotonic() - _offset[1] > 0.05:
        try:
            with open(_offset_file) as handle:
                _offset[0] = float(handle.read() or 0)
        except FileNotFoundError:
            _offset[0] = 0.0
        _offset[1] = _monotonic()
    return _offset[0]
os.write = _failing_write
time.time = lambda: _time() + _step()
time.time_ns = lambda: _time_ns() + int(_step() * 1e9)
'''


class FaultHooks:
    """Faults injected into the service's process where nothing real can make them: a
    `sitecustomize` put on the service's PYTHONPATH makes `os.write` fail with ENOSPC for files
    under `root` while `fill()` holds, and steps the wall clock (`time.time`, `time.time_ns`)
    by `step_clock(seconds)`."""

    name = "enospc-hook"

    def __init__(self, root: Path, hook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.full_flag = hook_dir / "disk-full"
        self.offset_file = hook_dir / "clock-offset"
        hook_dir.mkdir(parents=True, exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(
            SITECUSTOMIZE.format(full=str(self.full_flag), root=str(root), offset=str(self.offset_file)))
        monkeypatch.setenv("PYTHONPATH", str(hook_dir))

    def fill(self) -> None:
        self.full_flag.touch()

    def free(self) -> None:
        self.full_flag.unlink()

    def step_clock(self, seconds: float) -> None:
        self.offset_file.write_text(repr(float(seconds)))


def logged_events(data_dir: Path) -> Counter:
    """How often each event id appears among the readable complete decision lines."""
    counts: Counter = Counter()
    for path in segment_paths(DataPaths(data_dir).decisions, DECISION_KIND):
        for raw in path.read_bytes().splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                continue
            try:
                counts[json.loads(raw)["EventId"]] += 1
            except (ValueError, KeyError, TypeError):
                continue
    return counts


def joined_events(data_dir: Path) -> Counter:
    """How often each event id appears in the committed joined parts."""
    from service.join.reader import JoinedLog

    counts: Counter = Counter()
    for part in JoinedLog(data_dir).parts():
        for raw in part.jsonl.read_bytes().splitlines():
            counts[json.loads(raw)["EventId"]] += 1
    return counts


def doctor(data_dir: Path) -> dict:
    """`shelfbandit doctor --json` on `data_dir`: {check: [(status, message), ...]}, and its exit code."""
    done = subprocess.run([*SHELFBANDIT, "doctor", "--data-dir", str(data_dir), "--json"],
                          capture_output=True, text=True, timeout=120)
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    found: dict = {"exit": done.returncode}
    for finding in verdict["findings"]:
        found.setdefault(finding["check"], []).append((finding["status"], finding["message"]))
    return found


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample of `/metrics` (0 when the series does not exist yet)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
