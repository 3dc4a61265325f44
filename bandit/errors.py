"""Project errors: each names the field, the rule and what was found."""

from __future__ import annotations


class ShelfBanditError(Exception):
    """Base class of every error the project raises on purpose."""


class FieldError(ShelfBanditError):
    """An error about one field: `field` names it (may be empty), `rule` says what was expected
    or what happened. Both travel as attributes to whoever reports the error (the HTTP edge
    answers `{"field", "rule"}` from them); the message is `"<field>: <rule>"`."""

    def __init__(self, field: str, rule: str, found: object = ...) -> None:
        self.field = field
        self.rule = rule
        self.found = found
        message = f"{field}: {rule}" if field else rule
        if found is not ...:
            message += f" (found {_short(found)})"
        super().__init__(message)


class ValidationError(FieldError, ValueError):
    """An input broke a rule; `field` names it, `rule` says what was expected."""


class ModelFileError(ShelfBanditError):
    """A model file is missing, corrupt, or was written by another configuration."""


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
