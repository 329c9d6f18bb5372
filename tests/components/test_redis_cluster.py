"""The Redis drivers on a real Redis Cluster (three local nodes) beyond the conformance matrix:
bursts larger than the pool, bulk calls spread over nodes, transactions across hash slots,
configuration notifications from every primary."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from redis_server import assert_a_burst_waits_for_connections

from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.core.component import ComponentMetadata
from mechakit.core.configuration import (
    ConfigurationItem,
    ConfigurationUpdate,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import InvalidRequestError
from mechakit.core.registry import default_registry
from mechakit.core.state import GetRequest, SetRequest


@pytest.fixture(scope="module")
def cluster() -> Iterator[BackendInfo]:
    try:
        info = provision("redis-cluster")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest_asyncio.fixture
async def raw_cluster(cluster: BackendInfo) -> AsyncIterator[Any]:
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster(host=cluster.values["host"], port=int(cluster.values["port"]))
    await client.initialize()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def on_cluster(cluster: BackendInfo) -> AsyncIterator[Any]:
    """``await on_cluster("state.redis", **metadata)``: a driver with redisType cluster."""
    made: list[Any] = []

    async def make(type_: str, **metadata: str) -> Any:
        driver = default_registry().create(type_)
        properties = {"redisHost": cluster.values["address"], "redisType": "cluster", **metadata}
        await driver.init(ComponentMetadata("test", type_, properties, app_id="test-app"))
        made.append(driver)
        return driver

    yield make
    for driver in reversed(made):
        await driver.close()


def keys_on_every_primary(raw_cluster: Any, label: str) -> list[str]:
    """One fresh key per primary node, so that a test touches all of them."""
    wanted = {node.name for node in raw_cluster.get_primaries()}
    found: dict[str, str] = {}
    while set(found) != wanted:
        key = f"{label}-{uuid.uuid4().hex[:8]}"
        found.setdefault(raw_cluster.get_node_from_key(key).name, key)
    return list(found.values())


async def test_a_burst_larger_than_the_pool_waits_for_connections_on_a_cluster(
    on_cluster: Any,
) -> None:
    store = await on_cluster("state.redis", poolSize="4")
    await assert_a_burst_waits_for_connections(store)


async def test_bulk_calls_reach_keys_on_every_node(on_cluster: Any, raw_cluster: Any) -> None:
    store = await on_cluster("state.redis", keyPrefix="none")
    keys = keys_on_every_primary(raw_cluster, "bulk")
    await store.bulk_set([SetRequest(k, k) for k in keys])
    items = await store.bulk_get([GetRequest(k) for k in [*keys, "missing-key"]])
    assert [item.value for item in items] == [*keys, None]
    for key in keys:  # really stored on the node that owns the key
        assert await raw_cluster.hget(key, "data") == f'"{key}"'.encode()


async def test_a_transaction_across_hash_slots_is_refused_naming_the_fix_and_writes_nothing(
    on_cluster: Any, raw_cluster: Any
) -> None:
    store = await on_cluster("state.redis", keyPrefix="none")
    first, second = keys_on_every_primary(raw_cluster, "tx")[:2]
    with pytest.raises(InvalidRequestError, match="hashtag"):
        await store.transact([SetRequest(first, 1), SetRequest(second, 2)])
    assert await store.get(GetRequest(first)) is None
    assert await store.get(GetRequest(second)) is None

    tag = f"{{order-{uuid.uuid4().hex[:6]}}}"
    await store.transact([SetRequest(f"{tag}:a", 1), SetRequest(f"{tag}:b", 2)])
    items = await store.bulk_get([GetRequest(f"{tag}:a"), GetRequest(f"{tag}:b")])
    assert [item.value for item in items] == [1, 2]


@pytest.mark.parametrize("named", [True, False], ids=["named keys", "every key"])
async def test_a_configuration_subscription_hears_keys_on_every_primary(
    on_cluster: Any, raw_cluster: Any, named: bool
) -> None:
    store = await on_cluster("configuration.redis")
    keys = keys_on_every_primary(raw_cluster, "config")
    received: asyncio.Queue[ConfigurationUpdate] = asyncio.Queue()
    request = SubscribeConfigurationRequest(keys=keys if named else [])
    subscription = await store.subscribe(request, received.put)
    for key in keys:
        await raw_cluster.set(key, f"on||{key}")
    heard: dict[str, ConfigurationItem] = {}
    while set(heard) != set(keys):
        update = await asyncio.wait_for(received.get(), 5)
        heard.update((k, item) for k, item in update.items.items() if k in keys)
    assert heard == {key: ConfigurationItem("on", key) for key in keys}
    await store.unsubscribe(subscription)
