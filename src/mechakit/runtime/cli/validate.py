"""``mechakit validate``: check Component, Subscription and Configuration YAML offline."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import driver_class

if TYPE_CHECKING:
    from mechakit.core.metadata import Settings
    from mechakit.core.registry import ComponentSpec
    from mechakit.runtime.manifest import ComponentManifest, Manifests


NAME = "validate"
HELP = "check Component, Subscription and Configuration YAML without connecting"
DESCRIPTION = (
    "Load every manifest, resolve each component type, and decode each "
    "component's metadata with its settings model; nothing connects to a backend and "
    "secretKeyRef values are not read (only their secret store is checked). "
    "Exits 1 when anything is wrong."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders or files of YAML")
    parser.set_defaults(handler=_validate)


class _Report:
    def __init__(self) -> None:
        self.checked = 0
        self.failed = 0

    def problem(self, error: Exception) -> None:
        """A file (or set of files) that could not be loaded at all."""
        self.checked += 1
        self.failed += 1
        print(f"ERROR  {error}")

    def resource(self, status: str, what: str, where: str, notes: Sequence[str] = ()) -> None:
        self.checked += 1
        if status == "ERROR":
            self.failed += 1
        print(f"{status:<6} {what}  [{where}]")
        for note in notes:
            print(f"       {note}")


def _validate(namespace: argparse.Namespace, _: list[str]) -> int:
    from mechakit.core.errors import ManifestError
    from mechakit.core.registry import default_registry
    from mechakit.runtime.manifest import load_manifest_file, load_manifests, manifest_files

    report = _Report()
    try:
        files = manifest_files(namespace.paths)
    except ManifestError as exc:
        print(f"ERROR  {exc}")
        return 1
    good: list[Path] = []
    for file in files:
        try:
            load_manifest_file(file)
        except ManifestError as exc:
            report.problem(exc)
            continue
        good.append(file)
    try:
        manifests = load_manifests(good)
    except ManifestError as exc:
        report.problem(exc)
        manifests = _merge([load_manifest_file(f) for f in good])
    registry = default_registry()
    for component in manifests.components:
        errors, warnings = _check_component(component, manifests, registry)
        notes = [f"error: {e}" for e in errors] + [f"warning: {w}" for w in warnings]
        status = "ERROR" if errors else ("WARN" if warnings else "OK")
        what = f"Component {component.name!r} ({component.type}/{component.version})"
        report.resource(status, what, component.location, notes)
    pubsubs = {c.name for c in manifests.components if c.category == "pubsub"}
    for subscription in manifests.subscriptions:
        what = f"Subscription {subscription.name!r} (topic {subscription.topic!r})"
        where = f"{subscription.file}:{subscription.line}"
        if subscription.pubsub_name in pubsubs:
            report.resource("OK", what, where)
        else:
            known = ", ".join(sorted(pubsubs)) or "none"
            report.resource(
                "ERROR",
                what,
                where,
                [
                    f"error: spec.pubsubname: no pub/sub component named "
                    f"{subscription.pubsub_name!r} (pub/sub components: {known})"
                ],
            )
    stores = {c.name for c in manifests.components if c.category == "secretstores"}
    for configuration in manifests.configurations:
        unknown = [s.store_name for s in configuration.secret_scopes if s.store_name not in stores]
        notes = [
            f"warning: spec.secrets.scopes names {name!r}, which is not a secret store here"
            for name in unknown
        ]
        where = f"{configuration.file}:{configuration.line}"
        report.resource(
            "WARN" if notes else "OK", f"Configuration {configuration.name!r}", where, notes
        )
    if not report.checked:
        print(f"no resources found in {', '.join(namespace.paths)}")
        return 1
    print(
        f"\n{report.checked} checked, {report.checked - report.failed} OK, "
        f"{report.failed} with errors"
    )
    return 1 if report.failed else 0


def _merge(parts: Sequence[Manifests]) -> Manifests:
    from mechakit.runtime.manifest import Manifests

    merged = Manifests()
    for part in parts:
        merged.components.extend(part.components)
        merged.subscriptions.extend(part.subscriptions)
        merged.configurations.extend(part.configurations)
        merged.files.extend(part.files)
    return merged


def _check_component(
    component: ComponentManifest, manifests: Manifests, registry: Any
) -> tuple[list[str], list[str]]:
    """Errors and warnings for one component, found without connecting to anything."""
    from mechakit.core.errors import ManifestError, MechakitError, MetadataError
    from mechakit.core.metadata import Settings
    from mechakit.runtime.host import secret_store_for

    errors: list[str] = []
    warnings: list[str] = []
    try:
        spec: ComponentSpec = registry.resolve(component.type, component.version)
    except MechakitError as exc:
        return [exc.reason], []
    try:
        secret_store_for(component, manifests.components)
    except ManifestError as exc:
        errors.append(exc.reason)
    if not spec.installed():
        needs = ", ".join(spec.requires)
        hint = f": {spec.install_hint}" if spec.install_hint else ""
        warnings.append(f"needs {needs}, which is not installed here{hint}")
    try:
        settings_model = getattr(driver_class(spec), "settings_model", None)
    except (ImportError, AttributeError) as exc:
        warnings.append(f"metadata not checked: cannot import {spec.target} ({exc})")
        return errors, warnings
    if not (isinstance(settings_model, type) and issubclass(settings_model, Settings)):
        errors.append(f"{spec.target} is not a mechakit Component (no settings_model)")
        return errors, warnings
    properties: dict[str, str] = {}
    deferred: set[str] = set()
    for item in component.metadata:
        if item.secret_key_ref is not None:
            deferred.add(item.name)
        elif item.env_ref is not None and item.env_ref not in os.environ:
            deferred.add(item.name)
            warnings.append(
                f"{item.field_path} ({item.name!r}): environment variable {item.env_ref!r} is "
                "not set here, so its value is not checked"
            )
        else:
            properties[item.name] = item.resolve_plain()
    unknown = _Collector()
    try:
        settings_model.from_metadata(properties, component=component.label, log=unknown.logger)
    except MetadataError as exc:
        errors.extend(_problems(exc.reason, settings_model, deferred))
    warnings.extend(message.removeprefix(f"{component.label}: ") for message in unknown.messages)
    return errors, warnings


def _problems(reason: str, settings_model: type[Settings], deferred: set[str]) -> list[str]:
    """The decoding problems, minus "required" for fields whose value comes later."""
    names: dict[str, str] = {}
    for doc in settings_model.fields_doc():
        for name in (doc.name, *doc.aliases):
            names[name.lower()] = doc.name
    later = {names.get(name.lower(), name).lower() for name in deferred}
    kept = []
    for problem in reason.split("; "):
        if problem.startswith("metadata '") and " is required" in problem:
            name = problem.split("'", 2)[1]
            if names.get(name.lower(), name).lower() in later:
                continue
        kept.append(problem)
    return kept


class _Collector(logging.Handler):
    """Catches the unknown-metadata warnings ``Settings.from_metadata`` logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.logger = logging.Logger("mechakit.validate")
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
