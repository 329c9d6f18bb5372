"""state.in-memory beyond the conformance suite: isolation, copies, ETag scheme, cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mechakit.components.state.in_memory import InMemoryStateStore
from mechakit.core import ComponentMetadata, ETagError, ETagErrorKind, MetadataError
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest

Factory = Callable[..., Awaitable[InMemoryStateStore]]


@pytest.fixture
async def make_store() -> AsyncIterator[Factory]:
    made: list[InMemoryStateStore] = []

    async def make(**properties: str) -> InMemoryStateStore:
        store = InMemoryStateStore()
        await store.init(
            ComponentMetadata("memory", "state.in-memory", properties=properties, app_id="app")
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def cleanup_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "TTL cleanup" in t.get_name() and not t.done()]


async def test_each_instance_has_its_own_data(make_store: Factory) -> None:
    first, second = await make_store(), await make_store()
    await first.set(SetRequest("k", "first"))
    assert await second.get(GetRequest("k")) is None


async def test_changing_a_value_after_set_does_not_change_the_stored_one(
    make_store: Factory,
) -> None:
    store = await make_store()
    value = {"items": [1]}
    await store.set(SetRequest("k", value))
    value["items"].append(2)
    item = await store.get(GetRequest("k"))
    assert item is not None
    assert item.value == {"items": [1]}


async def test_an_etag_is_never_reused_after_delete_and_rewrite(make_store: Factory) -> None:
    store = await make_store()
    await store.set(SetRequest("k", 1))
    old = await store.get(GetRequest("k"))
    assert old is not None
    await store.delete(DeleteRequest("k"))
    await store.set(SetRequest("k", 2))
    new = await store.get(GetRequest("k"))
    assert new is not None
    assert new.etag != old.etag
    with pytest.raises(ETagError) as caught:
        await store.set(SetRequest("k", 3, etag=old.etag))
    assert caught.value.kind is ETagErrorKind.MISMATCH


@pytest.mark.parametrize("etag", ["-1", "1.0", " 1", "\u0661", "abc"])
async def test_etags_other_than_decimal_digits_are_invalid(make_store: Factory, etag: str) -> None:
    store = await make_store()
    await store.set(SetRequest("k", 1))
    with pytest.raises(ETagError) as caught:
        await store.set(SetRequest("k", 2, etag=etag))
    assert caught.value.kind is ETagErrorKind.INVALID
    assert caught.value.key == "k"
    assert "state.in-memory 'memory'" in str(caught.value)


async def test_periodic_cleanup_frees_expired_items(make_store: Factory) -> None:
    store = await make_store(cleanupInterval="100ms")
    await store.set(SetRequest("short", 1, metadata={"ttlInSeconds": "1"}))
    await store.set(SetRequest("kept", 2))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while "app||short" in store._items:
        assert loop.time() < deadline, "expired item still held after 3s"
        await asyncio.sleep(0.05)
    assert set(store._items) == {"app||kept"}


async def test_close_stops_the_cleanup_task_and_can_be_repeated(make_store: Factory) -> None:
    store = await make_store(cleanupInterval="1s")
    assert len(cleanup_tasks()) == 1
    await store.close()
    await store.close()
    assert cleanup_tasks() == []


async def test_cleanup_interval_zero_runs_no_task(make_store: Factory) -> None:
    await make_store(cleanupInterval="0")
    assert cleanup_tasks() == []


async def test_bad_cleanup_interval_names_the_field(make_store: Factory) -> None:
    with pytest.raises(MetadataError) as caught:
        await make_store(cleanupInterval="soon")
    assert caught.value.field == "cleanupInterval"
