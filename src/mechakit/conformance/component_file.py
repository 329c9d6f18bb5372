"""A conformance target from one Dapr Component YAML file (the third-party author's path)."""

from __future__ import annotations

from pathlib import Path

from mechakit.core.errors import ManifestError

from .targets import Target


def target_from_component_file(path: Path) -> Target:
    """The first Component in ``path``; plain values and ``envRef`` only (no secret store)."""
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
    return Target(
        name=component.type,
        type=component.type,
        version=component.version,
        metadata=metadata,
        features=None,
        backend=None,
    )
