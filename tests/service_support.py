"""Helpers for the service tests: request bodies, logged decisions, and a real `shelfbandit serve`
on 127.0.0.1 (a free port chosen at run time, always stopped)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from bandit.config import RankerConfig
from bandit.types import Context, Shelf
from bandit.vw.ranker import VWShelfRanker
from service.eventlog.lines import decision_line, reward_line
from service.local import LocalService

ADMIN_TOKEN = "test-admin-token-7f3a"
KINDS = ("mix", "recent", "new_releases", "podcasts", "charts", "mood")


def shelves_json(n: int) -> list[dict]:
    return [{"id": f"shelf-{i}", "features": {"kind": KINDS[i % len(KINDS)], "age_days": i % 5}} for i in range(n)]


def rank_body(n_shelves: int = 6, n_slots: int = 3, event_id: str | None = None, **extra) -> dict:
    body = {"user": {"country": "SE", "platform": "ios", "hour": 20}, "shelves": shelves_json(n_shelves), "slots": n_slots}
    if event_id is not None:
        body["event_id"] = event_id
    return {**body, **extra}


def catalogue(n: int) -> tuple[Shelf, ...]:
    return tuple(Shelf(s["id"], s["features"]) for s in shelves_json(n))


def write_segment(directory: Path, kind: str, lines: list[bytes], created_ns: int, pid: int = 4242) -> Path:
    """A finished segment file named as a writer would name it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{created_ns:019d}-{pid}.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def logged_decisions(n: int, start: float, spacing: float, *, n_shelves: int = 5, n_slots: int = 3, seed: int = 0,
                     config: RankerConfig | None = None):
    """(event ids, decision lines, decisions) of `n` real VW decisions made `spacing` s apart."""
    ranker = VWShelfRanker(config or RankerConfig(epsilon=0.3, seed=seed))
    shelves = catalogue(n_shelves)
    ids, lines, decisions = [], [], []
    for i in range(n):
        context = Context({"segment": f"s{i % 3}"})
        decision = ranker.rank(context, shelves, n_slots, event_id=f"ev-{seed}-{i:04d}")
        ids.append(decision.event_id)
        lines.append(decision_line(context, shelves, decision, timestamp=start + i * spacing, baseline=()))
        decisions.append((context, decision))
    return ids, lines, decisions, shelves


def reward(event_id: str, slot: int, value: float, received: float, decided: float, reward_id: str | None = None) -> bytes:
    return reward_line(event_id, slot, value, reward_id, received=received, decided=decided)


class ServiceProcess(LocalService):
    """The service as the tests run it: the test admin token and fast model polling; `client()`."""

    def __init__(self, data_dir: Path, settings: dict, workers: int = 1) -> None:
        super().__init__(data_dir, {"admin_token": ADMIN_TOKEN, "model_poll_s": 0.2, **settings}, workers)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 10.0), **kwargs)


@contextmanager
def running_service(data_dir: Path, workers: int = 1, **settings):
    server = ServiceProcess(data_dir, settings, workers).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Callable[[], object], timeout_s: float = 20.0, what: str = "the condition", every_s: float = 0.05):
    """Poll `condition()` until it returns a true value (returned); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)


@contextmanager
def served_in_thread(app, lifespan: str = "off") -> Iterator[str]:
    """An ASGI app on a real uvicorn in a thread, on a free port of 127.0.0.1; yields its URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10.0, "the stand-in server to start", every_s=0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
