"""VWShelfRanker: Vowpal Wabbit's conditional contextual bandit (--ccb_explore_adf) as a Policy.

One VW pass per decision scores every shelf for every slot: the request is laid out with
one copy of the shelves per slot, and slot k's include list names only its own copy, so
VW's CCB exclusion never removes a shelf from another slot's scoring. VW injects the slot's
features and slot id exactly as it does for an ordinary CCB example, and a slot's scores
depend on the shelves above it only through exclusion, so the project's explorer (a numpy
copy of VW's) samples the ordering with the project's own seeded generator.

Shelf examples are parsed once per (shelf, slot) and reused across requests; the ordered list
of a request's copies is kept per candidate set, so a page served again costs one look-up.

A model as saved or loaded (the served kind, which learns nothing between requests) whose costs
are affine in the listener's features (`listener_terms`: no interaction of the listener with
itself, and any explorer but SquareCB, whose gamma VW keeps internally) has a request's costs
read from the layout's listener terms instead of a VW pass. A model that has learned since it
was last saved or loaded is scored by VW's pass, so one model version is always scored one way.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
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
from bandit.policy import Policy, check_overrides
from bandit.types import Context, Shelf
from bandit.vw.format import (
    dsjson_action_texts,
    listener_features,
    listener_line,
    listener_probe_line,
    shelf_from_json,
    shelf_line,
    slot_line,
)
from bandit.vw.listener_terms import ListenerTerms, is_affine_in_listener

CCB = LabelType.CONDITIONAL_CONTEXTUAL_BANDIT
SHELF_CACHE_SIZE = 50_000
SLOT_CACHE_SIZE = 256
LAYOUT_CACHE_SIZE = 256  # candidate sets whose one-pass list of shelf copies is kept
WARM_PAGES = 8  # pages a model swapped in finds the listener terms of before it serves
_PARTIAL_PREDICTION = pylibvw.example.get_partial_prediction


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
        self._affine = is_affine_in_listener(self.config.interactions) and not isinstance(self._explorer, SquareCB)
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
        self._layouts = _LRU(LAYOUT_CACHE_SIZE)  # (shelves, n_slots) -> the one-pass copies, slot-major
        self._shelf_line_sets = _LRU(LAYOUT_CACHE_SIZE)  # shelves -> their text lines
        self._line_shelves: dict[str, tuple[str, list[Example]]] = {}  # a DSJSON shelf's text -> id, copies
        self._model_changed()

    def _model_changed(self) -> None:
        self._listener_terms = ListenerTerms(self._probe)

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
        pdf = None if slot0_pdf is None else slot0_pdf[None]
        return self.slot_models(costs[:, None], pdf, single=True)

    def slot_models(self, costs: np.ndarray, slot0_pdf: np.ndarray | None, *, single: bool = False):
        """The SlotModel of E decisions from their costs (K, E, N) and, for SquareCB, VW's slot-0
        distributions (E, N) (`single`: the model of the one decision, costs (K, 1, N))."""
        gamma = np.zeros(costs.shape[1]) if slot0_pdf is None else _squarecb_gamma(costs[0], slot0_pdf)
        model = self._explorer.slot_model(costs[:, 0] if single else costs, float(gamma[0]) if single else gamma)
        return UniformShare(model, self.config.uniform_share) if self.config.uniform_share else model

    def score(self, context: Context, shelves: Sequence[Shelf], n_slots: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Costs (K, N) of every shelf at every slot, from one VW pass or the listener terms, and,
        for SquareCB (whose gamma VW keeps internally), VW's own slot-0 distribution (N,)."""
        shelves, n = tuple(shelves), len(shelves)
        with self._lock:
            if self._scored_from_terms():
                costs = self._listener_terms.costs(shelves, n_slots, *listener_features(context))
                if costs is not None:  # else too large for the terms: VW's pass
                    return costs, None
            shared = pylibvw.example(self.workspace, CCB.value, listener_line(context))
            costs = self._one_pass(shared, shelves, n_slots)
            slot0 = shared.get_decision_scores()[0] if isinstance(self._explorer, SquareCB) else None
        if slot0 is None:
            return costs.reshape(n_slots, n), None
        pdf = np.zeros(n)
        for action, prob in slot0:
            pdf[action] = prob
        return costs.reshape(n_slots, n), pdf

    def warm_like(self, serving: Policy, budget_s: float) -> None:
        """Find the listener terms of the pages `serving` (a VW ranker) used last, newest first,
        for this model, until `budget_s` seconds have passed: the first requests after a swap
        then find them instead of waiting for VW's probes."""
        if not isinstance(serving, VWShelfRanker) or not self._scored_from_terms():
            return
        with serving._lock:
            pages = serving._listener_terms.recent(WARM_PAGES)
        with self._lock:
            self._listener_terms.warm(pages, time.monotonic() + budget_s)

    def _scored_from_terms(self) -> bool:
        """Whether requests are scored from the listener terms: the model is as saved or loaded
        (it learns nothing between requests) and its costs are affine in the listener."""
        return self._affine and not self._learned_since_save

    def _one_pass(self, shared: pylibvw.example, shelves: tuple[Shelf, ...], n_slots: int) -> np.ndarray:
        """VW's one pass over the layout for the parsed shared example: costs (K*N,), slot-major."""
        actions, slots = self._layout(shelves, n_slots)
        pylibvw.vw.predict_multi(self.workspace, [shared, *actions, *slots])
        return np.fromiter(map(_PARTIAL_PREDICTION, actions), dtype=np.float64, count=len(actions))

    def _probe(self, shelves: tuple[Shelf, ...], n_slots: int, name: str, value: float) -> np.ndarray:
        """VW's one pass for a listener with the one VW feature `name` at `value` (ListenerTerms' probe)."""
        return self._one_pass(pylibvw.example(self.workspace, CCB.value, listener_probe_line(name, value)), shelves, n_slots)

    def _layout(self, shelves: tuple[Shelf, ...], n_slots: int) -> tuple[list[Example], list[Example]]:
        """The one-pass layout's examples: every shelf's copy for slot 0, then for slot 1, ...,
        and the slots' examples whose include lists name their own copies."""
        return self._layouts.get_or_make((shelves, n_slots), lambda: self._make_layout(shelves, n_slots))

    def _make_layout(self, shelves: tuple[Shelf, ...], n_slots: int) -> tuple[list[Example], list[Example]]:
        n = len(shelves)
        copies = [self._shelf_examples_for(shelf, n_slots) for shelf in shelves]
        actions = [copy[k] for k in range(n_slots) for copy in copies]
        slots = self._slot_examples.get_or_make((n, n_slots), lambda: self._make_slot_examples(n, n_slots))
        return actions, slots

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
            try:
                for i in range(batch.n_events):
                    # what Workspace.learn does with text lines, without wrapping each parsed example
                    # in a Python object first
                    parsed = pylibvw.vw._parse(vw, "\n".join(self.event_lines(batch, i, batch.event_rows(i))))
                    try:
                        pylibvw.vw.learn_multi(vw, parsed)
                    finally:
                        pylibvw.vw._finish_example_multi_ex(vw, parsed)
                    self.n_learned_events += 1
                    self._learned_since_save += 1
            finally:  # even after a failure part-way: the events before it were learned
                self._model_changed()

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

    def learn_scored_lines(
        self, lines: Sequence[str], n_slots: Sequence[int], learn: Sequence[bool]
    ) -> tuple[list[np.ndarray], list[np.ndarray | None], list[tuple[str, ...]]]:
        """Progressive validation in one pass over joined DSJSON lines: for each line in order, VW
        scores every shelf at every slot with the model as it stands (the costs (K, N) and SquareCB
        slot-0 distribution (N,) of `score`), then learns the event from the same parsed line if
        `learn[i]`. Returns those per event, and the events' shelf ids. VW learns exactly what
        `learn_file` learns from the learnable lines."""
        costs: list[np.ndarray] = []
        pdfs: list[np.ndarray | None] = []
        shelf_ids: list[tuple[str, ...]] = []
        squarecb = isinstance(self._explorer, SquareCB)
        partial_prediction = pylibvw.example.get_partial_prediction
        with self._lock:
            self._reopen("--dsjson")
            vw = self._vw
            try:
                for number, (line, k, keep) in enumerate(zip(lines, n_slots, learn), start=1):
                    try:
                        parsed = pylibvw.vw._parse(vw, line)
                    except Exception as err:  # VW raises plain RuntimeError on malformed input
                        raise ValidationError(f"line {number}", f"VW could not parse this DSJSON line ({err})") from None
                    n = len(parsed) - 1 - k
                    ids, copies = self._line_shelf_copies(line, n, k, number)
                    shelf_ids.append(ids)
                    actions = [copy[j] for j in range(k) for copy in copies]
                    slots = self._slot_examples.get_or_make((n, k), lambda n=n, k=k: self._make_slot_examples(n, k))
                    pylibvw.vw.predict_multi(vw, [parsed[0], *actions, *slots])
                    costs.append(np.fromiter(map(partial_prediction, actions), np.float64, n * k).reshape(k, n))
                    if squarecb:
                        pdf = np.zeros(n)
                        for action, prob in parsed[0].get_decision_scores()[0]:
                            pdf[action] = prob
                        pdfs.append(pdf)
                    else:
                        pdfs.append(None)
                    if keep:
                        pylibvw.vw.learn_multi(vw, parsed)
                    pylibvw.vw._finish_example_multi_ex(vw, parsed)
            finally:
                self._reopen("")
            learned = int(sum(bool(x) for x in learn))
            self.n_learned_events += learned
            self._learned_since_save += learned
        return costs, pdfs, shelf_ids

    def _reopen(self, extra: str) -> None:
        """Carry the model over to a new workspace with `extra` arguments (e.g. VW's DSJSON parser)."""
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "model.vw")
            self.workspace.save(model)
            self._vw.finish()
            self._vw = vowpalwabbit.Workspace(f"{self.config.vw_args()} --quiet {extra} -i {model}")
        self._clear_caches()

    def _line_shelf_copies(
        self, line: str, n_shelves: int, n_slots: int, number: int
    ) -> tuple[tuple[str, ...], list[list[Example]]]:
        """The shelf ids of a DSJSON line and parsed copies (one per slot) of each shelf's example,
        cached by the shelf's JSON text."""
        texts = dsjson_action_texts(line)
        if texts is None or len(texts) != n_shelves:
            try:
                texts = [json.dumps(item) for item in json.loads(line)["c"]["_multi"]]
            except (ValueError, KeyError, TypeError) as err:
                raise ValidationError(f"line {number}", f"not a CCB DSJSON event ({err})") from None
            if len(texts) != n_shelves:
                raise ValidationError(f"line {number}", f"VW read {n_shelves} shelves, the line lists {len(texts)}")
        cache = self._line_shelves
        if len(cache) > SHELF_CACHE_SIZE:
            cache.clear()
        ids, copies = [], []
        for i, text in enumerate(texts):
            entry = cache.get(text)
            if entry is None:
                entry = cache[text] = (shelf_from_json(text, i).shelf_id, [])
            if len(entry[1]) < n_slots:
                line_text = shelf_line(shelf_from_json(text, i))
                entry[1].extend(Example(self._vw, line_text, CCB) for _ in range(n_slots - len(entry[1])))
            ids.append(entry[0])
            copies.append(entry[1])
        return tuple(ids), copies

    def event_lines(self, batch: EventBatch, i: int, rows: slice) -> list[str]:
        """The VW text lines of logged event i (shared, shelves, labelled slots)."""
        lines = [listener_line(batch.contexts[i])]
        shelves = tuple(batch.shelves[i])
        lines.extend(self._shelf_line_sets.get_or_make(shelves, lambda: [self._shelf_line(s) for s in shelves]))
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
            saved = RankerConfig.from_dict({**saved.to_dict(), **check_overrides(sampling)})
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


def _squarecb_gamma(costs: np.ndarray, vw_pdf: np.ndarray) -> np.ndarray:
    """SquareCB's gamma (E,) as VW applied it to slot 0 of each decision (costs and VW's
    distribution (E, N)): p_a = 1/(N + gamma (c_a - c_min)) for a non-best shelf."""
    gap = costs - costs.min(axis=1, keepdims=True)
    a = gap.argmax(axis=1)
    rows = np.arange(len(gap))
    widest, p = gap[rows, a], vw_pdf[rows, a]
    usable = (widest > 1e-6) & (p > 0.0)
    gamma = (1.0 / np.where(usable, p, 1.0) - costs.shape[1]) / np.where(usable, widest, 1.0)
    return np.where(usable, np.maximum(gamma, 0.0), 0.0)
