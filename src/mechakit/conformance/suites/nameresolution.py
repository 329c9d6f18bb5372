"""Name resolution conformance. A registry (``NameRegistry``: sqlite, mdns) finds what was
registered, forgets it once unregistered, keeps namespaces apart, skips excluded
addresses and says NotFoundError for an unknown app id. A computing resolver (kubernetes,
nameformat) registers nothing and returns the address its settings make of the request.
Each test runs for one kind and is skipped for the other, with the reason. Fresh app ids
per test, so targets on a shared registry do not interfere.

Options (``options:`` of the target):

- ``addresses`` (computing resolvers): a list of ``{app_id, namespace, port, address}``
  (namespace and port optional): what the resolver must answer for each request.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mechakit.conformance.plugin import ComponentFactory, option
from mechakit.conformance.targets import Target
from mechakit.core.errors import NotFoundError
from mechakit.core.nameresolution import (
    DEFAULT_NAMESPACE,
    NameRegistry,
    NameResolver,
    Registration,
    ResolveRequest,
)


def unique_app(label: str) -> str:
    return f"conformance-{label}-{uuid.uuid4().hex[:10]}"


def registry_of(component: NameResolver[Any]) -> NameRegistry[Any]:
    if not isinstance(component, NameRegistry):
        pytest.skip(f"{component.label} computes addresses; nothing registers with it")
    return component


def computing(component: NameResolver[Any]) -> NameResolver[Any]:
    if isinstance(component, NameRegistry):
        pytest.skip(f"{component.label} is a registry; it computes no address")
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

    async def test_an_excluded_address_is_skipped_for_another_instance(
        self, component: NameResolver[Any], component_factory: ComponentFactory
    ) -> None:
        first = registry_of(component)
        second: NameRegistry[Any] = await component_factory("conformance-second")
        app = unique_app("excluded")
        await first.register(Registration(app, "127.0.0.1:50001"))
        await second.register(Registration(app, "127.0.0.1:50002"))
        for _ in range(5):
            skipping_first = ResolveRequest(app, exclude=frozenset({"127.0.0.1:50001"}))
            assert await first.resolve(skipping_first) == "127.0.0.1:50002"
        everything = frozenset({"127.0.0.1:50001", "127.0.0.1:50002"})
        with pytest.raises(NotFoundError):
            await first.resolve(ResolveRequest(app, exclude=everything))

    async def test_an_unknown_app_id_is_not_found(self, component: NameResolver[Any]) -> None:
        registry_of(component)
        with pytest.raises(NotFoundError):
            await component.resolve(ResolveRequest(unique_app("unknown")))

    async def test_a_computing_resolver_answers_the_address_its_settings_make(
        self, component: NameResolver[Any], conformance_target: Target
    ) -> None:
        resolver = computing(component)
        expected: list[dict[str, Any]] = option(conformance_target, "addresses")
        if not expected:
            pytest.skip(f"{conformance_target.name}: no 'addresses' option states the answers")
        for case in expected:
            request = ResolveRequest(
                str(case["app_id"]),
                str(case.get("namespace", DEFAULT_NAMESPACE)),
                int(case.get("port", 0)),
            )
            assert await resolver.resolve(request) == case["address"], case

    async def test_a_computing_resolver_answers_any_app_id_without_registration(
        self, component: NameResolver[Any]
    ) -> None:
        resolver = computing(component)
        address = await resolver.resolve(ResolveRequest(unique_app("anyone"), port=50002))
        assert isinstance(address, str) and address
