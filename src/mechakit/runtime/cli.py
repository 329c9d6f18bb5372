"""The ``mechakit`` command: validate manifests, list and document components, run conformance.

Each subcommand imports what it needs when it runs, so ``mechakit components list``
imports no backend SDK. Another issue adds ``run`` and ``init``: each subcommand is one
``_add_<name>`` function registering its parser and handler in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechakit.core.metadata import Settings
    from mechakit.core.registry import ComponentSpec
    from mechakit.runtime.manifest import ComponentManifest, Manifests

Handler = Callable[[argparse.Namespace, list[str]], int]

SUITES = {
    "state": "TestState",
    "pubsub": "TestPubSub",
    "bindings": "TestBindings",
    "secretstores": "TestSecretStore",
    "lock": "TestLock",
    "configuration": "TestConfiguration",
}
"""Component category → its test class in ``mechakit/conformance/all_suites.py``."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, passthrough = args[:split], args[split + 1 :]
    parser = build_parser()
    namespace = parser.parse_args(args)
    if passthrough and not getattr(namespace, "accepts_passthrough", False):
        parser.error("arguments after '--' are only accepted by 'mechakit conformance'")
    handler: Handler = namespace.handler
    try:
        return handler(namespace, passthrough)
    except BrokenPipeError:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechakit",
        description="Dapr-compatible components for Python: check manifests, inspect drivers, "
        "run the conformance suite.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_validate(commands)
    _add_components(commands)
    _add_conformance(commands)
    return parser


# --- validate ---------------------------------------------------------------------------


def _add_validate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "validate",
        help="check Component, Subscription and Configuration YAML without connecting",
        description="Load every manifest, resolve each component type, and decode each "
        "component's metadata with its settings model; nothing connects to a backend and "
        "secretKeyRef values are not read (only their secret store is checked). "
        "Exits 1 when anything is wrong.",
    )
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
        settings_model = getattr(_driver_class(spec), "settings_model", None)
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


def _driver_class(spec: ComponentSpec) -> Any:
    """The driver class, imported without checking its SDK (drivers import it lazily)."""
    module_name, _, attr = spec.target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


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


# --- components -------------------------------------------------------------------------


def _add_components(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "components",
        help="list installed component types, or show one's metadata",
        description="Inspect the component types installed plug-ins provide.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="a table of every component type (imports no backend SDK)",
        description="Every component type of every installed plug-in, with its status and "
        "whether the SDK it needs is installed.",
    )
    listing.add_argument(
        "--type",
        metavar="CATEGORY",
        help="only this category (state, pubsub, bindings, secretstores, lock, "
        "configuration) or type prefix",
    )
    listing.set_defaults(handler=_components_list)
    show = actions.add_parser(
        "show",
        help="the metadata fields (or JSON schema) and features of one type",
        description="Document one component type from its settings model.",
    )
    show.add_argument("type", metavar="TYPE", help="a type string, e.g. state.redis")
    show.add_argument("--version", default="v1", help="the component version (default: v1)")
    show.add_argument("--json", action="store_true", help="print the JSON schema of the metadata")
    show.set_defaults(handler=_components_show)


def _components_list(namespace: argparse.Namespace, _: list[str]) -> int:
    from mechakit.core.registry import CATEGORIES, default_registry

    wanted: str | None = namespace.type
    specs = default_registry().specs()
    if wanted:
        specs = [s for s in specs if s.category == wanted or s.type.startswith(wanted)]
        if not specs:
            print(
                f"no component type matches {wanted!r} (categories: {', '.join(CATEGORIES)})",
                file=sys.stderr,
            )
            return 1
    rows = [["TYPE", "VERSION", "STATUS", "INSTALLED", "DESCRIPTION"]]
    for spec in specs:
        installed = "yes" if spec.installed() else f"no: {spec.install_hint or 'missing SDK'}"
        rows.append([spec.type, spec.version, spec.status, installed, spec.description])
    _print_table(rows)
    return 0


def _components_show(namespace: argparse.Namespace, _: list[str]) -> int:
    from mechakit.core.errors import MechakitError
    from mechakit.core.registry import default_registry

    try:
        spec = default_registry().resolve(namespace.type, namespace.version)
    except MechakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        cls = _driver_class(spec)
    except ImportError as exc:
        print(f"error: cannot import {spec.target}: {exc}", file=sys.stderr)
        return 1
    settings_model: type[Settings] = cls.settings_model
    features = sorted(str(f) for f in getattr(cls, "FEATURES", ()))
    if namespace.json:
        schema = settings_model.json_schema()
        schema["x-type"] = spec.type
        schema["x-version"] = spec.version
        if hasattr(cls, "FEATURES"):
            schema["x-features"] = features
        print(json.dumps(schema, indent=2))
        return 0
    print(f"{spec.type} {spec.version} ({spec.status})")
    if spec.description:
        print(spec.description)
    print(f"driver: {spec.target}  (plug-in: {spec.plugin or '?'})")
    if spec.aliases:
        print(f"aliases: {', '.join(spec.aliases)}")
    if spec.requires:
        state = "installed" if spec.installed() else f"not installed: {spec.install_hint}"
        print(f"needs: {', '.join(spec.requires)} ({state})")
    if hasattr(cls, "FEATURES"):
        print(f"features: {', '.join(features) or 'none'}")
    print()
    rows = [["METADATA", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"]]
    for doc in settings_model.fields_doc():
        kind = f"{doc.type}, sensitive" if doc.sensitive else doc.type
        description = doc.description
        if doc.aliases:
            description += f" (aliases: {', '.join(doc.aliases)})"
        if doc.example and doc.required:
            description += f" e.g. {doc.example}"
        default = "" if doc.default is None else (doc.default or '""')
        rows.append([doc.name, kind, "yes" if doc.required else "", default, description.strip()])
    if len(rows) == 1:
        print("no metadata fields")
    else:
        _print_table(rows)
    return 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is never padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


# --- conformance --------------------------------------------------------------------------


def _add_conformance(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "conformance",
        help="run the conformance suite against the component in a YAML file",
        description="Run every conformance test of the component's type against the first "
        "Component in FILE ({tmp} in metadata values becomes a fresh folder per test). "
        "Arguments after '--' go to pytest, e.g. 'mechakit conformance c.yaml -- -x -v'. "
        "The exit code is pytest's.",
    )
    parser.add_argument("file", metavar="FILE", help="a Dapr Component YAML file")
    parser.add_argument(
        "--only",
        metavar="WORDS",
        help="comma-separated words: run only tests whose names contain one of them "
        "(e.g. etag,ttl)",
    )
    parser.set_defaults(handler=_conformance, accepts_passthrough=True)


def _conformance(namespace: argparse.Namespace, passthrough: list[str]) -> int:
    from mechakit.core.errors import ManifestError
    from mechakit.runtime.manifest import load_manifests

    file = Path(namespace.file).resolve()
    try:
        components = load_manifests(file).components
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not components:
        print(f"error: {namespace.file}: no 'kind: Component' document found", file=sys.stderr)
        return 1
    category = components[0].category
    if category not in SUITES:
        print(
            f"error: {components[0].label}: no conformance suite for category {category!r} "
            f"(suites: {', '.join(SUITES)})",
            file=sys.stderr,
        )
        return 1
    suites = Path(importlib.import_module("mechakit.conformance").__file__ or "").parent
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"{suites / 'all_suites.py'}::{SUITES[category]}",
        "-p",
        "mechakit.conformance.plugin",
        "--mechakit-component",
        str(file),
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-p",
        "no:cacheprovider",
        "-rs",
    ]
    if namespace.only:
        words = [w.strip() for w in namespace.only.split(",") if w.strip()]
        command += ["-k", " or ".join(words)]
    command += passthrough
    return subprocess.call(command)


__all__ = ["build_parser", "main"]
