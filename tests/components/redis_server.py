"""Fixtures for the Redis driver tests: a private server per test module, and a builder.

Test modules load them with ``pytest_plugins = ["redis_server"]``.

A module gets its own server (the "redis" conformance backend) so a test that restarts it
or changes its configuration cannot disturb any other module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.core.component import ComponentMetadata
from mechakit.core.registry import default_registry
from mechakit.core.state import GetRequest, SetRequest

RedisDriver = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[BackendInfo]:
    try:
        info = provision("redis")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest_asyncio.fixture
async def redis_driver(redis_server: BackendInfo) -> AsyncIterator[RedisDriver]:
    """``await redis_driver("state.redis", name="x", **metadata)``: initialised, closed after."""
    made: list[Any] = []

    async def make(type_: str, name: str = "test", **metadata: str) -> Any:
        driver = default_registry().create(type_)
        properties = {"redisHost": redis_server.values["address"], **metadata}
        await driver.init(
            ComponentMetadata(name=name, type=type_, properties=properties, app_id="test-app")
        )
        made.append(driver)
        return driver

    yield make
    for driver in reversed(made):
        await driver.close()


@pytest_asyncio.fixture
async def raw_redis(redis_server: BackendInfo) -> AsyncIterator[Any]:
    """A plain redis-py client on the same server, to look behind a driver's back."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=redis_server.values["host"], port=int(redis_server.values["port"]))
    yield client
    await client.aclose()


async def assert_a_burst_waits_for_connections(store: Any, calls: int = 200) -> None:
    """``calls`` concurrent sets on a store built with a small poolSize all succeed."""
    keys = [f"burst-{uuid.uuid4().hex}" for _ in range(calls)]
    await asyncio.gather(*(store.set(SetRequest(k, i)) for i, k in enumerate(keys)))
    items = await store.bulk_get([GetRequest(k) for k in keys])
    assert [item.value for item in items] == list(range(calls))
