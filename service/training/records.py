"""`training/records.jsonl`: what was trained, judged, promoted and refused, one JSON object a line.

Every record has `record` (its kind), `time` (seconds since the epoch) and `candidate`.
Kinds (fields in docs/training.md): `trained` (a committed step: parts, events, first and
last event id, digest, model version); `published` (a champion snapshot published and
activated, with the guardrail's figures) and `publish_refused` (a snapshot that failed a
check, which one and why); `gate` (a challenger judged against the champion, with the
estimates of both and of their difference), `promoted` (the challenger became the champion)
and `refused` (a gate decision that did not, with the reason). Only the training loop writes
the file; a line torn by a crash is cut off when the loop starts again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from bandit.durable import append_durably, cut_at, torn_tail
from offline_eval.intervals import finite_or_none
from service.layout import DataPaths

TRAINED, GATE, PROMOTED, REFUSED = "trained", "gate", "promoted", "refused"
PUBLISHED, PUBLISH_REFUSED = "published", "publish_refused"


def records_path(data_dir: str | Path) -> Path:
    return DataPaths(Path(data_dir)).training_records


def read_records(data_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The complete records, oldest first (only those of `kind` if given)."""
    path = records_path(data_dir)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines if line.endswith(b"\n")]
    return [r for r in records if kind is None or r["record"] == kind]


class TrainingRecords:
    """Appends records durably (one write and one fsync per batch)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = records_path(data_dir)

    def repair(self) -> None:
        """Cut off a torn last line (a crash during an append)."""
        if not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            end, tail = torn_tail(fd)
            if tail:
                cut_at(fd, end)
        finally:
            os.close(fd)

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(json.dumps(finite_or_none(r), sort_keys=False).encode() + b"\n" for r in records)
        append_durably(self.path, data)
