"""The multi-app run template of ``dapr run -f`` (``dapr.yaml``), read and checked up front.

The format is the Dapr CLI's (docs.dapr.io, multi-app-template; dapr/cli
``pkg/runfileconfig``): ``version: 1``, an optional ``common`` section whose values every app
takes unless it sets its own, and ``apps``, each with a required ``appDirPath`` and the
fields that mirror ``dapr run``'s flags. Each app becomes the flags of one ``mechakit run``
(:attr:`AppSpec.flags`), checked here by that command's own parser, so a wrong value is
reported before anything starts, naming the file, the app and the field.

Paths, as the CLI resolves them: ``appDirPath`` and those of ``common`` relative to the
template's folder, the other paths of an app relative to its ``appDirPath``. Resources: the
app's ``resourcesPaths``, else ``<appDirPath>/.dapr/resources`` when it exists, else those of
``common``, else ``mechakit run``'s default; the Configuration likewise with
``configFilePath`` and ``<appDirPath>/.dapr/config.yaml``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mechakit.core.errors import ManifestError
from mechakit.core.metadata import parse_bool
from mechakit.runtime.manifest_yaml import Document, documents, kind_of, scalar_text

TEMPLATE_NAME = "dapr.yaml"
"""The file read when ``-f`` names a folder."""
VERSIONS = (1,)
LOG_DESTINATIONS = ("file", "console", "fileAndConsole")
DEFAULT_APP_LOG = "fileAndConsole"
DEFAULT_SIDECAR_LOG = "file"
DAPR_DIR = ".dapr"
STDIN = Path("<stdin>")
"""The template's name when ``-f -`` reads it from stdin (``envsubst < t.yaml | ... -f -``)."""

SHARED_FLAGS: dict[str, tuple[str, str]] = {
    "appProtocol": ("--app-protocol", "text"),
    "apiListenAddresses": ("--dapr-listen-addresses", "text"),
    "logLevel": ("--log-level", "text"),
    "appMaxConcurrency": ("--app-max-concurrency", "int"),
    "placementHostAddress": ("--placement-host-address", "text"),
    "schedulerHostAddress": ("--scheduler-host-address", "text"),
    "enableProfiling": ("--enable-profiling", "bool"),
    "appSSL": ("--app-ssl", "bool"),
    "maxBodySize": ("--max-body-size", "text"),
    "readBufferSize": ("--read-buffer-size", "text"),
    "daprHTTPMaxRequestSize": ("--dapr-http-max-request-size", "text"),
    "daprHTTPReadBufferSize": ("--dapr-http-read-buffer-size", "text"),
    "enableAppHealthCheck": ("--enable-app-health-check", "bool"),
    "appHealthCheckPath": ("--app-health-check-path", "text"),
    "appHealthProbeInterval": ("--app-health-probe-interval", "int"),
    "appHealthProbeTimeout": ("--app-health-probe-timeout", "int"),
    "appHealthThreshold": ("--app-health-threshold", "int"),
    "enableApiLogging": ("--enable-api-logging", "bool"),
    "runtimePath": ("--runtime-path", "path"),
}
"""Fields ``common`` and an app may both set: template field → (``mechakit run`` flag, kind)."""
APP_FLAGS: dict[str, tuple[str, str]] = {
    "appChannelAddress": ("--app-channel-address", "text"),
    "appPort": ("--app-port", "int"),
    "profilePort": ("--profile-port", "int"),
    "unixDomainSocket": ("--unix-domain-socket", "path"),
}
"""Fields only an app sets (besides its ports and the ones read specially)."""
PORT_FIELDS = {
    "daprHTTPPort": "--dapr-http-port",
    "daprGRPCPort": "--dapr-grpc-port",
    "daprInternalGRPCPort": "--dapr-internal-grpc-port",
    "metricsPort": "--metrics-port",
}
"""The sidecar's ports: one not given (or 0, -1) is picked free when the apps start."""
SPECIAL_SHARED = (
    "configFilePath",
    "resourcesPath",
    "resourcesPaths",
    "env",
    "appLogDestination",
    "daprdLogDestination",
)
KUBERNETES_ONLY = ("containerImage", "containerImagePullPolicy", "createService")
COMMON_FIELDS = (*SHARED_FLAGS, *SPECIAL_SHARED)
APP_FIELDS = (
    "appID",
    "appDirPath",
    "command",
    *COMMON_FIELDS,
    *APP_FLAGS,
    *PORT_FIELDS,
    *KUBERNETES_ONLY,
)


@dataclass(frozen=True)
class AppSpec:
    """One app of the template, resolved: what its ``mechakit run`` is started with."""

    app_id: str
    app_dir: Path
    command: tuple[str, ...]
    flags: tuple[str, ...]
    """``mechakit run`` flags, all but the ports of :attr:`ports`."""
    ports: dict[str, int]
    """Port flag → port, for the ports the template gives (> 0)."""
    env: dict[str, str]
    app_log: str
    sidecar_log: str
    listen_address: str = "127.0.0.1"
    unix_domain_socket: str | None = None

    @property
    def logs_dir(self) -> Path:
        return self.app_dir / DAPR_DIR / "logs"


@dataclass(frozen=True)
class Template:
    file: Path
    apps: tuple[AppSpec, ...]
    name: str | None = None
    warnings: tuple[str, ...] = field(default=())


def template_file(path: str) -> Path:
    """The template ``-f`` names: the file, or ``dapr.yaml`` in the folder given."""
    given = Path(path).expanduser()
    if given.is_dir():
        candidate = given / TEMPLATE_NAME
        if not candidate.is_file():
            raise ManifestError(f"no {TEMPLATE_NAME} in this folder", file=str(given))
        return candidate
    if not given.exists():
        raise ManifestError("no such file or folder", file=str(given))
    if given.suffix not in (".yaml", ".yml"):
        raise ManifestError("not a YAML file (.yaml or .yml)", file=str(given))
    return given


def load_template(path: str) -> Template:
    """The template at ``path`` (a file, a folder holding ``dapr.yaml``, or ``-``: stdin,
    its paths then relative to the current folder), every app checked."""
    file = STDIN if path == "-" else template_file(path)
    try:
        text = sys.stdin.read() if path == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read it: {exc}", file=str(file)) from None
    found = documents(text, str(file))
    if len(found) != 1 or not isinstance(found[0][1], dict):
        raise ManifestError("expected one YAML mapping (version, common, apps)", file=str(file))
    line, data, lines = found[0]
    return _Reader(file, Document(str(file), 1, line, lines), data).template()


class _Reader:
    """Reads one template; every complaint names the file and line, the app and the field."""

    def __init__(self, file: Path, document: Document, data: dict[str, Any]) -> None:
        self.file, self.doc, self.data = file, document, data
        self.base = file.resolve().parent
        self.warnings: list[str] = []
        self.doc.resource = "run template"

    def template(self) -> Template:
        self._version()
        self._unknown(self.data, (), ("version", "common", "apps", "name"))
        common = self.doc.mapping(self.data, ("common",), required=False)
        self._unknown(common, ("common",), COMMON_FIELDS)
        apps = self.data.get("apps")
        if not isinstance(apps, list) or not apps:
            raise self.doc.error(("apps",), "required, a list of at least one app")
        specs: list[AppSpec] = []
        seen: dict[str, int] = {}
        for position, app in enumerate(apps):
            self.doc.resource = f"apps[{position}]"
            if not isinstance(app, dict):
                raise self.doc.error(("apps", position), f"expected a mapping, got {kind_of(app)}")
            spec = self._app(common, app, ("apps", position))
            if spec.app_id in seen:
                raise self.doc.error(
                    ("apps", position, "appID"),
                    f"duplicate app id {spec.app_id!r}: apps[{seen[spec.app_id]}] has it too "
                    "(an app id defaults to the name of its appDirPath)",
                )
            seen[spec.app_id] = position
            specs.append(spec)
        name = self.data.get("name")
        return Template(
            self.file, tuple(specs), name if isinstance(name, str) else None, tuple(self.warnings)
        )

    def _version(self) -> None:
        version = self.data.get("version")
        if version is None:
            raise self.doc.error(("version",), "required (version: 1)")
        if isinstance(version, str) and version.strip().isdigit():
            version = int(version)
        if version not in VERSIONS or isinstance(version, bool):
            raise self.doc.error(
                ("version",),
                f"unsupported version {version!r} (supported: {', '.join(map(str, VERSIONS))})",
            )

    def _unknown(self, data: Mapping[str, Any], path: tuple[str | int, ...], known: Any) -> None:
        """Unknown fields are ignored, as by the Dapr CLI, but named: a typo would be silent."""
        for key in data:
            if key in known:
                continue
            where = f"{self.doc.file}:{self.doc.line_of((*path, key))}"
            near = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            self.warnings.append(f"{where}: {self.doc.resource}: unknown field {key!r}{hint}")

    def _app(
        self, common: dict[str, Any], app: dict[str, Any], path: tuple[str | int, ...]
    ) -> AppSpec:
        given_id = self.doc.string(app, (*path, "appID"), required=False)
        if given_id:
            self.doc.resource = f"app {given_id!r}"
        folder = self.doc.string(app, (*path, "appDirPath"), required=True, example="./order/")
        assert folder is not None
        app_dir = self._path(folder, self.base, (*path, "appDirPath"), folder=True)
        app_id = given_id or app_dir.name
        self.doc.resource = f"app {app_id!r}"
        self._unknown(app, path, APP_FIELDS)
        for key in KUBERNETES_ONLY:
            if key in app:
                self.warnings.append(
                    f"{self.doc.resource}: {key} is for 'dapr run -k' only: ignored"
                )
        flags = ["--app-id", app_id]
        for name, (flag, kind) in {**SHARED_FLAGS, **APP_FLAGS}.items():
            if name in app:
                flags += self._flag(app[name], flag, kind, (*path, name), app_dir)
            elif name in common:
                flags += self._flag(common[name], flag, kind, ("common", name), self.base)
        for resources in self._resources(common, app, path, app_dir):
            flags += ["--resources-path", resources]
        config = self._config(common, app, path, app_dir)
        if config is not None:
            flags += ["--config", config]
        ports = {flag: self._port(app, (*path, name)) for name, flag in PORT_FIELDS.items()}
        _check_flags(self, flags, path)
        socket = next((f.partition("=")[2] for f in flags if f.startswith("--unix-domain")), None)
        listen = scalar_text(app.get("apiListenAddresses", common.get("apiListenAddresses")))
        return AppSpec(
            app_id=app_id,
            app_dir=app_dir,
            command=self.doc.strings(app, (*path, "command")),
            flags=tuple(flags),
            ports={flag: port for flag, port in ports.items() if port > 0},
            env={**self._env(common, ("common", "env")), **self._env(app, (*path, "env"))},
            app_log=self._destination(common, app, path, "appLogDestination", DEFAULT_APP_LOG),
            sidecar_log=self._destination(
                common, app, path, "daprdLogDestination", DEFAULT_SIDECAR_LOG
            ),
            listen_address=_loopback((listen or "127.0.0.1").split(",")[0].strip()),
            unix_domain_socket=socket or None,
        )

    def _flag(
        self, value: object, flag: str, kind: str, path: tuple[str | int, ...], base: Path
    ) -> list[str]:
        text = scalar_text(value)
        if text is None:
            raise self.doc.error(path, f"expected a single value, got {kind_of(value)}")
        if kind == "bool":
            try:
                return [f"{flag}={'true' if parse_bool(value) else 'false'}"]
            except ValueError:
                raise self.doc.error(path, f"expected true or false, got {value!r}") from None
        if kind == "int" and (isinstance(value, bool) or not text.lstrip("-").isdigit()):
            raise self.doc.error(path, f"expected a whole number, got {value!r}")
        if kind == "path":
            text = str(self._path(text, base, path, folder=None))
        return [f"{flag}={text}"]

    def _port(self, app: Mapping[str, Any], path: tuple[str | int, ...]) -> int:
        value = app.get(str(path[-1]))
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value > 65535:
            raise self.doc.error(
                path, f"expected a port number (0 or -1: a free one), got {value!r}"
            )
        return value

    def _path(
        self, text: str, base: Path, path: tuple[str | int, ...], *, folder: bool | None
    ) -> Path:
        resolved = (base / Path(text).expanduser()).resolve()
        if not resolved.exists():
            raise self.doc.error(path, f"{resolved} does not exist")
        if folder and not resolved.is_dir():
            raise self.doc.error(path, f"{resolved} is not a folder")
        return resolved

    def _paths(self, data: Mapping[str, Any], path: tuple[str | int, ...], base: Path) -> list[str]:
        """``resourcesPaths`` (a list, or comma-separated) plus the deprecated ``resourcesPath``."""
        found: list[str] = []
        for key in ("resourcesPaths", "resourcesPath"):
            value = data.get(key)
            if value is None:
                continue
            items = value if isinstance(value, list) else str(scalar_text(value) or "").split(",")
            for position, item in enumerate(items):
                where = (*path, key, position) if isinstance(value, list) else (*path, key)
                if not isinstance(item, str):
                    raise self.doc.error(where, f"expected a path, got {kind_of(item)}")
                if item.strip():
                    found.append(str(self._path(item.strip(), base, where, folder=None)))
        return found

    def _resources(
        self,
        common: dict[str, Any],
        app: dict[str, Any],
        path: tuple[str | int, ...],
        app_dir: Path,
    ) -> list[str]:
        own = self._paths(app, path, app_dir)
        if own:
            return own
        local = app_dir / DAPR_DIR / "resources"
        return [str(local)] if local.is_dir() else self._paths(common, ("common",), self.base)

    def _config(
        self,
        common: dict[str, Any],
        app: dict[str, Any],
        path: tuple[str | int, ...],
        app_dir: Path,
    ) -> str | None:
        own = self.doc.string(app, (*path, "configFilePath"), required=False)
        if own:
            return str(self._path(own, app_dir, (*path, "configFilePath"), folder=False))
        local = app_dir / DAPR_DIR / "config.yaml"
        if local.is_file():
            return str(local)
        shared = self.doc.string(common, ("common", "configFilePath"), required=False)
        if shared:
            return str(self._path(shared, self.base, ("common", "configFilePath"), folder=False))
        return None

    def _env(self, data: Mapping[str, Any], path: tuple[str | int, ...]) -> dict[str, str]:
        env = self.doc.mapping(data, path, required=False)
        values: dict[str, str] = {}
        for key, value in env.items():
            text = "" if value is None else scalar_text(value)
            if text is None:
                raise self.doc.error(
                    (*path, str(key)), f"expected a single value, got {kind_of(value)}"
                )
            values[str(key)] = text
        return values

    def _destination(
        self,
        common: dict[str, Any],
        app: dict[str, Any],
        path: tuple[str | int, ...],
        key: str,
        default: str,
    ) -> str:
        data, where = (app, (*path, key)) if key in app else (common, ("common", key))
        value = self.doc.string(data, where, required=False) or default
        if value not in LOG_DESTINATIONS:
            raise self.doc.error(
                where, f"expected one of {', '.join(LOG_DESTINATIONS)}, got {value!r}"
            )
        return value


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _FlagError(message)


class _FlagError(Exception):
    pass


def _check_flags(reader: _Reader, flags: list[str], path: tuple[str | int, ...]) -> None:
    """Parse ``flags`` with ``mechakit run``'s own parser: a wrong value is reported now, as
    the template field it came from, rather than by a sidecar that fails to start."""
    from . import run

    parser = _RaisingParser(prog="mechakit run", add_help=False)
    run.configure(parser)
    try:
        parser.parse_args(flags)
    except _FlagError as exc:
        message = str(exc)
        fields = {flag: name for name, (flag, _) in {**SHARED_FLAGS, **APP_FLAGS}.items()}
        name = next((n for flag, n in fields.items() if flag in message), None)
        raise reader.doc.error((*path, name) if name else path, message) from None


def _loopback(address: str) -> str:
    """Where to reach an API listening on ``address`` from this host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "": "127.0.0.1"}.get(
        address, address.strip("[]")
    )


def app_environment(spec: AppSpec) -> dict[str, str]:
    """The environment of an app's ``mechakit run``: this one's, then the template's ``env``."""
    return {**os.environ, **spec.env}


__all__ = [
    "TEMPLATE_NAME",
    "AppSpec",
    "Template",
    "app_environment",
    "load_template",
    "template_file",
]
