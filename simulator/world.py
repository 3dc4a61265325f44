"""The simulated home page: listeners, requests, the true stream probability of every shelf,
and the ground truth (expected reward per slot of any ranking, the oracle ranking, the
value of any policy).

Stream probability of shelf c for a request b (all terms hidden from the ranker):

    a[b, c] = sigmoid(base + appeal_c + taste_scale * taste_segment(b) . loading_c
                      + context_scale * (daypart + weekend + platform + tenure + country effects)[b, c]
                      + deviation_listener(b) . loading_c + drift_c(t_b)
                      + [c is a new-release shelf] * novelty_scale * 2^(-days since Friday 00:00 UTC / half-life))

The ranker sees the listener's segment, country, platform, tenure, daypart and weekend, and
each shelf's kind, source, topic and locality; the listener's own taste deviation, the
shelves' appeal, the drift and the novelty of the weekly release stay hidden. Requests are
drawn in columnar batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from bandit.errors import ValidationError
from bandit.features import Features
from bandit.policy import Policy
from bandit.types import MAX_SHELVES, Context, Shelf
from simulator.catalogue import (
    COUNTRIES,
    DAYPART_START_H,
    DAYPARTS,
    LOCAL_PRIDE,
    PLATFORMS,
    SEGMENTS,
    TASTES,
    TENURE_SHARES,
    TENURES,
    UTC_OFFSET_H,
    WEEKEND,
    Catalogue,
    build_catalogue,
)
from simulator.click_models import CLICK_MODELS, ClickModel, slot_model_value

CONTEXT_FIELDS = ("segment", "country", "platform", "daypart", "weekend", "tenure")
MAIN_PLATFORM_SHARE = 0.75  # share of a listener's sessions on their usual platform
EDITORIAL_SAMPLE = 4096  # requests the editors look at when they set the editorial order
THURSDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
FRIDAY = 4  # new music is released on Fridays
DAYPART_OF_HOUR = (np.searchsorted(DAYPART_START_H, np.arange(24), side="right") - 1) % len(DAYPARTS)


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Everything that defines a world; `WorldConfig.default()` is the default home page
    (24 shelves, 16 candidates per request, 6 slots, 6 segments, position-based examination)."""

    n_shelves: int = 24
    min_candidates: int = 16
    max_candidates: int = 16
    n_slots: int = 6
    n_segments: int = 6
    n_listeners: int = 5000
    click_model: str = "position"
    position_decay: float = 0.8  # theta_k = (1 + k) ** -position_decay
    base_logit: float = -2.3
    taste_scale: float = 1.0
    context_scale: float = 1.0
    individual_taste_sd: float = 0.3
    appeal_sd: float = 0.35
    editorial_noise_sd: float = 0.3
    sessions_per_hour: float = 120.0
    start_epoch_s: float = 1704067200.0  # 2024-01-01T00:00:00Z, a Monday
    drift_scale: float = 0.0  # logit amplitude of drifting shelf appeal and segment tastes
    drift_period_days: float = 7.0  # one full swing of the drift
    novelty_scale: float = 0.0  # logit boost of new-release shelves right after the Friday release
    novelty_half_life_days: float = 2.0
    delay_mean_s: float = 0.0  # mean of the exponential reward delay; 0 = rewards arrive at once

    def __post_init__(self) -> None:
        for name in ("n_shelves", "min_candidates", "max_candidates", "n_slots", "n_segments", "n_listeners"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(name, "must be an integer", value)
            if value < 1:
                raise ValidationError(name, "must be at least 1", value)
        for name in (
            "position_decay", "base_logit", "taste_scale", "context_scale", "individual_taste_sd", "appeal_sd",
            "editorial_noise_sd", "sessions_per_hour", "start_epoch_s", "drift_scale", "drift_period_days",
            "novelty_scale", "novelty_half_life_days", "delay_mean_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValidationError(name, "must be a finite number", value)
        if self.n_shelves > MAX_SHELVES:
            raise ValidationError("n_shelves", f"must not exceed {MAX_SHELVES}", self.n_shelves)
        if self.max_candidates < self.min_candidates:
            raise ValidationError("max_candidates", f"must be at least min_candidates ({self.min_candidates})", self.max_candidates)
        if self.max_candidates > self.n_shelves:
            raise ValidationError("max_candidates", f"must not exceed n_shelves ({self.n_shelves})", self.max_candidates)
        if self.n_slots > self.min_candidates:
            raise ValidationError("n_slots", f"must not exceed min_candidates ({self.min_candidates})", self.n_slots)
        if self.n_segments > len(SEGMENTS):
            raise ValidationError("n_segments", f"must not exceed {len(SEGMENTS)}", self.n_segments)
        if self.click_model not in CLICK_MODELS:
            raise ValidationError("click_model", f"must be one of {', '.join(CLICK_MODELS)}", self.click_model)
        for name in ("position_decay", "individual_taste_sd", "appeal_sd", "editorial_noise_sd", "drift_scale",
                     "novelty_scale", "delay_mean_s"):
            if getattr(self, name) < 0:
                raise ValidationError(name, "must be >= 0", getattr(self, name))
        for name in ("sessions_per_hour", "drift_period_days", "novelty_half_life_days"):
            if getattr(self, name) <= 0:
                raise ValidationError(name, "must be > 0", getattr(self, name))

    @classmethod
    def default(cls) -> WorldConfig:
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> WorldConfig:
        """A config from a mapping; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError("world", f"unknown settings (known: {', '.join(sorted(known))})", unknown)
        return cls(**dict(data))

    def updated(self, **changes: object) -> WorldConfig:
        """A copy with some settings changed (validated like any config)."""
        return self.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True, slots=True, eq=False)
class ListenerContext(Context):
    """A Context as the simulator draws it: the features a ranker sees, plus what only the
    world knows (the listener's row and the request time in seconds since the world's start).
    Equal to any Context with the same features and listener id."""

    listener_index: int = -1
    time_s: float = 0.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return (self.features, self.listener_id) == (other.features, other.listener_id)

    def __hash__(self) -> int:
        return hash((self.features, self.listener_id))


@dataclass(frozen=True, slots=True)
class Request:
    """One home-page request as a backend would send it: context, candidates, editorial order."""

    context: ListenerContext
    shelves: tuple[Shelf, ...]
    baseline: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class RequestBatch:
    """B requests, columnar: `listener` (B,), `time_s` (B,), `codes` (B, 6) indices of the
    context fields into the world's vocabulary, `context_id` (B,) one id per combination of
    context values, `candidate_mask` (B, C) bool, `attraction` (B, C) the true stream
    probability of every catalogue shelf once examined."""

    n_slots: int
    listener: np.ndarray
    time_s: np.ndarray
    codes: np.ndarray
    context_id: np.ndarray
    candidate_mask: np.ndarray
    attraction: np.ndarray

    def __len__(self) -> int:
        return len(self.listener)

    def __getitem__(self, rows: slice | np.ndarray) -> RequestBatch:
        return RequestBatch(
            self.n_slots, self.listener[rows], self.time_s[rows], self.codes[rows], self.context_id[rows],
            self.candidate_mask[rows], self.attraction[rows],
        )

    @property
    def n_candidates(self) -> np.ndarray:
        return self.candidate_mask.sum(axis=1)

    def candidate_indices(self) -> np.ndarray:
        """Catalogue indices of each request's candidates in catalogue order (B, max N), -1 padded."""
        order = np.argsort(~self.candidate_mask, axis=1, kind="stable")[:, : int(self.n_candidates.max())]
        return np.where(np.take_along_axis(self.candidate_mask, order, axis=1), order, -1)


@dataclass(frozen=True, slots=True)
class PolicyValue:
    """The true value of a policy on a set of requests: the mean over requests of the expected
    sum of slot rewards (`value`, per slot in `per_slot`), its Monte Carlo standard error over
    the policy's rankings (`stderr`, 0.0 when `exact`), and the standard error of that mean as
    an estimate of the value over the listener population (`population_stderr`)."""

    value: float
    stderr: float
    per_slot: tuple[float, ...]
    population_stderr: float
    exact: bool
    n_requests: int


class World:
    """A home page with ground truth, built from a config and a generator."""

    def __init__(self, config: WorldConfig, rng: np.random.Generator) -> None:
        if not isinstance(config, WorldConfig):
            raise ValidationError("config", "must be a WorldConfig", type(config).__name__)
        self.config = config
        self.catalogue: Catalogue = build_catalogue(config.n_shelves, config.appeal_sd, rng)
        self.shelves = self.catalogue.shelves
        self.shelf_ids = self.catalogue.shelf_ids
        self.index_of = {shelf_id: i for i, shelf_id in enumerate(self.shelf_ids)}
        self.segments = SEGMENTS[: config.n_segments]
        self.click = ClickModel(config.click_model, (1.0 + np.arange(config.n_slots)) ** -config.position_decay)
        self.vocabulary = self._vocabulary()
        self._code_of = {(name, value): i for i, (name, value) in enumerate(self.vocabulary)}
        names = [name for name, _ in self.vocabulary]
        self._field_offsets = np.array([names.index(name) for name in CONTEXT_FIELDS])
        self.context_weights = self._context_weights()
        self._field_sizes = tuple(sum(1 for name, _ in self.vocabulary if name == f) for f in CONTEXT_FIELDS)
        # the logit each context id gives each shelf before the hidden listener and drift terms
        self.observable_logit = config.base_logit + self.catalogue.appeal + self.context_table(self.context_weights)
        self._draw_listeners(rng)
        self._shelf_phase = rng.uniform(0.0, 2 * np.pi, size=config.n_shelves)
        self._taste_phase = rng.uniform(0.0, 2 * np.pi, size=(config.n_segments, len(TASTES)))
        self._features: dict[tuple[int, ...], Features] = {}
        self.editorial_rank = self._editorial_rank(rng)
        self.editorial_order = tuple(self.shelf_ids[i] for i in np.argsort(self.editorial_rank))

    # -- construction ------------------------------------------------------------------------
    def _vocabulary(self) -> tuple[tuple[str, object], ...]:
        """(field, value) for every one-hot context feature, in CONTEXT_FIELDS order."""
        values = (tuple(s.name for s in self.segments), COUNTRIES, PLATFORMS, DAYPARTS, WEEKEND, TENURES)
        return tuple((name, value) for name, options in zip(CONTEXT_FIELDS, values) for value in options)

    def _context_weights(self) -> np.ndarray:
        """W (V, C): the logit each one-hot context feature adds to each shelf (the part of the
        truth that is linear in what the ranker sees)."""
        c, cfg = self.catalogue, self.config
        tastes = np.array([s.taste for s in self.segments])
        blocks = (
            cfg.taste_scale * tastes @ c.loading.T,
            cfg.context_scale * np.outer(LOCAL_PRIDE, c.local),
            cfg.context_scale * c.platform.T,
            cfg.context_scale * c.daypart.T,
            cfg.context_scale * c.weekend.T,
            cfg.context_scale * c.tenure.T,
        )
        return np.vstack(blocks)

    def _draw_listeners(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.n_listeners
        shares = np.array([s.share for s in self.segments])
        self.listener_segment = rng.choice(len(self.segments), size=n, p=shares / shares.sum())
        country_p = np.array([s.countries for s in self.segments])
        platform_p = np.array([s.platforms for s in self.segments])
        self.listener_country = _categorical(country_p[self.listener_segment], rng)
        self.listener_platform = _categorical(platform_p[self.listener_segment], rng)
        self.listener_tenure = rng.choice(len(TENURES), size=n, p=TENURE_SHARES)
        self.listener_deviation = rng.normal(0.0, cfg.individual_taste_sd, size=(n, len(TASTES)))
        activity = rng.lognormal(0.0, 1.0, size=n)  # a few heavy listeners, many light ones
        self._activity_cdf = np.cumsum(activity) / activity.sum()
        self.listener_ids = tuple(f"listener-{i:06d}" for i in range(n))

    def _editorial_rank(self, rng: np.random.Generator) -> np.ndarray:
        """Editors order shelves by their average stream probability over a sample of requests,
        plus what they like to promote and their own noise; rank 0 = top."""
        sample = self.draw_requests(EDITORIAL_SAMPLE, rng)
        mean = sample.attraction.mean(axis=0)
        score = np.log(mean / (1.0 - mean)) + self.catalogue.editorial_preference
        score += rng.normal(0.0, self.config.editorial_noise_sd, size=len(score))
        rank = np.empty(len(score), dtype=np.int64)
        rank[np.argsort(-score, kind="stable")] = np.arange(len(score))
        return rank

    # -- requests ----------------------------------------------------------------------------
    def draw_requests(self, n: int, rng: np.random.Generator, *, start_s: float = 0.0) -> RequestBatch:
        """n requests arriving as a Poisson process from `start_s` (seconds since the world's start)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValidationError("n", "must be a positive integer", n)
        cfg = self.config
        time_s = start_s + np.cumsum(rng.exponential(3600.0 / cfg.sessions_per_hour, size=n))
        listener = np.minimum(np.searchsorted(self._activity_cdf, rng.random(n), side="right"), cfg.n_listeners - 1)
        country = self.listener_country[listener]
        usual = rng.random(n) < MAIN_PLATFORM_SHARE
        platform = np.where(usual, self.listener_platform[listener], rng.integers(0, len(PLATFORMS), size=n))
        local_h = (cfg.start_epoch_s + time_s) / 3600.0 + np.asarray(UTC_OFFSET_H)[country]
        daypart = DAYPART_OF_HOUR[(local_h % 24.0).astype(np.int64)]
        weekend = ((np.floor(local_h / 24.0).astype(np.int64) + THURSDAY) % 7 >= 5).astype(np.int64)
        fields_ = (self.listener_segment[listener], country, platform, daypart, weekend, self.listener_tenure[listener])
        codes = np.stack(fields_, axis=1) + self._field_offsets
        context_id = self.context_ids(codes)
        return RequestBatch(
            n_slots=cfg.n_slots,
            listener=listener,
            time_s=time_s,
            codes=codes,
            context_id=context_id,
            candidate_mask=self._draw_candidates(n, rng),
            attraction=self.attraction(listener, time_s, context_id),
        )

    @property
    def n_contexts(self) -> int:
        """How many distinct combinations of context values the ranker can see."""
        return int(np.prod(self._field_sizes))

    def context_ids(self, codes: np.ndarray) -> np.ndarray:
        """One id in [0, n_contexts) per row of vocabulary codes (B, 6)."""
        return np.ravel_multi_index(tuple((codes - self._field_offsets).T), self._field_sizes)

    def context_table(self, context_weights: np.ndarray) -> np.ndarray:
        """Per-feature weights (V, C) summed for every context id: (n_contexts, C)."""
        grids = np.meshgrid(*(np.arange(n) for n in self._field_sizes), indexing="ij")
        codes = np.stack([g.ravel() for g in grids], axis=1) + self._field_offsets
        return context_weights[codes].sum(axis=1)

    def _draw_candidates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random subset of the catalogue per request, of size in [min, max]."""
        cfg = self.config
        if cfg.min_candidates == cfg.n_shelves:
            return np.ones((n, cfg.n_shelves), dtype=bool)
        keys = rng.random((n, cfg.n_shelves))
        if cfg.min_candidates == cfg.max_candidates:
            k = cfg.min_candidates - 1
            return keys <= np.partition(keys, k, axis=1)[:, k : k + 1]
        sizes = rng.integers(cfg.min_candidates, cfg.max_candidates + 1, size=n)
        return keys <= np.take_along_axis(np.sort(keys, axis=1), (sizes - 1)[:, None], axis=1)

    def attraction(self, listener: np.ndarray, time_s: np.ndarray, context_id: np.ndarray) -> np.ndarray:
        """True stream probability (B, C) of every shelf once examined (formula in the module docstring)."""
        cfg, c = self.config, self.catalogue
        logit = np.take(self.observable_logit, context_id, axis=0)
        logit += self.listener_deviation[listener] @ c.loading.T
        if cfg.drift_scale > 0.0:
            phase = (2 * np.pi / (cfg.drift_period_days * 86400.0)) * time_s[:, None]
            segment = context_id // (self.n_contexts // len(self.segments))
            taste_drift = np.sin(phase + self._taste_phase[segment])
            logit += cfg.drift_scale * (np.sin(phase + self._shelf_phase) + taste_drift @ c.loading.T)
        if cfg.novelty_scale > 0.0:
            days_since_friday = ((cfg.start_epoch_s + time_s) / 86400.0 + THURSDAY - FRIDAY) % 7.0
            novelty = cfg.novelty_scale * 0.5 ** (days_since_friday / cfg.novelty_half_life_days)
            logit += novelty[:, None] * c.new_release
        np.negative(logit, out=logit)
        np.exp(logit, out=logit)
        logit += 1.0
        return np.reciprocal(logit, out=logit)

    def requests(self, batch: RequestBatch) -> list[Request]:
        """The batch as backend requests: contexts with cached features, candidate Shelf objects
        of the catalogue (shared, so rankers' per-shelf caches hit), the editorial order."""
        candidates = batch.candidate_indices()
        by_editor = self._editorial_order(batch.candidate_mask)
        shelves, ids, listener_ids = self.shelves, self.shelf_ids, self.listener_ids
        out = []
        for listener, time_s, codes, row, editorial, n in zip(
            batch.listener.tolist(), batch.time_s.tolist(), batch.codes.tolist(), candidates.tolist(),
            by_editor.tolist(), batch.n_candidates.tolist(),
        ):
            context = ListenerContext(self._features_of(tuple(codes)), listener_ids[listener], listener, time_s)
            out.append(Request(context, tuple(shelves[i] for i in row[:n]), tuple(ids[i] for i in editorial[:n])))
        return out

    def _features_of(self, codes: tuple[int, ...]) -> Features:
        features = self._features.get(codes)
        if features is None:
            features = self._features[codes] = Features({name: value for name, value in (self.vocabulary[i] for i in codes)})
        return features

    def codes_of(self, context: Context) -> np.ndarray:
        """The vocabulary indices (6,) of a context's features."""
        try:
            return np.array([self._code_of[(name, context.features[name])] for name in CONTEXT_FIELDS])
        except KeyError as missing:
            rule = "needs this world's segment, country, platform, daypart, weekend and tenure"
            raise ValidationError("context.features", rule, missing.args[0]) from None

    def attraction_of(self, context: Context) -> np.ndarray:
        """True stream probability (C,) of every shelf for a context the world drew."""
        if not isinstance(context, ListenerContext) or not 0 <= context.listener_index < self.config.n_listeners:
            rule = "the truth is known only for contexts this world drew (ListenerContext)"
            raise ValidationError("context", rule, type(context).__name__)
        context_id = self.context_ids(self.codes_of(context)[None, :])
        return self.attraction(np.array([context.listener_index]), np.array([context.time_s]), context_id)[0]

    def indices(self, shelf_ids: Iterable[Sequence[str]]) -> np.ndarray:
        """Catalogue indices (B, K) of rankings given as shelf ids."""
        index_of = self.index_of
        return np.array([[index_of[s] for s in ranking] for ranking in shelf_ids], dtype=np.int64)

    # -- ground truth ------------------------------------------------------------------------
    def expected_slot_rewards(self, batch: RequestBatch, rankings: np.ndarray) -> np.ndarray:
        """E[reward at slot k] (B, K) of rankings given as catalogue indices (B, K)."""
        return self.click.expected(np.take_along_axis(batch.attraction, rankings, axis=1))

    def oracle_rankings(self, batch: RequestBatch) -> np.ndarray:
        """The best ranking (B, K) of each request: its candidates by decreasing attraction."""
        masked = np.where(batch.candidate_mask, batch.attraction, -1.0)
        return np.argsort(-masked, axis=1, kind="stable")[:, : batch.n_slots]

    def editorial_rankings(self, batch: RequestBatch) -> np.ndarray:
        """The editorial order's ranking (B, K) of each request's candidates."""
        return self._editorial_order(batch.candidate_mask)[:, : batch.n_slots]

    def _editorial_order(self, candidate_mask: np.ndarray) -> np.ndarray:
        """Catalogue indices (B, C) of each request's candidates in editorial order, others after."""
        ranks = np.where(candidate_mask, self.editorial_rank, np.iinfo(np.int64).max)
        return np.argsort(ranks, axis=1, kind="stable")

    def sample_rewards(self, batch: RequestBatch, rankings: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Realised streams (B, K) in {0, 1} under the world's click model."""
        return self.click.sample(np.take_along_axis(batch.attraction, rankings, axis=1), rng)

    def realise_rewards(self, batch: RequestBatch, rankings: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Streams (B, K) from pre-drawn uniforms (2, B, K), for callers that rank out of order."""
        return self.click.realise(np.take_along_axis(batch.attraction, rankings, axis=1), uniforms)

    def sample_delays(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Seconds from a decision until each reward arrives (exponential; zeros when off)."""
        if self.config.delay_mean_s == 0.0:
            return np.zeros(shape)
        return rng.exponential(self.config.delay_mean_s, size=shape)

    def policy_value(
        self,
        policy: Policy,
        batch: RequestBatch,
        rng: np.random.Generator,
        *,
        draws: int = 256,
        exact_budget: int = 50_000,
    ) -> PolicyValue:
        """The true value of `policy` on these requests: exact where the policy's live prefixes
        fit `exact_budget`, else Monte Carlo over `draws` rankings with its standard error.
        Calls policy.slot_model once per request."""
        if draws < 2:
            raise ValidationError("draws", "must be at least 2", draws)
        n_slots = batch.n_slots
        per_slot = np.empty((len(batch), n_slots))
        variance = np.empty(len(batch))
        exact = True
        for i, (request, row) in enumerate(zip(self.requests(batch), batch.candidate_indices().tolist())):
            model = policy.slot_model(request.context, request.shelves, n_slots, request.baseline)
            attraction = batch.attraction[i, row[: len(request.shelves)]]
            per_slot[i], variance[i], was_exact = slot_model_value(
                model, attraction, self.click, n_slots, rng, draws=draws, exact_budget=exact_budget
            )
            exact &= was_exact
        totals = per_slot.sum(axis=1)
        n = len(batch)
        return PolicyValue(
            value=float(totals.mean()),
            stderr=float(np.sqrt(variance.sum()) / n),
            per_slot=tuple(per_slot.mean(axis=0).tolist()),
            population_stderr=float(totals.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            exact=exact,
            n_requests=n,
        )


def _categorical(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of the probability rows p (n, m)."""
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(p)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), p.shape[1] - 1)
