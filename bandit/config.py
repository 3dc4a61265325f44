"""RankerConfig: everything that defines a VW shelf ranker, and its VW command line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from bandit.errors import ValidationError
from bandit.explore import SUPPORTED_EXPLORERS, UNSUPPORTED_EXPLORERS, make_explorer

NAMESPACE_LETTERS = {"listener": "L", "shelf": "S", "slot": "P"}
CB_TYPES = ("mtr", "ips", "dr", "dm")
# fields that change how a decision is sampled or reported, not what the model learned
SAMPLING_FIELDS = ("seed", "marginal_draws", "exact_budget", "uniform_share")


@dataclass(frozen=True, slots=True)
class RankerConfig:
    """Configuration of the VW CCB shelf ranker (stored beside every model file).

    explorer: epsilon | softmax | squarecb; `uniform_share` of every slot's probability is spread
    evenly over the shelves still available, on top of the explorer (0 by default: exactly VW's
    explorer), which keeps a greedy explorer's log usable for evaluating other policies.
    interactions: namespace pairs or triples joined by
    '*', from listener, shelf, slot. The marginal probabilities are exact while the number of
    live prefixes times the number of shelves stays within `exact_budget`, otherwise
    estimated from `marginal_draws` sampled prefixes (0: not estimated, reported as NaN).
    """

    explorer: str = "epsilon"
    epsilon: float = 0.05
    softmax_lambda: float = 1.0
    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5
    uniform_share: float = 0.0
    interactions: tuple[str, ...] = ("listener*shelf", "slot*shelf")
    learning_rate: float = 0.5
    power_t: float = 0.5
    l2: float = 0.0
    cb_type: str = "mtr"
    bits: int = 18
    seed: int = 0
    marginal_draws: int = 32
    exact_budget: int = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "interactions", tuple(self.interactions))
        if self.explorer not in SUPPORTED_EXPLORERS:
            reason = UNSUPPORTED_EXPLORERS.get(self.explorer)
            rule = f"must be one of {', '.join(SUPPORTED_EXPLORERS)}"
            raise ValidationError("explorer", rule + (f"; '{self.explorer}' is unsupported: {reason}" if reason else ""), self.explorer)
        make_explorer(
            self.explorer,
            epsilon=self.epsilon,
            softmax_lambda=self.softmax_lambda,
            gamma_scale=self.gamma_scale,
            gamma_exponent=self.gamma_exponent,
        )
        for term in self.interactions:
            parts = term.split("*")
            if len(parts) not in (2, 3) or any(p not in NAMESPACE_LETTERS for p in parts):
                raise ValidationError(
                    "interactions", "each must join 2 or 3 of listener, shelf, slot with '*'", term
                )
        if not 0.0 <= self.uniform_share < 1.0:
            raise ValidationError("uniform_share", "must lie in [0, 1)", self.uniform_share)
        if self.cb_type not in CB_TYPES:
            raise ValidationError("cb_type", f"must be one of {', '.join(CB_TYPES)}", self.cb_type)
        if self.explorer == "squarecb" and self.cb_type != "mtr":
            raise ValidationError("cb_type", "squarecb only supports mtr", self.cb_type)
        if not self.learning_rate > 0:
            raise ValidationError("learning_rate", "must be > 0", self.learning_rate)
        if not self.power_t >= 0:
            raise ValidationError("power_t", "must be >= 0", self.power_t)
        if not self.l2 >= 0:
            raise ValidationError("l2", "must be >= 0", self.l2)
        if not 10 <= self.bits <= 30:
            raise ValidationError("bits", "must lie in [10, 30]", self.bits)
        if self.marginal_draws == 1 or self.marginal_draws < 0:
            raise ValidationError("marginal_draws", "must be 0 (exact marginals only) or at least 2", self.marginal_draws)
        if self.exact_budget < 1:
            raise ValidationError("exact_budget", "must be at least 1", self.exact_budget)

    def explorer_rule(self):
        return make_explorer(
            self.explorer,
            epsilon=self.epsilon,
            softmax_lambda=self.softmax_lambda,
            gamma_scale=self.gamma_scale,
            gamma_exponent=self.gamma_exponent,
        )

    def vw_args(self) -> str:
        """The VW command line this configuration trains with."""
        args = [
            "--ccb_explore_adf",
            f"--cb_type {self.cb_type}",
            f"-b {self.bits}",
            f"-l {self.learning_rate!r}",
            f"--power_t {self.power_t!r}",
        ]
        if self.l2:
            args.append(f"--l2 {self.l2!r}")
        if self.explorer == "epsilon":
            args.append(f"--epsilon {self.epsilon!r}")
        elif self.explorer == "softmax":
            args.append(f"--softmax --lambda {self.softmax_lambda!r} --epsilon {self.epsilon!r}")
        else:
            args.append(f"--squarecb --gamma_scale {self.gamma_scale!r} --gamma_exponent {self.gamma_exponent!r}")
        for term in self.interactions:
            args.append("--interactions " + "".join(NAMESPACE_LETTERS[p] for p in term.split("*")))
        return " ".join(args)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["interactions"] = list(self.interactions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RankerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError("config", f"unknown fields (known: {', '.join(sorted(known))})", unknown)
        values = dict(data)
        if "interactions" in values:
            values["interactions"] = tuple(values["interactions"])
        return cls(**values)

    def model_fields(self) -> dict:
        """The fields that define what a model learns (all but the sampling ones)."""
        return {k: v for k, v in self.to_dict().items() if k not in SAMPLING_FIELDS}

    def config_id(self) -> str:
        """A short, stable hash of the model-defining fields."""
        blob = json.dumps(self.model_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
