"""Domain types reject bad input with a message that names the field and the rule."""

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from bandit.errors import ValidationError
from bandit.features import Features
from bandit.types import Context, Decision, LoggedEvent, Outcome, Shelf, check_shelves, check_slots


def _decision(**overrides):
    fields = dict(
        event_id="e1",
        model_version="v1",
        shelf_ids=("a", "b"),
        slot_probs=(0.5, 1.0),
        slot_marginals=(0.5, 0.25),
        marginal_stderr=(0.0, 0.01),
        slot_distributions=((("a", 0.5), ("b", 0.5)), (("b", 1.0),)),
    )
    fields.update(overrides)
    return Decision(**fields)


@pytest.mark.parametrize(
    "build, field, rule",
    [
        (lambda: Shelf("", {}), "shelf_id", "non-empty"),
        (lambda: Shelf("a", {"x": math.nan}), "shelves[a].features.x", "finite"),
        (lambda: Shelf("a", {"x": math.inf}), "shelves[a].features.x", "finite"),
        (lambda: Shelf("a", {"x": [1]}), "shelves[a].features.x", "string, a boolean or a finite number"),
        (lambda: Shelf("a", {"": 1}), "shelves[a].features", "must not be empty"),
        (lambda: Shelf("a", {3: 1}), "shelves[a].features", "must be strings"),
        (lambda: Context({f"f{i}": 1 for i in range(300)}), "context.features", "at most 256"),
        (lambda: Context({"x": "y" * 600}), "context.features.x", "at most 512"),
        (lambda: Context({"x": "y" * 513}), "context.features.x", "at most 512"),
        (lambda: Context({"x": 1e-13}), "context.features.x", "magnitude"),
        (lambda: Context({"x": -1.000001e12}), "context.features.x", "magnitude"),
        (lambda: Context({"x": -math.inf}), "context.features.x", "finite"),
        (lambda: _decision(shelf_ids=("a", "a")), "shelf_ids", "appears twice"),
        (lambda: _decision(slot_probs=(0.0, 1.0)), "slot_probs[0]", "(0, 1]"),
        (lambda: _decision(slot_probs=(1.5, 1.0)), "slot_probs[0]", "(0, 1]"),
        (lambda: _decision(slot_probs=(0.5,)), "slot_probs", "one entry per slot"),
        (lambda: _decision(slot_distributions=((("b", 0.5), ("a", 0.5)), (("b", 1.0),))), "slot_distributions[0]", "chosen shelf first"),
        (lambda: _decision(slot_distributions=((("a", 0.5), ("b", 0.4)), (("b", 1.0),))), "slot_distributions[0]", "sum to 1"),
        (lambda: _decision(slot_distributions=((("a", 0.5), ("b", 0.5)), (("b", 0.5), ("a", 0.5)))), "slot_distributions[1]", "equal slot_probs"),
        (lambda: Outcome((1.0, math.nan)), "outcome.rewards", "finite"),
        (lambda: Outcome((1.0, 0.0), (True,)), "outcome.defaulted", "one flag per slot"),
        (lambda: check_shelves([]), "shelves", "at least one"),
        (lambda: check_shelves([Shelf("a"), Shelf("a")]), "shelves", "unique"),
        (lambda: check_shelves([Shelf(f"s{i}") for i in range(201)]), "shelves", "at most 200"),
        (lambda: check_slots(3, 2), "slots", "must not exceed"),
        (lambda: check_slots(0, 2), "slots", "at least 1"),
        (lambda: check_slots(1.5, 2), "slots", "integer"),
    ],
)
def test_invalid_values_name_field_and_rule(build, field, rule):
    with pytest.raises(ValidationError) as caught:
        build()
    assert caught.value.field == field
    assert rule in str(caught.value)


def test_feature_values_at_the_bounds_are_kept_as_numbers_and_strings():
    kept = Features({"zero": 0.0, "minus_zero": -0.0, "smallest": 1e-12, "largest": -1e12, "count": 3, "flag": True,
                     "float_kind": np.float64(0.5), "text": "y" * 512})
    assert dict(kept) == {"zero": 0.0, "minus_zero": 0.0, "smallest": 1e-12, "largest": -1e12, "count": 3.0, "flag": True,
                          "float_kind": 0.5, "text": "y" * 512}
    assert [type(kept[name]) for name in ("count", "flag", "float_kind", "text")] == [float, bool, float, str]


def test_logged_event_checks_shown_shelves_and_rewards():
    shelves = (Shelf("a"), Shelf("b"))
    decision = _decision()
    with pytest.raises(ValidationError, match=r"outcome.rewards"):
        LoggedEvent(Context(), shelves, decision, Outcome((1.0,)))
    with pytest.raises(ValidationError, match="every shown shelf must be a candidate"):
        LoggedEvent(Context(), (Shelf("a"), Shelf("c")), decision, Outcome((1.0, 0.0)))
    event = LoggedEvent(Context(), shelves, decision, Outcome((1.0, 0.0)))
    assert event.event_id == "e1"
    assert event.outcome.defaulted == (False, False)


def test_features_are_immutable_hashable_and_typed():
    f = Features({"b": 1, "a": "x", "c": True})
    assert f == {"a": "x", "b": 1.0, "c": True}
    assert hash(f) == hash(Features({"c": True, "a": "x", "b": 1.0}))
    assert isinstance(f["b"], float) and f["c"] is True
    with pytest.raises(TypeError):
        f["a"] = "y"  # type: ignore[index]


def test_decision_prefix_and_slate_probability():
    d = _decision()
    assert d.n_slots == 2
    assert d.slate_prob == pytest.approx(0.5)


def test_shelves_and_features_keep_their_equality_and_hash_across_processes(tmp_path):
    """A pickled shelf (what Ray hands its workers) is rebuilt, not copied: a string's hash
    differs between processes, so a copied hash would not find the equal shelf in a dict."""
    pickled = tmp_path / "shelf.pkl"
    pickled.write_bytes(pickle.dumps([Shelf("s-1", {"kind": "mix", "age_days": 3}), Features({"country": "SE"})]))
    check = (
        "import pickle, sys; from bandit.features import Features; from bandit.types import Shelf; "
        f"shelf, features = pickle.loads(open({str(pickled)!r}, 'rb').read()); "
        "fresh = Shelf('s-1', {'kind': 'mix', 'age_days': 3.0}); "
        "sys.exit(0 if {fresh: 1}.get(shelf) == 1 and {Features({'country': 'SE'}): 1}.get(features) == 1 else 1)"
    )
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", check], env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60)
        assert done.returncode == 0
