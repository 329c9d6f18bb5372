"""The ``mechakit`` command: validate manifests, list and document components, run conformance,
serve the Dapr HTTP API for an app (``run``) and write default components (``init``).

Each subcommand imports what it needs when it runs, so ``mechakit components list``
imports no backend SDK. Each subcommand is one ``_add_<name>`` function registering its
parser and handler in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechakit.core.metadata import Settings
    from mechakit.core.registry import ComponentSpec
    from mechakit.runtime.app_process import AppProcess
    from mechakit.runtime.grpc_api import GrpcServer
    from mechakit.runtime.local import Runtime
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
        parser.error("arguments after '--' are only accepted by 'mechakit conformance' and 'run'")
    handler: Handler = namespace.handler
    try:
        return handler(namespace, passthrough)
    except BrokenPipeError:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechakit",
        description="Dapr-compatible components for Python: check manifests, inspect drivers, "
        "run the conformance suite, serve the Dapr HTTP API for an app.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_validate(commands)
    _add_components(commands)
    _add_conformance(commands)
    _add_run(commands)
    _add_init(commands)
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


# --- run --------------------------------------------------------------------------------

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
DEFAULT_GRPC_PORT = 50001


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="serve the Dapr HTTP API over the components of a folder, and run the app",
        description="Start the components, serve the Dapr HTTP API v1.0 on "
        "--api-listen-address:--dapr-http-port, and run the command after '--' with "
        "DAPR_HTTP_PORT, DAPR_GRPC_PORT and APP_ID set. SIGINT and SIGTERM are passed on to "
        "the app; when it exits, mechakit stops and exits with its code, and when mechakit is "
        "killed the app is killed too. Without a command "
        "it serves until stopped. Set DAPR_API_TOKEN to require the dapr-api-token header.",
    )
    parser.add_argument("--app-id", required=True, help="the app id (key prefix, event source)")
    parser.add_argument(
        "--resources-path",
        "--components-path",
        dest="resources_paths",
        action="append",
        metavar="DIR",
        help="a folder (or file) of Component, Subscription and Configuration YAML; "
        "repeatable (default: $MECHAKIT_HOME/components, ~/.mechakit/components, else "
        "built-in SQLite state, in-memory pub/sub and locks)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="a file with the Configuration (secret scopes) to apply"
    )
    parser.add_argument("--dapr-http-port", type=_port, default=3500, metavar="PORT")
    parser.add_argument(
        "--dapr-grpc-port",
        type=_port,
        default=None,
        metavar="PORT",
        help=f"where the Dapr gRPC API listens, given to the app as DAPR_GRPC_PORT (default "
        f"{DEFAULT_GRPC_PORT}, skipped with a warning when taken; 0: a free port)",
    )
    parser.add_argument(
        "--app-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="where the app listens: its subscriptions and input-binding events are delivered "
        "there once it answers",
    )
    parser.add_argument(
        "--app-protocol",
        choices=("http", "grpc"),
        default="http",
        help="how the app is called: HTTP (GET /dapr/subscribe, POST <route>) or gRPC "
        "(AppCallback)",
    )
    parser.add_argument("--log-level", choices=tuple(LOG_LEVELS), default="info")
    parser.add_argument(
        "--api-listen-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="where the HTTP API listens (default 127.0.0.1; 0.0.0.0 exposes it)",
    )
    parser.add_argument(
        "--dapr-http-max-request-size",
        type=int,
        default=4,
        metavar="MB",
        help="larger request bodies get 413 (default 4)",
    )
    parser.add_argument(
        "--http-read-header-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close an HTTP connection whose request headers are not complete by then "
        "(default 10, as daprd; 0: no limit)",
    )
    parser.add_argument(
        "--http-read-body-timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="answer 408 when a request body is not complete this long after its headers "
        "(default 60; 0: no limit)",
    )
    parser.add_argument(
        "--max-bulk-keys",
        type=_count,
        default=10_000,
        metavar="N",
        help="most keys, items, operations or entries in one bulk state, transaction or "
        "bulk publish request, over HTTP and gRPC; more get 400 / INVALID_ARGUMENT "
        "(default 10000; 0: no limit)",
    )
    parser.set_defaults(handler=_run, accepts_passthrough=True)


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {count}")
    return count


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text}")
    return seconds


def _run(namespace: argparse.Namespace, command: list[str]) -> int:
    logging.basicConfig(
        level=LOG_LEVELS[namespace.log_level],
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if namespace.dapr_http_max_request_size <= 0:
        print("error: --dapr-http-max-request-size must be > 0", file=sys.stderr)
        return 2
    return asyncio.run(_serve(namespace, command))


async def _serve(namespace: argparse.Namespace, command: list[str]) -> int:
    from mechakit.core.errors import MechakitError
    from mechakit.runtime.local import Runtime

    log = logging.getLogger("mechakit.run")
    try:
        manifests, configuration = await asyncio.to_thread(_run_resources, namespace, log)
    except MechakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    runtime = Runtime(manifests, app_id=namespace.app_id, configuration=configuration)
    log.info("app id %r: starting %d component(s)", namespace.app_id, len(manifests.components))
    try:
        await runtime.start()
    except MechakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return await _serve_started(runtime, namespace, command, log)
    finally:
        await runtime.close()


def _run_resources(
    namespace: argparse.Namespace, log: logging.Logger
) -> tuple[Manifests, str | None]:
    """The manifests to run and the name of the Configuration to apply."""
    import tempfile

    from mechakit.core.errors import ConfigurationError
    from mechakit.runtime.defaults import components_dir, default_components, mechakit_home
    from mechakit.runtime.manifest import Manifests, load_manifests

    paths: list[str] | None = namespace.resources_paths
    if paths:
        manifests = load_manifests(paths)
    elif components_dir().is_dir():
        log.info("loading components from %s", components_dir())
        manifests = load_manifests(components_dir())
    else:
        home = mechakit_home()
        home.mkdir(parents=True, exist_ok=True)
        defaults = default_components(home)
        log.info(
            "no folder %s ('mechakit init' writes one): using the built-in components "
            "statestore (state.sqlite in %s), pubsub (pubsub.in-memory), lockstore "
            "(lock.in-memory)",
            components_dir(),
            home / "state.db",
        )
        with tempfile.TemporaryDirectory(prefix="mechakit-") as folder:
            for name, text in defaults.items():
                Path(folder, name).write_text(text, encoding="utf-8")
            manifests = load_manifests(folder)
    if not namespace.config:
        return manifests, None
    chosen = load_manifests(namespace.config).configurations
    if not chosen:
        raise ConfigurationError(f"{namespace.config}: no 'kind: Configuration' document found")
    names = {c.name for c in chosen}
    merged = Manifests(
        components=manifests.components,
        subscriptions=manifests.subscriptions,
        configurations=[*chosen, *(c for c in manifests.configurations if c.name not in names)],
        files=[*manifests.files, namespace.config],
    )
    return merged, chosen[0].name


async def _serve_started(
    runtime: Runtime, namespace: argparse.Namespace, command: list[str], log: logging.Logger
) -> int:
    """Serve the HTTP API (and run the app) until the app exits or a signal arrives."""
    from mechakit.runtime.http_api import create_app
    from mechakit.runtime.http_server import create_server, listen

    host: str = namespace.api_listen_address
    try:
        listener = listen(host, namespace.dapr_http_port)
    except OSError as exc:
        print(
            f"error: cannot listen on {host}:{namespace.dapr_http_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    port: int = listener.getsockname()[1]
    try:
        grpc_server = await _start_grpc(runtime, namespace, host, log)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        listener.close()
        return 1
    delivery = None
    if namespace.app_port is not None:
        from mechakit.runtime.delivery import Delivery, app_channel

        delivery = Delivery(runtime, app_channel(namespace.app_port, namespace.app_protocol))
    app = create_app(
        runtime,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
        max_request_size=namespace.dapr_http_max_request_size * 1024 * 1024,
        app_port=namespace.app_port,
        app_protocol=namespace.app_protocol,
        delivery=delivery,
        body_timeout=namespace.http_read_body_timeout,
        max_bulk_keys=namespace.max_bulk_keys,
    )
    server = create_server(
        app,
        read_header_timeout=namespace.http_read_header_timeout,
        access_log=namespace.log_level == "debug",
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]), name="mechakit http api")
    log.info("Dapr HTTP API listening on http://%s:%d/v1.0", host, port)
    if delivery is not None:
        delivery.start_in_background()
    try:
        return await _supervise(namespace, command, port, serving, log)
    finally:
        if grpc_server is not None:
            await grpc_server.stop()
        if delivery is not None:
            await delivery.stop()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        listener.close()


async def _start_grpc(
    runtime: Runtime, namespace: argparse.Namespace, host: str, log: logging.Logger
) -> GrpcServer | None:
    """Serve the gRPC API; a taken default port only warns, a chosen one is an ``OSError``."""
    from mechakit.runtime.grpc_api import start_server

    chosen: int | None = namespace.dapr_grpc_port
    try:
        grpc_server = await start_server(
            runtime,
            host,
            DEFAULT_GRPC_PORT if chosen is None else chosen,
            api_token=os.environ.get("DAPR_API_TOKEN") or None,
            app_port=namespace.app_port,
            app_protocol=namespace.app_protocol,
            max_bulk_keys=namespace.max_bulk_keys,
        )
    except OSError as exc:
        if chosen is not None:
            raise
        log.warning("the Dapr gRPC API is not served: %s (choose --dapr-grpc-port)", exc)
        return None
    namespace.dapr_grpc_port = grpc_server.port
    log.info("Dapr gRPC API listening on %s:%d", host, grpc_server.port)
    return grpc_server


async def _supervise(
    namespace: argparse.Namespace,
    command: list[str],
    port: int,
    serving: asyncio.Task[None],
    log: logging.Logger,
) -> int:
    """Run the app (if any) until it exits, a signal arrives or the HTTP API fails.

    The app is started by :mod:`mechakit.runtime.app_process` so that it dies with mechakit
    even when mechakit is killed; on every way out it is stopped along with what it started.
    """
    from mechakit.runtime.app_process import start_app

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    child: AppProcess | None = None
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if child is None or child.returncode is not None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            stopping.set()
        elif signals_seen.count(signum) > 1:
            log.warning("%s again: killing the app", signal.Signals(signum).name)
            child.kill()
        else:
            log.info("%s received: passing it on to the app", signal.Signals(signum).name)
            child.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if command:
            env = {
                **os.environ,
                "DAPR_HTTP_PORT": str(port),
                "DAPR_GRPC_PORT": str(namespace.dapr_grpc_port or DEFAULT_GRPC_PORT),
                "APP_ID": namespace.app_id,
            }
            if namespace.app_port is not None:
                env["APP_PORT"] = str(namespace.app_port)
            try:
                child = await start_app(command, env, log)
            except OSError as exc:
                print(f"error: cannot start {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
                return 127
            log.info("app started (pid %d): %s", child.pid, subprocess.list2cmdline(command))
        waits: set[asyncio.Future[Any]] = {serving, asyncio.ensure_future(stopping.wait())}
        if child is not None:
            waits.add(asyncio.ensure_future(child.process.wait()))
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            if waiter is not serving:
                waiter.cancel()
        if serving in done:
            error = serving.exception() if not serving.cancelled() else None
            log.error("the HTTP API stopped unexpectedly: %s", error)
            return 1
        if child is not None and child.returncode is not None:
            code = child.returncode if child.returncode >= 0 else 128 - child.returncode
            log.info("app exited with code %d", code)
            return code
        return 0
    finally:
        try:
            await _stop_child(child, log)  # with the handlers on, so a second signal kills
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)


async def _stop_child(child: AppProcess | None, log: logging.Logger) -> None:
    """Stop the app, whatever it left running in its process group, and its watchdog."""
    if child is not None:
        await child.close(log)


# --- init -------------------------------------------------------------------------------


def _add_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "init",
        help="write the default components into $MECHAKIT_HOME/components (~/.mechakit)",
        description="Write Component YAML for a SQLite state store (statestore), in-memory "
        "pub/sub (pubsub) and locks (lockstore) into the folder 'mechakit run' loads by "
        "default. Files that exist are kept unless --force is given.",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.set_defaults(handler=_init)


def _init(namespace: argparse.Namespace, _: list[str]) -> int:
    from mechakit.runtime.defaults import components_dir, default_components, mechakit_home

    home = mechakit_home()
    folder = components_dir(home)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in default_components(home).items():
            path = folder / name
            if path.exists() and not namespace.force:
                print(f"kept     {path} (it exists; --force overwrites it)")
                continue
            verb = "replaced" if path.exists() else "wrote"
            path.write_text(text, encoding="utf-8")
            print(f"{verb:<8} {path}")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n'mechakit run --app-id myapp -- <command>' now uses these components")
    return 0


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    raise SystemExit(main())
