"""Name resolution conformance: an unknown app id is NotFoundError; a registry finds what
was registered and forgets it once unregistered. Fresh app ids per test, so targets on a
shared registry do not interfere."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mechakit.core.errors import NotFoundError
from mechakit.core.nameresolution import NameRegistry, NameResolver, Registration, ResolveRequest


def unique_app(label: str) -> str:
    return f"conformance-{label}-{uuid.uuid4().hex[:10]}"


def registry_of(component: NameResolver[Any]) -> NameRegistry[Any]:
    if not isinstance(component, NameRegistry):
        pytest.skip(f"{component.label} computes addresses; nothing registers with it")
    return component


class NameResolutionSuite:
    category = "nameresolution"
    pytestmark = [pytest.mark.asyncio]  # on the class: subclasses in other modules inherit it

    async def test_a_registered_app_resolves_to_its_address(
        self, component: NameResolver[Any]
    ) -> None:
        registry = registry_of(component)
        app = unique_app("registered")
        await registry.register(Registration(app, "127.0.0.1:50001"))
        try:
            assert await registry.resolve(ResolveRequest(app)) == "127.0.0.1:50001"
        finally:
            await registry.unregister()

    async def test_an_unregistered_app_is_no_longer_found(
        self, component: NameResolver[Any]
    ) -> None:
        registry = registry_of(component)
        app = unique_app("withdrawn")
        await registry.register(Registration(app, "127.0.0.1:50001"))
        await registry.unregister()
        with pytest.raises(NotFoundError):
            await registry.resolve(ResolveRequest(app))

    async def test_a_registration_is_per_namespace(self, component: NameResolver[Any]) -> None:
        registry = registry_of(component)
        app = unique_app("namespaced")
        await registry.register(Registration(app, "127.0.0.1:50001", namespace="ns-a"))
        try:
            with pytest.raises(NotFoundError):
                await registry.resolve(ResolveRequest(app, namespace="ns-b"))
        finally:
            await registry.unregister()

    async def test_an_unknown_app_id_is_not_found(self, component: NameResolver[Any]) -> None:
        registry_of(component)
        with pytest.raises(NotFoundError):
            await component.resolve(ResolveRequest(unique_app("unknown")))
