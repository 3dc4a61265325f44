"""Helpers for the fault tests: small file systems to fill or break, a write-fault hook for where
mounting is not permitted, and readers that count what the logs hold."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
import errno, os
_write, _flag, _root = os.write, {flag!r}, {root!r}
def _failing_write(fd, data):
    if os.path.exists(_flag) and os.readlink(f"/proc/self/fd/{{fd}}").startswith(_root):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _write(fd, data)
os.write = _failing_write
'''


class EnospcHook:
    """Where mounting is not permitted: a `sitecustomize` put on the service's PYTHONPATH makes
    `os.write` fail with ENOSPC for files under the data directory while a flag file exists."""

    name = "enospc-hook"

    def __init__(self, root: Path, hook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.flag = hook_dir / "disk-full"
        hook_dir.mkdir(parents=True, exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE.format(flag=str(self.flag), root=str(root)))
        monkeypatch.setenv("PYTHONPATH", str(hook_dir))

    def fill(self) -> None:
        self.flag.touch()

    def free(self) -> None:
        self.flag.unlink()


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.1):
    """Poll `condition()` until it returns a true value (returned), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)


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
