"""The simulator as a real client: the world's listeners against a running decision API.

For each request: `POST /v1/rank` with the listener's features, the candidate shelves, the
number of slots and the editorial order; the listener streams from the answer by the world's
click model; every stream is sent as `POST /v1/reward` (value 1.0) after its simulated delay
times `delay_scale` wall seconds. At most `concurrency` HTTP calls are in flight; sessions
stop after `len(requests)` or `max_seconds`, whichever comes first. Uniforms and delays are
drawn before any call, so the listeners' behaviour depends only on what the service shows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd

from bandit.errors import ShelfBanditError, ValidationError
from simulator.closed_loop import reference_columns, session_metrics, summarise
from simulator.world import Request, RequestBatch, World

REWARD_VALUE = 1.0
REWARD_OUTCOMES = {200: "rewards_accepted", 202: "rewards_accepted", 204: "rewards_accepted",
                   404: "rewards_unknown_event", 409: "rewards_late"}


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Concurrency, per-call timeout, overall time bound and reward-delay scale of a drive."""

    concurrency: int = 8
    timeout_s: float = 10.0
    max_seconds: float = 300.0
    delay_scale: float = 0.0
    tail_share: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValidationError("concurrency", "must be a positive integer", self.concurrency)
        for name in ("timeout_s", "max_seconds"):
            if not getattr(self, name) > 0:
                raise ValidationError(name, "must be > 0", getattr(self, name))
        if not self.delay_scale >= 0:
            raise ValidationError("delay_scale", "must be >= 0", self.delay_scale)


@dataclass(frozen=True, slots=True, eq=False)
class DriveResult:
    """Per-session metrics of the completed sessions (as in a closed-loop run, plus latency)
    and a summary with the HTTP outcome counts."""

    metrics: pd.DataFrame
    summary: dict


def rank_body(request: Request, n_slots: int, event_id: str) -> dict:
    """The JSON body of POST /v1/rank for one request (the listener id decides the service's A/B arm)."""
    return {
        "event_id": event_id,
        "listener_id": request.context.listener_id,
        "user": dict(request.context.features),
        "shelves": [{"id": s.shelf_id, "features": dict(s.features)} for s in request.shelves],
        "slots": n_slots,
        "baseline": list(request.baseline),
    }


def parse_rank_answer(answer: object, request: Request, n_slots: int) -> tuple[str, str, list[str]]:
    """(event id, model version, shelf ids in slot order) of a /v1/rank answer, checked
    against the contract."""
    try:
        event_id, model_version = str(answer["event_id"]), str(answer["model_version"])
        ranking = sorted(answer["ranking"], key=lambda item: item["slot"])
        shelf_ids = [item["shelf_id"] for item in ranking]
        probabilities = [float(item["probability"]) for item in ranking]
    except (KeyError, TypeError, ValueError):
        raise ValidationError("answer", "must hold event_id, model_version and ranking[{slot, shelf_id, probability}]") from None
    candidates = {s.shelf_id for s in request.shelves}
    if [item["slot"] for item in ranking] != list(range(n_slots)):
        raise ValidationError("ranking", f"must fill slots 0..{n_slots - 1} once each", [item["slot"] for item in ranking])
    if len(set(shelf_ids)) != n_slots or not set(shelf_ids) <= candidates:
        raise ValidationError("ranking", "must show distinct candidate shelves", shelf_ids)
    if not all(0.0 < p <= 1.0 for p in probabilities):
        raise ValidationError("ranking", "probabilities must lie in (0, 1]", probabilities)
    return event_id, model_version, shelf_ids


class _Drive:
    """The state of one drive: counters, per-session results, pending reward tasks."""

    def __init__(self, world: World, requests: RequestBatch, rng: np.random.Generator, config: DriverConfig) -> None:
        self.world, self.batch, self.config = world, requests, config
        self.requests = world.requests(requests)
        self.n_slots = requests.n_slots
        self.uniforms = rng.random((2, len(requests), self.n_slots))
        self.delays = world.sample_delays((len(requests), self.n_slots), rng)
        self.shown = np.full((len(requests), self.n_slots), -1, dtype=np.int64)
        self.latency_ms = np.full(len(requests), np.nan)
        self.counts: Counter[str] = Counter()
        self.model_versions: set[str] = set()
        self.reward_tasks: list[asyncio.Task] = []
        self.next_session = 0
        self.prefix = uuid.uuid4().hex[:12]
        self.http_slots = asyncio.Semaphore(config.concurrency)
        self.deadline = time.monotonic() + config.max_seconds

    async def worker(self, client: httpx.AsyncClient, advance: Callable[[int], object] | None) -> None:
        while self.next_session < len(self.requests) and time.monotonic() < self.deadline:
            i = self.next_session
            self.next_session += 1
            await self.session(client, i)
            if advance is not None:
                advance(1)

    async def session(self, client: httpx.AsyncClient, i: int) -> None:
        request = self.requests[i]
        body = rank_body(request, self.n_slots, f"{self.prefix}-{i}")
        started = time.perf_counter()
        try:
            async with self.http_slots:
                response = await client.post("/v1/rank", json=body)
        except httpx.HTTPError as err:
            self.counts[f"rank_error_{type(err).__name__}"] += 1
            return
        if response.status_code != 200:
            self.counts[f"rank_status_{response.status_code}"] += 1
            return
        try:
            event_id, model_version, shelf_ids = parse_rank_answer(response.json(), request, self.n_slots)
        except (ValueError, ValidationError):
            self.counts["rank_bad_answer"] += 1
            return
        self.latency_ms[i] = (time.perf_counter() - started) * 1000.0
        self.model_versions.add(model_version)
        self.shown[i] = self.world.indices([shelf_ids])[0]
        streams = self.world.realise_rewards(self.batch[i : i + 1], self.shown[i : i + 1], self.uniforms[:, i : i + 1])[0]
        for slot in np.flatnonzero(streams).tolist():
            delay = float(self.delays[i, slot]) * self.config.delay_scale
            self.reward_tasks.append(asyncio.create_task(self.reward(client, event_id, slot, delay)))

    async def reward(self, client: httpx.AsyncClient, event_id: str, slot: int, delay_s: float) -> None:
        if delay_s > 0.0:
            await asyncio.sleep(delay_s)
        self.counts["rewards_sent"] += 1
        try:
            async with self.http_slots:
                response = await client.post("/v1/reward", json={"event_id": event_id, "slot": slot, "value": REWARD_VALUE})
        except httpx.HTTPError as err:
            self.counts[f"reward_error_{type(err).__name__}"] += 1
            return
        self.counts[REWARD_OUTCOMES.get(response.status_code, f"reward_status_{response.status_code}")] += 1

    async def finish_rewards(self) -> None:
        """Wait for scheduled rewards until the deadline plus one call timeout; cancel the rest."""
        if not self.reward_tasks:
            return
        budget = max(0.0, self.deadline - time.monotonic()) + self.config.timeout_s
        done, pending = await asyncio.wait(self.reward_tasks, timeout=budget)
        for task in pending:
            task.cancel()
        self.counts["rewards_unsent"] += len(pending)


async def drive_async(
    base_url: str,
    world: World,
    requests: RequestBatch,
    rng: np.random.Generator,
    config: DriverConfig = DriverConfig(),
    *,
    name: str = "service",
    progress: Callable[[int], object] | None = None,
) -> DriveResult:
    """Play `requests` against the decision API at `base_url` (see the module docstring)."""
    state = _Drive(world, requests, rng, config)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=config.timeout_s, limits=limits) as client:
        await asyncio.gather(*(state.worker(client, progress) for _ in range(config.concurrency)))
        await state.finish_rewards()
    completed = np.flatnonzero(state.shown[:, 0] >= 0)
    if len(completed) == 0:
        raise ShelfBanditError(f"no session completed against {base_url} ({dict(state.counts) or 'no answer'})")
    done = requests[completed]
    shown = state.shown[completed]
    streams = world.realise_rewards(done, shown, state.uniforms[:, completed])
    metrics = session_metrics(name, done, world.expected_slot_rewards(done, shown), streams, reference_columns(world, done))
    metrics["session"] = completed
    metrics["latency_ms"] = state.latency_ms[completed]
    latency = metrics["latency_ms"].to_numpy()
    summary = {
        **summarise(metrics, config.tail_share),
        "sessions_requested": len(requests),
        "sessions_completed": len(completed),
        "stopped_by_deadline": state.next_session < len(requests),
        "elapsed_s": time.monotonic() - started,
        "latency_ms_p50": float(np.percentile(latency, 50)),
        "latency_ms_p95": float(np.percentile(latency, 95)),
        "latency_ms_p99": float(np.percentile(latency, 99)),
        "model_versions": sorted(state.model_versions),
        **dict(state.counts),
    }
    return DriveResult(metrics, summary)


def drive(*args, **kwargs) -> DriveResult:
    """drive_async (same arguments) in an event loop of its own."""
    return asyncio.run(drive_async(*args, **kwargs))
