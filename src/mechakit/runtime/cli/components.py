"""``mechakit components list|show``: the installed component types and their metadata."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ._common import driver_class, print_table

if TYPE_CHECKING:
    from mechakit.core.metadata import Settings


NAME = "components"
HELP = "list installed component types, or show one's metadata"
DESCRIPTION = "Inspect the component types installed plug-ins provide."


def configure(parser: argparse.ArgumentParser) -> None:
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
    from mechakit.core.building_blocks import CATEGORIES
    from mechakit.core.registry import default_registry

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
    print_table(rows)
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
        cls = driver_class(spec)
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
        print_table(rows)
    return 0
