"""What the A/B report reads: a data directory's joined slate tables with the arm columns, the
report's period (`--since`), and the order of the arms."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bandit.errors import ValidationError
from service.experiments.arms import DEFAULT_ARM, ONLINE, ArmsFile
from service.join.reader import JoinedLog

ARM_DEFAULTS = {"arm": DEFAULT_ARM, "arm_mode": ONLINE, "learn": True, "listener_id": None, "agreement": None}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def read_slates(data_dir: str | Path, *, progress: Callable[[int], object] | None = None) -> pd.DataFrame:
    """The committed slate tables of a data directory, with the arm columns (parts written
    before arms existed get arm `main`, mode `online`); `progress(1)` after each part read."""
    slates = JoinedLog(data_dir).slate_table(progress=progress)
    if slates.empty:
        raise ValidationError("data_dir", "has no joined events yet (run the service's joiner or `shelfbandit join`)", str(data_dir))
    for column, default in ARM_DEFAULTS.items():
        if column not in slates:
            slates[column] = default
    slates["arm"] = slates["arm"].fillna(DEFAULT_ARM)
    slates["arm_mode"] = slates["arm_mode"].fillna(ONLINE)
    return slates


def parse_since(text: str, *, now: float | None = None) -> float:
    """`--since`: epoch seconds, an ISO-8601 time (UTC if no zone), or a duration back from now
    (`90m`, `24h`, `7d`)."""
    now = time.time() if now is None else now
    duration = _DURATION.match(text.strip())
    if duration:
        return now - float(duration.group(1)) * _SECONDS[duration.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("since", "must be epoch seconds, an ISO-8601 time or a duration like 24h", text) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def arm_order(data_dir: str | Path, seen: list[str]) -> list[str]:
    """Arms in the current configuration's order, then any others in order of first session."""
    try:
        config = ArmsFile(data_dir).read()
    except ValidationError:
        config = None
    configured = [name for name in (config.names if config else ()) if name in seen]
    return configured + [name for name in seen if name not in configured]
