"""shelfbandit.client against a real `shelfbandit serve` on 127.0.0.1, with faults injected for
real: a TCP proxy that drops a connection after the service answered, one that never answers,
and a stub uvicorn app for 503 / Retry-After and 5xx answers."""

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Self

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from bandit.errors import ValidationError
from service.eventlog.segments import segment_paths
from service.layout import DataPaths
from shelfbandit.client import (
    AsyncDecisionClient,
    ClientError,
    DecisionClient,
    InvalidRequest,
    LateReward,
    RepeatedEvent,
    RetryPolicy,
    ServiceUnavailable,
    UnknownEvent,
    editorial_order,
)
from tests.service_support import running_service, served_in_thread, shelves_json

WINDOW = 2.0
USER = {"country": "SE", "platform": "ios", "hour": 20}
BASELINE = ["shelf-4", "shelf-1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("client") / "data"
    with running_service(data_dir, reward_window_s=WINDOW) as server:
        yield server


def logged(data_dir, event_id: str) -> list[dict]:
    """The decision lines the service logged for `event_id`."""
    lines = (json.loads(line) for path in segment_paths(DataPaths(data_dir).decisions, "decisions")
             for line in path.read_bytes().splitlines())
    return [record for record in lines if record["EventId"] == event_id]


def shown(record: dict) -> tuple[str, ...]:
    multi = record["c"]["_multi"]
    return tuple(multi[slot["_a"][0]]["_tag"] for slot in record["_outcomes"])


# -- fault injection ----------------------------------------------------------------------------
def read_http_message(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 message (head and a Content-Length body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole message")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (a URL). Modes: `pass` forwards both ways;
    `drop_first` forwards the first connection's request, reads the service's whole answer and
    closes that connection without passing the answer on (later connections pass); `blackhole`
    accepts and never answers. `connections` counts the accepted connections."""

    def __init__(self, upstream: str, mode: str = "pass") -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.mode = (host, int(port)), mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.dropped_after_answer = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        try:
            if self.mode == "blackhole":
                while conn.recv(65536):
                    pass
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets.append(upstream)
            if self.mode == "drop_first" and n == 1:
                upstream.sendall(read_http_message(conn))
                read_http_message(upstream)  # the service has decided and logged
                self.dropped_after_answer += 1
                conn.close()
                upstream.close()
                return
            threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True).start()
            self._pipe(conn, upstream)
        except OSError:
            pass

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Stub:
    """A stand-in service on a real uvicorn: POST /v1/rank answers `answers` in turn (status,
    headers, and optionally `delay_s` before answering and `served`: a 409 with the ranking),
    then a valid ranking: the baseline, then the other candidates. `requests` counts the rank calls."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self.app.post("/v1/rank")(self.rank)
        self.answers: list[dict] = []
        self.requests = 0

    async def rank(self, body: dict):
        self.requests += 1
        baseline = body.get("baseline") or []
        order = (baseline + [s["id"] for s in body["shelves"] if s["id"] not in baseline])[: body["slots"]]
        ranking = {"event_id": body["event_id"], "model_version": "stub", "arm": "main",
                   "ranking": [{"slot": k, "shelf_id": s, "probability": 1.0} for k, s in enumerate(order)]}
        if not self.answers:
            return ranking
        answer = self.answers.pop(0)
        await asyncio.sleep(answer.get("delay_s", 0.0))
        if answer["status"] == 200:
            return ranking
        problem = {"error": "decisions: stand-in refusal", "detail": [{"field": "decisions", "rule": "stand-in refusal"}]}
        if answer.get("served"):
            problem["served"] = ranking
        return JSONResponse(problem, answer["status"], headers=answer.get("headers"))


@pytest.fixture(scope="module")
def stub():
    app = Stub()
    with served_in_thread(app.app) as url:
        yield app, url


def call(kind: str, url: str, method: str, *args, **kwargs):
    """`client.<method>(*args, **kwargs)` with a fresh sync or async client; options go to the client."""
    options = kwargs.pop("options", {})
    if kind == "sync":
        with DecisionClient(url, **options) as client:
            return getattr(client, method)(*args, **kwargs)

    async def run():
        async with AsyncDecisionClient(url, **options) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(run())


KINDS = ["sync", "async"]


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_rank_and_its_rewards(server, kind):
    ranking = call(kind, server.url, "rank", shelves_json(6), 3, user=USER, listener_id="l-1", baseline=BASELINE)
    assert not ranking.fallback and not ranking.already_served and ranking.attempts == 1
    assert ranking.arm == "main" and ranking.model_version.startswith("vw-")
    assert [item.slot for item in ranking.ranking] == [0, 1, 2]
    assert all(0.0 < item.probability <= 1.0 for item in ranking.ranking)
    (record,) = logged(server.data_dir, ranking.event_id)
    assert shown(record) == ranking.shelf_ids
    by_slot = call(kind, server.url, "reward", ranking, 1.0, slot=2)
    assert (by_slot.status, by_slot.sent, by_slot.slot) == ("accepted", True, 2)
    by_shelf = call(kind, server.url, "reward", ranking.event_id, 0.5, shelf_id=ranking.shelf_ids[1])
    assert (by_shelf.status, by_shelf.slot) == ("accepted", 1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_dropped_connection_is_retried_into_one_logged_decision(server, kind):
    event_id = f"dropped-{kind}"
    with Proxy(server.url, "drop_first") as proxy:
        ranking = call(kind, proxy.url, "rank", shelves_json(6), 3, user=USER, event_id=event_id,
                       options={"timeout_s": 5.0})
        assert proxy.dropped_after_answer == 1 and proxy.connections == 2
    assert ranking.event_id == event_id and ranking.attempts == 2
    assert ranking.already_served and not ranking.fallback
    (record,) = logged(server.data_dir, event_id)  # one decision, and the answer is the one served
    assert shown(record) == ranking.shelf_ids
    assert [o["_p"][0] for o in record["_outcomes"]] == [item.probability for item in ranking.ranking]
    assert call(kind, server.url, "reward", ranking, 1.0, slot=0).sent


def test_a_repeated_event_id_is_answered_with_the_decision_served(server):
    with DecisionClient(server.url) as client:
        first = client.rank(shelves_json(6), 3, user=USER, event_id="repeated-1")
        again = client.rank(shelves_json(6), 3, user=USER, event_id="repeated-1")
    assert again.already_served and not first.already_served
    assert (again.ranking, again.model_version, again.arm) == (first.ranking, first.model_version, first.arm)
    assert len(logged(server.data_dir, "repeated-1")) == 1
    body = {"event_id": "repeated-1", "user": USER, "shelves": shelves_json(6), "slots": 3}
    raw = httpx.post(f"{server.url}/v1/rank", json=body, timeout=10.0)  # the service's 409, as any client sees it
    assert raw.status_code == 409 and raw.json()["detail"][0]["field"] == "event_id"
    served = raw.json()["served"]
    assert served["event_id"] == "repeated-1"
    assert [(r["slot"], r["shelf_id"], r["probability"]) for r in served["ranking"]] == [
        (item.slot, item.shelf_id, item.probability) for item in first.ranking]
    assert (served["model_version"], served["arm"]) == (first.model_version, first.arm)


def test_the_async_client_gives_the_same_results_as_the_sync_one(server):
    """The same calls through both clients: the async one, asked for the events the sync one
    ranked, gets the very decisions the sync one got, and the same errors and fallbacks."""

    def described(err: ClientError) -> tuple:
        return type(err).__name__, getattr(err, "status", None), getattr(err, "field", None), getattr(err, "rule", None)

    calls = [
        ("rank", (shelves_json(8), 4), {"user": USER, "event_id": "same-1", "baseline": BASELINE}),
        ("rank", (shelves_json(8), 4), {"user": {**USER, "hour": 3}, "event_id": "same-2", "listener_id": "l-9"}),
        ("rank", (shelves_json(3), 4), {"event_id": "same-3"}),
        ("reward", ("same-1", 1.0), {"slot": 3, "reward_id": "r-1"}),
        ("reward", ("same-1", 1.0), {"shelf_id": "shelf-404", "reward_id": "r-2"}),
        ("reward", ("nobody", 1.0), {"slot": 0}),
        ("reward", ("fallback:same-4", 1.0), {"slot": 0}),
    ]
    sync = []
    with DecisionClient(server.url) as client:
        for name, args, kwargs in calls:
            try:
                sync.append(getattr(client, name)(*args, **kwargs))
            except ClientError as err:
                sync.append(described(err))

    async def run_async():
        results = []
        async with AsyncDecisionClient(server.url) as client:
            for name, args, kwargs in calls:
                try:
                    results.append(await getattr(client, name)(*args, **kwargs))
                except ClientError as err:
                    results.append(described(err))
        return results

    a_sync = asyncio.run(run_async())
    assert [r.already_served for r in a_sync[:2]] == [True, True]
    assert [r.already_served for r in sync[:2]] == [False, False]
    for mine, theirs in zip(sync[:2], a_sync[:2]):
        assert (mine.event_id, mine.ranking, mine.model_version, mine.arm) == (theirs.event_id, theirs.ranking, theirs.model_version, theirs.arm)
    assert sync[2:] == a_sync[2:]
    assert sync[2][:3] == ("InvalidRequest", 422, "slots") and sync[4][:3] == ("InvalidRequest", 422, "shelf_id")
    assert sync[5][:3] == ("UnknownEvent", 404, "event_id") and not sync[6].sent


@pytest.mark.parametrize("kind", KINDS)
def test_a_service_that_never_answers_gives_the_fallback_within_the_deadline(server, kind):
    options = {"timeout_s": 0.3, "deadline_s": 1.0, "fallback": editorial_order}
    with Proxy(server.url, "blackhole") as proxy:
        started = time.monotonic()
        ranking = call(kind, proxy.url, "rank", shelves_json(6), 3, user=USER, baseline=BASELINE, event_id=f"hole-{kind}",
                       options=options)
        elapsed = time.monotonic() - started
        assert proxy.connections >= 2  # a timed-out attempt is retried within the deadline
    assert elapsed < 1.0 + 0.5
    assert ranking.fallback and ranking.event_id == f"fallback:hole-{kind}" and "Timeout" in ranking.reason
    assert ranking.shelf_ids == ("shelf-4", "shelf-1", "shelf-0")  # the baseline, then the candidates in order
    assert all(item.probability is None for item in ranking.ranking)
    assert logged(server.data_dir, f"hole-{kind}") == []
    for event in (ranking, ranking.event_id):  # no reward is ever sent for a fallback
        result = call(kind, proxy.url, "reward", event, 1.0, slot=0)
        assert (result.sent, result.status, result.attempts) == (False, "fallback", 0)


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_fallback_an_unreachable_service_raises_within_the_deadline(server, kind):
    with Proxy(server.url, "blackhole") as proxy:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            call(kind, proxy.url, "rank", shelves_json(4), 2, options={"timeout_s": 0.2, "deadline_s": 0.6})
        assert time.monotonic() - started < 0.6 + 0.5
    assert isinstance(raised.value.cause, httpx.TimeoutException) and raised.value.attempts >= 2
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    with pytest.raises(ServiceUnavailable) as refused:
        call(kind, url, "rank", shelves_json(4), 2, options={"retry": RetryPolicy(max_attempts=3, backoff_s=0.01)})
    assert isinstance(refused.value.cause, httpx.ConnectError) and refused.value.attempts == 3


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle_request(self, request):
        self.requests += 1
        return super().handle_request(request)


@pytest.mark.parametrize(
    "method, args, kwargs, error, status, field, rule",
    [
        ("rank", (shelves_json(3), 4), {}, InvalidRequest, 422, "slots", "must not exceed the number of shelves (3)"),
        ("rank", ([{"id": "a"}, {"id": "a"}], 1), {}, InvalidRequest, 422, "shelves[1].id", "shelf ids must be unique"),
        ("rank", (shelves_json(3), 2), {"baseline": ["shelf-9"]}, InvalidRequest, 422, "baseline[0]",
         "must be one of the candidate shelf ids"),
        ("reward", ("never-served", 1.0), {"slot": 0}, UnknownEvent, 404, "event_id", "no decision 'never-served' was served"),
    ],
)
def test_a_refused_request_raises_its_field_and_rule_and_is_not_retried(server, method, args, kwargs, error, status, field, rule):
    transport = CountingTransport()
    with DecisionClient(server.url, transport=transport, fallback=editorial_order) as client, pytest.raises(error) as raised:
        getattr(client, method)(*args, **kwargs)
    assert (raised.value.status, raised.value.field) == (status, field)
    assert raised.value.rule.startswith(rule)
    assert transport.requests == 1


def test_reward_errors_name_field_and_rule(server):
    with DecisionClient(server.url) as client:
        ranking = client.rank(shelves_json(4), 2, event_id="late-1")
        with pytest.raises(InvalidRequest) as out_of_range:
            client.reward(ranking, 1.0, slot=2)
        assert (out_of_range.value.status, out_of_range.value.field) == (422, "slot")
        with pytest.raises(ValidationError, match="shelf_id/slot: give exactly one"):
            client.reward(ranking, 1.0)
        time.sleep(WINDOW + 0.2)
        with pytest.raises(LateReward) as late:
            client.reward(ranking, 1.0, slot=0)
    assert (late.value.status, late.value.field) == (409, "event_id") and "window" in late.value.rule


def test_one_connection_serves_successive_calls_and_the_pool_bounds_concurrent_ones(server):
    with Proxy(server.url) as proxy:
        with DecisionClient(proxy.url) as client:
            for i in range(10):
                client.rank(shelves_json(5), 2, event_id=f"pooled-{i}")
        assert proxy.connections == 1

    async def many(url):
        async with AsyncDecisionClient(url, max_connections=3) as client:
            await asyncio.gather(*(client.rank(shelves_json(5), 2, event_id=f"pooled-a{i}") for i in range(24)))

    with Proxy(server.url) as proxy:
        asyncio.run(many(proxy.url))
        assert 1 <= proxy.connections <= 3


def test_503_is_retried_after_its_retry_after_within_the_deadline(stub):
    app, url = stub
    app.answers = [{"status": 503, "headers": {"Retry-After": "0.4"}}]
    started = time.monotonic()
    ranking = call("sync", url, "rank", shelves_json(4), 2, options={"deadline_s": 3.0})
    assert time.monotonic() - started >= 0.4 and ranking.attempts == 2 and ranking.model_version == "stub"
    # a Retry-After beyond the deadline: no waiting in vain, the fallback at once
    app.answers, app.requests = [{"status": 503, "headers": {"Retry-After": "30"}}], 0
    started = time.monotonic()
    ranking = call("async", url, "rank", shelves_json(4), 2, baseline=["shelf-2"], options={"fallback": editorial_order})
    assert time.monotonic() - started < 1.0
    assert ranking.fallback and ranking.shelf_ids == ("shelf-2", "shelf-0") and "503" in ranking.reason
    assert app.requests == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_5xx_other_than_503_is_not_retried_and_falls_back(stub, kind):
    app, url = stub
    app.answers, app.requests = [{"status": 500}], 0
    ranking = call(kind, url, "rank", shelves_json(4), 2, options={"fallback": editorial_order})
    assert ranking.fallback and "status 500" in ranking.reason and app.requests == 1
    app.answers, app.requests = [{"status": 500}], 0
    with pytest.raises(ServiceUnavailable) as raised:
        call(kind, url, "rank", shelves_json(4), 2)
    assert raised.value.status == 500


def test_a_409_without_the_served_answer_is_a_typed_error(stub):
    app, url = stub
    app.answers, app.requests = [{"status": 409}], 0
    with pytest.raises(RepeatedEvent) as raised:
        call("sync", url, "rank", shelves_json(4), 2, event_id="reused-id", options={"fallback": editorial_order})
    assert (raised.value.status, raised.value.field) == (409, "decisions") and app.requests == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_that_finds_its_first_attempt_in_flight_waits_for_its_answer(stub, kind):
    """Attempt 1 times out while the service is still deciding; attempt 2 gets 409 without the
    answer (in flight); attempt 3 gets 409 with the answer served."""
    app, url = stub
    app.answers, app.requests = [{"status": 200, "delay_s": 0.6}, {"status": 409}, {"status": 409, "served": True}], 0
    ranking = call(kind, url, "rank", shelves_json(4), 2, baseline=["shelf-3"], options={"timeout_s": 0.3, "deadline_s": 3.0})
    assert (ranking.attempts, ranking.already_served, ranking.shelf_ids) == (3, True, ("shelf-3", "shelf-0"))
    assert app.requests == 3


def test_what_the_client_refuses_before_sending():
    with DecisionClient("http://127.0.0.1:9") as client:
        with pytest.raises(ValidationError, match="event_id: must not begin with 'fallback:'"):
            client.rank(shelves_json(3), 2, event_id="fallback:1")
        with pytest.raises(ValidationError, match="slots: must be a positive integer"):
            client.rank(shelves_json(3), 0)
    with pytest.raises(ValidationError, match="fallback: must return 2 distinct candidate shelf ids"):
        DecisionClient("http://127.0.0.1:9", retry=RetryPolicy(max_attempts=1), fallback=lambda request: ["x", "y"]).rank(
            shelves_json(3), 2)
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
