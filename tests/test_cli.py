"""The command line as a user runs it: a real subprocess of the installed entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shelfbandit.cli import COMMANDS

BIN = Path(sys.executable).parent / "shelfbandit"


def run(*args, stdin: str | None = None, timeout: float = 120):
    return subprocess.run([str(BIN), *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_help_lists_every_subcommand():
    result = run("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name):
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


REQUEST = {
    "event_id": "cli-1",
    "user": {"country": "SE", "tenure": 2},
    "shelves": [{"id": f"s{i}", "features": {"kind": "mix" if i % 2 else "charts"}} for i in range(5)],
    "slots": 3,
}


def test_rank_prints_the_contract_answer_and_is_seeded():
    first = run("rank", "--json", stdin=json.dumps(REQUEST))
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout.strip().splitlines()[-1])
    assert answer["event_id"] == "cli-1"
    assert [r["slot"] for r in answer["ranking"]] == [0, 1, 2]
    assert len({r["shelf_id"] for r in answer["ranking"]}) == 3
    assert all(0 < r["probability"] <= 1 for r in answer["ranking"])
    again = run("rank", "--json", stdin=json.dumps(REQUEST))
    assert json.loads(again.stdout.strip().splitlines()[-1])["ranking"] == answer["ranking"]


@pytest.mark.parametrize(
    "request_text, message",
    [
        ("{not json", "request: not valid JSON"),
        (json.dumps({**REQUEST, "slots": 9}), "slots: must not exceed the number of candidate shelves (5)"),
        (json.dumps({**REQUEST, "shelves": []}), "shelves: at least one candidate shelf is required"),
        (json.dumps({**REQUEST, "colour": "red"}), "request: unknown fields"),
        (json.dumps({**REQUEST, "baseline": 5}), "baseline: must be a list of shelf ids"),
        (json.dumps({**REQUEST, "shelves": [{"id": "a", "features": {"x": [1]}}]}), "shelves[a].features.x"),
        (json.dumps({**REQUEST, "user": {"x": float("nan")}}).replace("NaN", "NaN"), "context.features.x: numeric values must be finite"),
    ],
)
def test_rank_bad_input_is_one_clear_line_without_traceback(request_text, message):
    result = run("rank", "--json", stdin=request_text)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_file_is_a_clear_error(tmp_path):
    result = run("rank", "--model", str(tmp_path / "none.vw"), stdin=json.dumps(REQUEST))
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_rank_refuses_a_request_that_is_not_text():
    result = subprocess.run([str(BIN), "rank", "--json"], input=b"\xff\xfe{", capture_output=True, timeout=120)
    assert result.returncode == 2
    assert b"request: is not UTF-8 text" in result.stderr and b"Traceback" not in result.stderr
