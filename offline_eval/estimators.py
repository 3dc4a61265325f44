"""Off-policy estimators of a shelf ordering's value, vectorised over (n, K) arrays.

Notation: event i, slot k (0 = top), n events, K slots. r_ik reward; mu / pi the logging /
target policy (the pseudoinverse estimator, short name "pi", is PseudoInverse here);
rho_ik = pi(a_ik | x_i, a_i<k) / mu(a_ik | x_i, a_i<k) the conditional ratio;
w_i = prod_k rho_ik the whole-ordering weight; W_ik = prod_{j<=k} rho_ij the prefix weight;
v_ik = pi(a_ik at k | x_i) / mu(a_ik at k | x_i) the marginal (item-position) ratio.
q_k(x, a) the cross-fitted reward model, Q_k the cascade Q-function (see reward_model).

Each estimator returns its value as a sum of ratios of event sums (see intervals), plus the
weights it puts on each slot's reward (for the diagnostics). The value of a policy is the
expected sum over slots of the per-slot reward; every estimator also gives per-slot values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from bandit.errors import ValidationError
from offline_eval.intervals import Parts, Ratio
from offline_eval.slate import SlateLog, TargetProbs

# The pseudoinverse estimator's public short name (the CLI, JSON keys, the gate's list), as in
# Swaminathan et al. 2017; it is a contract. In this module's formulas pi is the target policy:
# the code calls the estimator PseudoInverse and its name PSEUDOINVERSE, never pi.
PSEUDOINVERSE = "pi"

# what an estimator may need, and how to say it is missing
NEEDS = {
    "complete": "every slot of every event observed",
    "conditional": "logging_prob and target_prob (P(shelf at slot | shelves above))",
    "marginal": "logging_marginal and target_marginal (P(shelf at slot)) without missing values",
    "marginal_distribution": "the target's marginal distribution over each event's candidates (score a policy on an event log)",
    "conditional_distribution": "the target's conditional distribution over each event's candidates (score a policy on an event log)",
}


@dataclass(frozen=True, slots=True)
class ModelPredictions:
    """A cross-fitted model on the log, for one target: its prediction for the logged shelf, and its
    expectation under the target's distribution at the slot; both (n, K)."""

    logged: np.ndarray
    expected: np.ndarray

    def rows(self, events: slice) -> ModelPredictions:
        return ModelPredictions(self.logged[events], self.expected[events])


@dataclass(frozen=True, slots=True)
class LoggerStructure:
    """How the logger filled the slots, as far as a log shows it (see `logging_structure`).
    Every flag is a property of each event, so the structure of a log split into parts is the
    `merged` structure of the parts."""

    known: bool  # the log carries logging_prob (without it nothing can be checked)
    independent: bool  # logging_prob equals logging_marginal at every slot
    uniform: bool  # marginals 1/m at every slot and logging_prob 1/(m - k)
    deterministic: int  # (event, slot) pairs where the logger is deterministic

    def merged(self, other: LoggerStructure) -> LoggerStructure:
        return LoggerStructure(
            self.known and other.known, self.independent and other.independent, self.uniform and other.uniform,
            self.deterministic + other.deterministic,
        )

    @property
    def kind(self) -> str:
        """'independent', 'uniform', 'other' or 'unknown'."""
        if not self.known:
            return "unknown"
        return "independent" if self.independent else "uniform" if self.uniform else "other"

    @property
    def notes(self) -> tuple[str, ...]:
        notes = []
        if self.deterministic:
            notes.append(
                f"degenerate: the logger is deterministic at {self.deterministic} (event, slot) pairs; "
                "Gamma has nothing to invert there"
            )
        notes.append({
            "unknown": "unchecked: without logging_prob the log cannot show how the logger filled the slots",
            "independent": "checked: logging_prob equals logging_marginal at every slot (slots filled independently): exact",
            "uniform": "checked: the logger is uniform over orderings (P = 1/(m - k), marginals 1/m)",
            "other": "warning: the logger's slots are dependent and not uniform over orderings; the product-form "
                     "pseudoinverse weight is then an approximation and may be biased even under a linear reward",
        }[self.kind])
        return tuple(notes)


@dataclass(frozen=True, slots=True)
class EstimatorInputs:
    """A log, a target, and (for the model-based estimators) cross-fitted predictions: `rewards`
    for q_k (expected under the target's marginals), `q_values` for the cascade Q_k (expected
    under the target's distribution given the logged shelves above)."""

    log: SlateLog
    target: TargetProbs
    rewards: ModelPredictions | None = None
    q_values: ModelPredictions | None = None
    logger: LoggerStructure | None = None  # the whole log's, when the events are a chunk of it
    # shared weights computed once for every estimator on these events (a chunk's inputs have one;
    # memoised arrays are read-only, so no estimator can change another's)
    memo: dict | None = field(default=None, compare=False, repr=False)

    def rows(self, events: slice) -> EstimatorInputs:
        """The inputs on a slice of events (views), keeping the whole log's logger structure, with a
        memo of their own for the weights the estimators share."""
        return EstimatorInputs(
            self.log.rows(events), self.target.rows(events),
            None if self.rewards is None else self.rewards.rows(events),
            None if self.q_values is None else self.q_values.rows(events),
            self.logger,
            {},
        )

    def _memoised(self, key: object, compute) -> np.ndarray:
        if self.memo is None:
            return compute()
        value = self.memo.get(key)
        if value is None:
            value = compute()
            value.flags.writeable = False
            self.memo[key] = value
        return value

    def has(self, need: str) -> bool:
        log, target = self.log, self.target
        if need == "complete":
            return log.complete
        if need == "conditional":
            return log.logging_prob is not None and target.prob is not None
        if need == "marginal":
            return log.logging_marginal is not None and target.marginal is not None
        if need == "marginal_distribution":
            return target.marginal_distribution is not None and log.candidates is not None
        if need == "conditional_distribution":
            return target.conditional_distribution is not None and log.candidates is not None
        raise ValueError(need)

    # -- shared weights (computed on demand; each is one vectorised pass) --------------------
    def ratio(self) -> np.ndarray:
        """rho_ik, (n, K)."""
        return self.target.prob / self.log.logging_prob

    def slate_weight(self) -> np.ndarray:
        """w_i = prod_k pi / prod_k mu, (n, 1) (running products over the slot columns; no (n, K) temporary)."""
        return self._memoised("slate", self._slate_weight)

    def _slate_weight(self) -> np.ndarray:
        weight = _over_slots(np.multiply, self.target.prob)
        weight /= _over_slots(np.multiply, self.log.logging_prob)
        return weight

    def prefix_weight(self) -> np.ndarray:
        """W_ik, (n, K): a running product over the slot columns (np.cumprod along slots is slower)."""
        return self._memoised("prefix", self._prefix_weight)

    def _prefix_weight(self) -> np.ndarray:
        weights = self.ratio()
        for k in range(1, weights.shape[1]):
            np.multiply(weights[:, k - 1], weights[:, k], out=weights[:, k])
        return weights

    def marginal_weight(self) -> np.ndarray:
        """v_ik, (n, K); 0 where a slot is not observed."""
        return self._memoised("marginal", self._marginal_weight)

    def _marginal_weight(self) -> np.ndarray:
        v = self.target.marginal / self.log.logging_marginal
        return v if self.log.complete else np.where(self.log.observed, v, 0.0)

    def reward(self) -> np.ndarray:
        return self.log.reward if self.log.complete else np.where(self.log.observed, self.log.reward, 0.0)

    def weighted_reward(self, weights: np.ndarray) -> np.ndarray:
        """weights * reward, (n, K): memoised for a memoised weight array (an estimator and its
        self-normalised form share it)."""
        if self.memo is None or weights.flags.writeable:
            return weights * self.reward()
        return self._memoised(("weighted", id(weights)), lambda: weights * self.reward())

    def mean(self, numerator: np.ndarray) -> Ratio:
        """(1/n_k) sum_i numerator_ik over the n_k events that observe slot k."""
        return Ratio(numerator, None if self.log.complete else self.log.observed.astype(np.float64))


def _over_slots(ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
    """(n, 1) reduction of an (n, K) array over its slot columns, column by column (a reduction
    along axis 1 of a column-major array is a slow strided loop)."""
    out = values[:, :1].copy()
    for k in range(1, values.shape[1]):
        ufunc(out, values[:, k : k + 1], out=out)
    return out


@dataclass(frozen=True, slots=True)
class Terms:
    """An estimate as parts (see intervals.Ratio), the weights on each slot's reward ((n, K), or
    (n, 1) when one weight serves every slot; None when the estimator uses no weights) and notes
    about its assumptions."""

    parts: Parts
    weights: np.ndarray | None
    notes: tuple[str, ...] = ()


class Estimator(ABC):
    """An off-policy estimator: `terms(inputs)` computes it; `needs` lists its inputs."""

    name: ClassVar[str]
    title: ClassVar[str]
    assumption: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    uses_rewards: ClassVar[bool] = False
    uses_q_values: ClassVar[bool] = False

    def check(self, inputs: EstimatorInputs) -> None:
        """Raise a ValidationError naming what is missing for this estimator."""
        missing = [NEEDS[need] for need in self.needs if not inputs.has(need)]
        if missing:
            raise ValidationError("estimators", f"'{self.name}' needs {'; '.join(missing)}")

    @abstractmethod
    def terms(self, inputs: EstimatorInputs) -> Terms:
        """The estimate's parts and weights."""


class IPS(Estimator):
    """Standard (slate) IPS: V_k = (1/n) sum_i w_i r_ik."""

    name = "ips"
    title = "inverse propensity scoring (whole-ordering weight; = standard slate IPS)"
    assumption = "none beyond common support: unbiased for any reward structure"
    needs = ("complete", "conditional")

    def terms(self, inputs: EstimatorInputs) -> Terms:
        w = inputs.slate_weight()
        return Terms((inputs.mean(inputs.weighted_reward(w)),), w)


@dataclass(frozen=True)
class ClippedIPS(Estimator):
    """Clipped IPS: V_k = (1/n) sum_i min(w_i, M) r_ik."""

    clip: float = 100.0
    name = "clipped_ips"
    title = "IPS with the whole-ordering weight clipped at M (--clip)"
    assumption = "biased toward 0 where weights exceed M; trades bias for variance"
    needs = ("complete", "conditional")

    def __post_init__(self) -> None:
        if not self.clip > 0.0:
            raise ValidationError("clip", "must be > 0", self.clip)

    def terms(self, inputs: EstimatorInputs) -> Terms:
        w = np.minimum(inputs.slate_weight(), self.clip)
        return Terms((inputs.mean(w * inputs.reward()),), w)


def self_normalised(terms: Terms) -> Terms:
    """A weighted mean (1/n) sum_i w_ik r_ik made self-normalised: sum_i w_ik r_ik / sum_i w_ik."""
    (part,) = terms.parts
    weights = np.broadcast_to(terms.weights, part.numerator.shape)
    return Terms((Ratio(part.numerator, weights),), terms.weights, terms.notes)


class SNIPS(IPS):
    """Self-normalised IPS: V_k = sum_i w_i r_ik / sum_i w_i."""

    name = "snips"
    title = "self-normalised IPS (whole-ordering weight)"
    assumption = "none beyond common support; bias O(1/n)"

    def terms(self, inputs: EstimatorInputs) -> Terms:
        return self_normalised(super().terms(inputs))


class IIPS(Estimator):
    """Independent IPS: V_k = (1/n_k) sum_i v_ik r_ik (n_k events observe slot k)."""

    name = "iips"
    title = "independent IPS (item-position marginals)"
    assumption = "slot k's reward depends only on the shelf at slot k (no interaction between slots)"
    needs = ("marginal",)

    def terms(self, inputs: EstimatorInputs) -> Terms:
        v = inputs.marginal_weight()
        return Terms((inputs.mean(inputs.weighted_reward(v)),), v)


class SNIIPS(IIPS):
    """Self-normalised independent IPS: V_k = sum_i v_ik r_ik / sum_i v_ik."""

    name = "snips_iips"
    title = "self-normalised independent IPS"
    assumption = "as iips; bias O(1/n)"

    def terms(self, inputs: EstimatorInputs) -> Terms:
        return self_normalised(super().terms(inputs))


class RIPS(Estimator):
    """Reward-interaction IPS (McInerney et al. 2020): V_k = (1/n) sum_i W_ik r_ik."""

    name = "rips"
    title = "reward-interaction IPS (prefix weights)"
    assumption = "cascade: slot k's reward depends only on the shelves at slots 0..k"
    needs = ("complete", "conditional")

    def terms(self, inputs: EstimatorInputs) -> Terms:
        big_w = inputs.prefix_weight()
        return Terms((inputs.mean(inputs.weighted_reward(big_w)),), big_w)


class SNRIPS(RIPS):
    """Self-normalised RIPS: V_k = sum_i W_ik r_ik / sum_i W_ik."""

    name = "snips_rips"
    title = "self-normalised reward-interaction IPS"
    assumption = "as rips; bias O(1/n)"

    def terms(self, inputs: EstimatorInputs) -> Terms:
        return self_normalised(super().terms(inputs))


class PseudoInverse(Estimator):
    """Pseudoinverse (Swaminathan et al. 2017): V_k = (1/n) sum_i (q_i^T Gamma_i^+ 1_{s_i}) r_ik.

    Gamma = E_mu[1_s 1_s^T] over (slot, shelf) indicators, q = the target's marginals. Closed
    forms: independent slots, weight sum_k v_k - K + 1; uniform over orderings of m shelves,
    (m - 1) sum_k q_k(s_k) + 1 - K + sum_k ((m - 1) P(s_k) - K + 1) / (m - K) with P(a) = sum_j q_j(a)
    ((m - 1) sum_k q_k(s_k) + 2 - m when K = m). Other loggers get the first form, flagged.
    """

    name = PSEUDOINVERSE
    title = "pseudoinverse estimator"
    assumption = (
        "linear reward: E[sum_k r_k | x, ordering] = sum_k phi_x(k, shelf at k) (Swaminathan et al. 2017); "
        "exact for a logger that fills slots independently or uniformly at random over orderings; "
        "per-slot values further assume slot k's reward depends only on the shelf at slot k"
    )
    needs = ("complete", "marginal")

    def terms(self, inputs: EstimatorInputs) -> Terms:
        structure = inputs.logger or logging_structure(inputs.log)
        exact_uniform = structure.kind == "uniform" and inputs.has("marginal_distribution")
        if exact_uniform:
            weight = _uniform_pseudoinverse_weight(inputs)
        else:
            weight = _over_slots(np.add, inputs.marginal_weight())
            weight -= inputs.log.n_slots - 1
        return Terms((inputs.mean(weight * inputs.reward()),), weight, self.notes(structure, exact_uniform))

    @staticmethod
    def notes(structure: LoggerStructure, exact_uniform: bool) -> tuple[str, ...]:
        """What the checks of the logger's structure found, and which weight that chose."""
        if exact_uniform:
            return (*structure.notes, "exact: closed-form pseudoinverse of a logger uniform over orderings")
        if structure.kind == "uniform":
            return (*structure.notes,
                    "warning: the exact weight for a uniform logger needs the target's marginals over every "
                    "candidate (score a policy on an event log); the product form used here is biased for it")
        return structure.notes


def _uniform_pseudoinverse_weight(inputs: EstimatorInputs) -> np.ndarray:
    """(n, 1) pseudoinverse weight for a logger uniform over orderings of m shelves (see PseudoInverse)."""
    n_slots = inputs.log.n_slots
    m = np.rint(1.0 / inputs.log.logging_marginal[:, :1])
    q = inputs.target.marginal.sum(axis=1, keepdims=True)
    anywhere = inputs.target.marginal_distribution.sum(axis=1)  # (n, N): P(shelf shown at any slot)
    shown = np.take_along_axis(anywhere, inputs.log.action_position, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = ((m - 1.0) * shown - (n_slots - 1)).sum(axis=1, keepdims=True) / (m - n_slots)
    return np.where(m > n_slots, (m - 1.0) * q + 1.0 - n_slots + spread, (m - 1.0) * q + 2.0 - m)


def _all_close(a: np.ndarray, b: np.ndarray, head: int = 4096) -> bool:
    """np.allclose (rtol 1e-6), looking at the first `head` events first: most logs fail there."""
    b = np.broadcast_to(b, a.shape)
    return all(np.allclose(a[rows], b[rows], rtol=1e-6, atol=1e-9) for rows in (slice(None, head), slice(head, None)))


def logging_structure(log: SlateLog) -> LoggerStructure:
    """How the logger filled the slots, as far as the log shows (see LoggerStructure)."""
    marginal, conditional = log.logging_marginal, log.logging_prob
    deterministic = int((marginal >= 1.0 - 1e-9).sum()) if marginal.max() >= 1.0 - 1e-9 else 0
    if conditional is None:
        return LoggerStructure(False, False, False, deterministic)
    independent = _all_close(conditional, marginal)
    m = 1.0 / marginal[:, :1]
    with np.errstate(divide="ignore"):
        uniform = _all_close(marginal, np.broadcast_to(marginal[:, :1], marginal.shape)) and _all_close(
            conditional, 1.0 / (m - np.arange(log.n_slots))
        )
    return LoggerStructure(True, independent, uniform, deterministic)


class DirectMethod(Estimator):
    """Direct method: V_k = (1/n) sum_i sum_a pi(a at k | x_i) q_k(x_i, a)."""

    name = "dm"
    title = "direct method (cross-fitted additive reward model)"
    assumption = "the reward model is right: biased as far as q_k(x, a) misses E[r_k | x, a at k]"
    needs = ("complete", "marginal_distribution")
    uses_rewards = True

    def terms(self, inputs: EstimatorInputs) -> Terms:
        return Terms((inputs.mean(inputs.rewards.expected),), None)


class DoublyRobust(Estimator):
    """Doubly robust: V_k = (1/n) sum_i [sum_a pi(a at k | x_i) q_k(x_i, a) + w_i (r_ik - q_k(x_i, a_ik))]."""

    name = "dr"
    title = "doubly robust (whole-ordering weight)"
    assumption = "none beyond common support: unbiased for any reward structure, whatever the reward model"
    needs = ("complete", "conditional", "marginal_distribution")
    uses_rewards = True

    def terms(self, inputs: EstimatorInputs) -> Terms:
        w = inputs.slate_weight()
        q = inputs.rewards
        return Terms((inputs.mean(q.expected + w * (inputs.reward() - q.logged)),), w)


class SNDR(Estimator):
    """Self-normalised DR: V_k = (1/n) sum_i DM_ik + sum_i w_i (r_ik - q_k(x_i, a_ik)) / sum_i w_i."""

    name = "sndr"
    title = "self-normalised doubly robust"
    assumption = "as dr; bias O(1/n)"
    needs = ("complete", "conditional", "marginal_distribution")
    uses_rewards = True

    def terms(self, inputs: EstimatorInputs) -> Terms:
        w = inputs.slate_weight()
        q = inputs.rewards
        correction = Ratio(w * (inputs.reward() - q.logged), np.broadcast_to(w, q.logged.shape))
        return Terms((inputs.mean(q.expected), correction), w)


@dataclass(frozen=True)
class SwitchDR(Estimator):
    """Switch-DR (Wang et al. 2017): V_k = (1/n) sum_i [DM_ik + 1(w_i <= tau) w_i (r_ik - q_k(x_i, a_ik))]."""

    threshold: float = 100.0
    name = "switch_dr"
    title = "switch doubly robust: the direct method alone where w > tau (--switch-threshold)"
    assumption = "biased as far as the reward model is wrong on events with weights above tau"
    needs = ("complete", "conditional", "marginal_distribution")
    uses_rewards = True

    def __post_init__(self) -> None:
        if not self.threshold > 0.0:
            raise ValidationError("switch_threshold", "must be > 0", self.threshold)

    def terms(self, inputs: EstimatorInputs) -> Terms:
        w = inputs.slate_weight()
        kept = np.where(w <= self.threshold, w, 0.0)
        q = inputs.rewards
        return Terms((inputs.mean(q.expected + kept * (inputs.reward() - q.logged)),), kept)


class CascadeDR(Estimator):
    """Cascade DR (Kiyohara et al. 2022):
    V_k = (1/n) sum_i [W_ik (r_ik - Q_k(x_i, a_ik)) + W_i,k-1 sum_a pi(a at k | x_i, a_i<k) Q_k(x_i, a)], W_i,-1 = 1."""

    name = "cascade_dr"
    title = "cascade doubly robust (prefix weights, cross-fitted Q-function)"
    assumption = "cascade: slot k's reward depends only on the shelves at slots 0..k (as rips), any Q-function"
    needs = ("complete", "conditional", "conditional_distribution")
    uses_q_values = True

    def terms(self, inputs: EstimatorInputs) -> Terms:
        big_w = inputs.prefix_weight()
        q = inputs.q_values
        terms = big_w * (inputs.reward() - q.logged)
        terms[:, 0] += q.expected[:, 0]
        terms[:, 1:] += big_w[:, :-1] * q.expected[:, 1:]
        return Terms((inputs.mean(terms),), big_w)


ESTIMATOR_CLASSES: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (IPS, ClippedIPS, SNIPS, DirectMethod, DoublyRobust, SNDR, SwitchDR, IIPS, SNIIPS, RIPS, SNRIPS, CascadeDR, PseudoInverse)
}
# the slate literature's name for the whole-ordering IPS
ALIASES = {"sips": "ips"}
SHORT_NAMES = (*ESTIMATOR_CLASSES, *ALIASES)
