"""The simulator as a real client: the world's listeners against a running decision API.

For each request: `POST /v1/rank` with the listener's features, the candidate shelves, the
number of slots and the editorial order; the listener streams from the answer by the world's
click model; every stream is sent as `POST /v1/reward` (value 1.0) after its simulated delay
times `delay_scale` wall seconds. At most `concurrency` HTTP calls are in flight; sessions
stop after `len(requests)` or `max_seconds`, whichever comes first. Uniforms and delays are
drawn before any call, so the listeners' behaviour depends only on what the service shows.

The calls go through `shelfbandit.client.AsyncDecisionClient`: one connection pool for every
session, each call with its retries bounded by `timeout_s`, and no fallback (a session the
service did not decide is counted by why, e.g. `rank_error_ConnectError`, not played).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bandit.errors import ShelfBanditError, ValidationError
from shelfbandit.client import (
    AsyncDecisionClient,
    BadAnswer,
    ClientError,
    LateReward,
    ServiceError,
    ServiceUnavailable,
    UnknownEvent,
)
from simulator.closed_loop import reference_columns, session_metrics, summarise
from simulator.world import RequestBatch, World

REWARD_VALUE = 1.0


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


def failure_count(call: str, err: ClientError) -> str:
    """The summary counter of a failed call: `<call>_error_<transport error>` when no answer
    came, `<call>_status_<status>` for a refusal, `rank_bad_answer` for an answer that breaks
    the contract, `rewards_unknown_event` / `rewards_late` for those refusals of a reward."""
    if isinstance(err, UnknownEvent):
        return "rewards_unknown_event"
    if isinstance(err, LateReward):
        return "rewards_late"
    if isinstance(err, BadAnswer):
        return f"{call}_bad_answer"
    if isinstance(err, ServiceUnavailable) and err.cause is not None:
        return f"{call}_error_{type(err.cause).__name__}"
    if isinstance(err, (ServiceError, ServiceUnavailable)) and err.status is not None:
        return f"{call}_status_{err.status}"
    return f"{call}_error_{type(err).__name__}"


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

    async def worker(self, client: AsyncDecisionClient, advance: Callable[[int], object] | None) -> None:
        while self.next_session < len(self.requests) and time.monotonic() < self.deadline:
            i = self.next_session
            self.next_session += 1
            await self.session(client, i)
            if advance is not None:
                advance(1)

    async def session(self, client: AsyncDecisionClient, i: int) -> None:
        request = self.requests[i]
        started = time.perf_counter()
        try:
            async with self.http_slots:
                ranking = await client.rank(
                    request.shelves, self.n_slots, user=request.context.features,
                    listener_id=request.context.listener_id, baseline=request.baseline, event_id=f"{self.prefix}-{i}",
                )
        except ClientError as err:
            self.counts[failure_count("rank", err)] += 1
            return
        self.latency_ms[i] = (time.perf_counter() - started) * 1000.0
        self.model_versions.add(ranking.model_version)
        self.shown[i] = self.world.indices([list(ranking.shelf_ids)])[0]
        streams = self.world.realise_rewards(self.batch[i : i + 1], self.shown[i : i + 1], self.uniforms[:, i : i + 1])[0]
        for slot in np.flatnonzero(streams).tolist():
            delay = float(self.delays[i, slot]) * self.config.delay_scale
            self.reward_tasks.append(asyncio.create_task(self.reward(client, ranking.event_id, slot, delay)))

    async def reward(self, client: AsyncDecisionClient, event_id: str, slot: int, delay_s: float) -> None:
        if delay_s > 0.0:
            await asyncio.sleep(delay_s)
        self.counts["rewards_sent"] += 1
        try:
            async with self.http_slots:
                await client.reward(event_id, REWARD_VALUE, slot=slot)
        except ClientError as err:
            self.counts[failure_count("reward", err)] += 1
            return
        self.counts["rewards_accepted"] += 1

    async def finish_rewards(self) -> None:
        """Wait for scheduled rewards until the deadline plus one call timeout; cancel the rest."""
        if not self.reward_tasks:
            return
        budget = max(0.0, self.deadline - time.monotonic()) + self.config.timeout_s
        _done, pending = await asyncio.wait(self.reward_tasks, timeout=budget)
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
    # one pool for every session; each call, retries included, within the per-call timeout;
    # no fallback: a session the service did not decide is counted, not played
    client = AsyncDecisionClient(base_url, timeout_s=config.timeout_s, deadline_s=config.timeout_s,
                                 max_connections=config.concurrency)
    async with client:
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
