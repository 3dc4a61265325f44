"""CandidateTrainer: one candidate learning the committed joined parts in order (a Ray actor's body).

For each part, in order: read its events, score them with the model as it stands
(progressive validation: the target probabilities of the logged shelves, conditional and
marginal, as `offline_eval.scoring.score_policy` gives them), write the scores, learn the part
with VW's own file reader (`VWShelfRanker.learn_file`), and commit the checkpoint
(`service.training.state`). Work comes in whole parts, never one event per call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from bandit.batch import EventBatch
from bandit.errors import ShelfBanditError
from bandit.policy import Policy
from bandit.types import LoggedEvent
from offline_eval.readers import read_dsjson
from offline_eval.scoring import score_policy
from service.joiner import JoinedLog, JoinedPart
from service.training.candidates import Candidate
from service.training.state import StepRecord, TrainerState, candidate_dir, model_name

PHASES = ("read", "score", "learn", "commit")


def progressive_table(policy: Policy, events: Sequence[LoggedEvent]) -> pd.DataFrame:
    """One row per logged (event, slot), in log order: `target_prob` = P(logged shelf at slot k |
    logged shelves above) and `target_marginal` = P(logged shelf at slot k) under `policy`.
    Events are scored in groups of equal slot count (one `score_policy` pass per group)."""
    n_slots = np.fromiter((e.decision.n_slots for e in events), dtype=np.int64, count=len(events))
    frames = []
    for k in np.unique(n_slots):
        chosen = np.flatnonzero(n_slots == k)
        group = events if len(chosen) == len(events) else [events[i] for i in chosen]
        batch = EventBatch.from_events(group)
        target = score_policy(policy, batch)
        frames.append(pd.DataFrame({
            "event_id": np.repeat(batch.event_ids, k).astype(str),
            "slot": np.tile(np.arange(k, dtype=np.int32), len(chosen)),
            "target_prob": target.prob.ravel(),
            "target_marginal": target.marginal.ravel(),
            "position": np.repeat(chosen, k),
        }))
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return table.sort_values(["position", "slot"], kind="stable").drop(columns="position").reset_index(drop=True)


def events_digest(event_ids: Sequence[str]) -> str:
    """SHA-256 of the event ids, one per line, in training order."""
    return hashlib.sha256("".join(f"{e}\n" for e in event_ids).encode()).hexdigest()


def learnable_lines(path: Path) -> list[tuple[int, bytes]] | None:
    """(position, line) of the events of a joined part a trainer may learn, or None when all of
    them may (the usual case): lines of logging-only arms carry `"_learn": false`."""
    lines = Path(path).read_bytes().splitlines(keepends=True)
    marked = [b"_learn" in line and json.loads(line).get("_learn", True) is False for line in lines]
    if not any(marked):
        return None
    return [(i, line) for i, (line, skip) in enumerate(zip(lines, marked)) if not skip]

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
        n_parts = n_events = 0
        for part in self.log.parts(self.next_part):
            if (max_parts is not None and n_parts >= max_parts) or (max_events is not None and n_events >= max_events):
                break
            with self._named_errors():
                step = self.train_part(part, seconds)
            n_parts += 1
            n_events += step.n_events
        return {
            "steps": [s.to_dict() for s in self.state.steps_after(recorded_through)],
            "status": self.status(),
            "n_events": n_events,
            "seconds": seconds,
        }

    def train_part(self, part: JoinedPart, seconds: dict[str, float]) -> StepRecord:
        """Score, learn and commit one part (it must be the next one)."""
        if part.number != self.next_part:
            raise ShelfBanditError(f"candidate {self.candidate.name}: part {part.number} is not the next part ({self.next_part})")
        clock = time.perf_counter
        started = clock()
        events = read_dsjson(part.jsonl)
        read = clock()
        scores = self.state.write_scores(part.number, progressive_table(self.policy, events))
        scored = clock()
        scored_by = self.policy.model_version
        learnable = learnable_lines(part.jsonl)
        if learnable is None:  # every event may be learned: VW reads the part itself
            n_events = self.policy.learn_file(part.jsonl)
            event_ids = [e.decision.event_id for e in events]
        else:  # logging-only events (`_learn: false`) are scored above but never learned
            kept = self.state.directory / f".learn-part-{part.number:08d}.jsonl"
            kept.write_bytes(b"".join(line for _, line in learnable))
            try:
                n_events = self.policy.learn_file(kept)
            finally:
                kept.unlink()
            event_ids = [events[i].decision.event_id for i, _ in learnable]
        learned = clock()
        if n_events != len(event_ids):
            raise ShelfBanditError(f"{part.jsonl}: VW learned {n_events} events, {len(event_ids)} are learnable")
        step = (self.checkpoint.step if self.checkpoint else 0) + 1
        timing = {"read": read - started, "score": scored - read, "learn": learned - scored}
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
        seconds["commit"] += clock() - learned
        return self.checkpoint
