"""Every built-in driver, used before ``init`` or after ``close``, raises one error: a
non-retriable ``ComponentNotOpenError`` with one wording, from every public operation.

A never-initialised instance needs no backend, so every driver of the registry is covered;
init-then-close runs for the drivers that open without one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mechakit.core.bindings import BindingEvent, InputBinding, InvokeRequest, OutputBinding
from mechakit.core.component import (
    Component,
    ComponentMetadata,
)
from mechakit.core.configuration import (
    ConfigurationStore,
    ConfigurationUpdate,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import NOT_OPEN, ComponentNotOpenError
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest
from mechakit.core.registry import ComponentSpec, default_registry
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest, SecretStore
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
    Query,
    QueryableStore,
    SetRequest,
    StateStore,
    TransactionalStore,
)

CATEGORIES = ("state", "bindings", "secretstores", "lock", "configuration")

Operation = Callable[[Any], Awaitable[object]]


async def _on_event(event: BindingEvent) -> None:
    pass


async def _on_update(update: ConfigurationUpdate) -> None:
    pass


def invoke(operation: str) -> Operation:
    return lambda c: c.invoke(InvokeRequest(operation, b"{}", {"key": "k", "fileName": "f"}))


def operations(component: Component[Any]) -> dict[str, Operation]:
    """Every public operation of ``component``'s contract and capabilities, with a valid request."""
    ops: dict[str, Operation] = {}
    if type(component).ping is not Component.ping:
        ops["ping"] = lambda c: c.ping()
    if isinstance(component, StateStore):
        ops |= {
            "get": lambda c: c.get(GetRequest("k")),
            "set": lambda c: c.set(SetRequest("k", 1)),
            "delete": lambda c: c.delete(DeleteRequest("k")),
            "bulk_get": lambda c: c.bulk_get([GetRequest("k"), GetRequest("j")]),
            "bulk_set": lambda c: c.bulk_set([SetRequest("k", 1), SetRequest("j", 2)]),
            "bulk_delete": lambda c: c.bulk_delete([DeleteRequest("k"), DeleteRequest("j")]),
        }
    if isinstance(component, TransactionalStore):
        ops["transact"] = lambda c: c.transact([SetRequest("k", 1), DeleteRequest("j")])
    if isinstance(component, QueryableStore):
        ops["query"] = lambda c: c.query(Query())
    if isinstance(component, OutputBinding):
        for name in component.operations():
            ops[f"invoke {name}"] = invoke(name)
    if isinstance(component, InputBinding):
        ops["read"] = lambda c: c.read(_on_event)
    if isinstance(component, SecretStore):
        ops["get_secret"] = lambda c: c.get_secret(GetSecretRequest("s"))
        ops["bulk_get_secret"] = lambda c: c.bulk_get_secret(BulkGetSecretRequest())
    if isinstance(component, LockStore):
        ops["try_lock"] = lambda c: c.try_lock(TryLockRequest("r", "me", 10))
        ops["unlock"] = lambda c: c.unlock(UnlockRequest("r", "me"))
    if isinstance(component, ConfigurationStore):
        ops["get"] = lambda c: c.get(GetConfigurationRequest(["k"]))
        ops["subscribe"] = lambda c: c.subscribe(SubscribeConfigurationRequest(["k"]), _on_update)
        ops["unsubscribe"] = lambda c: c.unsubscribe("some-id")
    return ops


def built_in_specs() -> list[ComponentSpec]:
    return [
        spec
        for category in CATEGORIES
        for spec in default_registry().specs(category)
        if spec.target.startswith("mechakit.components.")
    ]


def driver(spec: ComponentSpec) -> Component[Any]:
    if not spec.installed():
        pytest.skip(f"{spec.type}: {spec.install_hint}")
    return spec.load()()


async def assert_not_open(component: Component[Any], label: str) -> None:
    ops = operations(component)
    assert ops, f"{label} offers no operation to check"
    for name, op in ops.items():
        with pytest.raises(ComponentNotOpenError) as caught:
            await op(component)
        error = caught.value
        assert (error.reason, error.component, error.retriable) == (NOT_OPEN, label, False), name


@pytest.mark.parametrize("spec", built_in_specs(), ids=lambda spec: spec.type)
async def test_every_operation_before_init_is_not_open(spec: ComponentSpec) -> None:
    component = driver(spec)
    await assert_not_open(component, type(component).__name__)


@pytest.mark.parametrize("spec", built_in_specs(), ids=lambda spec: spec.type)
async def test_every_operation_after_close_without_init_is_not_open(spec: ComponentSpec) -> None:
    component = driver(spec)
    await component.close()
    await assert_not_open(component, type(component).__name__)


def secrets_file(tmp_path: Path) -> str:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"s": "v"}))
    return str(path)


WITHOUT_BACKEND: dict[str, Callable[[Path], dict[str, str]]] = {
    "state.in-memory": lambda tmp: {},
    "state.sqlite": lambda tmp: {"connectionString": ":memory:"},
    "bindings.cron": lambda tmp: {"schedule": "@every 1h"},
    "bindings.http": lambda tmp: {"url": "http://127.0.0.1:9"},
    "bindings.localstorage": lambda tmp: {"rootPath": str(tmp / "files")},
    "secretstores.local.env": lambda tmp: {},
    "secretstores.local.file": lambda tmp: {"secretsFile": secrets_file(tmp)},
    "lock.in-memory": lambda tmp: {},
    "configuration.in-memory": lambda tmp: {},
}
"""Metadata that opens a driver with no backend running."""


@pytest.mark.parametrize(
    "spec", [s for s in built_in_specs() if s.type in WITHOUT_BACKEND], ids=lambda spec: spec.type
)
async def test_every_operation_after_init_and_close_is_not_open(
    spec: ComponentSpec, tmp_path: Path
) -> None:
    component = driver(spec)
    properties = WITHOUT_BACKEND[spec.type](tmp_path)
    await component.init(ComponentMetadata("it", spec.type, properties, app_id="app"))
    await component.close()
    await component.close()
    await assert_not_open(component, f"{spec.type} 'it'")
