"""Policy specs: which policy to run, written `KIND[:key=value,...]` on the command line or as a
mapping in a sweep grid. Kinds: vw (RankerConfig fields as options), uniform, editorial,
popularity, oracle, model (a saved policy: `model:path=FILE`).

`shelfbandit evaluate --candidate` names policies another way (offline_eval.scoring.resolve_policy
-> PolicyScorer: a saved file, uniform, editorial, popularity, vw:CONFIG.json), and the two stay
apart on purpose: a spec here is declarative and built afresh for a simulated world and a seed
(the oracle and the editorial order need the world; options sit inline so a sweep grid can vary
them), while evaluation resolves one policy and scores it on logged events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

from bandit.baselines import EditorialPolicy, PopularityPolicy, UniformRandomPolicy
from bandit.config import RankerConfig
from bandit.errors import ValidationError
from bandit.policy import Policy
from bandit.registry import load_policy
from bandit.vw.ranker import VWShelfRanker
from simulator.oracle import OraclePolicy
from simulator.world import World

POLICY_KINDS = ("vw", "uniform", "editorial", "popularity", "oracle", "model")
RANKER_FIELDS = tuple(f.name for f in fields(RankerConfig))
_OPTIONS = {
    "vw": set(RANKER_FIELDS),
    "uniform": set(),
    "editorial": set(),
    "popularity": {"prior_mean", "prior_weight"},
    "oracle": set(),
    "model": {"path"},
}


def parse_value(text: str) -> object:
    """A command-line option value: JSON number/boolean, '+'-joined list, else the string."""
    if "+" in text:
        return tuple(part for part in text.split("+") if part)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(text: str, field: str) -> dict[str, object]:
    """`key=value,key=value` -> dict (values through parse_value)."""
    options: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(field, "options are key=value pairs separated by commas", item)
        options[key.strip()] = parse_value(value.strip())
    return options


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy to run in the simulated world: a label for tables and plots, its kind and its options
    (`build(world, seed)` makes it)."""

    label: str
    kind: str
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValidationError("policy.name", "must be a non-empty string", self.label)
        if self.kind not in POLICY_KINDS:
            raise ValidationError("policy", f"kind must be one of {', '.join(POLICY_KINDS)}", self.kind)
        unknown = sorted(set(dict(self.options)) - _OPTIONS[self.kind])
        if unknown:
            known = ", ".join(sorted(_OPTIONS[self.kind])) or "none"
            raise ValidationError("policy", f"unknown options for '{self.kind}' (known: {known})", unknown)
        if self.kind == "vw":
            self.ranker_config(0)  # validate now, not inside a worker
        if self.kind == "model" and "path" not in dict(self.options):
            raise ValidationError("policy", "'model' needs path=FILE", self.label)

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        """`KIND[:key=value,...]`, e.g. `vw:explorer=squarecb,gamma_scale=5` or `editorial`."""
        kind, _, options = text.partition(":")
        return cls(text, kind, tuple(parse_options(options, "policy").items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PolicySpec:
        """`{"policy": KIND, "name"?: label, **options}` (a sweep grid entry)."""
        values = dict(data)
        kind = values.pop("policy", None)
        label = values.pop("name", None)
        if kind is None:
            raise ValidationError("policies[].policy", "every policy entry needs its kind", data)
        options = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items())
        label = label or (kind + (":" + ",".join(f"{k}={v}" for k, v in options) if options else ""))
        return cls(str(label), str(kind), options)

    def ranker_config(self, seed: int) -> RankerConfig:
        """The VW configuration (the spec's seed wins over `seed`)."""
        options = dict(self.options)
        if isinstance(options.get("interactions"), str):
            options["interactions"] = (options["interactions"],)
        return RankerConfig.from_dict({"seed": seed, **options})

    def build(self, world: World, seed: int) -> Policy:
        """A fresh policy for `world`; `seed` seeds its own draws."""
        options = dict(self.options)
        if self.kind == "vw":
            return VWShelfRanker(self.ranker_config(seed))
        if self.kind == "uniform":
            return UniformRandomPolicy(seed=seed)
        if self.kind == "editorial":
            return EditorialPolicy(world.editorial_order, seed=seed)
        if self.kind == "popularity":
            return PopularityPolicy(seed=seed, **options)
        if self.kind == "oracle":
            return OraclePolicy(world, seed=seed)
        return load_policy(str(options["path"]))

    def config_columns(self, seed: int) -> dict[str, object]:
        """Provenance for a results table: label, kind and every RankerConfig field (None unless vw)."""
        ranker = self.ranker_config(seed).to_dict() if self.kind == "vw" else {}
        columns: dict[str, object] = {"policy": self.label, "policy_kind": self.kind}
        for name in RANKER_FIELDS:
            value = ranker.get(name)
            columns[f"ranker_{name}"] = "+".join(value) if isinstance(value, list) else value
        return columns
