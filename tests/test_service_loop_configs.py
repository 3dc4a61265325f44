"""The whole loop (rank -> reward -> join -> train -> publish) on a real service, real VW and a
real Ray, for each documented ranker configuration and arm mode that changes what is logged."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bandit.config import RankerConfig
from bandit.model_file import read_meta
from service.experiments.arms import ArmsConfig, ArmsFile
from service.join.reader import JoinedLog
from service.models.store import ModelStore
from service.training.candidates import Candidate
from service.training.loop import TrainingLoop
from service.training.publishing import PublishSettings
from tests.service_support import running_service, shelves_json

N_DECISIONS = 150
DEADLINE_S = 30.0
LOOP_SETTINGS = {"reward_aggregation": "sum", "reward_window_s": 1.0, "join_grace_s": 0.2, "join_interval_s": 0.5}
# publishing when the test asks; the guardrail's verdict on a few hundred events is not the subject here
PUBLISH = PublishSettings(interval_s=3600.0, max_regression=1e6)


@dataclass(frozen=True)
class Case:
    """A served configuration: the first model's RankerConfig fields, the request's shape, the
    arms (None: the default arm), what its log's marginals are (`estimated`, `exact`, or
    `unknown` beyond the exact slots) and whether the trainer may learn from it."""

    name: str
    ranker: dict
    n_shelves: int = 8
    n_slots: int = 3
    arms: dict | None = None
    marginals: str = "estimated"
    learns: bool = True


MIXED_ARMS = {"salt": "loop", "arms": [
    {"name": "main", "share": 0.4, "policy": "active", "mode": "online"},
    {"name": "editorial", "share": 0.2, "policy": "editorial", "mode": "online"},
    {"name": "apprentice", "share": 0.2, "policy": "active", "mode": "apprentice"},
    {"name": "shadow", "share": 0.2, "policy": "active", "mode": "logging-only"},
]}
CASES = [
    Case("epsilon", {"explorer": "epsilon", "epsilon": 0.2}),
    Case("softmax", {"explorer": "softmax", "softmax_lambda": 2.0, "epsilon": 0.05}),
    Case("squarecb", {"explorer": "squarecb"}),
    Case("no-marginal-draws", {"marginal_draws": 0}, n_shelves=60, n_slots=6, marginals="unknown"),
    Case("exact-marginals", {"exact_budget": 100_000}, n_shelves=8, n_slots=4, marginals="exact"),
    Case("uniform-share", {"explorer": "squarecb", "uniform_share": 0.2}),
    Case("arm-modes", {"epsilon": 0.2}, arms=MIXED_ARMS),
    Case("logging-only", {"epsilon": 0.2}, learns=False,
         arms={"arms": [{"name": "shadow", "share": 1.0, "policy": "active", "mode": "logging-only"}]}),
]


def appeal(shelf_id: str) -> float:
    """The reward a listener gives a shelf at the top (learnable: it depends on the shelf)."""
    return 1.0 if int(shelf_id.split("-")[1]) % 3 == 0 else 0.1


def serve_and_reward(server, case: Case, rng: np.random.Generator) -> dict[str, dict[int, float]]:
    """N_DECISIONS rank requests, each followed by a reward for slot 0 (sent twice under one
    reward id) and, for every other one, a reward by shelf id for its last slot; returns per
    acknowledged event the reward sent per slot."""
    shelves = shelves_json(case.n_shelves)
    sent: dict[str, dict[int, float]] = {}
    with server.client() as client:
        for i in range(N_DECISIONS):
            body = {"user": {"segment": f"s{i % 4}"}, "shelves": shelves, "slots": case.n_slots,
                    "listener_id": f"listener-{i}", "baseline": [s["id"] for s in rng.permutation(shelves)[:2]]}
            answer = client.post("/v1/rank", json=body)
            assert answer.status_code == 200, answer.text
            decision = answer.json()
            event_id, ranking = decision["event_id"], decision["ranking"]
            top = ranking[0]["shelf_id"]
            sent[event_id] = {0: appeal(top)}
            for _ in range(2):
                got = client.post("/v1/reward", json={"event_id": event_id, "slot": 0, "value": appeal(top), "reward_id": "r0"})
                assert got.status_code == 200, got.text
            if i % 2:
                last = ranking[-1]
                got = client.post("/v1/reward", json={"event_id": event_id, "shelf_id": last["shelf_id"], "value": 0.5})
                assert got.status_code == 200 and got.json()["slot"] == last["slot"], got.text
                sent[event_id][last["slot"]] = 0.5
    return sent


def wait_joined(data_dir: Path, n_events: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while JoinedLog(data_dir).checkpoint().n_events < n_events:
        assert time.monotonic() < deadline, f"{JoinedLog(data_dir).checkpoint().n_events} of {n_events} events joined in {DEADLINE_S} s"
        time.sleep(0.1)


def joined_lines(data_dir: Path) -> list[dict]:
    return [json.loads(line) for part in JoinedLog(data_dir).parts() for line in part.jsonl.read_text().splitlines()]


def check_logged(case: Case, records: list[dict], slates) -> None:
    """What the configuration changes in the log is there, and readable."""
    marginals = slates["logging_marginal"].to_numpy()
    if case.marginals == "unknown":
        assert all(None in r["_marginals"] for r in records)  # beyond the exact slots: not estimated, null
        assert np.isnan(marginals).any() and not np.isnan(slates.loc[slates["slot"] == 0, "logging_marginal"]).any()
    else:
        assert not np.isnan(marginals).any()
    if case.marginals == "exact":
        assert all(e == 0.0 for r in records for e in r["_marginal_stderr"])
    share = case.ranker.get("uniform_share", 0.0)
    if share:  # every shelf still available keeps at least share / m at every slot
        assert all(p >= share / len(slot["_p"]) - 1e-9 for r in records for slot in r["_outcomes"] for p in slot["_p"])
    for arm in (case.arms or {"arms": []})["arms"]:  # each arm served some, logged in its mode
        rows = slates[slates["arm"] == arm["name"]]
        assert len(rows) and (rows["arm_mode"] == arm["mode"]).all(), arm["name"]
        assert (rows["learn"] == (arm["mode"] != "logging-only")).all(), arm["name"]
        if arm["policy"] == "editorial" or arm["mode"] == "apprentice":
            assert (rows["logging_prob"] == 1.0).all(), arm["name"]  # the editorial order, deterministic


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_whole_loop_joins_every_decision_once_and_trains_what_may_be_learned(local_ray, tmp_path, case):
    data_dir = tmp_path / "data"
    if case.arms is not None:
        ArmsFile(data_dir).write(ArmsConfig.from_dict(case.arms))
    rng = np.random.default_rng(7)
    with running_service(data_dir, initial_ranker=case.ranker, **LOOP_SETTINGS) as server:
        sent = serve_and_reward(server, case, rng)
        wait_joined(data_dir, len(sent))
        first = ModelStore(data_dir / "models").active().version

        records = joined_lines(data_dir)
        counts = Counter(r["EventId"] for r in records)
        assert set(counts) == set(sent) and set(counts.values()) == {1}  # every acknowledged decision, once
        slates = JoinedLog(data_dir).slate_table()
        got = {(e, k): r for e, k, r, d in slates[["event_id", "slot", "reward", "defaulted"]].itertuples(index=False) if not d}
        assert got == {(e, k): v for e, slots in sent.items() for k, v in slots.items()}  # under `sum`: the repeated reward id once
        check_logged(case, records, slates)
        learnable = int(slates.loc[slates["slot"] == 0, "learn"].sum())

        candidate = Candidate("champion", RankerConfig.from_dict(case.ranker))
        with TrainingLoop(data_dir, [candidate], publish=PUBLISH) as loop:
            report = loop.run_once(publish_now=True)
            [status] = loop.statuses
        assert status["next_part"] == len(JoinedLog(data_dir).parts())  # every part read...
        assert status["events_trained"] == learnable == read_meta(Path(status["model"]))["n_learned_events"]  # ...the learnable learned
        store = ModelStore(data_dir / "models")
        active = store.active().version
        assert read_meta(store.path_of(active))["n_learned_events"] == learnable  # what is served learned no more
        if not case.learns:
            assert learnable == 0 and report.published is None and active == first  # nothing learned, nothing published
            return
        assert learnable > 0 and report.published == active != first, report.publications
        deadline = time.monotonic() + DEADLINE_S  # the service follows the active pointer
        with server.client() as client:
            while client.get("/v1/model").json()["version"] != active:
                assert time.monotonic() < deadline, "the service did not load the published model"
                time.sleep(0.1)
