"""The world's vocabulary and its shelf catalogue.

Listeners fall into segments with latent tastes over `TASTES`; shelves load on those tastes
and carry hidden effects of the request context (time of day, weekend, platform, tenure,
country). Every effect is a contribution to the logit of the stream probability; the tables
below are the hidden truth the ranker has to discover from rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.types import Shelf

TASTES = ("pop", "hip_hop", "rock", "latin", "electronic", "classical_jazz", "talk", "ambient")
COUNTRIES = ("US", "GB", "DE", "BR", "MX", "JP", "IN")
UTC_OFFSET_H = (-5.0, 0.0, 1.0, -3.0, -6.0, 9.0, 5.5)
LOCAL_PRIDE = (0.0, 0.2, 0.3, 0.9, 0.8, 1.0, 0.9)  # logit boost of a local shelf in each country
PLATFORMS = ("ios", "android", "desktop", "web", "speaker", "car")
DAYPARTS = ("morning", "daytime", "evening", "night")
DAYPART_START_H = (5, 10, 17, 22)  # local hour at which each daypart begins
WEEKEND = (False, True)
TENURES = ("new", "regular", "loyal")
TENURE_SHARES = (0.15, 0.45, 0.40)
KINDS = ("made_for_you", "recently_played", "new_releases", "podcasts", "charts", "genre", "mood", "editorial")


@dataclass(frozen=True, slots=True)
class Segment:
    """A listener segment: its share of listeners, latent taste (logit per TASTES entry) and
    the weights of the countries and platforms its listeners use."""

    name: str
    share: float
    taste: tuple[float, ...]
    countries: tuple[float, ...]
    platforms: tuple[float, ...]


_GLOBAL = (0.35, 0.15, 0.12, 0.10, 0.08, 0.10, 0.10)
_MOBILE = (0.30, 0.35, 0.15, 0.05, 0.08, 0.07)
SEGMENTS = (
    #       name        share  pop   hip   rock  latin elec  clas  talk  amb
    Segment("mainstream", 0.24, (1.2, 0.6, -0.2, 0.2, 0.2, -0.6, -0.6, -0.2), _GLOBAL, _MOBILE),
    Segment("hip_hop", 0.16, (0.4, 1.6, -0.6, 0.2, 0.4, -0.8, -0.4, -0.6), _GLOBAL, (0.30, 0.45, 0.08, 0.05, 0.05, 0.07)),
    Segment("rock", 0.14, (-0.2, -0.6, 1.6, -0.4, 0.0, 0.4, -0.2, -0.2), (0.30, 0.20, 0.20, 0.10, 0.05, 0.10, 0.05), _MOBILE),
    Segment("podcast", 0.12, (-0.2, -0.4, 0.0, -0.4, -0.6, 0.0, 2.0, 0.2), _GLOBAL, (0.25, 0.25, 0.10, 0.05, 0.15, 0.20)),
    Segment("latin", 0.14, (0.5, 0.3, -0.6, 1.8, 0.0, -0.6, -0.6, -0.4), (0.20, 0.03, 0.04, 0.35, 0.33, 0.02, 0.03), _MOBILE),
    Segment("focus", 0.20, (-0.4, -0.6, -0.2, -0.6, 0.6, 0.9, -0.2, 1.5), _GLOBAL, (0.15, 0.15, 0.40, 0.20, 0.08, 0.02)),
)

# Hidden context effects (logit), per shelf kind and per topic; a shelf adds both.
KIND_DAYPART = {
    "made_for_you": (0.0, 0.1, 0.2, 0.0),
    "recently_played": (0.2, 0.0, 0.1, 0.1),
    "new_releases": (0.0, 0.2, 0.1, -0.2),
    "podcasts": (0.8, 0.2, -0.3, -0.2),
    "charts": (-0.1, 0.2, 0.3, 0.0),
    "genre": (0.0, 0.0, 0.2, 0.0),
    "editorial": (0.0, 0.1, 0.0, 0.0),
}
TOPIC_DAYPART = {
    "workout": (0.6, -0.2, 0.4, -0.6),
    "focus": (0.1, 0.7, -0.3, -0.3),
    "sleep": (-0.8, -0.8, -0.2, 1.2),
    "chill": (-0.2, 0.0, 0.5, 0.3),
}
KIND_WEEKEND = {"podcasts": (0.2, -0.3), "new_releases": (-0.1, 0.2), "made_for_you": (0.0, 0.1), "charts": (0.0, 0.2)}
TOPIC_WEEKEND = {"focus": (0.3, -0.5), "chill": (-0.1, 0.3), "workout": (0.0, 0.2)}
KIND_PLATFORM = {
    "podcasts": (0.1, 0.1, -0.3, -0.3, 0.3, 0.8),
    "recently_played": (0.0, 0.0, 0.2, 0.1, 0.3, 0.4),
    "charts": (0.1, 0.1, 0.0, 0.0, 0.2, 0.3),
}
TOPIC_PLATFORM = {
    "focus": (-0.2, -0.2, 0.7, 0.5, 0.0, -0.6),
    "sleep": (0.2, 0.2, -0.6, -0.4, 0.8, -1.0),
    "workout": (0.3, 0.3, -0.4, -0.3, -0.2, 0.1),
}
KIND_TENURE = {
    "made_for_you": (-1.2, 0.2, 0.8),
    "recently_played": (-1.5, 0.3, 0.9),
    "charts": (0.6, 0.1, -0.2),
    "new_releases": (0.2, 0.1, 0.1),
    "editorial": (0.4, 0.0, -0.2),
    "podcasts": (-0.2, 0.0, 0.2),
}
# what editors add to a shelf's average appeal when they set the editorial order
EDITORIAL_PREFERENCE = {"editorial": 0.5, "new_releases": 0.4, "charts": 0.2}


@dataclass(frozen=True, slots=True)
class ShelfTemplate:
    """A kind of shelf: what the ranker sees (kind, source, topic, local) and its taste loading."""

    name: str
    kind: str
    source: str
    topic: str
    loading: tuple[tuple[str, float], ...]
    local: bool = False


def _mix(a: str, b: str) -> tuple[tuple[str, float], ...]:
    """A made-for-you mix: a little of every music taste, more of two."""
    music = [t for t in TASTES if t not in ("talk", "ambient")]
    return tuple((t, 0.35 + 0.4 * (t in (a, b))) for t in music)


# interleaved so that any prefix of the list mixes the kinds
TEMPLATES = (
    ShelfTemplate("daily-mix-1", "made_for_you", "algorithmic", "mix", _mix("pop", "hip_hop")),
    ShelfTemplate("top-50-global", "charts", "chart", "pop", (("pop", 0.7), ("hip_hop", 0.6), ("latin", 0.3))),
    ShelfTemplate("podcasts-news", "podcasts", "editorial", "talk", (("talk", 1.0),)),
    ShelfTemplate("chill", "mood", "editorial", "chill", (("ambient", 0.7), ("electronic", 0.3))),
    ShelfTemplate("hip-hop-central", "genre", "editorial", "hip_hop", (("hip_hop", 1.0),)),
    ShelfTemplate("new-releases", "new_releases", "algorithmic", "pop", (("pop", 0.6), ("hip_hop", 0.5), ("electronic", 0.3))),
    ShelfTemplate("recently-played", "recently_played", "history", "history", tuple((t, 0.2) for t in TASTES[:6])),
    ShelfTemplate("rock-classics", "genre", "editorial", "rock", (("rock", 1.0),)),
    ShelfTemplate("editors-picks", "editorial", "editorial", "mixed",
                  (("pop", 0.3), ("rock", 0.3), ("hip_hop", 0.3), ("electronic", 0.2))),
    ShelfTemplate("workout", "mood", "editorial", "workout", (("hip_hop", 0.5), ("electronic", 0.5), ("pop", 0.3))),
    ShelfTemplate("latin-hits", "genre", "editorial", "latin", (("latin", 1.0),)),
    ShelfTemplate("podcasts-comedy", "podcasts", "editorial", "talk", (("talk", 0.9),)),
    ShelfTemplate("top-50-local", "charts", "chart", "local", (("pop", 0.5), ("latin", 0.4), ("hip_hop", 0.3)), local=True),
    ShelfTemplate("focus", "mood", "editorial", "focus", (("ambient", 0.8), ("classical_jazz", 0.5))),
    ShelfTemplate("daily-mix-2", "made_for_you", "algorithmic", "mix", _mix("rock", "electronic")),
    ShelfTemplate("dance-electronic", "genre", "editorial", "electronic", (("electronic", 1.0),)),
    ShelfTemplate("viral-50", "charts", "chart", "hip_hop", (("hip_hop", 0.5), ("electronic", 0.5), ("pop", 0.4))),
    ShelfTemplate("sleep", "mood", "editorial", "sleep", (("ambient", 1.0),)),
    ShelfTemplate("fresh-finds", "editorial", "editorial", "mixed", (("electronic", 0.4), ("rock", 0.3), ("hip_hop", 0.3))),
    ShelfTemplate("jazz-and-classical", "genre", "editorial", "classical_jazz", (("classical_jazz", 1.0),)),
    ShelfTemplate("new-releases-local", "new_releases", "algorithmic", "local",
                  (("pop", 0.5), ("latin", 0.3), ("hip_hop", 0.3)), local=True),
    ShelfTemplate("podcasts-true-crime", "podcasts", "editorial", "talk", (("talk", 1.0),)),
    ShelfTemplate("pop-rising", "genre", "editorial", "pop", (("pop", 1.0),)),
    ShelfTemplate("daily-mix-3", "made_for_you", "algorithmic", "mix", _mix("latin", "classical_jazz")),
)


@dataclass(frozen=True, slots=True, eq=False)
class Catalogue:
    """The shelves of a world (C of them) and their hidden truth, one row per shelf.

    `loading` (C, len(TASTES)); `daypart` (C, 4), `weekend` (C, 2), `platform` (C, 6),
    `tenure` (C, 3): logit effects of the request context; `local` (C,) bool; `new_release`
    (C,) bool, the shelves refreshed by the weekly Friday release; `appeal` (C,) hidden logit
    appeal; `editorial_preference` (C,) what editors add when ordering.
    """

    shelves: tuple[Shelf, ...]
    loading: np.ndarray
    daypart: np.ndarray
    weekend: np.ndarray
    platform: np.ndarray
    tenure: np.ndarray
    local: np.ndarray
    new_release: np.ndarray
    appeal: np.ndarray
    editorial_preference: np.ndarray

    @property
    def shelf_ids(self) -> tuple[str, ...]:
        return tuple(s.shelf_id for s in self.shelves)


def _effects(table: dict[str, tuple[float, ...]], key: str, width: int) -> np.ndarray:
    return np.asarray(table.get(key, (0.0,) * width))


def build_catalogue(n_shelves: int, appeal_sd: float, rng: np.random.Generator) -> Catalogue:
    """The first `n_shelves` of TEMPLATES, then variants of them (suffix -2, -3, ...) with
    jittered loadings; hidden appeal ~ N(0, appeal_sd^2) per shelf."""
    templates = [TEMPLATES[i % len(TEMPLATES)] for i in range(n_shelves)]
    generation = [i // len(TEMPLATES) for i in range(n_shelves)]
    loading = np.zeros((n_shelves, len(TASTES)))
    for i, template in enumerate(templates):
        for taste, weight in template.loading:
            loading[i, TASTES.index(taste)] = weight
    variants = np.asarray(generation) > 0
    loading[variants] *= np.exp(rng.normal(0.0, 0.3, size=(int(variants.sum()), len(TASTES))))
    shelves = tuple(
        Shelf(
            t.name if g == 0 else f"{t.name}-{g + 1}",
            {"kind": t.kind, "source": t.source, "topic": t.topic, "local": t.local},
        )
        for t, g in zip(templates, generation)
    )

    def per_shelf(kind_table, topic_table, width):
        return np.array([_effects(kind_table, t.kind, width) + _effects(topic_table, t.topic, width) for t in templates])

    return Catalogue(
        shelves=shelves,
        loading=loading,
        daypart=per_shelf(KIND_DAYPART, TOPIC_DAYPART, len(DAYPARTS)),
        weekend=per_shelf(KIND_WEEKEND, TOPIC_WEEKEND, len(WEEKEND)),
        platform=per_shelf(KIND_PLATFORM, TOPIC_PLATFORM, len(PLATFORMS)),
        tenure=per_shelf(KIND_TENURE, {}, len(TENURES)),
        local=np.array([t.local for t in templates]),
        new_release=np.array([t.kind == "new_releases" for t in templates]),
        appeal=rng.normal(0.0, appeal_sd, size=n_shelves),
        editorial_preference=np.array([EDITORIAL_PREFERENCE.get(t.kind, 0.0) for t in templates]),
    )
