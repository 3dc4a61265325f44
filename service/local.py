"""The decision service as a local subprocess (`shelfbandit serve`), for the demo and tests.

It binds 127.0.0.1 on a free port chosen at start, runs in a process group of its own (so
stopping it stops every uvicorn worker), and writes its output to a log file beside the data
directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bandit.errors import ShelfBanditError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group that `process` leads (started with `start_new_session`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the process group `process` leads, SIGKILL after `grace_s`; returns once it exited."""
    if process.poll() is not None:
        return
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        process.wait()


class LocalService:
    """`shelfbandit serve` with `settings` (Settings fields) on 127.0.0.1: `url`, `start()`,
    `stop()` (SIGTERM, then SIGKILL after a grace period), `kill()` (SIGKILL), `log()`."""

    def __init__(self, data_dir: str | Path, settings: dict | None = None, workers: int = 1) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = {"data_dir": str(self.data_dir), "host": "127.0.0.1", "port": self.port,
                         "workers": workers, **(settings or {})}
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout_s: float = 60.0, ready: bool = True) -> LocalService:
        """Start the server and wait until `/readyz` answers 200 (`ready=False`: until `/healthz`
        does, for a service that is up but cannot serve)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.data_dir.parent / f"settings-{self.port}.json"
        settings_file.write_text(json.dumps(self.settings))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFBANDIT_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from shelfbandit.cli import main; main()", "serve", "--settings", str(settings_file)],
                stdout=log, stderr=log, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ShelfBanditError(f"the service exited with status {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/{'readyz' if ready else 'healthz'}", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ShelfBanditError(f"the service was not ready within {timeout_s} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace_s: float = 20.0) -> None:
        if self.process is not None:
            stop_group(self.process, grace_s)

    def kill(self) -> None:
        """kill -9 of the whole process group."""
        signal_group(self.process, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
