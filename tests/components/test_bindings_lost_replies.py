"""Output bindings when the backend acted on a request but its answer was lost.

``bindings.redis``: a proxy in front of a real Redis server drops the answer to one
command. redis-py sends a command again after a read timeout; for ``increment`` and
``get`` with ``delete`` that would count twice or lose the value, so those must fail with
a retriable "may or may not have happened" error instead, having run once. ``create`` and
``delete`` repeat harmlessly and keep redis-py's retries.

``bindings.http``: a local server that takes a request and never answers: the binding
sends it once (no retry of a POST) and says the outcome is unknown.
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
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ConnectionFailedError, MechakitError, OperationTimeoutError
from mechakit.core.registry import default_registry

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def proxy(redis_server: BackendInfo) -> AsyncIterator[LossyProxy]:
    async with LossyProxy(redis_server.values["host"], int(redis_server.values["port"])) as made:
        yield made


async def lossy_binding(redis_driver: RedisDriver, proxy: LossyProxy) -> Any:
    return await redis_driver(
        "bindings.redis",
        redisHost=f"127.0.0.1:{proxy.port}",
        readTimeout="300ms",
        maxRetries="3",
        maxRetryBackoff="10ms",
    )


def assert_outcome_unknown(error: BaseException) -> None:
    assert isinstance(error, ConnectionFailedError), error
    assert error.retriable
    assert "may or may not" in str(error), error


@pytest.mark.parametrize("mode", ["close", "stall"])
async def test_an_increment_whose_answer_is_lost_runs_once_and_is_outcome_unknown(
    redis_driver: RedisDriver, raw_redis: Any, proxy: LossyProxy, mode: Any
) -> None:
    binding = await lossy_binding(redis_driver, proxy)
    key = new_key("counter")
    proxy.lose_reply(mode, b"INCR")
    with pytest.raises(MechakitError) as caught:
        await binding.invoke(InvokeRequest("increment", metadata={"key": key}))
    assert_outcome_unknown(caught.value)
    assert await raw_redis.get(key) == b"1"
    again = await binding.invoke(InvokeRequest("increment", metadata={"key": key}))
    assert again.data == b"2"


async def test_an_increment_with_ttl_whose_answer_is_lost_runs_once(
    redis_driver: RedisDriver, raw_redis: Any, proxy: LossyProxy
) -> None:
    binding = await lossy_binding(redis_driver, proxy)
    key = new_key("counter-ttl")
    proxy.lose_reply("stall", b"INCR")
    with pytest.raises(MechakitError) as caught:
        await binding.invoke(
            InvokeRequest("increment", metadata={"key": key, "ttlInSeconds": "60"})
        )
    assert_outcome_unknown(caught.value)
    assert await raw_redis.get(key) == b"1"
    assert 0 < await raw_redis.ttl(key) <= 60


async def test_a_get_and_delete_whose_answer_is_lost_never_reports_the_key_missing(
    redis_driver: RedisDriver, raw_redis: Any, proxy: LossyProxy
) -> None:
    binding = await lossy_binding(redis_driver, proxy)
    key = new_key("getdel")
    await raw_redis.set(key, b"once")
    proxy.lose_reply("stall", b"GETDEL")
    with pytest.raises(MechakitError) as caught:
        await binding.invoke(InvokeRequest("get", metadata={"key": key, "delete": "true"}))
    assert_outcome_unknown(caught.value)
    assert await raw_redis.exists(key) == 0


async def test_a_create_whose_answer_is_lost_is_retried_and_succeeds(
    redis_driver: RedisDriver, raw_redis: Any, proxy: LossyProxy
) -> None:
    """SET of the same data again changes nothing, so redis-py's retry is kept for it."""
    binding = await lossy_binding(redis_driver, proxy)
    key = new_key("create")
    proxy.lose_reply("stall", b"SET")
    await binding.invoke(InvokeRequest("create", b"payload", metadata={"key": key}))
    assert proxy.lost == 1
    assert await raw_redis.get(key) == b"payload"


# --- bindings.http ----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """An HTTP server that reads each request and never answers; yields (port, requests)."""
    requests: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], requests
    for writer in connections:
        writer.transport.abort()
    server.close()


async def test_a_post_without_an_answer_is_sent_once_and_is_outcome_unknown(
    silent_server: tuple[int, list[bytes]],
) -> None:
    port, requests = silent_server
    binding: Any = default_registry().create("bindings.http")
    await binding.init(
        ComponentMetadata(
            name="lost",
            type="bindings.http",
            properties={"url": f"http://127.0.0.1:{port}", "responseTimeout": "300ms"},
        )
    )
    try:
        with pytest.raises(OperationTimeoutError) as caught:
            await binding.invoke(InvokeRequest("post", b"order-1"))
    finally:
        await binding.close()
    assert caught.value.retriable
    assert "may or may not" in str(caught.value)
    assert len(requests) == 1
