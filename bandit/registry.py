"""The policy kinds a model file may hold, and `load_policy`, which loads a file of any of them.

The one place that knows every kind, so that `bandit.model_file` (the file format) imports no
policy and every policy module imports the format without a circle.
"""

from __future__ import annotations

from pathlib import Path

from bandit.baselines import EditorialPolicy, PopularityPolicy, UniformRandomPolicy
from bandit.errors import ModelFileError
from bandit.model_file import read_meta
from bandit.policy import Policy
from bandit.vw.ranker import VWShelfRanker

POLICY_KINDS: dict[str, type[Policy]] = {
    cls.kind: cls for cls in (VWShelfRanker, UniformRandomPolicy, EditorialPolicy, PopularityPolicy)
}


def load_policy(path: str | Path, **overrides) -> Policy:
    """Load a saved policy of whatever kind its metadata names; `overrides` as `Policy.load`."""
    kind = read_meta(path, check_payload=False).get("kind")
    if kind not in POLICY_KINDS:
        raise ModelFileError(f"{path}: unknown policy kind {kind!r} (known: {', '.join(sorted(POLICY_KINDS))})")
    return POLICY_KINDS[kind].load(path, **overrides)
