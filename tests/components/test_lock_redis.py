"""lock.redis beyond the conformance suite: cluster refusal, what Redis holds."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from mechakit.core.errors import MetadataError
from mechakit.core.lock import TryLockRequest, UnlockRequest, UnlockStatus

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis


def new_resource() -> str:
    return f"resource-{uuid.uuid4().hex[:8]}"


async def test_cluster_type_is_refused_at_init_naming_the_setting(
    redis_driver: RedisDriver,
) -> None:
    with pytest.raises(MetadataError) as caught:
        await redis_driver("lock.redis", name="locks", redisType="cluster")
    assert caught.value.field == "redisType"
    message = str(caught.value)
    assert message.startswith("lock.redis 'locks': metadata 'redisType' 'cluster' is not supported")
    assert "single primary" in message and "redisType 'node'" in message


async def test_lock_is_a_key_holding_the_owner_that_redis_expires(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    locks = await redis_driver("lock.redis")
    resource = new_resource()
    assert await locks.try_lock(TryLockRequest(resource, "owner-a", 30))
    assert await raw_redis.get(resource) == b"owner-a"
    assert 29_000 < await raw_redis.pttl(resource) <= 30_000


async def test_owner_is_compared_exactly_on_unlock(redis_driver: RedisDriver) -> None:
    locks = await redis_driver("lock.redis")
    resource = new_resource()
    assert await locks.try_lock(TryLockRequest(resource, "owner", 30))
    status = await locks.unlock(UnlockRequest(resource, "owner "))
    assert status is UnlockStatus.LOCK_BELONGS_TO_OTHERS
    assert await locks.unlock(UnlockRequest(resource, "owner")) is UnlockStatus.SUCCESS
