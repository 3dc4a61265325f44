"""Errors the endpoints turn into HTTP answers; each carries its `field` and `rule` (bandit.errors.FieldError)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bandit.errors import FieldError

if TYPE_CHECKING:
    from service.serving import ServedAnswer


class UnknownEvent(FieldError):
    """A reward names an event this deployment never served (or has forgotten)."""


class LateReward(FieldError):
    """A reward arrived after its event's reward window; it is kept aside, not learned from."""


class RepeatedEvent(FieldError):
    """A ranking request reuses an event id that was already served; `served` is the answer it
    got while this worker remembers it (None once forgotten, or while it is still being decided)."""

    def __init__(self, field: str, rule: str, served: ServedAnswer | None = None) -> None:
        super().__init__(field, rule)
        self.served = served


class NotReady(FieldError):
    """The worker has no model to serve yet."""


class Unauthenticated(FieldError):
    """An admin endpoint was called without a bearer token."""


class Forbidden(FieldError):
    """An admin endpoint was called with a wrong token, or admin endpoints are disabled."""
