"""VWShelfRanker: Vowpal Wabbit's conditional contextual bandit (--ccb_explore_adf) as a Policy.

One VW pass per decision scores every shelf for every slot: the request is laid out with
one copy of the shelves per slot, and slot k's include list names only its own copy, so
VW's CCB exclusion never removes a shelf from another slot's scoring. VW injects the slot's
features and slot id exactly as it does for an ordinary CCB example, and a slot's scores
depend on the shelves above it only through exclusion, so the project's explorer (a numpy
copy of VW's) samples the ordering with the project's own seeded generator.

Shelf examples are parsed once per (shelf, slot) and reused across requests.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pylibvw
import vowpalwabbit
from vowpalwabbit.pyvw import Example, LabelType

from bandit.batch import EventBatch
from bandit.config import RankerConfig
from bandit.errors import ModelFileError, ValidationError
from bandit.explore import SquareCB, UniformShare
from bandit.model_file import read_meta, write_model
from bandit.policy import Policy
from bandit.types import Context, Shelf
from bandit.vw.format import listener_line, shelf_line, slot_line

CCB = LabelType.CONDITIONAL_CONTEXTUAL_BANDIT
SHELF_CACHE_SIZE = 50_000
SLOT_CACHE_SIZE = 256


class _LRU(OrderedDict):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_or_make(self, key, make):
        try:
            self.move_to_end(key)
            return self[key]
        except KeyError:
            value = self[key] = make()
            if len(self) > self.capacity:
                self.popitem(last=False)
            return value


class VWShelfRanker(Policy):
    """The VW CCB shelf ranker. `learn` takes logged events; `save`/`load` keep model + config."""

    kind = "vw"

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.config = config or RankerConfig()
        self.seed = self.config.seed
        self.marginal_draws = self.config.marginal_draws
        self.exact_budget = self.config.exact_budget
        self._explorer = self.config.explorer_rule()
        self._lock = threading.RLock()
        self._vw: vowpalwabbit.Workspace | None = None
        self._base_version = f"vw-new-{self.config.config_id()}"
        self._learned_since_save = 0
        self.n_learned_events = 0
        self._clear_caches()

    # -- state ---------------------------------------------------------------------------
    def _clear_caches(self) -> None:
        self._shelf_examples = _LRU(SHELF_CACHE_SIZE)
        self._slot_examples = _LRU(SLOT_CACHE_SIZE)
        self._shelf_lines = _LRU(SHELF_CACHE_SIZE)

    @property
    def workspace(self) -> vowpalwabbit.Workspace:
        if self._vw is None:
            self._vw = vowpalwabbit.Workspace(self.config.vw_args() + " --quiet")
        return self._vw

    @property
    def model_version(self) -> str:
        if self._learned_since_save:
            return f"{self._base_version}+{self._learned_since_save}"
        return self._base_version

    def finite_weights(self) -> bool:
        """Whether every weight of the model is a finite number (VW lists its non-zero weights)."""
        with self._lock:
            text = self.workspace.json_weights()
        try:  # VW writes a non-finite weight as a bare nan or inf, which is not JSON
            weights = json.loads(text, parse_constant=lambda name: math.nan)["weights"]
        except (ValueError, KeyError, TypeError):
            return False
        return all(math.isfinite(w["value"]) for w in weights)

    # -- scoring ---------------------------------------------------------------------------
    def slot_model(self, context: Context, shelves: Sequence[Shelf], n_slots: int, baseline: Sequence[str] = ()):
        costs, slot0_pdf = self.score(context, shelves, n_slots)
        gamma = _squarecb_gamma(costs[0], slot0_pdf) if slot0_pdf is not None else 0.0
        model = self._explorer.slot_model(costs, gamma)
        return UniformShare(model, self.config.uniform_share) if self.config.uniform_share else model

    def score(self, context: Context, shelves: Sequence[Shelf], n_slots: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One VW pass: costs (K, N) of every shelf at every slot, and, for SquareCB (whose gamma
        VW keeps internally), VW's own slot-0 distribution (N,)."""
        n = len(shelves)
        with self._lock:
            vw = self.workspace
            shared = Example(vw, listener_line(context), CCB)
            copies = [self._shelf_examples_for(shelf, n_slots) for shelf in shelves]
            actions = [copy[k] for k in range(n_slots) for copy in copies]
            slots = self._slot_examples.get_or_make((n, n_slots), lambda: self._make_slot_examples(n, n_slots))
            pylibvw.vw.predict_multi(vw, [shared, *actions, *slots])
            costs = np.fromiter((e.get_partial_prediction() for e in actions), dtype=np.float64, count=n * n_slots)
            slot0 = shared.get_decision_scores()[0] if isinstance(self._explorer, SquareCB) else None
        if slot0 is None:
            return costs.reshape(n_slots, n), None
        pdf = np.zeros(n)
        for action, prob in slot0:
            pdf[action] = prob
        return costs.reshape(n_slots, n), pdf

    def _shelf_examples_for(self, shelf: Shelf, n_slots: int) -> list[Example]:
        """At least n_slots parsed copies of the shelf's example (one per slot; never shared in a pass)."""
        copies = self._shelf_examples.get_or_make(shelf, list)
        while len(copies) < n_slots:
            copies.append(Example(self.workspace, self._shelf_line(shelf), CCB))
        return copies

    def _shelf_line(self, shelf: Shelf) -> str:
        return self._shelf_lines.get_or_make(shelf, lambda: shelf_line(shelf))

    def _make_slot_examples(self, n: int, n_slots: int) -> list[Example]:
        return [Example(self.workspace, slot_line(k, include=range(k * n, (k + 1) * n)), CCB) for k in range(n_slots)]

    # -- learning --------------------------------------------------------------------------
    def learn(self, batch: EventBatch) -> None:
        """One VW update per logged event; VW cost = -reward, weighted by the logged probability."""
        with self._lock:
            vw = self.workspace
            for i in range(batch.n_events):
                rows = batch.event_rows(i)
                vw.learn(self.event_lines(batch, i, rows))
            self.n_learned_events += batch.n_events
            self._learned_since_save += batch.n_events

    def learn_file(self, path: str | Path) -> int:
        """Learn every event of a joined DSJSON file with VW's own file reader (no Python per
        event); return the number of events learned."""
        path = Path(path)
        with open(path, "rb") as handle:
            n_events = sum(1 for line in handle if line.strip())
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            before, after, data = (os.path.join(tmp, name) for name in ("before.vw", "after.vw", "data.json"))
            os.symlink(path.resolve(), data)  # VW's argument parser splits paths on white space
            self.workspace.save(before)
            native = None
            try:
                native = vowpalwabbit.Workspace(f"{self.config.vw_args()} --dsjson --quiet -i {before} -d {data} -f {after}")
                native.run_parser()
                learned = int(native.get_weighted_examples())
            except Exception as err:  # VW raises plain RuntimeError on malformed input
                raise ValidationError(str(path), f"VW could not learn from this DSJSON file ({err})") from None
            finally:
                if native is not None:
                    native.finish()
            if learned != n_events:  # VW skips lines it cannot parse: refuse rather than learn part
                raise ValidationError(
                    str(path), f"VW could not learn from this DSJSON file: it read {learned} of {n_events} events"
                )
            self._vw.finish()
            self._vw = vowpalwabbit.Workspace(f"{self.config.vw_args()} --quiet -i {after}")
            self._clear_caches()
            self.n_learned_events += n_events
            self._learned_since_save += n_events
        return n_events

    def event_lines(self, batch: EventBatch, i: int, rows: slice) -> list[str]:
        """The VW text lines of logged event i (shared, shelves, labelled slots)."""
        lines = [listener_line(batch.contexts[i])]
        lines.extend(self._shelf_line(s) for s in batch.shelves[i])
        labels = zip(batch.action_index[rows].tolist(), batch.reward[rows].tolist(), batch.logging_prob[rows].tolist())
        lines.extend(slot_line(k, label=label) for k, label in enumerate(labels))
        return lines

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.vw-tmp")
        with self._lock:
            self.workspace.save(str(tmp))
            payload = tmp.read_bytes()
            tmp.unlink()
            version = write_model(
                path,
                payload,
                kind=self.kind,
                config=self.config.to_dict(),
                extra={"config_id": self.config.config_id(), "n_learned_events": self.n_learned_events,
                       "vw_version": vowpalwabbit.__version__},
            )
            self._base_version = version
            self._learned_since_save = 0
        return version

    @classmethod
    def load(cls, path: str | Path, config: RankerConfig | None = None, **sampling) -> VWShelfRanker:
        """Load a saved ranker. With `config`, refuse a file written by a different configuration.
        `sampling` may override seed, marginal_draws and exact_budget."""
        meta = read_meta(path)
        if meta.get("kind") != cls.kind:
            raise ModelFileError(f"{path}: holds a {meta.get('kind')!r} policy, not a VW ranker")
        try:
            saved = RankerConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValidationError) as err:
            raise ModelFileError(f"{path}: configuration in metadata is unreadable ({err})") from None
        if config is not None and config.model_fields() != saved.model_fields():
            diff = {k: (v, config.model_fields()[k]) for k, v in saved.model_fields().items() if config.model_fields()[k] != v}
            details = ", ".join(f"{k}: file has {a!r}, expected {b!r}" for k, (a, b) in diff.items())
            raise ModelFileError(f"{path}: written by a different configuration ({details})")
        if sampling:
            saved = RankerConfig.from_dict({**saved.to_dict(), **sampling})
        ranker = cls(config if config is not None else saved)
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "model.vw")
            os.symlink(Path(path).resolve(), model)  # VW's argument parser splits paths on white space
            try:
                ranker._vw = vowpalwabbit.Workspace(f"{saved.vw_args()} --quiet -i {model}")
            except Exception as err:  # VW raises plain RuntimeError on unreadable files
                raise ModelFileError(f"{path}: VW could not read the model ({err})") from None
        ranker._base_version = meta["version"]
        ranker.n_learned_events = int(meta.get("n_learned_events", 0))
        return ranker


def _squarecb_gamma(costs: np.ndarray, vw_pdf: np.ndarray) -> float:
    """SquareCB's gamma as VW applied it: p_a = 1/(N + gamma (c_a - c_min)) for a non-best shelf."""
    gap = costs - costs.min()
    a = int(gap.argmax())
    if gap[a] <= 1e-6 or vw_pdf[a] <= 0.0:
        return 0.0
    return max(0.0, (1.0 / vw_pdf[a] - len(costs)) / gap[a])
