"""Feature gates of suite tests, checked against the building blocks' Feature enums.

As in SQLAlchemy's ``testing/requirements.py``, a gate names something that exists: a
feature no building block defines (``@requires("ETGA")``) is an error when the decorator
runs, and a feature of another building block (``MESSAGE_TTL`` on a state test) is an error
when the suite is collected. A misspelled gate never skips a test forever.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping

import pytest

from mechakit.core.building_blocks import BUILDING_BLOCKS, CATEGORIES

FEATURE_ENUMS: Mapping[str, type[enum.StrEnum]] = {
    category: block.features
    for category, block in BUILDING_BLOCKS.items()
    if block.features is not None
}
"""Building block → its Feature enum; the other categories declare no features."""

REQUIRES_MARK = "requires_features"
WITHOUT_MARK = "without_features"


class UnknownFeatureError(ValueError):
    """A gate or an expectation names a feature its building block does not define."""


def features_of(category: str) -> frozenset[str]:
    """Every feature a component of ``category`` can declare."""
    found = FEATURE_ENUMS.get(category)
    return frozenset(str(f) for f in found) if found is not None else frozenset()


def _every_feature() -> frozenset[str]:
    return frozenset(name for category in CATEGORIES for name in features_of(category))


def unknown_feature_message(name: object, known: Iterable[str], what: str) -> str:
    """``'ETGA' is not a feature of state (known: ETAG, …); did you mean 'ETAG'?``."""
    known = sorted(known)
    near = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    listing = ", ".join(known) if known else "none"
    return f"{str(name)!r} is not a feature of {what} (known: {listing}){hint}"


def _gate(mark: str, gate: str, features: tuple[enum.StrEnum | str, ...]) -> pytest.MarkDecorator:
    if not features:
        raise UnknownFeatureError(f"{gate}() needs at least one feature")
    every = _every_feature()
    for feature in features:
        if isinstance(feature, enum.StrEnum):
            continue
        if not isinstance(feature, str) or feature not in every:
            raise UnknownFeatureError(
                f"{gate}({feature!r}): "
                + unknown_feature_message(feature, every, "any building block")
            )
    decorator: pytest.MarkDecorator = getattr(pytest.mark, mark)(*features)
    return decorator


def requires(*features: enum.StrEnum | str) -> pytest.MarkDecorator:
    """``@requires(StateFeature.ETAG)``: the test runs only for targets expected to declare
    every one of ``features`` (names as strings are accepted and checked the same way)."""
    return _gate(REQUIRES_MARK, "requires", features)


def without(*features: enum.StrEnum | str) -> pytest.MarkDecorator:
    """``@without(StateFeature.TTL)``: the test runs only for targets expected to declare none
    of ``features``; it checks that they are really absent."""
    return _gate(WITHOUT_MARK, "without", features)


def check_gates(category: str | None, test: str, marks: Iterable[pytest.Mark]) -> None:
    """Raise when a gate of ``test`` names a feature that ``category`` does not define."""
    enum_type = FEATURE_ENUMS.get(category or "")
    known = features_of(category or "")
    for mark in marks:
        if mark.name not in (REQUIRES_MARK, WITHOUT_MARK):
            continue
        gate = "requires" if mark.name == REQUIRES_MARK else "without"
        for feature in mark.args:
            foreign = isinstance(feature, enum.StrEnum) and type(feature) is not enum_type
            if foreign or str(feature) not in known:
                shown = f"{type(feature).__name__}.{feature.name}" if foreign else repr(feature)
                raise UnknownFeatureError(
                    f"{test}: {gate}({shown}): "
                    + unknown_feature_message(feature, known, category or "this suite")
                )


def gate_features(marks: Iterable[pytest.Mark], mark_name: str) -> list[str]:
    """The feature names of every ``mark_name`` gate among ``marks``."""
    return [str(f) for mark in marks if mark.name == mark_name for f in mark.args]
