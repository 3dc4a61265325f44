"""Feature maps: validated, immutable, hashable name -> value mappings."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from numbers import Real

from bandit.errors import ValidationError

FeatureValue = str | bool | int | float

MAX_FEATURES = 256
MAX_NAME_LENGTH = 128
MAX_VALUE_LENGTH = 512
# a number is 0 or of a magnitude in [MIN_MAGNITUDE, MAX_MAGNITUDE]: VW's scores overflow beyond
# (1e20 already, for a fresh model), and its text parser turns values like 1.9e-121 into nonsense;
# no count, age or rate a feature carries comes near either bound
MIN_MAGNITUDE, MAX_MAGNITUDE = 1e-12, 1e12


class Features(Mapping[str, FeatureValue]):
    """An immutable feature map. Values are str, bool or finite numbers.

    Names and string values may hold any character; the VW adapter escapes them.
    """

    __slots__ = ("_bools", "_dict", "_hash", "_items")

    def __init__(self, features: Mapping[str, object] | None = None, *, field: str = "features") -> None:
        if features is None:
            features = {}
        if not isinstance(features, Mapping):
            raise ValidationError(field, "must be a mapping of feature name to value", type(features).__name__)
        if len(features) > MAX_FEATURES:
            raise ValidationError(field, f"at most {MAX_FEATURES} features per object", len(features))
        checked = {}
        for name, value in features.items():
            checked[_check_name(name, field)] = _check_value(value, f"{field}.{name}")
        self._dict = checked
        self._items = tuple(sorted(checked.items()))
        # True == 1.0 in Python, but VW reads x=true and x:1.0 as different features: the names of
        # boolean values are part of the identity, so caches keyed by features never mix them up
        self._bools = tuple(name for name, value in self._items if value.__class__ is bool)
        self._hash = hash((self._items, self._bools))

    def __getitem__(self, name: str) -> FeatureValue:
        return self._dict[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        # rebuilt, not copied: the hash of a string differs between processes (Ray's workers)
        return (Features, (self._dict,))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Features):
            return self._items == other._items and self._bools == other._bools
        return isinstance(other, Mapping) and dict(self._dict) == dict(other)

    def __repr__(self) -> str:
        return f"Features({self._dict!r})"

    def items_sorted(self) -> tuple[tuple[str, FeatureValue], ...]:
        """Name/value pairs sorted by name (the order encoders use)."""
        return self._items


def as_features(value: Mapping[str, object] | Features | None, field: str) -> Features:
    """Return `value` as a Features map, validating it once."""
    if isinstance(value, Features):
        return value
    return Features(value, field=field)


def _check_name(name: object, field: str) -> str:
    if not isinstance(name, str):
        raise ValidationError(field, "feature names must be strings", name)
    if not name:
        raise ValidationError(field, "feature names must not be empty", name)
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(field, f"feature names must have at most {MAX_NAME_LENGTH} characters", name)
    return name


def _check_value(value: object, field: str) -> FeatureValue:
    kind = value.__class__  # exact classes first: the ABC test of Real is slow, and bool cannot be subclassed
    if kind is bool:
        return value
    if kind is str or isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise ValidationError(field, f"string values must have at most {MAX_VALUE_LENGTH} characters", value)
        return value
    if kind is float or isinstance(value, Real):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ValidationError(field, "numeric values must be finite (no NaN or infinity)", value)
        if number != 0.0 and not MIN_MAGNITUDE <= abs(number) <= MAX_MAGNITUDE:
            raise ValidationError(field, f"numeric values must be 0 or of a magnitude in [{MIN_MAGNITUDE:g}, {MAX_MAGNITUDE:g}]", value)
        return number
    raise ValidationError(field, "values must be a string, a boolean or a finite number", type(value).__name__)
