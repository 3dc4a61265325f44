"""The champion: the candidate configuration whose snapshots are published (`training/CHAMPION`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from bandit.model_file import write_atomic
from service.training.state import training_dir

CHAMPION_FILE = "CHAMPION"


def read_champion(data_dir: str | Path, names: Sequence[str]) -> str:
    """The champion's name; the first of `names` when none was chosen yet or the chosen one is
    no longer among the candidates."""
    try:
        name = json.loads((training_dir(data_dir) / CHAMPION_FILE).read_text()).get("candidate")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    return name if name in names else names[0]


def write_champion(data_dir: str | Path, name: str, previous: str | None) -> None:
    """Make `name` the champion (replaced atomically)."""
    record = {"candidate": name, "since": time.time(), "previous": previous}
    write_atomic(training_dir(data_dir) / CHAMPION_FILE, json.dumps(record).encode())
