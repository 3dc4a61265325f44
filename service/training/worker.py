"""CandidateTrainer: one candidate learning the committed joined parts in order (a Ray actor's body).

For each part, in order: read it (the joined lines as text, the slate table's event ids, slots
and shown shelves as columns), then one VW pass over its lines in which every event is scored
with the model as it stands and then learned (`VWShelfRanker.learn_scored_lines`: progressive
validation event by event; events of logging-only arms, `"_learn": false`, are scored but
never learned), turn the costs into the target probabilities of the logged shelves
(`offline_eval.scoring.logged_scores`), write them, and commit the checkpoint
(`service.training.state`). Work comes in whole parts, never one event per call.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bandit.errors import ShelfBanditError
from bandit.vw.ranker import VWShelfRanker
from offline_eval.readers import read_dsjson
from offline_eval.scoring import logged_scores
from service.join.parts import JoinedPart
from service.join.reader import JoinedLog, slate_columns
from service.training.candidates import Candidate
from service.training.state import StepRecord, TrainerState, candidate_dir, model_name

PHASES = ("read", "score", "learn", "commit")
_NOT_LEARNED = re.compile(r'"_learn"\s*:\s*false')


@dataclass(frozen=True, slots=True)
class PartEvents:
    """A joined part read for training: its lines, and per event (E,) its id, slot count and
    whether it may be learned; per logged (event, slot) row, in log order, the shown shelf."""

    lines: list[str]
    event_ids: np.ndarray
    n_slots: np.ndarray
    learn: np.ndarray
    actions: np.ndarray

    @classmethod
    def read(cls, part: JoinedPart) -> PartEvents:
        """The part's joined lines and slate table (written together by the joiner, in one order).
        Logging-only events carry `"_learn": false` in their line (top-level: VW feature names
        never start with an underscore)."""
        text = part.jsonl.read_text(encoding="utf-8")
        lines = text.split("\n")
        if lines and not lines[-1]:
            lines.pop()
        ends = np.cumsum([len(line) + 1 for line in lines]) if lines else np.zeros(0, dtype=np.int64)
        learn = np.ones(len(lines), dtype=bool)
        learn[np.searchsorted(ends, [m.start() for m in _NOT_LEARNED.finditer(text)], side="right")] = False
        table = slate_columns(part, ["event_id", "slot", "action"])
        slot = table.column("slot").to_numpy()
        starts = np.flatnonzero(slot == 0)
        event_ids = table.column("event_id").to_numpy(zero_copy_only=False)[starts].astype(str)
        n_slots = np.diff(np.append(starts, len(slot)))
        if len(event_ids) != len(lines) or (starts[:1] != 0).any() or (slot != _positions(n_slots)).any():
            read_dsjson(part.jsonl)  # names a broken line, if that is why
            raise ShelfBanditError(f"{part.slates}: its {len(event_ids)} events do not match the {len(lines)} lines of {part.jsonl}")
        actions = table.column("action").to_numpy(zero_copy_only=False).astype(str)
        return cls(lines, event_ids, n_slots, learn, actions)


def _positions(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count, concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def progressive_table(
    policy: VWShelfRanker, events: PartEvents, costs: Sequence[np.ndarray], slot0_pdfs: Sequence[np.ndarray | None],
    shelf_ids: Sequence[tuple[str, ...]],
) -> pd.DataFrame:
    """One row per logged (event, slot), in log order: `target_prob` = P(logged shelf at slot k |
    logged shelves above) and `target_marginal` = P(logged shelf at slot k) under the policy as it
    stood before the event (its costs from VW's pass). Events of equal shape are scored at once."""
    n_shelves = np.fromiter(map(len, shelf_ids), dtype=np.int64, count=len(shelf_ids))
    row_start = np.cumsum(events.n_slots) - events.n_slots
    prob = np.empty(len(events.actions))
    marginal = np.empty(len(events.actions))
    shapes = np.stack([events.n_slots, n_shelves], axis=1)
    for k, n in np.unique(shapes, axis=0).tolist():
        chosen = np.flatnonzero((shapes[:, 0] == k) & (shapes[:, 1] == n))
        rows = (row_start[chosen][:, None] + np.arange(k)).ravel()
        ids = np.array([shelf_ids[i] for i in chosen], dtype=str).reshape(len(chosen), n)
        shown = events.actions[rows].reshape(len(chosen), k)
        match = ids[:, None, :] == shown[:, :, None]
        if not match.any(axis=2).all():
            raise ShelfBanditError("a shown shelf of the slate table is not among its event's shelves")
        pdfs = None if slot0_pdfs[chosen[0]] is None else np.stack([slot0_pdfs[i] for i in chosen])
        model = policy.slot_models(np.stack([costs[i] for i in chosen], axis=1), pdfs)
        target, target_marginal = logged_scores(
            model, match.argmax(axis=2), events.event_ids[chosen],
            seed=policy.seed, draws=policy.marginal_draws, exact_budget=policy.exact_budget,
        )
        prob[rows], marginal[rows] = target.ravel(), target_marginal.ravel()
    return pd.DataFrame({
        "event_id": np.repeat(events.event_ids, events.n_slots),
        "slot": _positions(events.n_slots).astype(np.int32),
        "target_prob": prob,
        "target_marginal": marginal,
    })


def events_digest(event_ids: Sequence[str]) -> str:
    """SHA-256 of the event ids, one per line, in training order."""
    return hashlib.sha256("".join(f"{e}\n" for e in event_ids).encode()).hexdigest()


class CandidateTrainer:
    """Trains one candidate on the committed parts of a data directory's joined log, resuming
    from its checkpoint. `train` is the unit of work a driver asks for."""

    def __init__(self, data_dir: str | Path, candidate: Candidate) -> None:
        self.candidate = candidate
        self.log = JoinedLog(data_dir)
        self.state = TrainerState(candidate_dir(data_dir, candidate.name), candidate)
        with self._named_errors():
            self.checkpoint = self.state.recover()
            self.policy = self.state.load_policy(self.checkpoint)

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """Project errors as a plain ShelfBanditError naming the candidate (Ray must pickle them
        back to the driver, and ValidationError's arguments do not survive that)."""
        try:
            yield
        except ShelfBanditError as err:
            raise ShelfBanditError(f"candidate {self.candidate.name}: {err}") from None

    @property
    def next_part(self) -> int:
        return self.checkpoint.next_part if self.checkpoint else 0

    @property
    def events_trained(self) -> int:
        return self.checkpoint.events_trained if self.checkpoint else 0

    def status(self) -> dict:
        """Where the candidate stands: committed step, next part, events trained, model version
        and file, and the process that trains it."""
        checkpoint = self.checkpoint
        return {
            "candidate": self.candidate.name,
            "step": checkpoint.step if checkpoint else 0,
            "next_part": self.next_part,
            "events_trained": self.events_trained,
            "model_version": checkpoint.model_version if checkpoint else None,
            "model": str(self.state.directory / checkpoint.model) if checkpoint else None,
            "pid": os.getpid(),
        }

    def train(self, *, recorded_through: int = 0, max_parts: int | None = None, max_events: int | None = None) -> dict:
        """Train the committed parts from the checkpoint on, in order, until `max_parts` parts or
        at least `max_events` events are done (whole parts: at least one when one is waiting).
        Returns `steps`: the committed step records numbered above `recorded_through` (so a
        driver that missed some after a crash gets them again), `status`, and the call's
        `n_events` and `seconds` per phase."""
        seconds = dict.fromkeys(PHASES, 0.0)
        n_events = 0
        for n_parts, part in enumerate(self.log.parts(self.next_part)):
            if (max_parts is not None and n_parts >= max_parts) or (max_events is not None and n_events >= max_events):
                break
            with self._named_errors():
                step = self.train_part(part, seconds)
            n_events += step.n_events
        return {
            "steps": [s.to_dict() for s in self.state.steps_after(recorded_through)],
            "status": self.status(),
            "n_events": n_events,
            "seconds": seconds,
        }

    def train_part(self, part: JoinedPart, seconds: dict[str, float]) -> StepRecord:
        """Score and learn one part event by event, write its scores and commit (it must be the next part)."""
        if part.number != self.next_part:
            raise ShelfBanditError(f"candidate {self.candidate.name}: part {part.number} is not the next part ({self.next_part})")
        clock = time.perf_counter
        started = clock()
        events = PartEvents.read(part)
        read = clock()
        scored_by = self.policy.model_version
        try:
            costs, pdfs, shelf_ids = self.policy.learn_scored_lines(events.lines, events.n_slots.tolist(), events.learn.tolist())
            learned = clock()
            scores = self.state.write_scores(part.number, progressive_table(self.policy, events, costs, pdfs, shelf_ids))
        except BaseException:
            self.policy = self.state.load_policy(self.checkpoint)  # it may have learned part of the part
            raise
        scored = clock()
        event_ids = events.event_ids[events.learn].tolist()
        n_events = len(event_ids)
        step = (self.checkpoint.step if self.checkpoint else 0) + 1
        timing = {"read": read - started, "learn": learned - read, "score": scored - learned}
        record = StepRecord(
            step=step,
            candidate=self.candidate.name,
            config_id=self.candidate.config.config_id(),
            parts=(part.number,),
            n_events=n_events,
            first_event_id=event_ids[0] if event_ids else None,
            last_event_id=event_ids[-1] if event_ids else None,
            events_sha256=events_digest(event_ids),
            events_trained=self.events_trained + n_events,
            next_part=part.number + 1,
            model_version="",
            scored_by=scored_by,
            model=model_name(step),
            scores=scores,
            seconds={name: round(value, 6) for name, value in timing.items()},
            time=time.time(),
        )
        self.checkpoint = self.state.commit(self.policy, record)
        for name, value in timing.items():
            seconds[name] += value
        seconds["commit"] += clock() - scored
        return self.checkpoint
