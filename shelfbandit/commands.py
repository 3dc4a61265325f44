"""`shelfbandit rank`: rank one request (the HTTP API's JSON body) with a saved or fresh policy (the demo, a program of its own, is shelfbandit/demo.py)."""

from __future__ import annotations

import json
import sys

import click

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.registry import load_policy
from bandit.types import Context, Shelf
from bandit.vw.ranker import VWShelfRanker


def _request(data: object) -> tuple[Context, tuple[Shelf, ...], int, tuple[str, ...], str | None]:
    if not isinstance(data, dict):
        raise ValidationError("request", "must be a JSON object", type(data).__name__)
    unknown = sorted(set(data) - {"event_id", "user", "shelves", "slots", "baseline"})
    if unknown:
        raise ValidationError("request", "unknown fields", unknown)
    shelves = data.get("shelves")
    if not isinstance(shelves, list):
        raise ValidationError("shelves", "must be a list of {id, features}", type(shelves).__name__)
    parsed = []
    for i, item in enumerate(shelves):
        if not isinstance(item, dict) or "id" not in item:
            raise ValidationError(f"shelves[{i}]", "must be an object with an 'id'", item)
        parsed.append(Shelf(item["id"], item.get("features") or {}))
    if "slots" not in data:
        raise ValidationError("slots", "is required")
    baseline = data.get("baseline") or []
    if not isinstance(baseline, list) or not all(isinstance(s, str) for s in baseline):
        raise ValidationError("baseline", "must be a list of shelf ids", baseline)
    event_id = data.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ValidationError("event_id", "must be a string", event_id)
    return Context(data.get("user") or {}), tuple(parsed), data["slots"], tuple(baseline), event_id


@click.command()
@click.option("--request", "request_file", type=click.File("r"), default="-", show_default=True,
              help="JSON request as POST /v1/rank takes it ('-' reads stdin).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Saved policy file (default: a fresh VW ranker).")
@click.option("--seed", default=0, show_default=True, help="Seed of the ranking draws (with the event id).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON answer.")
def rank(request_file, model_path: str | None, seed: int, as_json: bool) -> None:
    """Order one request's shelves and print the ranking with its probabilities."""
    try:
        data = json.load(request_file)
    except json.JSONDecodeError as err:
        raise ValidationError("request", f"not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise ValidationError("request", "is not UTF-8 text") from None
    context, shelves, slots, baseline, event_id = _request(data)
    policy = load_policy(model_path, seed=seed) if model_path else VWShelfRanker(RankerConfig(seed=seed))
    decision = policy.rank(context, shelves, slots, event_id=event_id, baseline=baseline)
    answer = {
        "event_id": decision.event_id,
        "model_version": decision.model_version,
        "ranking": [
            {"slot": k, "shelf_id": s, "probability": p, "marginal": m, "marginal_stderr": e}
            for k, (s, p, m, e) in enumerate(
                zip(decision.shelf_ids, decision.slot_probs, decision.slot_marginals, decision.marginal_stderr)
            )
        ],
    }
    if not as_json:
        for row in answer["ranking"]:
            click.echo(f"slot {row['slot']}: {row['shelf_id']}  p={row['probability']:.4f}  marginal={row['marginal']:.4f}", err=True)
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")
