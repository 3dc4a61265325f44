"""The worker manager's status file (`run/workers.json`), which `shelfbandit doctor` reads.

`serve --workers N` (service/workers.py) writes it when it starts, whenever it starts a worker
in place of one that exited, and when it stops: its pid, the number of workers, the count of
restarts and the last RECENT_EXITS exits (time, pid, exit code). Atomic replace, so a reader
sees one whole version. A write that fails (a full or read-only disk) is logged and skipped:
the file is for `doctor`, and the workers keep being supervised without it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bandit.durable import write_atomic
from service.logs import get_logger

STATUS_NAME = "workers.json"
RECENT_EXITS = 20


class WorkerStatus:
    """The manager's side: `exited(pid, exit_code)` for every worker started again, `stopped()` at the end."""

    def __init__(self, run_dir: Path, n_workers: int) -> None:
        self.path = run_dir / STATUS_NAME
        self.state = {"manager_pid": os.getpid(), "workers": n_workers, "started": time.time(), "restarts": 0,
                      "recent_exits": [], "stopped": None}
        self._write()

    def exited(self, pid: int | None, exit_code: int | None) -> None:
        self.state["restarts"] += 1
        exits = self.state["recent_exits"]
        exits.append({"time": time.time(), "pid": pid, "exit_code": exit_code})
        del exits[:-RECENT_EXITS]
        self._write()

    def stopped(self) -> None:
        self.state["stopped"] = time.time()
        self._write()

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.state).encode())
        except OSError as err:
            get_logger().warning("could not write the worker status", extra={"fields": {"path": str(self.path), "error": str(err)}})


def read_worker_status(run_dir: Path) -> dict | None:
    """The status a worker manager last wrote in `run_dir`, or None (none ran here, or unreadable)."""
    try:
        status = json.loads((run_dir / STATUS_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None
