"""A conformance target from one Dapr Component YAML file (the third-party author's path).

The author states the features the driver must declare, so that the suite compares the
driver's declaration with something other than itself: in the file, as the annotation

    metadata:
      annotations:
        conformance.mechakit.io/features: "ETAG, TTL"   # "" for none

or on the command line (``features``, which wins over the file). Kubernetes and daprd
ignore the annotation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mechakit.core.errors import ManifestError

from .requirements import features_of, unknown_feature_message
from .targets import Target

FEATURES_ANNOTATION = "conformance.mechakit.io/features"


def target_from_component_file(path: Path, features: Iterable[str] | str | None = None) -> Target:
    """The first Component in ``path``; plain values and ``envRef`` only (no secret store).

    ``features`` (names, or one comma-separated string; empty for none) overrides the
    file's ``conformance.mechakit.io/features`` annotation. When neither states them, the
    target's ``features`` is None and the tests comparing with them are skipped.
    """
    from mechakit.runtime.manifest import load_manifests

    manifests = load_manifests(path)
    if not manifests.components:
        raise ManifestError("no 'kind: Component' document found", file=str(path))
    component = manifests.components[0]
    metadata: dict[str, str] = {}
    for item in component.metadata:
        if item.secret_key_ref is not None:
            raise ManifestError(
                "secretKeyRef is not supported in a conformance component file; "
                "use a value or envRef",
                file=str(path),
                component=component.name,
                field=f"spec.metadata[{item.name}]",
            )
        metadata[item.name] = item.resolve_plain()
    where = "--mechakit-features"
    if features is None:
        features, where = _annotation(path), f"metadata.annotations[{FEATURES_ANNOTATION}]"
    return Target(
        name=component.type,
        type=component.type,
        version=component.version,
        metadata=metadata,
        features=None
        if features is None
        else parse_features(component.type, features, path, where),
        backend=None,
    )


def parse_features(
    type_: str, features: Iterable[str] | str, path: Path | str, where: str
) -> frozenset[str]:
    """Feature names from a list or a comma-separated string, checked against the type's."""
    names = features.split(",") if isinstance(features, str) else list(features)
    stated = frozenset(n.strip().upper() for n in names if n.strip())
    if stated == {"NONE"}:
        return frozenset()
    category = type_.split(".", 1)[0]
    known = features_of(category)
    for name in sorted(stated - known):
        raise ManifestError(
            unknown_feature_message(name, known, category), file=str(path), field=where
        )
    return stated


def _annotation(path: Path) -> str | None:
    """The features annotation of the first Component document, or None when it has none."""
    documents: list[Any] = list(yaml.safe_load_all(path.read_text()))
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "Component":
            annotations = (doc.get("metadata") or {}).get("annotations") or {}
            value = annotations.get(FEATURES_ANNOTATION) if isinstance(annotations, dict) else None
            if value is None:
                return None
            if not isinstance(value, str):
                raise ManifestError(
                    f'the {FEATURES_ANNOTATION} annotation must be a string, e.g. "ETAG, TTL"',
                    file=str(path),
                    field=f"metadata.annotations[{FEATURES_ANNOTATION}]",
                )
            return value
    return None
