"""Small synthetic slate worlds whose policy values are known exactly, for the offline_eval tests.

A world has C listener segments, N shelves and K slots. Policies are Plackett-Luce over the
shelves with segment-dependent scores (all-zero scores = uniform over orderings). Every
ordering is enumerated, so true per-slot values are exact sums, not simulations.

Reward structures (click probability of slot k for ordering s in segment c, with
attraction t(c, a) = base[c] + lift[a] and examination e_k):
- independent: t(c, s_k) e_k                                  (slot k sees only its shelf)
- cascade:     t(c, s_k) e_k prod_{j<k} (1 - g t(c, s_j))       (shelves above matter)
- interaction: t(c, s_k) e_k (1 - g t(c, s_{k+1}))             (the shelf below matters)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from offline_eval.slate import SlateLog, TargetProbs


@dataclass(frozen=True)
class World:
    segment_probs: np.ndarray  # (C,)
    base: np.ndarray  # (C,)
    lift: np.ndarray  # (N,)
    examination: np.ndarray  # (K,)
    structure: str = "independent"
    strength: float = 0.8

    @property
    def n_items(self) -> int:
        return len(self.lift)

    @property
    def n_slots(self) -> int:
        return len(self.examination)

    @property
    def orderings(self) -> np.ndarray:
        """(S, K) every ordered choice of K distinct shelves."""
        return np.array(list(permutations(range(self.n_items), self.n_slots)))

    def click_probs(self) -> np.ndarray:
        """(C, S, K) expected reward of each slot for each segment and ordering."""
        s = self.orderings
        attraction = self.base[:, None, None] + self.lift[s][None]  # (C, S, K)
        click = attraction * self.examination
        if self.structure == "cascade":
            survive = np.cumprod(1.0 - self.strength * attraction, axis=2)
            click[:, :, 1:] *= survive[:, :, :-1]
        elif self.structure == "interaction":
            click[:, :, :-1] *= 1.0 - self.strength * attraction[:, :, 1:]
        return click


@dataclass(frozen=True)
class PlackettLuce:
    """P(s_k = a | s_<k, c) = exp(scores[c, a]) / sum over shelves not above of exp(scores[c, .])."""

    scores: np.ndarray  # (C, N)

    def conditionals(self, orderings: np.ndarray) -> np.ndarray:
        """(C, S, K) conditional probability of each slot's shelf."""
        weights = np.exp(self.scores)  # (C, N)
        chosen = weights[:, orderings]  # (C, S, K)
        used = np.concatenate([np.zeros_like(chosen[:, :, :1]), np.cumsum(chosen, axis=2)[:, :, :-1]], axis=2)
        return chosen / (weights.sum(axis=1)[:, None, None] - used)

    def ordering_probs(self, orderings: np.ndarray) -> np.ndarray:
        return self.conditionals(orderings).prod(axis=2)

    def marginals(self, orderings: np.ndarray, n_items: int) -> np.ndarray:
        """(C, K, N) P(shelf a at slot k | c)."""
        probs = self.ordering_probs(orderings)  # (C, S)
        n_slots = orderings.shape[1]
        out = np.zeros((len(probs), n_slots, n_items))
        for k in range(n_slots):
            out[:, k] = probs @ np.eye(n_items)[orderings[:, k]]
        return out

    def along_prefix(self, segments: np.ndarray, logged: np.ndarray) -> np.ndarray:
        """(n, K, N) P(a at slot k | c_i, logged shelves above)."""
        n, n_slots = logged.shape
        n_items = self.scores.shape[1]
        available = np.ones((n, n_slots, n_items), dtype=bool)
        for k in range(1, n_slots):
            available[np.arange(n), k:, logged[:, k - 1]] = False
        weights = np.exp(self.scores)[segments][:, None, :] * available
        return weights / weights.sum(axis=2, keepdims=True)


def true_values(world: World, policy: PlackettLuce) -> np.ndarray:
    """(K,) exact expected reward per slot: sum_c p_c sum_s P(s | c) E[r_k | c, s]."""
    probs = policy.ordering_probs(world.orderings)
    return np.einsum("c,cs,csk->k", world.segment_probs, probs, world.click_probs())


def draw_log(
    world: World, logger: PlackettLuce, target: PlackettLuce, n_events: int, rng: np.random.Generator
) -> tuple[SlateLog, TargetProbs]:
    """n_events logged by `logger`, with the target's probabilities of what was logged."""
    orderings = world.orderings
    segments = rng.choice(len(world.segment_probs), size=n_events, p=world.segment_probs)
    cdf = np.cumsum(logger.ordering_probs(orderings), axis=1)
    picks = np.minimum((cdf[segments] < rng.random(n_events)[:, None] * cdf[segments, -1:]).sum(axis=1), len(orderings) - 1)
    logged = orderings[picks]
    clicks = (rng.random((n_events, world.n_slots)) < world.click_probs()[segments, picks]).astype(np.float64)
    slots = np.arange(world.n_slots)
    logging_marginals = logger.marginals(orderings, world.n_items)
    target_marginals = target.marginals(orderings, world.n_items)
    log = SlateLog(
        event_ids=np.array([f"e{i}" for i in range(n_events)], dtype=object),
        action=logged,
        action_ids=np.array([f"shelf-{a}" for a in range(world.n_items)], dtype=object),
        reward=clicks,
        logging_prob=logger.conditionals(orderings)[segments, picks],
        logging_marginal=logging_marginals[segments[:, None], slots, logged],
        observed=np.ones(logged.shape, dtype=bool),
        context=segments[:, None],
        candidates=np.tile(np.arange(world.n_items), (n_events, 1)),
        action_position=logged,
        logging_distribution=logger.along_prefix(segments, logged),
    )
    target_probs = TargetProbs(
        prob=target.conditionals(orderings)[segments, picks],
        marginal=target_marginals[segments[:, None], slots, logged],
        conditional_distribution=target.along_prefix(segments, logged),
        marginal_distribution=target_marginals[segments],
        name="target",
    )
    return log, target_probs


def small_world(structure: str = "independent", *, n_items: int = 5, n_slots: int = 3) -> World:
    """A 2-segment world with additive attraction (so the reward model is right for 'independent')."""
    return World(
        segment_probs=np.array([0.6, 0.4]),
        base=np.array([0.05, 0.25]),
        lift=np.linspace(0.05, 0.55, n_items),
        examination=1.0 / (1.0 + np.arange(n_slots)),
        structure=structure,
    )


def policies(n_items: int = 5, *, tilt: float = 0.6) -> dict[str, PlackettLuce]:
    """A uniform logger, a mildly tilted logger and a target that prefers the high-lift shelves."""
    ramp = np.linspace(-1.0, 1.0, n_items)
    return {
        "uniform": PlackettLuce(np.zeros((2, n_items))),
        "logger": PlackettLuce(np.stack([-0.3 * ramp, 0.2 * ramp])),
        "target": PlackettLuce(np.stack([tilt * ramp, 0.5 * tilt * ramp])),
    }


def shelf_world_events(
    logger, n_events: int, rng: np.random.Generator, *, n_shelves: int = 6, n_slots: int = 3
) -> list:
    """Logged events of `logger` (a bandit Policy) in a small shelf world: segment 'a' listeners
    like shelf-0, segment 'b' listeners like shelf-5; slot k is examined with probability 1/(k+1).
    Joined through the project's DSJSON format, as the service would log them."""
    from bandit.types import Context, LoggedEvent, Outcome, Shelf
    from bandit.vw.format import event_line, parse_event

    shelves = tuple(Shelf(f"shelf-{i}", {"kind": "mix" if i % 2 else "charts"}) for i in range(n_shelves))
    appeal = {"a": np.linspace(0.6, 0.1, n_shelves), "b": np.linspace(0.1, 0.6, n_shelves)}
    examination = 1.0 / (1.0 + np.arange(n_slots))
    segments = rng.choice(["a", "b"], size=n_events)
    uniforms = rng.random((n_events, n_slots))
    events = []
    for i, segment in enumerate(segments):
        context = Context({"segment": str(segment)})
        decision = logger.rank(context, shelves, n_slots, rng, event_id=f"ev-{i}")
        shown = np.array([int(s.split("-")[1]) for s in decision.shelf_ids])
        rewards = (uniforms[i] < appeal[str(segment)][shown] * examination).astype(float)
        event = LoggedEvent(context, shelves, decision, Outcome(tuple(rewards.tolist())), timestamp=1.7e9 + i)
        events.append(parse_event(event_line(event)))
    return events
