"""The component host: secrets, scopes, timeouts, ignoreErrors, and all-or-nothing start-up.

Real embedded drivers throughout; two fault drivers (an init that hangs, an init that
crashes) are registered through a test plug-in to inject the failures real drivers here
cannot produce on demand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ComponentError,
    ComponentNotFoundError,
    ConfigurationError,
    ManifestError,
    MetadataError,
    NotFoundError,
    OperationTimeoutError,
)
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus
from mechakit.core.metadata import Settings
from mechakit.core.registry import ComponentSpec, Registry, hookimpl
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest, StateItem, StateStore
from mechakit.runtime.host import ComponentHost
from mechakit.runtime.manifest import load_manifests

WriteFiles = Callable[..., Path]
MakeComponent = Callable[..., str]
SECRET = "s3cr3t-value-never-logged"


class HangingInitStore(StateStore[Settings]):
    """Fault: ``init`` never returns."""

    closed: ClassVar[list[str]] = []

    async def init(self, metadata: ComponentMetadata) -> None:
        self.decode_settings(metadata)
        await asyncio.Event().wait()

    async def close(self) -> None:
        HangingInitStore.closed.append(self.name)

    async def get(self, request: GetRequest) -> StateItem | None:
        raise NotImplementedError

    async def set(self, request: SetRequest) -> None:
        raise NotImplementedError

    async def delete(self, request: DeleteRequest) -> None:
        raise NotImplementedError


class CrashingInitLock(LockStore[Settings]):
    """Fault: ``init`` fails with an error that is not one of mechakit's."""

    async def init(self, metadata: ComponentMetadata) -> None:
        raise RuntimeError("driver bug")

    async def try_lock(self, request: TryLockRequest) -> bool:
        raise NotImplementedError

    async def unlock(self, request: UnlockRequest) -> UnlockStatus:
        raise NotImplementedError


class FaultPlugin:
    @hookimpl
    def mechakit_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec("state.hanging-init", f"{__name__}:HangingInitStore"),
            ComponentSpec("lock.crashing-init", f"{__name__}:CrashingInitLock"),
        ]


@pytest.fixture
def registry() -> Registry:
    return Registry([FaultPlugin()])


def secret_store(tmp_path: Path, name: str = "secretstore", **secrets: Any) -> str:
    """A local.file store; nested values make multi-valued secrets (``db: {path: ...}``)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(secrets))
    multi = any(isinstance(v, dict) for v in secrets.values())
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  type: secretstores.local.file\n"
        f"  metadata:\n    - name: secretsFile\n      value: {str(path)!r}\n"
        f"    - name: multiValued\n      value: {'true' if multi else 'false'}\n"
    )


def sqlite_from_secret(
    name: str, secret: str, key: str | None = None, store: str | None = None
) -> str:
    ref = f"{{name: {secret}" + (f", key: {key}}}" if key else "}")
    auth = f"auth:\n  secretStore: {store}\n" if store else ""
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  type: state.sqlite\n"
        f"  metadata:\n    - name: connectionString\n      secretKeyRef: {ref}\n" + auth
    )


async def started(folder: Path, registry: Registry, **options: Any) -> ComponentHost:
    host = ComponentHost(load_manifests(folder), registry=registry, **options)
    await host.start()
    return host


def messages(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if word in r.getMessage()]


@pytest.fixture(autouse=True)
def _host_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


# --- secrets ----------------------------------------------------------------------------


async def test_secret_key_ref_is_resolved_through_a_local_file_secret_store(
    resources: WriteFiles, registry: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    folder = resources(
        a_state=sqlite_from_secret("statestore", "db", key="path"),
        z_secrets=secret_store(tmp_path, db={"path": str(db)}),
    )
    host = await started(folder, registry)
    try:
        assert list(host.components) == ["secretstore", "statestore"]
        store = host.get("statestore", "state").instance
        assert isinstance(store, StateStore)
        await store.set(SetRequest("k", 1))
        assert db.exists()
    finally:
        await host.close()


async def test_secret_values_never_reach_the_logs(
    resources: WriteFiles, registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "db"),
        secrets=secret_store(tmp_path, db=str(tmp_path / SECRET)),
    )
    host = await started(folder, registry)
    await host.close()
    assert messages(caplog, "ready")
    assert SECRET not in caplog.text


async def test_a_missing_secret_names_the_component_field_and_store(
    resources: WriteFiles, registry: Registry, tmp_path: Path
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "nope"), secrets=secret_store(tmp_path, db="x")
    )
    with pytest.raises(ConfigurationError) as info:
        await started(folder, registry)
    message = str(info.value)
    assert "state.sqlite 'statestore'" in message
    assert "spec.metadata[0] ('connectionString')" in message
    assert "secret 'nope' not found in secret store 'secretstore'" in message
    assert "state.yaml" in message


async def test_a_missing_key_of_a_secret_is_named(
    resources: WriteFiles, registry: Registry, tmp_path: Path
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "db", key="other"),
        secrets=secret_store(tmp_path, db="x"),
    )
    with pytest.raises(
        ConfigurationError, match="secret 'db' in secret store 'secretstore' has no key 'other'"
    ):
        await started(folder, registry)


async def test_secret_key_ref_without_auth_needs_exactly_one_secret_store(
    resources: WriteFiles, registry: Registry, tmp_path: Path
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "db"),
        one=secret_store(tmp_path, "one", db="x"),
        two=secret_store(tmp_path, "two", db="x"),
    )
    with pytest.raises(ManifestError) as info:
        await started(folder, registry)
    message = str(info.value)
    assert "Component 'statestore'" in message and "state.yaml:" in message
    assert "needs auth.secretStore" in message and "there are several: one, two" in message
    assert info.value.field == "auth.secretStore"


async def test_secret_key_ref_without_any_secret_store_is_an_error(
    resources: WriteFiles, registry: Registry
) -> None:
    folder = resources(state=sqlite_from_secret("statestore", "db"))
    with pytest.raises(ManifestError, match="no secret store is configured"):
        await started(folder, registry)


async def test_auth_secret_store_naming_an_unknown_store_lists_the_known_ones(
    resources: WriteFiles, registry: Registry, tmp_path: Path
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "db", store="vault"),
        secrets=secret_store(tmp_path, db="x"),
    )
    with pytest.raises(ManifestError) as info:
        await started(folder, registry)
    assert "auth.secretStore: no secret store named 'vault' (secret stores: secretstore)" in str(
        info.value
    )


async def test_auth_secret_store_naming_another_kind_of_component_is_an_error(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "db", store="cache"),
        cache=component("cache", "state.in-memory"),
    )
    with pytest.raises(
        ManifestError, match="'cache' is a state.in-memory component, not a secret store"
    ):
        await started(folder, registry)


async def test_envref_values_reach_the_driver(
    resources: WriteFiles, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("STATE_DB", str(db))
    folder = resources(
        state="""
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.sqlite
          metadata:
            - name: connectionString
              envRef: STATE_DB
        """
    )
    host = await started(folder, registry)
    await host.close()
    assert db.exists()


# --- types, failures, ignoreErrors, timeouts --------------------------------------------------


async def test_unknown_type_fails_before_anything_starts_and_suggests_a_near_match(
    resources: WriteFiles,
    registry: Registry,
    component: MakeComponent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = resources(
        a=component("pubsub", "pubsub.in-memory"), b=component("statestore", "state.sqlit")
    )
    with pytest.raises(ComponentNotFoundError) as info:
        await started(folder, registry)
    message = str(info.value)
    assert "state.sqlit 'statestore'" in message
    assert "did you mean 'state.sqlite'" in message
    assert "b.yaml:1" in message
    assert not messages(caplog, "ready")


async def test_a_failing_component_closes_everything_already_started(
    resources: WriteFiles,
    registry: Registry,
    component: MakeComponent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = resources(
        a=component("pubsub", "pubsub.in-memory"),
        b=component("locks", "lock.in-memory"),
        c=component("statestore", "state.sqlite"),
    )
    host = ComponentHost(load_manifests(folder), registry=registry)
    with pytest.raises(MetadataError) as info:
        await host.start()
    message = str(info.value)
    assert "state.sqlite 'statestore'" in message
    assert "metadata 'connectionString' is required" in message
    assert "c.yaml:1" in message
    assert host.components == {}
    assert messages(caplog, "closed") == [
        "component 'locks' (lock.in-memory/v1) closed",
        "component 'pubsub' (pubsub.in-memory/v1) closed",
    ]


async def test_ignore_errors_skips_the_failing_component_and_starts_the_rest(
    resources: WriteFiles,
    registry: Registry,
    component: MakeComponent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = resources(
        a=component("statestore", "state.sqlite", extra="  ignoreErrors: true\n"),
        b=component("pubsub", "pubsub.in-memory"),
        c=component("typo", "lock.in-memry", extra="  ignoreErrors: true\n"),
    )
    host = await started(folder, registry)
    try:
        assert list(host.components) == ["pubsub"]
        assert isinstance(host.skipped["statestore"].error, MetadataError)
        assert isinstance(host.skipped["typo"].error, ComponentNotFoundError)
        (warning,) = [m for m in messages(caplog, "ignoreErrors") if "statestore" in m]
        assert "component 'statestore' (state.sqlite/v1) failed" in warning
        assert "connectionString" in warning
        with pytest.raises(NotFoundError, match="state store 'statestore' was not started: failed"):
            host.get("statestore", "state")
    finally:
        await host.close()


async def test_init_timeout_stops_a_hanging_init_and_closes_it(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    HangingInitStore.closed.clear()
    folder = resources(a=component("slow", "state.hanging-init", extra="  initTimeout: 100ms\n"))
    with pytest.raises(OperationTimeoutError) as info:
        await asyncio.wait_for(started(folder, registry), timeout=5)
    assert "state.hanging-init 'slow'" in str(info.value)
    assert "init did not finish within 100ms" in str(info.value)
    assert info.value.field == "spec.initTimeout"
    assert HangingInitStore.closed == ["slow"]


async def test_the_default_init_timeout_applies_without_spec_init_timeout(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    from datetime import timedelta

    folder = resources(a=component("slow", "state.hanging-init"))
    with pytest.raises(OperationTimeoutError, match="within 50ms"):
        await asyncio.wait_for(
            started(folder, registry, default_init_timeout=timedelta(milliseconds=50)), timeout=5
        )


async def test_a_timed_out_component_with_ignore_errors_is_skipped(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    folder = resources(
        a=component(
            "slow", "state.hanging-init", extra="  initTimeout: 50ms\n  ignoreErrors: true\n"
        ),
        b=component("locks", "lock.in-memory"),
    )
    host = await asyncio.wait_for(started(folder, registry), timeout=5)
    assert list(host.components) == ["locks"]
    assert isinstance(host.skipped["slow"].error, OperationTimeoutError)
    await host.close()


async def test_a_crash_that_is_not_a_mechakit_error_is_reported_with_the_component(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    folder = resources(a=component("locks", "lock.crashing-init"))
    with pytest.raises(ComponentError) as info:
        await started(folder, registry)
    assert "lock.crashing-init 'locks': init failed: RuntimeError: driver bug" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


# --- scopes, order, lookup ---------------------------------------------------------------------


async def test_components_out_of_scope_are_not_loaded(
    resources: WriteFiles,
    registry: Registry,
    component: MakeComponent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = resources(
        a=component("mine", "lock.in-memory", extra="scopes: [orders, billing]\n"),
        b=component("theirs", "state.sqlite", extra="scopes: [shipping]\n"),
        c=component("everyone", "pubsub.in-memory"),
    )
    host = await started(folder, registry, app_id="orders")
    try:
        assert list(host.components) == ["mine", "everyone"]
        assert any("'theirs'" in m and "shipping" in m for m in messages(caplog, "skipped"))
        with pytest.raises(NotFoundError, match="app id 'orders' is not in its scopes"):
            host.get("theirs", "state")
    finally:
        await host.close()


async def test_a_secret_store_out_of_scope_cannot_resolve_secrets(
    resources: WriteFiles, registry: Registry, tmp_path: Path
) -> None:
    folder = resources(
        state=sqlite_from_secret("statestore", "db", store="secretstore"),
        secrets=secret_store(tmp_path, db="x") + "scopes: [other]\n",
    )
    with pytest.raises(ManifestError, match="not loaded for app id 'orders'"):
        await started(folder, registry, app_id="orders")


async def test_secret_stores_start_first_and_everything_closes_in_reverse(
    resources: WriteFiles,
    registry: Registry,
    component: MakeComponent,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = resources(
        a=component("pubsub", "pubsub.in-memory"),
        b=component("locks", "lock.in-memory"),
        c=secret_store(tmp_path),
    )
    host = await started(folder, registry)
    await host.close()
    await host.close()
    assert messages(caplog, "ready") == [
        "component 'secretstore' (secretstores.local.file/v1) ready",
        "component 'pubsub' (pubsub.in-memory/v1) ready",
        "component 'locks' (lock.in-memory/v1) ready",
    ]
    assert messages(caplog, "closed") == [
        "component 'locks' (lock.in-memory/v1) closed",
        "component 'pubsub' (pubsub.in-memory/v1) closed",
        "component 'secretstore' (secretstores.local.file/v1) closed",
    ]


async def test_lookup_errors_list_the_configured_components_of_that_type(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    folder = resources(
        a=component("cache", "state.in-memory"),
        b=component("statestore", "state.in-memory"),
        c=component("pubsub", "pubsub.in-memory"),
    )
    host = await started(folder, registry)
    try:
        with pytest.raises(NotFoundError) as info:
            host.get("nope", "state")
        assert "no state store named 'nope' (configured state stores: cache, statestore)" in str(
            info.value
        )
        with pytest.raises(NotFoundError) as info:
            host.get("pubsub", "state")
        assert "'pubsub' is a pubsub.in-memory component, not a state store" in str(info.value)
        with pytest.raises(NotFoundError, match="no lock store is running"):
            host.get("locks", "lock")
    finally:
        await host.close()


async def test_configuration_is_the_only_one_loaded_or_must_be_named(
    resources: WriteFiles, registry: Registry
) -> None:
    config = (
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: {}}}\nspec: {{}}\n"
    )
    one = load_manifests(resources(a=config.format("first")))
    assert ComponentHost(one, registry=registry).configuration is not None
    two = load_manifests(resources(b=config.format("second")))
    with pytest.raises(
        ConfigurationError, match=r"several Configuration resources .*first, second"
    ):
        ComponentHost(two, registry=registry)
    chosen = ComponentHost(two, registry=registry, configuration="second").configuration
    assert chosen is not None and chosen.name == "second"
    with pytest.raises(ConfigurationError, match="no Configuration named 'third'"):
        ComponentHost(two, registry=registry, configuration="third")


async def test_only_subscriptions_in_scope_are_kept(
    resources: WriteFiles, registry: Registry
) -> None:
    sub = (
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {0}}}\n"
        "spec: {{pubsubname: pubsub, topic: t, route: /t}}\nscopes: [{1}]\n"
    )
    folder = resources(a=sub.format("mine", "orders"), b=sub.format("theirs", "billing"))
    host = ComponentHost(load_manifests(folder), registry=registry, app_id="orders")
    assert [s.name for s in host.subscriptions] == ["mine"]
