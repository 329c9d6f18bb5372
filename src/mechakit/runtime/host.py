"""Builds and runs the components a set of manifests describes.

Start-up is all or nothing: every component's type is resolved before anything starts,
secret stores start first (they resolve the others' ``secretKeyRef`` items), then the rest
concurrently (kept in file order), each within its ``spec.initTimeout`` (default 5 s, as in
Dapr). When one fails, everything already started is closed and the error raised, unless
the component says ``spec.ignoreErrors: true``: then the failure is logged and it is left out. A
component whose ``scopes`` do not list the app id is not loaded at all. Components close in
reverse order. Logs name each component; metadata values and secrets are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mechakit.core.building_blocks import BUILDING_BLOCKS
from mechakit.core.component import Component, ComponentMetadata
from mechakit.core.errors import (
    ComponentError,
    ConfigurationError,
    ManifestError,
    MechakitError,
    NotFoundError,
    OperationTimeoutError,
    SecretNotFoundError,
)
from mechakit.core.metadata import format_duration
from mechakit.core.registry import ComponentSpec, Registry, default_registry
from mechakit.core.secretstores import GetSecretRequest, SecretStore

from .manifest import (
    ComponentManifest,
    ConfigurationManifest,
    Manifests,
    MetadataItem,
    SubscriptionManifest,
)

log = logging.getLogger("mechakit.host")

DEFAULT_INIT_TIMEOUT = timedelta(seconds=5)
"""Dapr's default ``spec.initTimeout``; also bounds each component's ``close``."""

CATEGORY_NOUNS = {category: block.noun for category, block in BUILDING_BLOCKS.items()}


@dataclass(frozen=True)
class HostedComponent:
    """A started component and the manifest it came from."""

    manifest: ComponentManifest
    spec: ComponentSpec
    instance: Component[Any]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def category(self) -> str:
        return self.manifest.category

    @property
    def description(self) -> str:
        """``'statestore' (state.sqlite/v1)``, as logs name it."""
        return describe(self.manifest)

    def features(self) -> list[str]:
        features = getattr(self.instance, "features", None)
        return sorted(str(f) for f in features()) if callable(features) else []


@dataclass(frozen=True)
class SkippedComponent:
    """A component that was not started, and why (``error`` is None when out of scope)."""

    manifest: ComponentManifest
    reason: str
    error: Exception | None = None


def describe(manifest: ComponentManifest) -> str:
    return f"{manifest.name!r} ({manifest.type}/{manifest.version})"


class ComponentHost:
    """Starts, holds and closes the components of ``manifests`` for one app id."""

    def __init__(
        self,
        manifests: Manifests,
        *,
        app_id: str = "",
        registry: Registry | None = None,
        configuration: str | None = None,
        default_init_timeout: timedelta = DEFAULT_INIT_TIMEOUT,
    ) -> None:
        self.manifests = manifests
        self.app_id = app_id
        self.registry = registry or default_registry()
        self.default_init_timeout = default_init_timeout
        self.configuration = select_configuration(manifests, configuration)
        self.subscriptions: list[SubscriptionManifest] = [
            s for s in manifests.subscriptions if s.in_scope(app_id)
        ]
        self._started: dict[str, HostedComponent] = {}
        self.skipped: dict[str, SkippedComponent] = {}
        self._running = False

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component in scope; on failure nothing is left running."""
        if self._running:
            return
        self._running = True
        self.skipped = {}
        try:
            for rank, group in itertools.groupby(self._plan(), lambda item: _start_rank(item[0])):
                await self._start_group(list(group), concurrently=rank != 1)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every started component, last started first. Safe to call twice."""
        self._running = False
        while self._started:
            name = next(reversed(self._started))
            hosted = self._started.pop(name)
            timeout = (hosted.manifest.init_timeout or self.default_init_timeout).total_seconds()
            try:
                await asyncio.wait_for(hosted.instance.close(), timeout)
            except Exception as exc:
                log.warning("component %s did not close cleanly: %s", hosted.description, exc)
            else:
                log.info("component %s closed", hosted.description)

    async def __aenter__(self) -> ComponentHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _plan(self) -> list[tuple[ComponentManifest, ComponentSpec]]:
        """Resolve every type before anything starts; secret stores first."""
        plan: list[tuple[ComponentManifest, ComponentSpec]] = []
        for manifest in self.manifests.components:
            if not manifest.in_scope(self.app_id):
                scopes = ", ".join(manifest.scopes)
                reason = f"app id {self.app_id!r} is not in its scopes ({scopes})"
                log.info("component %s skipped: %s", describe(manifest), reason)
                self.skipped[manifest.name] = SkippedComponent(manifest, reason)
                continue
            try:
                spec = self.registry.resolve(manifest.type, manifest.version)
                spec.load()
                secret_store_for(manifest, self.manifests.components, app_id=self.app_id)
            except Exception as exc:
                error = in_context(exc, manifest)
                if not manifest.ignore_errors:
                    raise error from exc
                self._skip(manifest, error)
                continue
            plan.append((manifest, spec))
        return sorted(plan, key=lambda item: _start_rank(item[0]))

    def _skip(self, manifest: ComponentManifest, error: Exception) -> None:
        log.warning(
            "component %s failed and is skipped (ignoreErrors): %s", describe(manifest), error
        )
        self.skipped[manifest.name] = SkippedComponent(manifest, f"failed: {error}", error)

    async def _start_group(
        self, group: list[tuple[ComponentManifest, ComponentSpec]], *, concurrently: bool
    ) -> None:
        """Start one rank of the plan; errors are judged per component, in file order.

        Components of one rank do not depend on each other, so they start concurrently
        (100 files are ready in the time of the slowest, not of the sum), except secret
        stores that read their secrets from other secret stores: those start in order.
        """
        outcomes: list[BaseException | None] = []
        if concurrently:
            outcomes = await asyncio.gather(
                *(self._start_one(manifest, spec) for manifest, spec in group),
                return_exceptions=True,
            )
        else:
            for manifest, spec in group:
                try:
                    await self._start_one(manifest, spec)
                except Exception as exc:
                    outcomes.append(exc)
                    if not manifest.ignore_errors:
                        break
                else:
                    outcomes.append(None)
        for name in [manifest.name for manifest, _ in group]:  # start order = file order
            if name in self._started:
                hosted = self._started[name] = self._started.pop(name)
                log.info("component %s ready", hosted.description)
        failure: tuple[Exception, BaseException] | None = None
        for (manifest, _spec), outcome in zip(group, outcomes, strict=False):
            if outcome is None:
                continue
            if not isinstance(outcome, Exception):
                raise outcome
            error = in_context(outcome, manifest)
            if manifest.ignore_errors:
                self._skip(manifest, error)
            elif failure is None:
                failure = (error, outcome)
        if failure is not None:
            raise failure[0] from failure[1]

    async def _start_one(self, manifest: ComponentManifest, spec: ComponentSpec) -> None:
        instance = spec.load()()
        timeout = manifest.init_timeout or self.default_init_timeout
        try:
            await asyncio.wait_for(self._init(instance, manifest), timeout.total_seconds())
        except BaseException as exc:
            await _close_quietly(instance, manifest)
            if isinstance(exc, TimeoutError):
                raise OperationTimeoutError(
                    f"init did not finish within {format_duration(timeout)} "
                    "(raise spec.initTimeout if the backend is slow to answer)",
                    component=manifest.label,
                    field="spec.initTimeout",
                ) from None
            raise
        self._started[manifest.name] = HostedComponent(manifest, spec, instance)

    async def _init(self, instance: Component[Any], manifest: ComponentManifest) -> None:
        properties = await self._properties(manifest)
        await instance.init(
            ComponentMetadata(
                name=manifest.name,
                type=manifest.type,
                properties=properties,
                version=manifest.version,
                app_id=self.app_id,
            )
        )

    async def _properties(self, manifest: ComponentManifest) -> dict[str, str]:
        properties: dict[str, str] = {}
        store_name = secret_store_for(manifest, self.manifests.components, app_id=self.app_id)
        secrets: dict[str, dict[str, str]] = {}
        for item in manifest.metadata:
            ref = item.secret_key_ref
            if ref is None:
                properties[item.name] = item.resolve_plain()
                continue
            assert store_name is not None
            if ref.name not in secrets:
                secrets[ref.name] = await self._read_secret(store_name, item)
            if ref.key not in secrets[ref.name]:
                raise ConfigurationError(
                    f"{item.field_path} ({item.name!r}): secret {ref.name!r} in secret store "
                    f"{store_name!r} has no key {ref.key!r}",
                    component=manifest.label,
                    field=f"{item.field_path}.secretKeyRef.key",
                )
            properties[item.name] = secrets[ref.name][ref.key]
        return properties

    async def _read_secret(self, store_name: str, item: MetadataItem) -> dict[str, str]:
        assert item.secret_key_ref is not None
        field = f"{item.field_path}.secretKeyRef"
        hosted = self._started.get(store_name)
        if hosted is None:
            skipped = self.skipped.get(store_name)
            why = f" ({skipped.reason})" if skipped else " (it must start before its users)"
            raise ConfigurationError(
                f"{item.field_path} ({item.name!r}): secret store {store_name!r} "
                f"is not running{why}",
                field=field,
            )
        store = hosted.instance
        assert isinstance(store, SecretStore)
        try:
            return await store.get_secret(GetSecretRequest(name=item.secret_key_ref.name))
        except SecretNotFoundError:
            raise ConfigurationError(
                f"{item.field_path} ({item.name!r}): secret {item.secret_key_ref.name!r} "
                f"not found in secret store {store_name!r}",
                field=field,
            ) from None

    # --- lookup ---------------------------------------------------------------------

    @property
    def components(self) -> Mapping[str, HostedComponent]:
        """The running components by name, in start order."""
        return dict(self._started)

    def names(self, category: str) -> list[str]:
        return [name for name, hosted in self._started.items() if hosted.category == category]

    def get(self, name: str, category: str) -> HostedComponent:
        """The running component ``name`` of ``category``; ``NotFoundError`` says what exists."""
        noun = CATEGORY_NOUNS.get(category, f"{category} component")
        names = self.names(category)
        configured = f"configured {noun}s: {', '.join(names)}" if names else f"no {noun} is running"
        hosted = self._started.get(name)
        if hosted is not None and hosted.category == category:
            return hosted
        if hosted is not None:
            reason = f"{name!r} is a {hosted.manifest.type} component, not a {noun} ({configured})"
        elif name in self.skipped:
            reason = f"{noun} {name!r} was not started: {self.skipped[name].reason} ({configured})"
        else:
            reason = f"no {noun} named {name!r} ({configured})"
        raise NotFoundError(reason, key=name)

    def allows_secret(self, store_name: str, secret: str) -> bool:
        """Whether the Configuration's secret scopes let the app read ``secret``."""
        return self.configuration is None or self.configuration.allows_secret(store_name, secret)


# --- helpers shared with `mechakit validate` ------------------------------------------------


def secret_store_for(
    manifest: ComponentManifest,
    components: Sequence[ComponentManifest],
    *,
    app_id: str | None = None,
) -> str | None:
    """The secret store resolving ``manifest``'s ``secretKeyRef`` items (None if it has none).

    ``auth.secretStore`` names it; without it, the only secret store there is. With an
    ``app_id``, stores outside their scopes do not count.
    """
    refs = manifest.secret_refs()
    if not refs:
        return None
    stores = [c for c in components if c.category == "secretstores" and c.name != manifest.name]
    usable = [c for c in stores if app_id is None or c.in_scope(app_id)]
    names = ", ".join(c.name for c in usable) or "none"
    field = "auth.secretStore"
    location = refs[0].location if manifest.secret_store is None else manifest.location
    if manifest.secret_store is None:
        if len(usable) == 1:
            return usable[0].name
        why = "no secret store is configured" if not usable else f"there are several: {names}"
        raise ManifestError(
            f"{refs[0].field_path} ({refs[0].name!r}) uses secretKeyRef, so the component "
            f"needs auth.secretStore naming a secret store ({why})",
            file=location,
            component=f"Component {manifest.name!r}",
            field=field,
        )
    wanted = manifest.secret_store
    if any(c.name == wanted for c in usable):
        return wanted
    other = next((c for c in components if c.name == wanted), None)
    if other is None:
        reason = f"no secret store named {wanted!r} (secret stores: {names})"
    elif other.category != "secretstores":
        reason = f"{wanted!r} is a {other.type} component, not a secret store"
    elif other.name == manifest.name:
        reason = "a secret store cannot resolve its own secretKeyRef items"
    else:
        reason = f"secret store {wanted!r} is not loaded for app id {app_id!r} (its scopes)"
    raise ManifestError(
        f"{field}: {reason}",
        file=location,
        component=f"Component {manifest.name!r}",
        field=field,
    )


def select_configuration(manifests: Manifests, name: str | None) -> ConfigurationManifest | None:
    """The Configuration named ``name``; without a name, the only one there is (or None)."""
    configurations = manifests.configurations
    names = ", ".join(c.name for c in configurations) or "none"
    if name is not None:
        found = next((c for c in configurations if c.name == name), None)
        if found is None:
            raise ConfigurationError(f"no Configuration named {name!r} (loaded: {names})")
        return found
    if len(configurations) > 1:
        raise ConfigurationError(
            f"several Configuration resources are loaded ({names}); choose one by name"
        )
    return configurations[0] if configurations else None


def in_context(exc: Exception, manifest: ComponentManifest) -> Exception:
    """``exc`` naming the component and its file, keeping its class when that is possible."""
    if isinstance(exc, ManifestError):
        return exc
    where = f" (in {manifest.location})"
    if isinstance(exc, MechakitError) and type(exc).__init__ is MechakitError.__init__:
        return type(exc)(exc.reason + where, component=manifest.label, field=exc.field, key=exc.key)
    if isinstance(exc, MechakitError):
        exc.add_note(f"in {manifest.location}")
        return exc
    return ComponentError(
        f"init failed: {type(exc).__name__}: {exc}{where}", component=manifest.label
    )


def _start_rank(manifest: ComponentManifest) -> int:
    """Secret stores without secret references, then the other secret stores, then the rest."""
    if manifest.category == "secretstores":
        return 1 if manifest.secret_refs() else 0
    return 2


async def _close_quietly(instance: Component[Any], manifest: ComponentManifest) -> None:
    try:
        await asyncio.wait_for(instance.close(), DEFAULT_INIT_TIMEOUT.total_seconds())
    except Exception as exc:
        log.debug("component %s: close after a failed init: %s", describe(manifest), exc)


__all__ = [
    "CATEGORY_NOUNS",
    "DEFAULT_INIT_TIMEOUT",
    "ComponentHost",
    "HostedComponent",
    "SkippedComponent",
    "describe",
    "in_context",
    "secret_store_for",
    "select_configuration",
]
