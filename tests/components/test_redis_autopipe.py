"""Auto-pipelining on the Redis drivers: concurrent calls share round trips, and each call
still gets its own outcome — its own reply error, its own retriable error when the
connection is lost, never a false ETag conflict, never a write applied twice, and a call
whose caller gave up while it was queued is never sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from lossy_proxy import LossyProxy

from mechakit.conformance.backends import BackendInfo
from mechakit.core.bindings import InvokeRequest
from mechakit.core.errors import ComponentError, ConnectionFailedError, ETagError
from mechakit.core.lock import TryLockRequest
from mechakit.core.pubsub import Message, PublishRequest, SubscribeRequest
from mechakit.core.state import Concurrency, GetRequest, SetRequest, StateItem, StateOptions

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]

CALLS = 32


def keys(label: str, count: int = CALLS) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{label}-{run}-{i}" for i in range(count)]


@pytest_asyncio.fixture
async def proxy(redis_server: BackendInfo) -> AsyncIterator[LossyProxy]:
    async with LossyProxy(redis_server.values["host"], int(redis_server.values["port"])) as made:
        yield made


async def through(redis_driver: RedisDriver, proxy: LossyProxy, type_: str, **meta: str) -> Any:
    return await redis_driver(type_, redisHost=f"127.0.0.1:{proxy.port}", **meta)


async def test_concurrent_gets_share_round_trips_and_each_gets_its_own_value(
    redis_driver: RedisDriver, proxy: LossyProxy
) -> None:
    store = await through(redis_driver, proxy, "state.redis")
    names = keys("get")
    await store.bulk_set([SetRequest(k, {"n": i}) for i, k in enumerate(names)])
    # Warm up: the connections are open and the read script is loaded.
    await asyncio.gather(*(store.get(GetRequest(k)) for k in names))
    before = proxy.chunks
    items = await asyncio.gather(*(store.get(GetRequest(k)) for k in names))
    assert [item.value for item in items] == [{"n": i} for i in range(CALLS)]
    assert proxy.chunks - before <= CALLS // 4, "32 concurrent gets were not pipelined"
    # A lone call is not held back for company: one call, one round trip.
    before = proxy.chunks
    for k in names[:5]:
        await store.get(GetRequest(k))
    assert proxy.chunks - before == 5


async def test_a_reply_error_fails_only_its_own_call(
    redis_driver: RedisDriver, proxy: LossyProxy, raw_redis: Any
) -> None:
    store = await through(redis_driver, proxy, "state.redis")
    names = keys("wrongtype")
    await store.bulk_set([SetRequest(k, i) for i, k in enumerate(names)])
    await raw_redis.delete(store.stored_key(names[7]))
    await raw_redis.set(store.stored_key(names[7]), "a plain string, not a state hash")
    results = await asyncio.gather(
        *(store.get(GetRequest(k)) for k in names), return_exceptions=True
    )
    assert isinstance(results[7], ComponentError) and "WRONGTYPE" in str(results[7])
    assert [r.value for i, r in enumerate(results) if isinstance(r, StateItem)] == [
        i for i in range(CALLS) if i != 7
    ]


async def test_scripts_forgotten_by_the_server_are_loaded_again_for_a_whole_batch(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("state.redis")
    names = keys("noscript")
    await store.bulk_set([SetRequest(k, 0) for k in names])
    await raw_redis.script_flush()
    await asyncio.gather(*(store.set(SetRequest(k, 1, etag="1")) for k in names))
    items = await store.bulk_get([GetRequest(k) for k in names])
    assert [(item.value, item.etag) for item in items] == [(1, "2")] * CALLS


@pytest.mark.parametrize("retries", ["0", "3"])
async def test_a_connection_lost_under_a_batch_of_conditional_writes(
    redis_driver: RedisDriver, proxy: LossyProxy, raw_redis: Any, retries: str
) -> None:
    """The server applied the batch; its answers never came back. With no retries each call
    gets its own retriable error saying the outcome is unknown; with retries, redis-py sends
    the batch again and each write finds that it was applied. Either way no call is told of
    a conflict and no write is applied twice."""
    store = await through(redis_driver, proxy, "state.redis", maxRetries=retries)
    names = keys("lost")
    first = keys("lost-first")
    await store.bulk_set([SetRequest(k, 0) for k in names])
    await store.set(SetRequest(names[0], 0, etag="1"))  # load the scripts (versions now 2)
    await store.set(SetRequest(names[0], 0, etag="2"))
    await raw_redis.hset(store.stored_key(names[0]), "version", "1")
    proxy.lose_reply("close", marker=b"cut-here")
    values = [f"v{i}" if i != CALLS // 2 else "cut-here" for i in range(CALLS)]
    writes = [store.set(SetRequest(k, v, etag="1")) for k, v in zip(names, values, strict=True)]
    first_writes = [
        store.set(SetRequest(k, "f", options=StateOptions(concurrency=Concurrency.FIRST_WRITE)))
        for k in first
    ]
    results = await asyncio.gather(*writes, *first_writes, return_exceptions=True)
    assert proxy.lost == 1
    for result in results:
        assert not isinstance(result, ETagError), f"false conflict: {result}"
        if result is not None:
            assert isinstance(result, ConnectionFailedError) and result.retriable, result
            assert "may or may not have been applied" in str(result)
    if retries == "0":
        assert any(result is not None for result in results)
    else:
        assert all(result is None for result in results)
    versions = [await raw_redis.hget(store.stored_key(k), "version") for k in names + first]
    assert versions == [b"2"] * CALLS + [b"1"] * CALLS, "a write was applied twice"


async def test_a_call_whose_caller_gave_up_while_queued_is_never_sent(
    redis_driver: RedisDriver, redis_server: BackendInfo, raw_redis: Any
) -> None:
    if redis_server.freeze is None:
        pytest.skip("the redis backend was not started by this test run")
    store = await redis_driver("state.redis", readTimeout="10s")
    busy, dropped = keys("busy", 4), keys("dropped", 1)[0]
    redis_server.freeze(True)
    try:
        sending = [asyncio.ensure_future(store.set(SetRequest(k, 1))) for k in busy]
        queued = asyncio.ensure_future(store.set(SetRequest(dropped, 1)))
        await asyncio.sleep(0.2)
        queued.cancel()
    finally:
        redis_server.freeze(False)
    await asyncio.gather(*sending)
    with pytest.raises(asyncio.CancelledError):
        await queued
    await store.set(SetRequest(busy[0], 2))  # everything sent before it has been answered
    assert await raw_redis.exists(store.stored_key(dropped)) == 0
    assert await raw_redis.exists(*map(store.stored_key, busy)) == len(busy)


async def test_locks_and_bindings_pipeline_too(
    redis_driver: RedisDriver, proxy: LossyProxy
) -> None:
    lock = await through(redis_driver, proxy, "lock.redis")
    names = keys("lock")
    await lock.try_lock(TryLockRequest(keys("warm", 1)[0], "owner-1", 30))
    before = proxy.chunks
    taken = await asyncio.gather(
        *(lock.try_lock(TryLockRequest(k, "owner-1", 30)) for k in names + names)
    )
    # Two concurrent calls per lock (concurrent calls have no order): one of each pair wins.
    assert [a + b for a, b in zip(taken[:CALLS], taken[CALLS:], strict=True)] == [1] * CALLS
    assert proxy.chunks - before <= CALLS // 2

    binding = await through(redis_driver, proxy, "bindings.redis")
    await binding.invoke(InvokeRequest("create", b"warm", {"key": names[0]}))
    before = proxy.chunks
    await asyncio.gather(
        *(binding.invoke(InvokeRequest("create", k.encode(), {"key": k})) for k in names)
    )
    replies = await asyncio.gather(
        *(binding.invoke(InvokeRequest("get", metadata={"key": k})) for k in names)
    )
    assert [reply.data for reply in replies] == [k.encode() for k in names]
    assert proxy.chunks - before <= CALLS // 2


async def test_acks_ride_with_the_next_read_and_go_alone_when_no_message_comes(
    redis_driver: RedisDriver, proxy: LossyProxy, raw_redis: Any
) -> None:
    """One publisher, one message at a time: each ack goes in one pipeline with the
    subscriber's next XREADGROUP (two round trips a message, not three); the last one,
    with no read to ride on, goes by itself within moments. No message is acked before
    its handler returned."""
    pubsub = await through(redis_driver, proxy, "pubsub.redis", consumerID="acks")
    topic, count = keys("acks", 1)[0], 40
    handled: asyncio.Queue[bytes] = asyncio.Queue()
    pending_in_handler: list[int] = []

    async def handler(message: Message) -> None:
        pending_in_handler.append(int((await raw_redis.xpending(topic, "acks"))["pending"]))
        await handled.put(message.data)

    subscription = await pubsub.subscribe(SubscribeRequest(topic=topic), handler)
    await pubsub.publish(PublishRequest(topic=topic, data=b"warm"))
    await asyncio.wait_for(handled.get(), 10)
    before = proxy.chunks
    for i in range(count):
        await pubsub.publish(PublishRequest(topic=topic, data=str(i).encode()))
        assert await asyncio.wait_for(handled.get(), 10) == str(i).encode()
    assert proxy.chunks - before <= 2 * count + 4, "acks did not ride with the reads"
    assert all(pending >= 1 for pending in pending_in_handler)
    for _ in range(100):  # the last ack: ACK_DELAY after its handler
        if int((await raw_redis.xpending(topic, "acks"))["pending"]) == 0:
            break
        await asyncio.sleep(0.02)
    assert int((await raw_redis.xpending(topic, "acks"))["pending"]) == 0
    await subscription.cancel()
