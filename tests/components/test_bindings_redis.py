"""bindings.redis beyond the conformance suite: TTLs, get-and-delete, increment."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from mechakit.core.bindings import InvokeRequest
from mechakit.core.errors import ComponentError, InvalidRequestError

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def test_create_with_ttl_sets_value_and_expiry_in_one_command(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    binding = await redis_driver("bindings.redis")
    key = new_key("ttl")
    before = await raw_redis.info("commandstats")
    await binding.invoke(
        InvokeRequest("create", b"payload", metadata={"key": key, "ttlInSeconds": "30"})
    )
    after = await raw_redis.info("commandstats")
    assert await raw_redis.get(key) == b"payload"
    assert 0 < await raw_redis.ttl(key) <= 30
    assert after["cmdstat_set"]["calls"] - before.get("cmdstat_set", {"calls": 0})["calls"] == 1
    assert after.get("cmdstat_expire") == before.get("cmdstat_expire")


async def test_get_with_delete_returns_the_value_and_removes_it(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    binding = await redis_driver("bindings.redis")
    key = new_key("getdel")
    await raw_redis.set(key, b"once")
    got = await binding.invoke(InvokeRequest("get", metadata={"key": key, "delete": "true"}))
    assert got.data == b"once"
    assert await raw_redis.exists(key) == 0
    missing = await binding.invoke(InvokeRequest("get", metadata={"key": key}))
    assert missing.data == b""


async def test_increment_answers_the_new_value_and_applies_the_ttl(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    binding = await redis_driver("bindings.redis")
    key = new_key("counter")
    first = await binding.invoke(InvokeRequest("increment", metadata={"key": key}))
    second = await binding.invoke(
        InvokeRequest("increment", metadata={"key": key, "ttlInSeconds": "20"})
    )
    assert (first.data, second.data) == (b"1", b"2")
    assert 0 < await raw_redis.ttl(key) <= 20
    await binding.invoke(InvokeRequest("increment", metadata={"key": key, "ttlInSeconds": "-1"}))
    assert await raw_redis.ttl(key) == -1


async def test_increment_of_a_non_number_is_an_error_that_is_not_retriable(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    binding = await redis_driver("bindings.redis")
    key = new_key("text")
    await raw_redis.set(key, "not a number")
    with pytest.raises(ComponentError) as caught:
        await binding.invoke(InvokeRequest("increment", metadata={"key": key}))
    assert not caught.value.retriable
    assert caught.value.key == key


@pytest.mark.parametrize("operation", ["create", "get", "delete", "increment"])
async def test_every_operation_needs_the_key_metadata(
    redis_driver: RedisDriver, operation: str
) -> None:
    binding = await redis_driver("bindings.redis")
    with pytest.raises(InvalidRequestError) as caught:
        await binding.invoke(InvokeRequest(operation, b"x"))
    assert caught.value.field == "key"


async def test_bad_ttl_is_rejected_before_anything_is_written(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    binding = await redis_driver("bindings.redis")
    key = new_key("bad-ttl")
    with pytest.raises(InvalidRequestError):
        await binding.invoke(
            InvokeRequest("create", b"x", metadata={"key": key, "ttlInSeconds": "soon"})
        )
    assert await raw_redis.exists(key) == 0
