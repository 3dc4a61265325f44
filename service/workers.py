"""`shelfbandit serve --workers N` on Linux: N uvicorn processes, each listening on a socket of
its own in one SO_REUSEPORT group, so that the kernel spreads new connections over them.

uvicorn's own process manager hands every worker the one socket it bound, and the worker that
wakes first accepts a whole burst of new connections: 32 opened at once split 20/12 to 24/8
between two workers, and under a steady load the busier worker queued (docs/service.md).
Here the parent holds the port with a socket of the group that never listens (so it takes no
connection), starts the workers, starts a new one in place of any that exits while the
service runs (at most one a second per worker; logged, counted in /metrics as
shelfbandit_worker_restarts_total, and written to run/workers.json for `shelfbandit doctor`),
and stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from service.logs import get_logger
from service.ops.worker_status import WorkerStatus

RESTART_EVERY_S = 1.0  # a worker that keeps dying is started again at most this often
STOP_GRACE_S = 20.0  # SIGTERM to the workers, then SIGKILL to those still running

log = get_logger()


def spreads_connections() -> bool:
    """Whether the kernel spreads a SO_REUSEPORT group's connections over its sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bound_socket(host: str, port: int, *, group: bool) -> socket.socket:
    """A socket bound to (host, port); `group`: in the port's SO_REUSEPORT group."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if group:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def hold_port(host: str, port: int) -> socket.socket:
    """The parent's socket of the group; OSError if another process already listens on the port
    (a plain bind fails then, while a bind into a SO_REUSEPORT group of the same user would not)."""
    bound_socket(host, port, group=False).close()
    return bound_socket(host, port, group=True)


def serve_worker(host: str, port: int, uvicorn_config: dict) -> None:
    """One worker process: uvicorn on a listening socket of its own in the port's group."""
    sock = bound_socket(host, port, group=True)
    uvicorn.Server(uvicorn.Config(**uvicorn_config)).run(sockets=[sock])


def run_workers(n_workers: int, host: str, port: int, uvicorn_config: dict, run_dir: Path) -> None:
    """Run n_workers worker processes until SIGTERM or SIGINT; then stop them and return. The
    status file goes to `run_dir` (the replica's run/ directory)."""
    from service.ops.metrics import worker_restarts  # imported once `serve` has set the multiprocess directory

    restarts = worker_restarts()
    holder = hold_port(host, port)
    status = WorkerStatus(run_dir, n_workers)
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=serve_worker, args=(host, port, uvicorn_config), name="shelfbandit-worker")
        process.start()
        return process

    workers = [start() for _ in range(n_workers)]
    started = [time.monotonic()] * n_workers
    try:
        while not stop.wait(0.2):
            for i, process in enumerate(workers):
                if process.is_alive() or time.monotonic() - started[i] < RESTART_EVERY_S:
                    continue
                log.warning("worker exited; starting another", extra={"fields": {"pid": process.pid, "exit_code": process.exitcode}})
                restarts.inc()
                status.exited(process.pid, process.exitcode)
                workers[i], started[i] = start(), time.monotonic()
    finally:
        for process in workers:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        holder.close()
        status.stopped()
