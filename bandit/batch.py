"""EventBatch: logged events in columnar form, one row per (event, slot)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bandit.errors import ValidationError
from bandit.types import Context, LoggedEvent, Shelf

SLATE_COLUMNS = ("event_id", "slot", "action", "reward", "logging_prob", "logging_marginal")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Logged events, columnar.

    Per event (length n_events): `event_ids`, `contexts`, `shelves`, `baselines`,
    `row_offsets` (n_events + 1; event i owns rows row_offsets[i]:row_offsets[i+1]).
    Per row (length n_rows, one per (event, slot), slot 0 first): `row_event`, `slot`,
    `action` (shelf id), `action_index` (position in the event's shelves), `reward`,
    `logging_prob`, `logging_marginal` (NaN where unknown).
    """

    event_ids: np.ndarray
    contexts: tuple[Context, ...]
    shelves: tuple[tuple[Shelf, ...], ...]
    baselines: tuple[tuple[str, ...], ...]
    row_offsets: np.ndarray
    row_event: np.ndarray
    slot: np.ndarray
    action: np.ndarray
    action_index: np.ndarray
    reward: np.ndarray
    logging_prob: np.ndarray
    logging_marginal: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.event_ids)

    @property
    def n_rows(self) -> int:
        return len(self.slot)

    def event_rows(self, i: int) -> slice:
        """The rows of event i."""
        return slice(int(self.row_offsets[i]), int(self.row_offsets[i + 1]))

    @classmethod
    def from_events(cls, events: Sequence[LoggedEvent]) -> EventBatch:
        """Columnar view of logged events (the only per-event loop is this conversion)."""
        if len(events) == 0:
            raise ValidationError("events", "a batch needs at least one event", 0)
        n_slots = np.fromiter((e.decision.n_slots for e in events), dtype=np.int64, count=len(events))
        offsets = np.zeros(len(events) + 1, dtype=np.int64)
        np.cumsum(n_slots, out=offsets[1:])
        actions: list[str] = []
        action_index: list[int] = []
        rewards: list[float] = []
        probs: list[float] = []
        marginals: list[float] = []
        for event in events:
            position = {s.shelf_id: i for i, s in enumerate(event.shelves)}
            actions.extend(event.decision.shelf_ids)
            action_index.extend(position[s] for s in event.decision.shelf_ids)
            rewards.extend(event.outcome.rewards)
            probs.extend(event.decision.slot_probs)
            marginals.extend(event.decision.slot_marginals)
        return cls(
            event_ids=np.array([e.event_id for e in events], dtype=object),
            contexts=tuple(e.context for e in events),
            shelves=tuple(e.shelves for e in events),
            baselines=tuple(e.baseline for e in events),
            row_offsets=offsets,
            row_event=np.repeat(np.arange(len(events)), n_slots),
            slot=np.concatenate([np.arange(k) for k in n_slots]),
            action=np.array(actions, dtype=object),
            action_index=np.array(action_index, dtype=np.int64),
            reward=np.array(rewards, dtype=np.float64),
            logging_prob=np.array(probs, dtype=np.float64),
            logging_marginal=np.array(marginals, dtype=np.float64),
        )

    def slate_columns(self) -> dict[str, np.ndarray]:
        """The slate table of DESIGN.md as named columns (no target columns)."""
        return {
            "event_id": self.event_ids[self.row_event],
            "slot": self.slot,
            "action": self.action,
            "reward": self.reward,
            "logging_prob": self.logging_prob,
            "logging_marginal": self.logging_marginal,
        }
