"""The relay under gRPC proxying, on real gRPC servers in this process: a callee's early
status (a refusal that does not read the request) reaches the caller as the callee sent it,
even when the relay writes the request late, as it does on a loaded machine (grpc-python
would report INTERNAL "Internal error from Core" for a write that loses that race)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from mechakit.runtime import grpc_proxy
from mechakit.runtime.service.invocation import refuse

CALLS = 300
Context = grpc.aio.ServicerContext[bytes, bytes]
REFUSAL = "access control policy has denied access"


async def _refusing(requests: AsyncIterator[bytes], context: Context) -> None:
    await refuse(requests, context, grpc.StatusCode.PERMISSION_DENIED, REFUSAL)


class _Refuser(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return grpc_proxy._handler(_refusing)


class _Relay(grpc.GenericRpcHandler):
    """The relay of a sidecar whose request reads are slow (a busy event loop)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method = details.method

        async def relay(requests: AsyncIterator[bytes], context: Context) -> None:
            async def late() -> AsyncIterator[bytes]:
                async for request in requests:
                    await asyncio.sleep(random.random() * 0.003)
                    yield request

            await grpc_proxy._relay(self._channel, method, late(), [], context)

        return grpc_proxy._handler(relay)


@pytest.fixture
async def relay_port() -> AsyncIterator[int]:
    callee = grpc.aio.server()
    callee_port = callee.add_insecure_port("127.0.0.1:0")
    callee.add_generic_rpc_handlers([_Refuser()])
    await callee.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{callee_port}")
    relay = grpc.aio.server()
    port = relay.add_insecure_port("127.0.0.1:0")
    relay.add_generic_rpc_handlers([_Relay(channel)])
    await relay.start()
    yield port
    await relay.stop(None)
    await channel.close()
    await callee.stop(None)


async def _statuses(port: int, streaming: bool) -> Counter[tuple[str, str]]:
    seen: Counter[tuple[str, str]] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary: Any = channel.unary_unary("/echo.v1.Echo/Hello")
        stream: Any = channel.stream_unary("/echo.v1.Echo/Collect")

        def two() -> Iterator[bytes]:
            yield b"one"
            yield b"two"

        async def one() -> None:
            try:
                await (stream(two(), timeout=30) if streaming else unary(b"x" * 100, timeout=30))
            except grpc.aio.AioRpcError as error:
                seen[(error.code().name, error.details() or "")] += 1

        for _ in range(CALLS // 50):
            await asyncio.gather(*(one() for _ in range(50)))
    return seen


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "client-streaming"])
async def test_an_early_refusal_reaches_the_caller_unchanged(
    relay_port: int, streaming: bool
) -> None:
    assert await _statuses(relay_port, streaming) == {("PERMISSION_DENIED", REFUSAL): CALLS}
