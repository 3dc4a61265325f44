"""Errors the endpoints turn into HTTP answers (each message names the field and the rule)."""

from __future__ import annotations

from bandit.errors import ShelfBanditError


class UnknownEvent(ShelfBanditError):
    """A reward names an event this deployment never served (or has forgotten)."""


class LateReward(ShelfBanditError):
    """A reward arrived after its event's reward window; it is kept aside, not learned from."""


class RepeatedEvent(ShelfBanditError):
    """A ranking request reuses an event id that was already served."""


class NotReady(ShelfBanditError):
    """The worker has no model to serve yet."""
