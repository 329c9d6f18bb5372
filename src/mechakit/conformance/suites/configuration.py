"""Configuration conformance: get by keys / all / missing, subscriptions, unsubscribe.

The contract has no write operation, so the suite writes items through a
:class:`ConfigurationWriter`. By default that is the component itself when it has
``set_items`` and ``delete_items`` (as ``configuration.in-memory`` does); a backend whose
items are written another way names a factory in the target option
``writer: "package.module:factory"``, called as ``factory(component, conformance_context)``
and returning a writer (or an awaitable of one; an ``aclose()`` it has is awaited at the
end). Keys are unique per test and deleted afterwards.

Options (``options:`` of the target):

- ``writer``: see above.
- ``receive_timeout`` (seconds, default 10): how long an update may take to arrive.
- ``quiet_period`` (seconds, default 1): how long to watch that nothing more arrives.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import pytest
import pytest_asyncio

from mechakit.conformance.targets import Target
from mechakit.core.configuration import (
    ConfigurationItem,
    ConfigurationStore,
    ConfigurationUpdate,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import ManifestError, NotFoundError

pytestmark = pytest.mark.asyncio


@runtime_checkable
class ConfigurationWriter(Protocol):
    """Writes items into the backend a configuration store reads."""

    async def set(self, items: Mapping[str, str]) -> None: ...

    async def delete(self, keys: Sequence[str]) -> None: ...


class ComponentWriter:
    """Writes through the component's own ``set_items`` / ``delete_items``."""

    def __init__(self, component: Any) -> None:
        self._component = component

    async def set(self, items: Mapping[str, str]) -> None:
        await self._component.set_items(items)

    async def delete(self, keys: Sequence[str]) -> None:
        await self._component.delete_items(keys)


class _TrackingWriter:
    """Remembers every key written so the test can remove them from a shared backend."""

    def __init__(self, writer: ConfigurationWriter) -> None:
        self.inner = writer
        self.written: set[str] = set()

    async def set(self, items: Mapping[str, str]) -> None:
        self.written.update(items)
        await self.inner.set(items)

    async def delete(self, keys: Sequence[str]) -> None:
        await self.inner.delete(keys)


async def load_writer(
    target: Target, component: Any, context: Mapping[str, str]
) -> ConfigurationWriter | None:
    """The target's writer: ``options.writer`` if given, else the component if it can write."""
    spec = target.options.get("writer")
    if spec:
        module_name, _, attribute = str(spec).partition(":")
        try:
            factory: Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ManifestError(
                f"option writer {spec!r} is not an importable 'module:callable': {exc}",
                component=target.name,
                field="options.writer",
            ) from None
        writer = factory(component, context)
        if inspect.isawaitable(writer):
            writer = await writer
        if not isinstance(writer, ConfigurationWriter):
            raise ManifestError(
                f"option writer {spec!r} returned {writer!r}, which has no async set/delete",
                component=target.name,
                field="options.writer",
            )
        return writer
    if callable(getattr(component, "set_items", None)) and callable(
        getattr(component, "delete_items", None)
    ):
        return ComponentWriter(component)
    return None


class Updates:
    """A subscription handler that records updates and lets a test wait, boundedly, for one."""

    def __init__(self) -> None:
        self.received: list[ConfigurationUpdate] = []
        self._changed = asyncio.Condition()

    async def __call__(self, update: ConfigurationUpdate) -> None:
        self.received.append(update)
        async with self._changed:
            self._changed.notify_all()

    def values_of(self, key: str) -> list[str]:
        return [u.items[key].value for u in self.received if key in u.items]

    def keys(self) -> set[str]:
        return {k for u in self.received for k in u.items}

    async def wait_for_value(self, key: str, value: str, within: float) -> ConfigurationItem:
        def arrived() -> bool:
            return value in self.values_of(key)

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(arrived)

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            pytest.fail(
                f"timed out after {within}s waiting for {key}={value!r}; "
                f"got {key}: {self.values_of(key)}"
            )
        return next(u.items[key] for u in reversed(self.received) if key in u.items)


def unique_keys(label: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:10]
    return [f"conformance-{label}-{run}-{i}" for i in range(count)]


class ConfigurationSuite:
    category = "configuration"
    pytestmark = [pytest.mark.asyncio]  # on the class: subclasses in other modules inherit it

    @pytest.fixture
    def receive_timeout(self, conformance_target: Target) -> float:
        return float(conformance_target.options.get("receive_timeout", 10))

    @pytest.fixture
    def quiet_period(self, conformance_target: Target) -> float:
        return float(conformance_target.options.get("quiet_period", 1))

    @pytest_asyncio.fixture
    async def configuration_writer(
        self,
        component: ConfigurationStore[Any],
        conformance_target: Target,
        conformance_context: dict[str, str],
    ) -> AsyncIterator[ConfigurationWriter]:
        writer = await load_writer(conformance_target, component, conformance_context)
        if writer is None:
            pytest.skip(
                f"{conformance_target.name}: the suite cannot write configuration items; "
                "give the target option writer: 'module:factory', or give the component "
                "set_items/delete_items"
            )
        tracking = _TrackingWriter(writer)
        yield tracking
        try:
            if tracking.written:
                await writer.delete(sorted(tracking.written))
        finally:
            aclose = getattr(writer, "aclose", None)
            if callable(aclose):
                await aclose()

    # --- get ----------------------------------------------------------------------------

    async def test_get_returns_the_requested_items_with_a_version(
        self, component: ConfigurationStore[Any], configuration_writer: ConfigurationWriter
    ) -> None:
        first, second, third = unique_keys("get", 3)
        await configuration_writer.set({first: "one", second: "two", third: "three"})
        items = await component.get(GetConfigurationRequest(keys=[first, second]))
        assert set(items) == {first, second}
        assert (items[first].value, items[second].value) == ("one", "two")
        assert items[first].version and items[second].version

    async def test_get_without_keys_returns_every_item(
        self, component: ConfigurationStore[Any], configuration_writer: ConfigurationWriter
    ) -> None:
        keys = unique_keys("all", 3)
        await configuration_writer.set({k: f"value-{i}" for i, k in enumerate(keys)})
        items = await component.get(GetConfigurationRequest())
        assert {k: items[k].value for k in keys if k in items} == {
            k: f"value-{i}" for i, k in enumerate(keys)
        }

    async def test_missing_key_is_absent_from_get(
        self, component: ConfigurationStore[Any], configuration_writer: ConfigurationWriter
    ) -> None:
        present, missing = unique_keys("missing", 2)
        await configuration_writer.set({present: "here"})
        items = await component.get(GetConfigurationRequest(keys=[present, missing]))
        assert set(items) == {present}
        assert await component.get(GetConfigurationRequest(keys=[missing])) == {}

    async def test_updated_item_gets_a_new_version(
        self, component: ConfigurationStore[Any], configuration_writer: ConfigurationWriter
    ) -> None:
        (key,) = unique_keys("version", 1)
        await configuration_writer.set({key: "v1"})
        before = (await component.get(GetConfigurationRequest(keys=[key])))[key]
        await configuration_writer.set({key: "v2"})
        after = (await component.get(GetConfigurationRequest(keys=[key])))[key]
        assert after.value == "v2"
        assert after.version != before.version

    async def test_deleted_item_is_absent_from_get(
        self, component: ConfigurationStore[Any], configuration_writer: ConfigurationWriter
    ) -> None:
        (key,) = unique_keys("gone", 1)
        await configuration_writer.set({key: "soon gone"})
        await configuration_writer.delete([key])
        assert await component.get(GetConfigurationRequest(keys=[key])) == {}

    # --- subscribe ----------------------------------------------------------------------

    async def test_three_subscribers_see_adds_updates_and_deletes(
        self,
        component: ConfigurationStore[Any],
        configuration_writer: ConfigurationWriter,
        receive_timeout: float,
    ) -> None:
        key, other = unique_keys("watched", 2)
        subscribers = [Updates(), Updates(), Updates()]
        key_sets: list[list[str]] = [[key], [key, other], []]
        ids = [
            await component.subscribe(SubscribeConfigurationRequest(keys=keys), updates)
            for keys, updates in zip(key_sets, subscribers, strict=True)
        ]
        assert len(set(ids)) == 3

        await configuration_writer.set({key: "added"})
        for updates in subscribers:
            added = await updates.wait_for_value(key, "added", receive_timeout)
            assert added.version
        await configuration_writer.set({key: "updated"})
        for updates in subscribers:
            await updates.wait_for_value(key, "updated", receive_timeout)
        await configuration_writer.delete([key])
        for updates in subscribers:
            deleted = await updates.wait_for_value(key, "", receive_timeout)
            assert deleted.value == ""
        for subscription_id, updates in zip(ids, subscribers, strict=True):
            assert {u.subscription_id for u in updates.received} == {subscription_id}
            assert updates.values_of(key) == ["added", "updated", ""]

    async def test_subscriber_to_some_keys_sees_no_other_key(
        self,
        component: ConfigurationStore[Any],
        configuration_writer: ConfigurationWriter,
        receive_timeout: float,
        quiet_period: float,
    ) -> None:
        watched, unwatched = unique_keys("some", 2)
        updates = Updates()
        await component.subscribe(SubscribeConfigurationRequest(keys=[watched]), updates)
        await configuration_writer.set({unwatched: "not for you"})
        await configuration_writer.set({watched: "for you"})
        await updates.wait_for_value(watched, "for you", receive_timeout)
        await asyncio.sleep(quiet_period)
        assert updates.keys() == {watched}

    async def test_nothing_arrives_after_unsubscribe(
        self,
        component: ConfigurationStore[Any],
        configuration_writer: ConfigurationWriter,
        receive_timeout: float,
        quiet_period: float,
    ) -> None:
        (key,) = unique_keys("unsub", 1)
        updates, still_subscribed = Updates(), Updates()
        subscription_id = await component.subscribe(
            SubscribeConfigurationRequest(keys=[key]), updates
        )
        await component.subscribe(SubscribeConfigurationRequest(keys=[key]), still_subscribed)
        await configuration_writer.set({key: "before"})
        await updates.wait_for_value(key, "before", receive_timeout)

        await component.unsubscribe(subscription_id)
        await configuration_writer.set({key: "after"})
        await configuration_writer.delete([key])
        await still_subscribed.wait_for_value(key, "", receive_timeout)
        await asyncio.sleep(quiet_period)
        assert updates.values_of(key) == ["before"]

    async def test_unsubscribe_of_an_unknown_id_raises_not_found(
        self, component: ConfigurationStore[Any]
    ) -> None:
        with pytest.raises(NotFoundError):
            await component.unsubscribe(f"no-such-subscription-{uuid.uuid4().hex}")

    async def test_second_unsubscribe_raises_not_found(
        self, component: ConfigurationStore[Any]
    ) -> None:
        subscription_id = await component.subscribe(SubscribeConfigurationRequest(), Updates())
        await component.unsubscribe(subscription_id)
        with pytest.raises(NotFoundError):
            await component.unsubscribe(subscription_id)
