"""Faults of the disk under a running service: it fills up while decisions are logged, and it
turns read-only (an ext4 error under `errors=remount-ro`). Nothing acknowledged (200) may be missing from the log, nothing may be logged
twice, and the service must say so loudly (503 with Retry-After, /readyz, /metrics, doctor)."""

from __future__ import annotations

import time

import pytest

from tests.faults_support import (
    FaultHooks,
    FullTmpfs,
    break_ext4,
    doctor,
    ext4,
    joined_events,
    logged_events,
    metric,
    repair_ext4,
    tmpfs,
)
from tests.service_support import ServiceProcess, rank_body, running_service, wait_until

FAST_JOIN = {"reward_window_s": 1.0, "join_grace_s": 0.2, "join_interval_s": 0.3, "background_max_backoff_s": 1.0}
MAX_REQUESTS = 300  # every load loop below is bounded in count and in time
LOAD_S = 20.0


def rank_until_refused(client, prefix: str, n_refused: int) -> tuple[list[str], list[str]]:
    """Rank until `n_refused` answers were 503 (bounded): (acknowledged ids, refused ids)."""
    acked, refused = [], []
    deadline = time.monotonic() + LOAD_S
    for i in range(MAX_REQUESTS):
        if len(refused) >= n_refused or time.monotonic() > deadline:
            break
        event_id = f"{prefix}-{i:04d}"
        answer = client.post("/v1/rank", json=rank_body(event_id=event_id))
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 200:
            acked.append(event_id)
        else:
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["detail"][0]["field"] == "decisions"
            refused.append(event_id)
    return acked, refused


def rank_all(client, event_ids) -> list[str]:
    for event_id in event_ids:
        answer = client.post("/v1/rank", json=rank_body(event_id=event_id))
        assert answer.status_code == 200, answer.text
    return list(event_ids)


@pytest.fixture(params=["tmpfs", "enospc-hook"])
def disk(request, tmp_path, monkeypatch):
    """A data directory whose disk fills on `fill()` and has room again after `free()`."""
    if request.param == "tmpfs":
        with tmpfs(tmp_path / "mnt", "3m") as root:
            yield FullTmpfs(root)
    else:
        yield FaultHooks(tmp_path / "data-root", tmp_path / "hook", monkeypatch)


def test_disk_fills_while_deciding_then_recovers_by_itself(disk):
    data = disk.root / "data"
    with running_service(data, **FAST_JOIN) as server, server.client() as client:
        before = rank_all(client, [f"before-{i:03d}" for i in range(10)])
        disk.fill()
        during, refused = rank_until_refused(client, "full", n_refused=5)
        assert len(refused) == 5, f"the full disk never refused a decision ({len(during)} acknowledged)"

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "No space left on device" in ready.json()["failing"]["decisions-committer"]
        assert metric(client, "shelfbandit_log_write_errors_total", log="decisions") >= 5
        assert metric(client, "shelfbandit_background_failing", task="decisions-committer") == 1
        found = doctor(data)
        assert found["exit"] == 1 and found["disk"][0][0] == "problem", found
        assert "No space left on device" in found["disk"][0][1]

        disk.free()
        # no request is needed to recover: the committer probes the disk until it takes writes
        wait_until(lambda: client.get("/readyz").status_code == 200, 15.0, "/readyz after space returned")
        assert metric(client, "shelfbandit_background_failing", task="decisions-committer") == 0
        retried = rank_all(client, refused)  # the clients' retries with the same event ids
        after = rank_all(client, [f"after-{i:03d}" for i in range(10)])
        acked = before + during + retried + after
        wait_until(lambda: set(joined_events(data)) >= set(acked), 30.0, "every acknowledged decision joined")

    logged, joined = logged_events(data), joined_events(data)
    assert all(logged[e] == 1 for e in acked), {e: logged[e] for e in acked if logged[e] != 1}
    assert set(logged) - set(acked) <= {e for e in logged if not e.startswith(("before", "full", "after"))}
    assert all(n == 1 for n in joined.values()), [e for e, n in joined.items() if n != 1]
    assert set(joined) == set(logged)
    found = doctor(data)
    assert found["exit"] == 0, found


def test_disk_turns_read_only_then_is_repaired(tmp_path):
    image, root = tmp_path / "disk.img", tmp_path / "mnt"
    with ext4(root, image):
        data = root / "data"
        server = ServiceProcess(data, FAST_JOIN).start()
        try:
            with server.client() as client:
                before = rank_all(client, [f"before-{i:03d}" for i in range(10)])
                break_ext4(root)
                during, refused = rank_until_refused(client, "ro", n_refused=5)
                assert len(refused) == 5 and not during, (during, refused)
                ready = client.get("/readyz")
                assert ready.status_code == 503
                assert "Read-only file system" in ready.json()["failing"]["decisions-committer"]
                assert metric(client, "shelfbandit_log_write_errors_total", log="decisions") >= 5
                found = doctor(data)
                assert found["exit"] == 1 and found["disk"][0][0] == "problem", found
                assert "Read-only file system" in found["disk"][0][1]
        finally:
            server.stop()
        repair_ext4(root, image)
        with running_service(data, **FAST_JOIN) as server, server.client() as client:
            retried = rank_all(client, refused)
            after = rank_all(client, [f"after-{i:03d}" for i in range(10)])
            acked = before + retried + after
            wait_until(lambda: set(joined_events(data)) >= set(acked), 30.0, "every acknowledged decision joined")
        logged, joined = logged_events(data), joined_events(data)
        assert all(logged[e] == 1 for e in acked), {e: logged[e] for e in acked if logged[e] != 1}
        assert all(n == 1 for n in joined.values()) and set(joined) == set(logged)
