"""Dapr resource YAML: ``Component``, ``Subscription`` and ``Configuration`` documents.

Files are read by :mod:`mechakit.runtime.manifest_yaml` (the safe loader, refusing aliases,
duplicate keys and deep nesting, with the line of every value). Every problem is one :class:`ManifestError` that names the file and line, the resource
(``Component 'statestore'``, or ``document 2`` when it has no name), the field path
(``spec.metadata[1].secretKeyRef``) and what was expected, so the message alone says what
to fix. Metadata values are never echoed in errors: they may be secrets.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias

from mechakit.core.errors import ManifestError
from mechakit.core.metadata import parse_duration

from .manifest_yaml import (
    Document,
    FieldPath,
    documents,
    kind_of,
    scalar_text,
    value_text,
)

API_GROUP = "dapr.io"
COMPONENT_API_VERSIONS = ("dapr.io/v1alpha1",)
SUBSCRIPTION_API_VERSIONS = ("dapr.io/v1alpha1", "dapr.io/v2alpha1")
CONFIGURATION_API_VERSIONS = ("dapr.io/v1alpha1",)
YAML_SUFFIXES = (".yaml", ".yml")

PathLike: TypeAlias = str | os.PathLike[str]


# --- models -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretKeyRef:
    """Where a metadata value comes from in a secret store; ``key`` defaults to ``name``."""

    name: str
    key: str


@dataclass(frozen=True)
class MetadataItem:
    """One ``spec.metadata`` entry: exactly one of ``value``, ``secret_key_ref``, ``env_ref``."""

    name: str
    value: str | None = None
    secret_key_ref: SecretKeyRef | None = None
    env_ref: str | None = None
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)
    component: str = field(default="", compare=False)
    """How errors name the resource: ``Component 'statestore'``."""
    index: int = field(default=0, compare=False)

    @property
    def field_path(self) -> str:
        return f"spec.metadata[{self.index}]"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def resolve_plain(self) -> str:
        """The value, or the environment variable named by ``envRef``.

        A ``secretKeyRef`` cannot be resolved here: the host reads it from a secret store.
        """
        if self.value is not None:
            return self.value
        if self.env_ref is not None:
            found = os.environ.get(self.env_ref)
            if found is None:
                raise ManifestError(
                    f"{self.field_path} ({self.name!r}): environment variable "
                    f"{self.env_ref!r} named by envRef is not set",
                    file=self.location,
                    component=self.component,
                    field=f"{self.field_path}.envRef",
                )
            return found
        raise ManifestError(
            f"{self.field_path} ({self.name!r}): a secretKeyRef is resolved through a secret "
            "store by the runtime, not as a plain value",
            file=self.location,
            component=self.component,
            field=f"{self.field_path}.secretKeyRef",
        )


@dataclass(frozen=True)
class ComponentManifest:
    """A ``kind: Component`` document."""

    name: str
    type: str
    version: str = "v1"
    metadata: tuple[MetadataItem, ...] = ()
    init_timeout: timedelta | None = None
    """``spec.initTimeout``; None means the host's default."""
    ignore_errors: bool = False
    secret_store: str | None = None
    """``auth.secretStore``: the store that resolves this component's ``secretKeyRef`` items."""
    scopes: tuple[str, ...] = ()
    """App ids that load the component; empty means every app."""
    namespace: str | None = None
    file: str = ""
    line: int = 0

    @property
    def category(self) -> str:
        return self.type.split(".", 1)[0]

    @property
    def label(self) -> str:
        """As errors and logs name it: ``state.sqlite 'statestore'``."""
        return f"{self.type} {self.name!r}"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def in_scope(self, app_id: str) -> bool:
        return not self.scopes or app_id in self.scopes

    def secret_refs(self) -> list[MetadataItem]:
        return [item for item in self.metadata if item.secret_key_ref is not None]


@dataclass(frozen=True)
class Route:
    match: str
    path: str


@dataclass(frozen=True)
class BulkSubscribe:
    enabled: bool = False
    max_messages_count: int | None = None
    max_await_duration_ms: int | None = None


@dataclass(frozen=True)
class SubscriptionManifest:
    """A ``kind: Subscription`` document (v1alpha1 ``route`` or v2alpha1 ``routes``)."""

    name: str
    pubsub_name: str
    topic: str
    rules: tuple[Route, ...] = ()
    default_route: str | None = None
    dead_letter_topic: str | None = None
    bulk_subscribe: BulkSubscribe | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()
    api_version: str = "dapr.io/v2alpha1"
    file: str = ""
    line: int = 0

    def in_scope(self, app_id: str) -> bool:
        return not self.scopes or app_id in self.scopes


Access: TypeAlias = Literal["allow", "deny"]


@dataclass(frozen=True)
class SecretScope:
    """Which secrets of one store the app may read through the secrets API."""

    store_name: str
    default_access: Access = "allow"
    allowed_secrets: tuple[str, ...] = ()
    denied_secrets: tuple[str, ...] = ()

    def allows(self, secret: str) -> bool:
        """Dapr's rule: a non-empty allow list decides alone; then the deny list; then the default."""
        if self.allowed_secrets:
            return secret in self.allowed_secrets
        if secret in self.denied_secrets:
            return False
        return self.default_access == "allow"


@dataclass(frozen=True)
class ConfigurationManifest:
    """A ``kind: Configuration`` document; only secret scopes are modelled, the rest kept raw."""

    name: str
    secret_scopes: tuple[SecretScope, ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    file: str = ""
    line: int = 0

    def secret_scope(self, store_name: str) -> SecretScope | None:
        return next((s for s in self.secret_scopes if s.store_name == store_name), None)

    def allows_secret(self, store_name: str, secret: str) -> bool:
        scope = self.secret_scope(store_name)
        return scope is None or scope.allows(secret)


@dataclass(frozen=True)
class ResiliencyManifest:
    """A ``kind: Resiliency`` document; its policies are read by :mod:`.resiliency`."""

    name: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class Manifests:
    """Every resource found, in file order (files sorted by name within a folder)."""

    components: list[ComponentManifest] = field(default_factory=list)
    subscriptions: list[SubscriptionManifest] = field(default_factory=list)
    configurations: list[ConfigurationManifest] = field(default_factory=list)
    resiliencies: list[ResiliencyManifest] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def component(self, name: str) -> ComponentManifest | None:
        return next((c for c in self.components if c.name == name), None)


# --- loading ----------------------------------------------------------------------------


def manifest_files(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """The files ``paths`` stand for: a file as given; a folder's ``*.yaml``/``*.yml``, sorted."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.iterdir() if p.is_file() and p.suffix in YAML_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ManifestError("no such file or folder", file=str(path))
    return found


def load_manifests(paths: PathLike | Sequence[PathLike]) -> Manifests:
    """Load every resource of ``paths`` (files or folders); names must be unique per kind."""
    manifests = Manifests()
    for path in manifest_files(paths):
        _load_file(path, manifests)
    _check_unique(manifests.components, "Component")
    _check_unique(manifests.subscriptions, "Subscription")
    _check_unique(manifests.configurations, "Configuration")
    _check_unique(manifests.resiliencies, "Resiliency")
    return manifests


def load_manifest_file(path: PathLike) -> Manifests:
    """The resources of one file (names checked for uniqueness within it)."""
    return load_manifests([path])


def _load_file(path: Path, into: Manifests) -> None:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the file: {exc}", file=file) from None
    into.files.append(file)
    for index, (line, data, lines) in enumerate(documents(text, file), start=1):
        if data is None:
            continue
        doc = Document(file, index, line, lines)
        if not isinstance(data, dict):
            raise doc.error((), f"expected a mapping with apiVersion and kind, got {kind_of(data)}")
        kind = data.get("kind")
        if kind == "Component":
            into.components.append(_component(doc, data))
        elif kind == "Subscription":
            into.subscriptions.append(_subscription(doc, data))
        elif kind == "Configuration":
            into.configurations.append(_configuration(doc, data))
        elif kind == "Resiliency":
            into.resiliencies.append(_resiliency(doc, data))
        else:
            doc.name_from(data)
            known = ("Component", "Subscription", "Configuration", "Resiliency")
            if kind is None:
                raise doc.error(("kind",), f"required, one of {', '.join(known)}")
            near = difflib.get_close_matches(str(kind), known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise doc.error(
                ("kind",), f"unknown kind {kind!r} (supported: {', '.join(known)}){hint}"
            )


# --- kinds --------------------------------------------------------------------------------


def _component(doc: Document, data: dict[str, Any]) -> ComponentManifest:
    doc.name_from(data, "Component")
    doc.api_version(data, "Component", COMPONENT_API_VERSIONS)
    name, namespace = doc.metadata_name(data)
    spec = doc.mapping(data, ("spec",), required=True)
    type_ = doc.string(spec, ("spec", "type"), required=True, example="state.redis")
    assert type_ is not None
    version = doc.string(spec, ("spec", "version"), required=False, example="v1") or "v1"
    if not (version.startswith("v") and version[1:].isdigit()):
        raise doc.error(("spec", "version"), f"expected a version like v1 or v2, got {version!r}")
    init_timeout = None
    raw_timeout = spec.get("initTimeout")
    if raw_timeout is not None:
        try:
            init_timeout = parse_duration(raw_timeout)
        except ValueError as exc:
            raise doc.error(("spec", "initTimeout"), f"expected a duration: {exc}") from None
        if init_timeout <= timedelta(0):
            raise doc.error(("spec", "initTimeout"), f"must be > 0, got {raw_timeout!r}")
    auth = doc.mapping(data, ("auth",), required=False)
    secret_store = doc.string(auth, ("auth", "secretStore"), required=False)
    items = _metadata_items(doc, spec, name)
    return ComponentManifest(
        name=name,
        type=type_,
        version=version.lower(),
        metadata=items,
        init_timeout=init_timeout,
        ignore_errors=doc.boolean(spec, ("spec", "ignoreErrors")),
        secret_store=secret_store,
        scopes=doc.strings(data, ("scopes",)),
        namespace=namespace,
        file=doc.file,
        line=doc.line,
    )


_SOURCES = ("value", "secretKeyRef", "envRef")


def _metadata_items(
    doc: Document, spec: Mapping[str, Any], component: str
) -> tuple[MetadataItem, ...]:
    raw = spec.get("metadata")
    base: FieldPath = ("spec", "metadata")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise doc.error(base, f"expected a list of {{name, value}} items, got {kind_of(raw)}")
    items: list[MetadataItem] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw):
        path = (*base, index)
        if not isinstance(entry, dict):
            raise doc.error(path, f"expected a mapping with name and value, got {kind_of(entry)}")
        name = doc.string(entry, (*path, "name"), required=True)
        assert name is not None
        if name.lower() in seen:
            raise doc.error(
                (*path, "name"),
                f"{name!r} is already set by spec.metadata[{seen[name.lower()]}] "
                "(names are case-insensitive)",
            )
        seen[name.lower()] = index
        sources = [s for s in _SOURCES if s in entry]
        if len(sources) != 1:
            found = " and ".join(sources) if sources else "none"
            raise doc.error(
                path,
                f"metadata {name!r} needs exactly one of value, secretKeyRef or envRef; "
                f"found {found}",
            )
        unknown = sorted(set(entry) - {"name", *_SOURCES})
        if unknown:
            raise doc.error(
                (*path, unknown[0]),
                f"unknown field {unknown[0]!r} in metadata {name!r} "
                "(expected name with value, secretKeyRef or envRef)",
            )
        value: str | None = None
        ref: SecretKeyRef | None = None
        env: str | None = None
        if sources[0] == "value":
            raw_value = entry["value"]
            value = value_text(raw_value)
            if value is None:
                raise doc.error(
                    (*path, "value"),
                    f"metadata {name!r}: expected a string, number, boolean, or a mapping "
                    f"or list of those, got {kind_of(raw_value)}",
                )
        elif sources[0] == "secretKeyRef":
            ref_data = doc.mapping(entry, (*path, "secretKeyRef"), required=True)
            secret = doc.string(ref_data, (*path, "secretKeyRef", "name"), required=True)
            key = doc.string(ref_data, (*path, "secretKeyRef", "key"), required=False)
            assert secret is not None
            ref = SecretKeyRef(name=secret, key=key or secret)
        else:
            env = doc.string(entry, (*path, "envRef"), required=True, example="REDIS_PASSWORD")
        items.append(
            MetadataItem(
                name=name,
                value=value,
                secret_key_ref=ref,
                env_ref=env,
                file=doc.file,
                line=doc.line_of(path),
                component=doc.resource,
                index=index,
            )
        )
    return tuple(items)


def _subscription(doc: Document, data: dict[str, Any]) -> SubscriptionManifest:
    doc.name_from(data, "Subscription")
    api_version = doc.api_version(data, "Subscription", SUBSCRIPTION_API_VERSIONS)
    name, _ = doc.metadata_name(data)
    spec = doc.mapping(data, ("spec",), required=True)
    pubsub = doc.string(spec, ("spec", "pubsubname"), required=True, example="pubsub")
    topic = doc.string(spec, ("spec", "topic"), required=True, example="orders")
    assert pubsub is not None and topic is not None
    rules: list[Route] = []
    default_route: str | None
    if api_version == "dapr.io/v1alpha1":
        if "routes" in spec:
            raise doc.error(
                ("spec", "routes"), "needs apiVersion dapr.io/v2alpha1 (v1alpha1 uses spec.route)"
            )
        default_route = doc.string(spec, ("spec", "route"), required=True, example="/orders")
    else:
        if "route" in spec:
            raise doc.error(("spec", "route"), "not in dapr.io/v2alpha1; use spec.routes.default")
        routes = doc.mapping(spec, ("spec", "routes"), required=True)
        default_route = doc.string(routes, ("spec", "routes", "default"), required=False)
        raw_rules = routes.get("rules") or []
        if not isinstance(raw_rules, list):
            raise doc.error(
                ("spec", "routes", "rules"),
                f"expected a list of {{match, path}}, got {kind_of(raw_rules)}",
            )
        for index, rule in enumerate(raw_rules):
            path: FieldPath = ("spec", "routes", "rules", index)
            if not isinstance(rule, dict):
                raise doc.error(
                    path, f"expected a mapping with match and path, got {kind_of(rule)}"
                )
            match = doc.string(
                rule, (*path, "match"), required=True, example='event.type == "order"'
            )
            target = doc.string(rule, (*path, "path"), required=True, example="/orders")
            assert match is not None and target is not None
            rules.append(Route(match=match, path=target))
        if default_route is None and not rules:
            raise doc.error(("spec", "routes"), "needs a default route or at least one rule")
    bulk = None
    if spec.get("bulkSubscribe") is not None:
        raw_bulk = doc.mapping(spec, ("spec", "bulkSubscribe"), required=True)
        bulk_path: FieldPath = ("spec", "bulkSubscribe")
        bulk = BulkSubscribe(
            enabled=doc.boolean(raw_bulk, (*bulk_path, "enabled")),
            max_messages_count=doc.integer(raw_bulk, (*bulk_path, "maxMessagesCount")),
            max_await_duration_ms=doc.integer(raw_bulk, (*bulk_path, "maxAwaitDurationMs")),
        )
    return SubscriptionManifest(
        name=name,
        pubsub_name=pubsub,
        topic=topic,
        rules=tuple(rules),
        default_route=default_route,
        dead_letter_topic=doc.string(spec, ("spec", "deadLetterTopic"), required=False),
        bulk_subscribe=bulk,
        metadata=_string_map(doc, spec, ("spec", "metadata")),
        scopes=doc.strings(data, ("scopes",)),
        api_version=api_version,
        file=doc.file,
        line=doc.line,
    )


def _string_map(doc: Document, data: Mapping[str, Any], path: FieldPath) -> dict[str, str]:
    raw = doc.mapping(data, path, required=False)
    out: dict[str, str] = {}
    for key, value in raw.items():
        text = scalar_text(value)
        if text is None:
            raise doc.error(
                (*path, str(key)), f"expected a string, number or boolean, got {kind_of(value)}"
            )
        out[str(key)] = text
    return out


def _configuration(doc: Document, data: dict[str, Any]) -> ConfigurationManifest:
    doc.name_from(data, "Configuration")
    doc.api_version(data, "Configuration", CONFIGURATION_API_VERSIONS)
    name, _ = doc.metadata_name(data)
    spec = doc.mapping(data, ("spec",), required=False)
    secrets = doc.mapping(spec, ("spec", "secrets"), required=False)
    raw_scopes = secrets.get("scopes") or []
    base: FieldPath = ("spec", "secrets", "scopes")
    if not isinstance(raw_scopes, list):
        raise doc.error(base, f"expected a list of secret scopes, got {kind_of(raw_scopes)}")
    scopes: list[SecretScope] = []
    for index, raw in enumerate(raw_scopes):
        path = (*base, index)
        if not isinstance(raw, dict):
            raise doc.error(path, f"expected a mapping with storeName, got {kind_of(raw)}")
        store = doc.string(raw, (*path, "storeName"), required=True, example="vault")
        assert store is not None
        access = doc.string(raw, (*path, "defaultAccess"), required=False) or "allow"
        if access.lower() not in ("allow", "deny"):
            raise doc.error((*path, "defaultAccess"), f"expected allow or deny, got {access!r}")
        if any(s.store_name == store for s in scopes):
            raise doc.error((*path, "storeName"), f"secret store {store!r} already has a scope")
        scopes.append(
            SecretScope(
                store_name=store,
                default_access="deny" if access.lower() == "deny" else "allow",
                allowed_secrets=doc.strings(raw, (*path, "allowedSecrets")),
                denied_secrets=doc.strings(raw, (*path, "deniedSecrets")),
            )
        )
    return ConfigurationManifest(
        name=name, secret_scopes=tuple(scopes), spec=spec, file=doc.file, line=doc.line
    )


def _resiliency(doc: Document, data: dict[str, Any]) -> ResiliencyManifest:
    doc.name_from(data, "Resiliency")
    doc.api_version(data, "Resiliency", CONFIGURATION_API_VERSIONS)
    name, _ = doc.metadata_name(data)
    return ResiliencyManifest(
        name=name,
        spec=doc.mapping(data, ("spec",), required=False),
        scopes=doc.strings(data, ("scopes",)),
        file=doc.file,
        line=doc.line,
    )


def _check_unique(resources: Sequence[Any], kind: str) -> None:
    first: dict[str, Any] = {}
    for resource in resources:
        earlier = first.setdefault(resource.name, resource)
        if earlier is not resource:
            raise ManifestError(
                f"metadata.name: {kind} {resource.name!r} is defined twice "
                f"(first in {earlier.file}:{earlier.line})",
                file=f"{resource.file}:{resource.line}",
                component=f"{kind} {resource.name!r}",
                field="metadata.name",
            )


__all__ = [
    "BulkSubscribe",
    "ComponentManifest",
    "ConfigurationManifest",
    "Manifests",
    "MetadataItem",
    "ResiliencyManifest",
    "Route",
    "SecretKeyRef",
    "SecretScope",
    "SubscriptionManifest",
    "load_manifest_file",
    "load_manifests",
    "manifest_files",
]
