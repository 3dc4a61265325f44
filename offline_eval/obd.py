"""The Open Bandit Dataset sample (Saito et al. 2021) that ships inside the obp 0.4.1 wheel.

The wheel is fetched once with `pip download --no-deps obp==0.4.1` into a cache directory
($SHELF_BANDIT_CACHE, else $XDG_CACHE_HOME/shelf-bandit, else ~/.cache/shelf-bandit, then
`obp/`), checked against its SHA-256, and the CSVs are read from inside it.

Each CSV row is one fashion item shown at one of 3 positions of a ZOZOTOWN impression, with
its click and `propensity_score`: the logging policy's probability of that item at that
position (a position-wise marginal; the dataset has no conditional probabilities). Rows that
share a timestamp are one impression, so one logged decision; slot = position - 1. The
sample keeps 10,000 rows drawn from the full logs, so most impressions keep only one of
their 3 positions: the others are marked unobserved, and per-slot values average over the
impressions that observed the slot.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bandit.errors import ShelfBanditError, ValidationError
from offline_eval.slate import SlateLog, TargetProbs

OBP_REQUIREMENT = "obp==0.4.1"
WHEEL_NAME = "obp-0.4.1-py3-none-any.whl"
WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
CAMPAIGNS = ("all", "men", "women")
BEHAVIOR_POLICIES = ("random", "bts")
N_POSITIONS = 3
USER_FEATURES = ("user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3")
CACHE_ENV = "SHELF_BANDIT_CACHE"
DOWNLOAD_TIMEOUT_S = 300


class DatasetError(ShelfBanditError):
    """The dataset could not be fetched or read."""


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shelf-bandit"
    return Path(root) / "obp"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(cache_dir: str | Path | None = None) -> Path:
    """The obp 0.4.1 wheel in the cache, downloaded with pip on first use."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = cache / WHEEL_NAME
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--no-input", "--quiet", OBP_REQUIREMENT, "-d", tmp]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.CalledProcessError as err:
            last = (err.stderr or err.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise DatasetError(f"could not download {OBP_REQUIREMENT} with pip: {last[0]}") from None
        except subprocess.TimeoutExpired:
            raise DatasetError(f"downloading {OBP_REQUIREMENT} took longer than {DOWNLOAD_TIMEOUT_S} s") from None
        downloaded = Path(tmp) / WHEEL_NAME
        if not downloaded.exists() or _sha256(downloaded) != WHEEL_SHA256:
            raise DatasetError(f"pip did not produce the expected {WHEEL_NAME} (missing or different SHA-256)")
        os.replace(downloaded, wheel)
    return wheel


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValidationError(field, f"must be one of {', '.join(choices)}", value)


def read_csv(campaign: str, behavior_policy: str, name: str, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """One CSV of the sample (`name` = the campaign's log, or 'item_context') from inside the wheel."""
    _check_choice("campaign", campaign, CAMPAIGNS)
    _check_choice("behavior_policy", behavior_policy, BEHAVIOR_POLICIES)
    member = f"obp/dataset/obd/{behavior_policy}/{campaign}/{name}.csv"
    try:
        with zipfile.ZipFile(fetch_wheel(cache_dir)) as wheel:
            return pd.read_csv(io.BytesIO(wheel.read(member)))
    except (KeyError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{WHEEL_NAME}: cannot read {member} ({err})") from None


@dataclass(frozen=True, slots=True)
class OpenBanditLog:
    """One campaign's sample logged by one behaviour policy, as a slate log (K = 3 positions)."""

    log: SlateLog
    n_items: int
    campaign: str
    behavior_policy: str


def load_open_bandit(campaign: str = "all", behavior_policy: str = "bts", *, cache_dir: str | Path | None = None) -> OpenBanditLog:
    """The sample as logged decisions: impressions (rows sharing a timestamp) x 3 positions."""
    frame = read_csv(campaign, behavior_policy, campaign, cache_dir)
    n_items = len(read_csv(campaign, behavior_policy, "item_context", cache_dir))
    event, timestamps = pd.factorize(frame["timestamp"])
    slot = frame["position"].to_numpy() - 1
    if ((slot < 0) | (slot >= N_POSITIONS)).any():
        raise DatasetError(f"position must lie in 1..{N_POSITIONS}")
    item = frame["item_id"].to_numpy()
    if ((item < 0) | (item >= n_items)).any():
        raise DatasetError(f"item_id must lie in 0..{n_items - 1}")
    n_events = len(timestamps)
    observed = np.zeros((n_events, N_POSITIONS), dtype=bool)
    if np.bincount(event * N_POSITIONS + slot, minlength=n_events * N_POSITIONS).max() > 1:
        raise DatasetError("an impression lists the same position twice")
    observed[event, slot] = True

    def dense(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((n_events, N_POSITIONS), fill, dtype=np.float64)
        out[event, slot] = values
        return out

    first_row = np.unique(event, return_index=True)[1]
    context = np.stack([pd.factorize(frame[name].to_numpy()[first_row])[0] for name in USER_FEATURES], axis=1)
    log = SlateLog(
        event_ids=np.asarray(timestamps, dtype=object),
        action=dense(item, 0).astype(np.int64),
        action_ids=np.arange(n_items),
        reward=dense(frame["click"].to_numpy(), 0.0),
        logging_prob=None,
        logging_marginal=dense(frame["propensity_score"].to_numpy(), 1.0),
        observed=observed,
        context=context.astype(np.int64),
    )
    return OpenBanditLog(log, n_items, campaign, behavior_policy)


def uniform_random_target(data: OpenBanditLog) -> TargetProbs:
    """The uniform-random policy of the dataset: each item at each position with probability 1/n_items."""
    return TargetProbs(marginal=np.full(data.log.reward.shape, 1.0 / data.n_items), name="uniform random")
