"""The client of the decision API, for the home backend: `DecisionClient` and `AsyncDecisionClient`.

    client = DecisionClient("http://decisions:8000", fallback=editorial_order)
    ranking = client.rank(shelves, slots=8, user={"country": "SE"}, listener_id="l-1", baseline=editorial)
    ... show ranking.shelf_ids; the page carries ranking.event_id ...
    client.reward(ranking.event_id, 1.0, shelf_id="mix-1")     # when the listener streams

What the client guarantees:
- The client sets the event id (and the reward id), so every call may be retried: a retried
  rank is the same decision. When the service answers 409 to a repeated event id with the
  answer it served, that answer is returned (`already_served=True`); nothing is logged twice.
- Bounded retries with exponential backoff and full jitter, all within the call's deadline:
  connection errors, timeouts, and 502/503/504 (a `Retry-After` is honoured when it fits in
  the deadline; when it does not, the call gives up at once). A 4xx is never retried, except
  a 409 for an event id this call itself sent (its first attempt may still be in flight).
- Errors of the request become typed exceptions naming the field and the rule
  (`InvalidRequest`, `UnknownEvent`, `LateReward`, `RepeatedEvent`; all `ServiceError`).
- When the service cannot decide (unreachable, timed out, 5xx) and the caller gave a
  `fallback` (e.g. `editorial_order`), `rank` returns that order with `fallback=True` and an
  event id that begins with `fallback:`; `reward` for such an event sends nothing and says so
  (`sent=False`), so no policy is credited with a ranking it did not make. Without a fallback
  the call raises `ServiceUnavailable`.
- One connection pool per client (`max_connections`); share one client between requests.
- `key`: the client key the service gave this backend (sent as `X-Shelfbandit-Key` with every
  call); a service with keys configured answers 401/403 without a known one (`InvalidRequest`).

It depends on httpx, orjson and `bandit.errors` only (the import rules check it), so the
simulator's HTTP driver uses it too.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import anyio
import httpx
import orjson

from bandit.errors import FieldError, ShelfBanditError, ValidationError

log = logging.getLogger("shelfbandit.client")

FALLBACK_PREFIX = "fallback:"
RETRY_STATUSES = frozenset({502, 503, 504})
_USER_AGENT = "shelfbandit-client/1"
KEY_HEADER = "X-Shelfbandit-Key"
_JSON_HEADERS = {"content-type": "application/json"}


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RankedShelf:
    """One slot of a ranking: the shelf shown there and P(it there | the shelves above), or
    None for a fallback (no policy drew it)."""

    slot: int
    shelf_id: str
    probability: float | None


@dataclass(frozen=True, slots=True)
class Ranking:
    """The answer to `rank`.

    `already_served`: the service had served this event id before (an earlier attempt of this
    call, or the caller reusing an id) and this is the answer it served then. `fallback`: the
    service did not decide; the order is the caller's fallback, `event_id` begins with
    `fallback:`, `reason` says why, and no reward for it is ever sent.
    """

    event_id: str
    ranking: tuple[RankedShelf, ...]
    model_version: str | None
    arm: str | None
    fallback: bool = False
    already_served: bool = False
    attempts: int = 1
    reason: str | None = None

    @property
    def shelf_ids(self) -> tuple[str, ...]:
        return tuple(item.shelf_id for item in self.ranking)


@dataclass(frozen=True, slots=True)
class RewardResult:
    """The answer to `reward`: `sent=False` (status `fallback`) for an event the service did not decide."""

    event_id: str
    slot: int | None
    status: Literal["accepted", "fallback"]
    sent: bool
    attempts: int = 0
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RankRequest:
    """A rank call as sent (what a fallback is given): shelves as {"id", "features"} objects."""

    event_id: str
    shelves: tuple[dict, ...]
    slots: int
    user: dict
    listener_id: str | None
    baseline: tuple[str, ...] | None

    @property
    def shelf_ids(self) -> tuple[str, ...]:
        return tuple(shelf["id"] for shelf in self.shelves)

    def body(self) -> dict:
        body: dict[str, Any] = {"event_id": self.event_id, "user": self.user, "shelves": list(self.shelves), "slots": self.slots}
        if self.listener_id is not None:
            body["listener_id"] = self.listener_id
        if self.baseline is not None:
            body["baseline"] = list(self.baseline)
        return body


Fallback = Callable[[RankRequest], Sequence[str]]


def editorial_order(request: RankRequest) -> list[str]:
    """The fallback most backends want: the editorial order (`baseline`), then the other
    candidates in the order given, cut to `slots`."""
    baseline = list(request.baseline or ())
    shown = set(baseline)
    return (baseline + [shelf_id for shelf_id in request.shelf_ids if shelf_id not in shown])[: request.slots]


# -- errors ----------------------------------------------------------------------------------
class ClientError(ShelfBanditError):
    """Base class of the client's errors."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One `{field, rule}` item of an error answer."""

    field: str
    rule: str


class ServiceError(ClientError, FieldError):
    """The service refused the request (4xx): `status`, every `{field, rule}` item of its answer
    in `problems`, and the first one's `field` and `rule`."""

    def __init__(self, status: int, problems: Sequence[Problem]) -> None:
        self.status = status
        self.problems = tuple(problems) or (Problem("", f"status {status}"),)
        super().__init__(self.problems[0].field, self.problems[0].rule)

    def __str__(self) -> str:
        return f"{self.status} {super().__str__()}"


class InvalidRequest(ServiceError):
    """422 (a rule of the request is broken), 413 (too large) or another 4xx."""


class UnknownEvent(ServiceError):
    """404 on a reward: the service served no such event (or has forgotten it)."""


class LateReward(ServiceError):
    """409 on a reward: its reward window had closed (the service keeps it aside, never learns from it)."""


class RepeatedEvent(ServiceError):
    """409 on a rank: the event id was served already, and the service did not return that answer."""


class ServiceUnavailable(ClientError):
    """No decision within the deadline and no fallback: `cause` is the last transport error
    (or None), `status` the last 5xx (or None), `attempts` how many were made."""

    def __init__(self, message: str, *, cause: BaseException | None = None, status: int | None = None, attempts: int = 0) -> None:
        self.cause = cause
        self.status = status
        self.attempts = attempts
        super().__init__(message)


class BadAnswer(ClientError):
    """A 2xx answer that breaks the API contract (not JSON, missing fields, a ranking that does
    not fill the slots with distinct candidates, a probability outside (0, 1])."""


# -- one call's rules, shared by the two clients ----------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts; before attempt n+1 a wait drawn uniformly from
    [0, min(max_backoff_s, backoff_s * 2**(n-1))] (full jitter), or the `Retry-After` of a
    502/503/504 when it is longer. No attempt starts after the call's deadline."""

    max_attempts: int = 4
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValidationError("max_attempts", "must be a positive integer", self.max_attempts)
        if not (self.backoff_s >= 0 and self.max_backoff_s >= self.backoff_s):
            raise ValidationError("backoff_s", "must be >= 0 and <= max_backoff_s", self.backoff_s)

    def wait_s(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1)))


@dataclass(slots=True)
class _Failed:
    """An attempt that gave no decision: why, the least wait the service asked before another,
    and whether another is worth making (`final`: no, but the fallback still answers)."""

    cause: ClientError
    status: int | None = None
    error: BaseException | None = None
    at_least_s: float = 0.0
    final: bool = False


class _Call:
    """One rank or reward call: the body, the deadline, and what each attempt's outcome means."""

    def __init__(
        self, kind: str, path: str, body: dict, deadline_s: float, *,
        rank: RankRequest | None = None, event_id: str = "", slot: int | None = None,
    ) -> None:
        self.kind, self.path, self.rank = kind, path, rank
        self.event_id = rank.event_id if rank is not None else event_id
        self.slot = slot
        self.content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.attempts = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def transport_failed(self, err: httpx.TransportError) -> _Failed:
        text = str(err) or type(err).__name__
        return _Failed(ServiceUnavailable(f"{self.kind}: {type(err).__name__}: {text}", cause=err), error=err)

    def answered(self, response: httpx.Response):
        """The result (Ranking or RewardResult), a `_Failed`, or raises a `ServiceError`."""
        try:
            return self._answered(response)
        except BadAnswer as err:
            return _Failed(err, status=response.status_code, final=True)

    def _answered(self, response: httpx.Response):
        status = response.status_code
        if 200 <= status < 300:
            return self._success(response)
        if status in RETRY_STATUSES:
            return _Failed(
                ServiceUnavailable(f"{self.kind}: status {status}", status=status),
                status=status, at_least_s=_retry_after(response),
            )
        answer = _json_or_none(response)
        problems = _problems(answer)
        if status >= 500:
            message = f"{self.kind}: status {status}: {'; '.join(f'{p.field}: {p.rule}' for p in problems) or 'no answer'}"
            return _Failed(ServiceUnavailable(message, status=status), status=status, final=True)
        if self.kind == "rank" and status == 409:
            served = answer.get("served") if isinstance(answer, dict) else None
            if served is not None:
                return self._ranking(served, already_served=True)
            repeated = RepeatedEvent(status, problems)
            if self.attempts > 1:
                # this call's own earlier attempt may still be in flight: its answer will come
                return _Failed(repeated, status=status)
            raise repeated
        if self.kind == "reward" and status == 404:
            raise UnknownEvent(status, problems)
        if self.kind == "reward" and status == 409:
            raise LateReward(status, problems)
        raise InvalidRequest(status, problems)

    def _success(self, response: httpx.Response):
        if self.kind == "rank":
            return self._ranking(_json(response, self.kind), already_served=False)
        answer = _json_or_none(response)  # any 2xx accepts a reward
        slot = answer.get("slot") if isinstance(answer, dict) else None
        return RewardResult(
            event_id=self.event_id, slot=slot if isinstance(slot, int) else self.slot,
            status="accepted", sent=True, attempts=self.attempts,
        )

    def _ranking(self, answer: Any, *, already_served: bool) -> Ranking:
        request = self.rank
        try:
            event_id, model_version = str(answer["event_id"]), str(answer["model_version"])
            arm = answer.get("arm")  # an extension of the contract: absent from other implementations
            items = sorted(answer["ranking"], key=lambda item: item["slot"])
            ranking = tuple(RankedShelf(int(i["slot"]), str(i["shelf_id"]), float(i["probability"])) for i in items)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadAnswer("rank: the answer must hold event_id, model_version and ranking[{slot, shelf_id, probability}]") from None
        slots = [item.slot for item in ranking]
        if slots != list(range(request.slots)):
            raise BadAnswer(f"rank: the ranking must fill slots 0..{request.slots - 1} once each (found {slots})")
        shelf_ids = [item.shelf_id for item in ranking]
        if len(set(shelf_ids)) != len(shelf_ids) or not set(shelf_ids) <= set(request.shelf_ids):
            raise BadAnswer(f"rank: the ranking must show distinct candidate shelves (found {shelf_ids})")
        if not all(0.0 < item.probability <= 1.0 for item in ranking):
            raise BadAnswer(f"rank: probabilities must lie in (0, 1] (found {[item.probability for item in ranking]})")
        if event_id != request.event_id:
            raise BadAnswer(f"rank: the answer is for event {event_id!r}, not {request.event_id!r}")
        return Ranking(
            event_id=event_id, ranking=ranking,
            model_version=model_version, arm=None if arm is None else str(arm),
            already_served=already_served, attempts=self.attempts,
        )

    def next_wait(self, retry: _Failed, policy: RetryPolicy, rng: random.Random) -> float | None:
        """The wait before the next attempt, or None when there is to be none."""
        if retry.final or self.attempts >= policy.max_attempts:
            return None
        wait = max(retry.at_least_s, policy.wait_s(self.attempts, rng))
        return wait if wait < self.remaining() else None

    def give_up(self, retry: _Failed, fallback: Fallback | None):
        """After the last attempt: the fallback ranking, or raise."""
        cause = retry.cause
        if isinstance(cause, ServiceUnavailable):
            cause = ServiceUnavailable(
                f"{cause} (no answer after {self.attempts} attempt(s), {time.monotonic() - self.started:.3f} s)",
                cause=retry.error, status=retry.status, attempts=self.attempts,
            )
        if self.kind != "rank" or fallback is None:
            raise cause
        return fallback_ranking(self.rank, fallback, reason=str(cause), attempts=self.attempts)


def fallback_ranking(request: RankRequest, fallback: Fallback, *, reason: str, attempts: int = 0) -> Ranking:
    """The caller's fallback order for `request`, marked as such."""
    order = list(fallback(request))
    if len(order) != request.slots or len(set(order)) != len(order) or not set(order) <= set(request.shelf_ids):
        raise ValidationError("fallback", f"must return {request.slots} distinct candidate shelf ids", order)
    log.warning("event %s: the fallback order was shown (%s)", request.event_id, reason)
    return Ranking(
        event_id=FALLBACK_PREFIX + request.event_id,
        ranking=tuple(RankedShelf(k, shelf_id, None) for k, shelf_id in enumerate(order)),
        model_version=None, arm=None, fallback=True, attempts=attempts, reason=reason,
    )


def is_fallback(event_id: str) -> bool:
    """Whether an event id is that of a fallback ranking (no policy decided it)."""
    return event_id.startswith(FALLBACK_PREFIX)


def _json(response: httpx.Response, kind: str) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise BadAnswer(f"{kind}: status {response.status_code} but the answer is not JSON") from None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _problems(answer: Any) -> list[Problem]:
    """The `{field, rule}` items of an error answer (`detail`); for an answer of another shape
    (a proxy's, another implementation's), its message as the rule of no field."""
    if not isinstance(answer, dict):
        return []
    detail = answer.get("detail")
    if isinstance(detail, list):
        items = [Problem(str(d.get("field", "")), str(d.get("rule", ""))) for d in detail if isinstance(d, dict)]
        if items:
            return items
    message = answer.get("error", detail)
    return [Problem("", message)] if isinstance(message, str) else []


def _retry_after(response: httpx.Response) -> float:
    """Seconds a `Retry-After` header asks for (delta seconds or an HTTP date); 0 without one."""
    value = response.headers.get("retry-after")
    if value is None:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def _shelf(shelf: Any, i: int) -> dict:
    """A candidate as the API's {"id", "features"}: from a `bandit.types.Shelf` (or anything with
    `shelf_id` and `features`), a mapping with "id", or a bare id."""
    if isinstance(shelf, str):
        return {"id": shelf}
    if isinstance(shelf, Mapping):
        out = {"id": shelf["id"]}
        if shelf.get("features"):
            out["features"] = dict(shelf["features"])
        return out
    if hasattr(shelf, "shelf_id"):
        return {"id": shelf.shelf_id, "features": dict(getattr(shelf, "features", None) or {})}
    raise ValidationError(f"shelves[{i}]", "must be a shelf id, a mapping with 'id' or an object with 'shelf_id'", type(shelf).__name__)


def _event_id(event: str | Ranking) -> str:
    return event.event_id if isinstance(event, Ranking) else str(event)


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        deadline_s: float | None,
        retry: RetryPolicy,
        fallback: Fallback | None,
        max_connections: int,
        headers: Mapping[str, str] | None,
        rng: random.Random | None,
        key: str | None,
    ) -> None:
        if not timeout_s > 0:
            raise ValidationError("timeout_s", "must be > 0", timeout_s)
        deadline_s = 2.0 * timeout_s if deadline_s is None else deadline_s
        if not deadline_s > 0:
            raise ValidationError("deadline_s", "must be > 0", deadline_s)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValidationError("max_connections", "must be a positive integer", max_connections)
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.retry = retry
        self.fallback = fallback
        self._rng = rng or random.Random()
        self._http_options = {
            "base_url": base_url,
            "headers": {"user-agent": _USER_AGENT, **({KEY_HEADER: key} if key is not None else {}), **(headers or {})},
            "timeout": httpx.Timeout(timeout_s),
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        }

    def _rank_call(self, shelves, slots, user, listener_id, baseline, event_id, deadline_s) -> _Call:
        if event_id is None:
            event_id = uuid.uuid4().hex
        elif is_fallback(event_id):
            raise ValidationError("event_id", f"must not begin with {FALLBACK_PREFIX!r} (the mark of fallback rankings)", event_id)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValidationError("slots", "must be a positive integer", slots)
        request = RankRequest(
            event_id=event_id,
            shelves=tuple(_shelf(shelf, i) for i, shelf in enumerate(shelves)),
            slots=slots,
            user=dict(user or {}),
            listener_id=listener_id,
            baseline=None if baseline is None else tuple(baseline),
        )
        return _Call("rank", "/v1/rank", request.body(), self._deadline(deadline_s), rank=request)

    def _reward_call(self, event, value, slot, shelf_id, reward_id, deadline_s) -> _Call | RewardResult:
        event_id = _event_id(event)
        if (slot is None) == (shelf_id is None):
            raise ValidationError("shelf_id/slot", "give exactly one of them")
        if is_fallback(event_id) or (isinstance(event, Ranking) and event.fallback):
            return RewardResult(
                event_id=event_id, slot=slot, status="fallback", sent=False,
                reason="a fallback ranking: no policy decided it, so no reward is sent",
            )
        body: dict[str, Any] = {"event_id": event_id, "value": value, "reward_id": reward_id or uuid.uuid4().hex}
        body["slot" if slot is not None else "shelf_id"] = slot if slot is not None else shelf_id
        return _Call("reward", "/v1/reward", body, self._deadline(deadline_s), event_id=event_id, slot=slot)

    def _deadline(self, deadline_s: float | None) -> float:
        return self.deadline_s if deadline_s is None else deadline_s

    def _attempt_timeout(self, call: _Call) -> httpx.Timeout:
        return httpx.Timeout(max(1e-3, min(self.timeout_s, call.remaining())))


_DEFAULT: Any = object()


class DecisionClient(_Base):
    """The synchronous client; one per process, shared (it holds the connection pool).

    `timeout_s` bounds each attempt's waits (connect, send, each read), `deadline_s` (default
    2 x `timeout_s`) the whole call with its retries; `fallback` (e.g. `editorial_order`)
    answers when the service cannot. Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 1.0,
        deadline_s: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        fallback: Fallback | None = None,
        max_connections: int = 32,
        headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout_s=timeout_s, deadline_s=deadline_s, retry=retry, fallback=fallback,
                         max_connections=max_connections, headers=headers, rng=rng, key=key)
        self._http = httpx.Client(**self._http_options, transport=transport)

    def rank(
        self,
        shelves: Sequence[Any],
        slots: int,
        *,
        user: Mapping[str, Any] | None = None,
        listener_id: str | None = None,
        baseline: Sequence[str] | None = None,
        event_id: str | None = None,
        deadline_s: float | None = None,
        fallback: Fallback | None = _DEFAULT,
    ) -> Ranking:
        """Order `shelves` into `slots` slots (see the module docstring for retries and fallback)."""
        call = self._rank_call(shelves, slots, user, listener_id, baseline, event_id, deadline_s)
        return self._run(call, self.fallback if fallback is _DEFAULT else fallback)

    def reward(
        self,
        event: str | Ranking,
        value: float,
        *,
        slot: int | None = None,
        shelf_id: str | None = None,
        reward_id: str | None = None,
        deadline_s: float | None = None,
    ) -> RewardResult:
        """A reward (higher is better) for the slot named by `slot` or `shelf_id` of a served
        event; nothing is sent for a fallback ranking. The client sets `reward_id` when not
        given, so a retried reward counts once."""
        call = self._reward_call(event, value, slot, shelf_id, reward_id, deadline_s)
        return call if isinstance(call, RewardResult) else self._run(call, None)

    def _run(self, call: _Call, fallback: Fallback | None):
        while True:
            call.attempts += 1
            try:
                response = self._http.post(call.path, content=call.content, headers=_JSON_HEADERS, timeout=self._attempt_timeout(call))
            except httpx.TransportError as err:
                outcome = call.transport_failed(err)
            else:
                outcome = call.answered(response)
            if not isinstance(outcome, _Failed):
                return outcome
            wait = call.next_wait(outcome, self.retry, self._rng)
            if wait is None:
                return call.give_up(outcome, fallback)
            time.sleep(wait)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDecisionClient(_Base):
    """The asyncio (or trio) client: the same calls, results and rules as `DecisionClient`,
    and each call also bounded as a whole by its deadline. Share one between tasks (one pool)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 1.0,
        deadline_s: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        fallback: Fallback | None = None,
        max_connections: int = 32,
        headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout_s=timeout_s, deadline_s=deadline_s, retry=retry, fallback=fallback,
                         max_connections=max_connections, headers=headers, rng=rng, key=key)
        self._http = httpx.AsyncClient(**self._http_options, transport=transport)

    async def rank(
        self,
        shelves: Sequence[Any],
        slots: int,
        *,
        user: Mapping[str, Any] | None = None,
        listener_id: str | None = None,
        baseline: Sequence[str] | None = None,
        event_id: str | None = None,
        deadline_s: float | None = None,
        fallback: Fallback | None = _DEFAULT,
    ) -> Ranking:
        """As `DecisionClient.rank`."""
        call = self._rank_call(shelves, slots, user, listener_id, baseline, event_id, deadline_s)
        return await self._run(call, self.fallback if fallback is _DEFAULT else fallback)

    async def reward(
        self,
        event: str | Ranking,
        value: float,
        *,
        slot: int | None = None,
        shelf_id: str | None = None,
        reward_id: str | None = None,
        deadline_s: float | None = None,
    ) -> RewardResult:
        """As `DecisionClient.reward`."""
        call = self._reward_call(event, value, slot, shelf_id, reward_id, deadline_s)
        return call if isinstance(call, RewardResult) else await self._run(call, None)

    async def _run(self, call: _Call, fallback: Fallback | None):
        while True:
            call.attempts += 1
            try:
                with anyio.fail_after(max(1e-3, call.remaining())):
                    response = await self._http.post(call.path, content=call.content, headers=_JSON_HEADERS, timeout=self._attempt_timeout(call))
            except httpx.TransportError as err:
                outcome = call.transport_failed(err)
            except TimeoutError as err:  # the deadline passed during the attempt
                outcome = call.transport_failed(httpx.TimeoutException(f"the call's deadline passed ({err or 'timeout'})"))
            else:
                outcome = call.answered(response)
            if not isinstance(outcome, _Failed):
                return outcome
            wait = call.next_wait(outcome, self.retry, self._rng)
            if wait is None:
                return call.give_up(outcome, fallback)
            await anyio.sleep(wait)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
