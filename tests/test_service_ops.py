"""Operations: the alert rules and the Grafana dashboard parse as PromQL and only use metrics
and labels the service exports; `shelfbandit doctor`, `join` and `serve --help` on real data."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import promql_parser
import pytest
import yaml
from click.testing import CliRunner

from service.join.joiner import JoinConfig, Joiner
from service.layout import DataPaths
from service.models.store import ModelStore
from service.ops.metrics import (
    BACKLOG_GAUGES,
    MIN_PROB_WINDOW,
    PUBLISH_REFUSALS,
    PUBLISHING_GAUGES,
    WORKER_RESTARTS,
    ServiceMetrics,
    WindowMin,
)
from service.ops.worker_status import WorkerStatus
from shelfbandit.cli import cli
from tests.service_support import logged_decisions, reward, write_segment
from tests.test_service_model_store import trained_ranker

BIN = Path(sys.executable).parent / "shelfbandit"

OPS = Path(__file__).resolve().parents[1] / "service" / "ops"
BUILTIN = {"up": {"job", "instance"}}  # series Prometheus makes itself
# what the on-call engineer needs beyond request counts (issue: operations)
ON_CALL = (
    "shelfbandit_join_lag_seconds",
    "shelfbandit_default_reward_slots_total",
    "shelfbandit_explored_decisions_total",
    "shelfbandit_min_logged_probability",
    "shelfbandit_model_created_timestamp_seconds",
    "shelfbandit_training_publish_refusals_in_a_row",
    "shelfbandit_training_publish_current_timestamp_seconds",
    "shelfbandit_background_failing",
    "shelfbandit_background_failures_total",
    "shelfbandit_join_interval_seconds",
    "shelfbandit_training_waiting_since_timestamp_seconds",
    "shelfbandit_worker_restarts_total",
)


def exported_series() -> dict[str, set[str]]:
    """series name -> label names, from the service's own registry (prometheus_client keeps the
    names of every series a collector exports, and a metric's label names, only privately)."""
    collectors = ServiceMetrics().registry._names_to_collectors
    series = {name: set(c._labelnames) | ({"le"} if name.endswith("_bucket") else set()) for name, c in collectors.items()}
    gauges = {name: set() for name in (*PUBLISHING_GAUGES, *BACKLOG_GAUGES)}
    parent = {WORKER_RESTARTS: set()}  # the worker manager's counter, summed into the workers' /metrics
    return series | gauges | parent | {f"{PUBLISH_REFUSALS}_total": {"check"}} | BUILTIN


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in a PromQL expression."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_expr(expr: str, series: dict[str, set[str]]) -> list[str]:
    for name, labels in selectors(expr):
        assert name in series, f"{name} is not exported by the service"
        assert labels <= series[name], f"{name} has no label(s) {labels - series[name]}"
    return [name for name, _ in selectors(expr)]


def test_alert_rules_are_valid_promql_over_exported_metrics():
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    series = exported_series()
    used = set()
    names = set()
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in names
            names.add(rule["alert"])
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"page", "ticket"}
            assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]
            used.update(check_expr(rule["expr"], series))
    assert set(ON_CALL) <= used


def test_the_dashboard_is_grafana_json_over_exported_metrics():
    dashboard = json.loads((OPS / "dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    series = exported_series()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"] and {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "5m")  # Grafana's variable
            used.update(check_expr(expr, series))
    assert set(ON_CALL) <= used
    assert "shelfbandit_request_duration_seconds_bucket" in used and "shelfbandit_requests_total" in used


def test_a_broken_expression_is_caught():
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(shelfbandit_decisions_total[5m])")
    with pytest.raises(AssertionError, match="not exported"):
        check_expr("rate(shelfbandit_decisionz_total[5m])", exported_series())
    with pytest.raises(AssertionError, match="no label"):
        check_expr('rate(shelfbandit_decisions_total{arm="a"}[5m])', exported_series())


def run_cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def healthy_data_dir(root: Path) -> DataPaths:
    paths = DataPaths(root)
    ModelStore(paths.models).publish(trained_ranker(1), activate=True)
    ids, lines, _, _ = logged_decisions(6, 1_700_000_000.0, 1.0)
    write_segment(paths.decisions, "decisions", lines, 1)
    write_segment(paths.rewards, "rewards", [reward(ids[0], 0, 1.0, 1_700_000_001.0, 1_700_000_000.0)], 2)
    return paths


def test_doctor_finds_a_healthy_directory_healthy_and_names_each_problem(tmp_path):
    paths = healthy_data_dir(tmp_path)
    backlog = run_cli("doctor", "--data-dir", str(tmp_path), "--json")
    verdict = json.loads(backlog.output.splitlines()[-1])
    assert backlog.exit_code == 1 and not verdict["healthy"]
    assert [f["message"] for f in verdict["findings"] if f["status"] == "problem"] == [
        "6 decision(s) are past their reward window by more than 3 join intervals (15 s) but not joined (the oldest "
        "has waited " + re.search(r"waited (\d+) s", backlog.output).group(1)
        + " s); is a joiner running (the service's, or `shelfbandit join`), and is it failing (`/readyz`, the service's log)?"
    ]
    joined = run_cli("join", "--data-dir", str(tmp_path), "--once", "--json")
    assert json.loads(joined.output.splitlines()[-1])["events"] == 6
    healthy = run_cli("doctor", "--data-dir", str(tmp_path))
    assert healthy.exit_code == 0, healthy.output
    assert "6 decisions joined in 1 part(s)" in healthy.output

    # now break it in every way the doctor checks
    segment = next(paths.decisions.glob("*.jsonl"))
    record = json.loads(segment.read_bytes().splitlines()[0])
    record["EventId"], record["_outcomes"][0]["_p"][0] = "bad-prob", 1.5
    with open(segment, "ab") as handle:
        handle.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        handle.write(b"this is not json\n")
        handle.write(b'{"EventId":"torn","Time')
    store = ModelStore(paths.models)
    version = store.active().version
    store.path_of(version).write_bytes(b"garbage")
    broken = run_cli("doctor", "--data-dir", str(tmp_path))
    assert broken.exit_code == 1
    text = broken.output
    assert "ends in a torn line of 23 bytes" in text
    assert "1 line(s) are not readable decisions records" in text
    assert "1 decision(s) log a probability outside (0, 1]" in text and "slot 0 has probability 1.5" in text
    assert f"the active version cannot serve: version: {version} is refused" in text
    assert "Traceback" not in text


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def serve_like_pid():
    """A live process whose command line names `serve`, as a worker manager's does."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "serve"])
    yield child.pid
    child.kill()
    child.wait()


@pytest.mark.parametrize("exits_ago, stopped_ago, manager, status, words", [
    ([], None, "serve", "ok", "2 workers (manager pid"),
    ([100.0], None, "serve", "warning", "1 worker(s) exited and were started again in the last hour; the last, pid 41 with exit code -9"),
    ([5000.0, 4000.0], None, "serve", "ok", "none restarted in the last hour (2 since the start)"),
    ([900.0, 300.0, 10.0], None, "serve", "problem", "workers keep exiting: 3 restarts in the last hour"),
    ([10.0] * 25, None, "serve", "problem", "workers keep exiting: 20 or more restarts in the last hour"),
    ([], None, "gone", "warning", "ended without stopping (killed?)"),
    ([], None, "other", "warning", "ended without stopping (killed?)"),  # a live pid, but not a `serve`: reused
    ([30.0], 0.0, "gone", "warning", "in the hour before the service stopped"),
    ([4000.0], 3000.0, "gone", "warning", "1 worker(s) exited and were started again in the hour before the service stopped"),
    ([9000.0], 8000.0, "gone", None, None),  # stopped more than an hour ago: nothing to say
    ([], 0.0, "gone", None, None),
])
def test_doctor_reports_the_worker_managers_restarts(tmp_path, serve_like_pid, exits_ago, stopped_ago, manager, status, words):
    """The status file `serve --workers N` writes (run/workers.json), read by `doctor`: restarts in
    the last hour (3 or more: a crash loop, as the alert ShelfBanditWorkersRestarting says), a
    manager that ended without stopping, and the hour before a stop."""
    paths = healthy_data_dir(tmp_path)
    run_cli("join", "--data-dir", str(tmp_path), "--once")
    written = WorkerStatus(paths.run, 2)
    for ago in exits_ago:
        written.exited(41, -9)
        written.state["recent_exits"][-1]["time"] = time.time() - ago
    if stopped_ago is not None:
        written.stopped()
        written.state["stopped"] = time.time() - stopped_ago
    written.state["manager_pid"] = {"serve": serve_like_pid, "gone": _gone_pid(), "other": os.getpid()}[manager]
    written._write()
    result = run_cli("doctor", "--data-dir", str(tmp_path), "--json")
    found = [f for f in json.loads(result.output.splitlines()[-1])["findings"] if f["check"] == "workers"]
    if status is None:
        assert found == []
    else:
        assert [f["status"] for f in found] == [status] and words in found[0]["message"], found
        assert result.exit_code == (1 if status == "problem" else 0), result.output


def test_a_worker_status_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    """The manager keeps supervising its workers when run/ cannot take the file (here: a path
    through a regular file, which the OS refuses with ENOTDIR)."""
    (tmp_path / "file").write_text("")
    status = WorkerStatus(tmp_path / "file" / "run", 2)
    status.exited(41, -9)
    status.stopped()
    warnings = [r for r in caplog.records if r.getMessage() == "could not write the worker status"]
    assert len(warnings) == 3 and "Not a directory" in warnings[0].fields["error"]


def test_doctor_on_a_missing_directory_says_so(tmp_path):
    result = run_cli("doctor", "--data-dir", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "does not exist" in result.output


def test_every_service_command_has_help():
    for command in ("serve", "join", "doctor"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "--data-dir" in result.output
    assert "--json" in run_cli("doctor", "--help").output and "--json" in run_cli("join", "--help").output


def test_join_refuses_to_run_beside_another_joiner(tmp_path):
    healthy_data_dir(tmp_path)
    holder = Joiner(tmp_path, JoinConfig(600.0))
    assert holder.acquire()
    try:
        result = subprocess.run([str(BIN), "join", "--data-dir", str(tmp_path), "--once"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "another joiner is running" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        holder.release()


@pytest.mark.parametrize("settings, message", [
    ({"initial_ranker": {"explorer": "bag"}}, "error: settings.initial_ranker.explorer: must be one of"),
    ({"initial_ranker": {"epsilon": 2}}, "error: settings.initial_ranker.epsilon: must lie in [0, 1]"),
    ({"reward_window_s": -1}, "error: settings.reward_window_s"),
])
def test_serve_refuses_bad_settings_before_starting(tmp_path, settings, message):
    file = tmp_path / "settings.json"
    file.write_text(json.dumps({"data_dir": str(tmp_path / "data"), **settings}))
    result = subprocess.run([str(BIN), "serve", "--settings", str(file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_the_window_minimum_is_the_minimum_of_the_last_values(size):
    rng = np.random.default_rng(size)
    window, pushed = WindowMin(size), []
    for value in rng.choice([0.25, 0.5, 1.0, *rng.random(5)], size=3 * size + 50):  # repeats and new minima
        pushed.append(float(value))
        assert window.push(float(value)) == min(pushed[-size:])


def test_min_logged_probability_follows_the_last_decisions():
    metrics = ServiceMetrics()
    first = (("a", 0.2), ("b", 0.8))
    metrics.observe_decision((first,), (0.2,), "main", "online")
    for _ in range(MIN_PROB_WINDOW - 1):
        metrics.observe_decision(((("b", 0.9), ("a", 0.1)),), (0.9,), "main", "online")
    sample = metrics.registry.get_sample_value
    assert sample("shelfbandit_min_logged_probability") == 0.2
    metrics.observe_decision(((("b", 0.9), ("a", 0.1)),), (0.9,), "main", "online")  # the 0.2 leaves the window
    assert sample("shelfbandit_min_logged_probability") == 0.9
    assert sample("shelfbandit_explored_decisions_total") == 1  # only the first showed a shelf other than its most probable
