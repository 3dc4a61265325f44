"""Benchmark: POST /v1/rank (20 shelves x 8 slots, durable decision log on) against two floors.

The page is the one the serving targets are set for: 30 listener features and 8 features per
shelf (`request_fields`); the floor apps predict on the lines of the very body the load sends.

Three apps are served the same way (uvicorn, same worker count, same body):
  service     the decision service (`shelfbandit serve`, default settings: group-commit log,
              metrics, JSON access log)
  parse       a FastAPI endpoint that only parses the body with the service's pydantic schema
  vw_predict  parse + the same VW model's predict on example lines built once at start

For each worker count: the maximum throughput in a closed loop at a fixed concurrency
(median of repeats), then the latency at half of that throughput in an open loop (latency
counted from each request's scheduled send time, so queueing is included). The load comes
from a separate process (asyncio, raw HTTP/1.1 keep-alive), bounded in count and time.

The service is also driven the way the home backend drives it, through `shelfbandit.client`
(one AsyncDecisionClient, one pool, one attempt per request), in a closed loop at the same
concurrency, alternating with the raw loop; both report their load process's CPU per request.
The raw loop stays the measure of the apps: a request through httpx costs the load process
several times what the floor apps spend serving one, so through the client the figures would
be the client's.

    python bench/decision_api.py [--seconds 5] [--repeats 3] [--concurrency 16] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from service.local import free_port
from shelfbandit.client import AsyncDecisionClient, ClientError, RetryPolicy

HERE = Path(__file__).resolve().parent
APPS = ("service", "parse", "vw_predict")
MAX_REQUESTS = 200_000  # per measurement, on top of the time bound
FLOOR_BODY = "BENCH_BODY"  # the environment variable that gives the floor apps the body the load sends


def request_fields(n_shelves: int, n_slots: int) -> dict:
    """A home page of the size the serving targets are set for: 30 listener features (24 taste
    scores; country, platform, hour, day, tenure, premium) and 8 features per shelf."""
    user = {**{f"taste_{j}": round((j * 37 % 100 + 1) / 101, 4) for j in range(24)},
            "country": "SE", "platform": "ios", "hour": "h20", "day": "d3", "tenure_years": 4.0, "premium": True}
    shelves = [
        {"id": f"shelf-{i}", "features": {
            "kind": f"kind{i % 7}", "source": f"src{i % 3}", "mood": f"mood{i % 5}", "lang": f"l{i % 4}",
            "age_days": float(i % 9), "length": 10.0 + i, "popularity": round((i * 53 % 100 + 1) / 101, 4), "fresh": i % 2 == 0,
        }}
        for i in range(n_shelves)
    ]
    return {"user": user, "shelves": shelves, "slots": n_slots}


def request_body(n_shelves: int, n_slots: int) -> bytes:
    return json.dumps(request_fields(n_shelves, n_slots)).encode()


def http_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- load generator (runs in its own process) ------------------------------------------------------
async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _closed_loop(port: int, request: bytes, concurrency: int, seconds: float) -> dict:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    failures = 0

    async def client() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS:
            started = time.perf_counter()
            if await _exchange(reader, writer, request) != 200:
                failures += 1
            latencies.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "latencies": latencies, "failures": failures}


async def _open_loop(port: int, request: bytes, rate: float, seconds: float, connections: int) -> dict:
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    failures = 0

    async def one(scheduled: float) -> None:
        nonlocal failures
        reader, writer = await pool.get()
        if await _exchange(reader, writer, request) != 200:
            failures += 1
        latencies.append(time.perf_counter() - scheduled)
        pool.put_nowait((reader, writer))

    start = time.perf_counter()
    n_requests = min(int(rate * seconds), MAX_REQUESTS)
    tasks = []
    for i in range(n_requests):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "latencies": latencies, "failures": failures}


async def _client_loop(port: int, fields: dict, concurrency: int, seconds: float) -> dict:
    """The closed loop through the decision API's client (each call one attempt; it sets the event id)."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    failures = 0
    client = AsyncDecisionClient(f"http://127.0.0.1:{port}", timeout_s=10.0, retry=RetryPolicy(max_attempts=1),
                                 max_connections=concurrency)

    async def caller() -> None:
        nonlocal failures
        while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS:
            started = time.perf_counter()
            try:
                await client.rank(fields["shelves"], fields["slots"], user=fields["user"])
            except ClientError:
                failures += 1
            latencies.append(time.perf_counter() - started)

    async with client:
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "latencies": latencies, "failures": failures}


def _load_process(kind: str, port: int, request: bytes | dict, params: dict, out) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cpu_started = time.process_time()
    if kind == "closed":
        result = asyncio.run(_closed_loop(port, request, params["concurrency"], params["seconds"]))
    elif kind == "client":
        result = asyncio.run(_client_loop(port, request, params["concurrency"], params["seconds"]))
    else:
        result = asyncio.run(_open_loop(port, request, params["rate"], params["seconds"], params["connections"]))
    result["cpu_s"] = time.process_time() - cpu_started
    out.send(result)


def run_load(kind: str, port: int, request: bytes | dict, **params) -> dict:
    """One measurement from a load process of its own: `closed` and `open` send the raw `request`
    bytes, `client` sends the `request` fields through AsyncDecisionClient."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_load_process, args=(kind, port, request, params, send))
    process.start()
    result = receive.recv()
    process.join(timeout=30)
    latencies = np.array(result["latencies"])
    return {
        "rps": result["rps"],
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "failures": result["failures"],
        "n": result["n"],
        "cpu_us": result["cpu_s"] / max(result["n"], 1) * 1e6,
    }


# -- servers -------------------------------------------------------------------------------------
def start_server(app: str, port: int, workers: int, data_dir: Path, env: dict, log) -> subprocess.Popen:
    python = sys.executable
    if app == "service":
        command = [python, "-c", "from shelfbandit.cli import main; main()", "serve", "--data-dir", str(data_dir),
                   "--port", str(port), "--workers", str(workers)]
    else:
        factory = {"parse": "decision_api_apps:parse_only_app", "vw_predict": "decision_api_apps:vw_predict_app"}[app]
        # bench/ goes last on the path, so that `service` stays the package, not this file
        launcher = f"import sys; sys.path.append({str(HERE)!r}); import uvicorn; uvicorn.main()"
        command = [python, "-c", launcher, "--factory", factory, "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{app} server exited with status {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1).read()
            return process
        except OSError:
            time.sleep(0.2)
    stop_server(process)
    raise RuntimeError(f"{app} server did not start within 60 s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def measure(app: str, workers: int, args, data_dir: Path, env: dict, log) -> dict:
    port = free_port()
    request = http_request(port, request_body(args.shelves, args.slots))
    server = start_server(app, port, workers, data_dir, env, log)
    try:
        run_load("closed", port, request, concurrency=args.concurrency, seconds=1.0)  # warm-up
        closed, through_client = [], []
        for _ in range(args.repeats):  # raw and client alternate
            closed.append(run_load("closed", port, request, concurrency=args.concurrency, seconds=args.seconds))
            if app == "service":
                fields = request_fields(args.shelves, args.slots)
                through_client.append(run_load("client", port, fields, concurrency=args.concurrency, seconds=args.seconds))
        max_rps = float(np.median([c["rps"] for c in closed]))
        half = [
            run_load("open", port, request, rate=max_rps / 2, seconds=args.seconds, connections=2 * args.concurrency)
            for _ in range(args.repeats)
        ]
    finally:
        stop_server(server)
    return {
        "max_rps": max_rps,
        "p50_ms": float(np.median([c["p50_ms"] for c in closed])),
        "p99_ms": float(np.median([c["p99_ms"] for c in closed])),
        "half_rps": float(np.median([h["rps"] for h in half])),
        "half_p50_ms": float(np.median([h["p50_ms"] for h in half])),
        "half_p99_ms": float(np.median([h["p99_ms"] for h in half])),
        "failures": sum(c["failures"] for c in closed) + sum(h["failures"] for h in half),
        "load_cpu_us": float(np.median([c["cpu_us"] for c in closed])),
        **({
            "client_rps": float(np.median([c["rps"] for c in through_client])),
            "client_p50_ms": float(np.median([c["p50_ms"] for c in through_client])),
            "client_p99_ms": float(np.median([c["p99_ms"] for c in through_client])),
            "client_cpu_us": float(np.median([c["cpu_us"] for c in through_client])),
            "client_failures": sum(c["failures"] for c in through_client),
        } if through_client else {}),
    }


def served_and_learning_rankers(context, shelves, n_slots: int):
    """A ranker as the service serves one (a model as loaded: costs from its listener terms) and
    one that has learned an event since (scored by VW's one pass)."""
    from bandit.batch import EventBatch
    from bandit.types import LoggedEvent, Outcome
    from bandit.vw.ranker import VWShelfRanker

    served, learning = VWShelfRanker(), VWShelfRanker()
    decision = learning.rank(context, shelves, n_slots, event_id="learned")
    learning.learn(EventBatch.from_events([LoggedEvent(context, shelves, decision, Outcome((0.0,) * n_slots))]))
    return served, learning


def stage_costs(n_shelves: int, n_slots: int, repeats: int, calls: int = 300) -> dict[str, float]:
    """Microseconds per call of each step of a ranking request, in this process (medians of repeats)."""
    import itertools

    from bandit.vw.format import listener_line, shelf_line, slot_line
    from service.eventlog.lines import decision_line
    from service.experiments.arms import ArmsConfig
    from service.http.convert import rank_inputs, ranking_json
    from service.http.schemas import RankRequest
    from service.settings import Settings

    body = request_body(n_shelves, n_slots)
    request = RankRequest.model_validate_json(body)
    context, shelves, _baseline = rank_inputs(request, Settings())
    policy, learning = served_and_learning_rankers(context, shelves, n_slots)
    ids = itertools.count()
    decision = policy.rank(context, shelves, n_slots, event_id="warm-up")
    arms = ArmsConfig.from_dict({"arms": [{"name": "champion", "share": 0.85}, {"name": "challenger", "share": 0.1},
                                          {"name": "holdout", "share": 0.05}]})
    lines = [listener_line(context), *(shelf_line(s) for s in shelves), *(slot_line(k) for k in range(n_slots))]
    steps = {
        "parse (pydantic)": lambda: RankRequest.model_validate_json(body),
        "convert to bandit types": lambda: rank_inputs(request, Settings()),
        "scoring (listener terms)": lambda: policy.score(context, shelves, n_slots),
        "scoring by VW's one pass (a model learning in process)": lambda: learning.score(context, shelves, n_slots),
        "rank (scoring + sampling + marginals)": lambda: policy.rank(context, shelves, n_slots, event_id=str(next(ids))),
        "decision log line (DSJSON + JSON)": lambda: decision_line(context, shelves, decision, timestamp=time.time(), baseline=()),
        "A/B arm assignment (SHA-256 of the listener id)": lambda: arms.arm_index(f"listener-{next(ids)}"),
        "answer JSON": lambda: ranking_json(decision, "main"),
        "floor: VW predict on pre-built lines": lambda: policy.workspace.predict(lines),
    }
    costs = {}
    for name, step in steps.items():
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                step()
            runs.append((time.perf_counter() - started) / calls * 1e6)
        costs[name] = float(np.median(runs))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma-separated uvicorn worker counts")
    parser.add_argument("--shelves", type=int, default=20)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated subset of " + ", ".join(APPS))
    args = parser.parse_args()
    apps = [a for a in APPS if a in args.apps.split(",")]
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "SHELFBANDIT_DATA_DIR": str(data_dir), FLOOR_BODY: request_body(args.shelves, args.slots).decode()}
        env.pop("SHELFBANDIT_SETTINGS_JSON", None)
        with open(Path(tmp) / "servers.log", "wb") as log:
            for workers in [int(w) for w in args.workers.split(",")]:
                # the service first: it creates the model the vw_predict floor then loads
                results[workers] = {app: measure(app, workers, args, data_dir, env, log) for app in apps}
    print(f"in-process cost of each step of one request ({args.shelves} shelves x {args.slots} slots), median of {args.repeats}:")
    for name, micros in stage_costs(args.shelves, args.slots, args.repeats).items():
        print(f"  {name:<40} {micros:8.1f} us")
    print(f"POST /v1/rank, {args.shelves} shelves x {args.slots} slots, concurrency {args.concurrency}, "
          f"medians of {args.repeats} x {args.seconds:g} s")
    print(f"{'workers':>7} {'app':<11} {'max req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'at half':>8} {'p50 ms':>7} {'p99 ms':>7} {'fail':>5}")
    for workers, by_app in results.items():
        for app, r in by_app.items():
            print(f"{workers:>7} {app:<11} {r['max_rps']:>10.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} | "
                  f"{r['half_rps']:>8.0f} {r['half_p50_ms']:>7.2f} {r['half_p99_ms']:>7.2f} {r['failures']:>5}")
        if len(by_app) == len(APPS):
            print(f"        {workers} worker(s): service / parse = {ratio(by_app, 'parse'):.2f}, "
                  f"service / vw_predict = {ratio(by_app, 'vw_predict'):.2f} (target >= 0.70), "
                  f"service p99 at half load {by_app['service']['half_p99_ms']:.1f} ms (target <= 15)")
    print(f"service through shelfbandit.client (AsyncDecisionClient, concurrency {args.concurrency}) beside the raw "
          f"loop; the load process's CPU per request:")
    for workers, by_app in results.items():
        if "service" in by_app:
            r = by_app["service"]
            print(f"{workers:>7} worker(s): client {r['client_rps']:.0f} req/s (p50 {r['client_p50_ms']:.2f} ms, "
                  f"p99 {r['client_p99_ms']:.2f} ms, {r['client_failures']} failed), raw {r['max_rps']:.0f} req/s, "
                  f"ratio {r['client_rps'] / r['max_rps']:.2f}; CPU client {r['client_cpu_us']:.0f} us, raw {r['load_cpu_us']:.0f} us")
    if all(len(by_app) == len(APPS) for by_app in results.values()):
        print(json.dumps(summary(results, args)))


def ratio(by_app: dict, baseline: str) -> float:
    return by_app["service"]["max_rps"] / by_app[baseline]["max_rps"]


def summary(results: dict, args) -> dict:
    """The last line: the service's throughput on the fewest workers against the VW-predict floor."""
    first = results[min(results)]
    return {
        "name": "service_rank_throughput",
        "value": round(first["service"]["max_rps"], 1),
        "unit": "req/s",
        "baseline": round(first["vw_predict"]["max_rps"], 1),
        "ratio": round(ratio(first, "vw_predict"), 3),
        "shelves": args.shelves,
        "slots": args.slots,
        "concurrency": args.concurrency,
        "by_workers": {
            str(w): {
                "service_rps": round(r["service"]["max_rps"], 1),
                "parse_rps": round(r["parse"]["max_rps"], 1),
                "vw_predict_rps": round(r["vw_predict"]["max_rps"], 1),
                "ratio_to_parse": round(ratio(r, "parse"), 3),
                "ratio_to_vw_predict": round(ratio(r, "vw_predict"), 3),
                "service_p50_ms_at_half_load": round(r["service"]["half_p50_ms"], 2),
                "service_p99_ms_at_half_load": round(r["service"]["half_p99_ms"], 2),
                "service_rps_through_client": round(r["service"]["client_rps"], 1),
                "client_cpu_us_per_request": round(r["service"]["client_cpu_us"], 1),
                "raw_load_cpu_us_per_request": round(r["service"]["load_cpu_us"], 1),
                "failures": sum(a["failures"] for a in r.values()),
            }
            for w, r in results.items()
        },
    }


if __name__ == "__main__":
    main()
