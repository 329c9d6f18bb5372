"""What the conformance suite runs against: a matrix of targets, or one component file.

A target is a component type with its metadata, the features it is expected to declare,
the backend it needs, and suite options. Metadata values may hold placeholders filled in
per test: ``{tmp}`` (a fresh folder) and ``{backend.<key>}`` (from the provisioned backend).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mechakit.core.errors import ManifestError

from .backends import UnknownBackendError, check_backend
from .options import SUITE_OPTIONS, option_problems
from .requirements import features_of, unknown_feature_message


@dataclass(frozen=True)
class Target:
    name: str
    type: str
    version: str = "v1"
    metadata: Mapping[str, str] = field(default_factory=dict)
    features: frozenset[str] | None = None
    """The features the driver must declare; None when nobody stated them (a component file
    without the annotation), and then the tests comparing with them are skipped."""
    backend: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    """Suite options, e.g. ``files`` to write into ``{tmp}``, ``env``, ``bad_etag``."""

    @property
    def category(self) -> str:
        return self.type.split(".", 1)[0]

    def render(self, value: str, context: Mapping[str, str]) -> str:
        """Fill ``{tmp}`` and ``{backend.key}`` placeholders in one metadata or option value."""
        try:
            return string.Formatter().vformat(value, (), _Context(context))
        except KeyError as exc:
            raise ManifestError(
                f"placeholder {exc} has no value (known: {', '.join(sorted(context))})",
                component=self.name,
            ) from None


class _Context(dict[str, Any]):
    """Lets ``{backend.host}`` address the flat key ``backend.host``."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__()
        self._flat = values

    def __missing__(self, key: str) -> Any:
        if key in self._flat:
            return self._flat[key]
        prefix = key + "."
        if any(k.startswith(prefix) for k in self._flat):
            return _Namespace(self._flat, prefix)
        raise KeyError(key)


class _Namespace:
    def __init__(self, values: Mapping[str, str], prefix: str) -> None:
        self._values, self._prefix = values, prefix

    def __getattr__(self, name: str) -> str:
        try:
            return self._values[self._prefix + name]
        except KeyError:
            raise KeyError(self._prefix + name) from None


TARGET_FIELDS = ("name", "type", "version", "metadata", "features", "backend", "options")


def load_matrix(path: str | Path) -> list[Target]:
    """Targets from a matrix file, or from every ``*.yaml`` file of a matrix folder.

    A file holds ``targets: [{name, type, version, metadata, features, backend, options}]``.
    Everything is checked on load, and a mistake is a ``ManifestError`` naming the file and
    the target: an unknown field, option or feature, a wrong option type, a missing
    ``features`` list, or a backend that is neither known nor a ``module:factory``.
    """
    path = Path(path)
    if path.is_dir():
        return [t for file in sorted(path.glob("*.yaml")) for t in load_matrix(file)]
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read conformance matrix: {exc}", file=str(path)) from None
    entries = (doc or {}).get("targets") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ManifestError("a conformance matrix needs a 'targets' list", file=str(path))
    return [_target(path, index, entry) for index, entry in enumerate(entries)]


def _target(path: Path, index: int, entry: object) -> Target:
    if not isinstance(entry, dict) or "type" not in entry:
        raise ManifestError(f"target #{index + 1} needs a 'type'", file=str(path))
    name = str(entry.get("name") or entry["type"])

    def error(reason: str, field: str) -> ManifestError:
        return ManifestError(f"target {name!r}: {reason}", file=str(path), field=field)

    type_ = str(entry["type"])
    category = type_.split(".", 1)[0]
    if category not in SUITE_OPTIONS:
        raise error(
            f"no conformance suite for {type_!r} (types start with one of: "
            f"{', '.join(SUITE_OPTIONS)})",
            "type",
        )
    unknown = sorted(str(k) for k in entry if k not in TARGET_FIELDS)
    if unknown:
        raise error(
            f"unknown field {unknown[0]!r} (known fields: {', '.join(TARGET_FIELDS)})", unknown[0]
        )
    features = entry.get("features")
    if not isinstance(features, list):
        raise error(
            "needs 'features': the list of features the driver must declare ([] for none)",
            "features",
        )
    known = features_of(category)
    for feature in features:
        if str(feature) not in known:
            raise error(unknown_feature_message(feature, known, category), "features")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise error("'options' must be a mapping", "options")
    problems = option_problems(category, options)
    if problems:
        raise error("; ".join(problems), "options")
    backend = entry.get("backend")
    if backend is not None:
        try:
            check_backend(str(backend))
        except UnknownBackendError as exc:
            raise error(str(exc), "backend") from None
    return Target(
        name=name,
        type=type_,
        version=str(entry.get("version") or "v1"),
        metadata={str(k): str(v) for k, v in (entry.get("metadata") or {}).items()},
        features=frozenset(str(f) for f in features),
        backend=None if backend is None else str(backend),
        options=dict(options),
    )
