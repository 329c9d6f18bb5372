"""The load generator's callers for :mod:`.sidecar_cpu_bench`: raw gRPC stubs on the Dapr
proto and raw keep-alive HTTP/1.1 connections, each call a coroutine ``call(i)``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

VALUE = {"order": 42, "customer": "c-1001", "items": ["a", "b", "c"], "note": "x" * 40}
PAYLOAD = json.dumps(VALUE, separators=(",", ":")).encode()
KEYS = 100
STORE_OF = {"redis": "redis", "memory": "memory", "sqlite": "statestore"}
PUBSUB = "redispubsub"
"""Publish goes to pubsub.redis: the default in-memory ``pubsub`` with no subscriber logs a
warning per message once its backlog is full, which is not what a publish costs."""

Call = Callable[[int], Awaitable[None]]


async def grpc_calls(port: int, connections: int) -> tuple[dict[str, Call], Callable[[], Any]]:
    import grpc.aio
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2, state_pb2

    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(connections)
    ]
    stubs = [dapr_pb2_grpc.DaprStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
    for channel in channels:
        await channel.channel_ready()

    def getter(store: str) -> Call:
        async def get(i: int) -> None:
            request = state_pb2.GetStateRequest(store_name=store, key=f"k{i % KEYS}")
            answer = await stubs[i % connections].GetState(request)
            assert answer.data

        return get

    async def publish(i: int) -> None:
        request = pubsub_pb2.PublishEventRequest(
            pubsub_name=PUBSUB, topic="orders", data=PAYLOAD, data_content_type="application/json"
        )
        await stubs[i % connections].PublishEvent(request)

    calls = {f"get-{store}": getter(STORE_OF[store]) for store in STORE_OF}
    calls["publish"] = publish

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return calls, close


class HttpConnections:
    """Raw keep-alive HTTP/1.1 connections, each carrying one call at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self.idle = asyncio.Queue()
        self.all: list[asyncio.StreamWriter] = []

    async def open(self, count: int) -> None:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.all.append(writer)
            self.idle.put_nowait((reader, writer))

    async def call(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        reader, writer = await self.idle.get()
        try:
            writer.write(head + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            return status, await reader.readexactly(length) if length else b""
        finally:
            self.idle.put_nowait((reader, writer))

    async def close(self) -> None:
        for writer in self.all:
            writer.close()


async def http_calls(port: int, connections: int) -> tuple[dict[str, Call], Callable[[], Any]]:
    pool = HttpConnections(port)
    await pool.open(connections)

    def getter(store: str) -> Call:
        heads = [
            f"GET /v1.0/state/{store}/k{n} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            for n in range(KEYS)
        ]

        async def get(i: int) -> None:
            status, body = await pool.call(heads[i % KEYS])
            assert status == 200 and body, status

        return get

    publish_head = (
        f"POST /v1.0/publish/{PUBSUB}/orders HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n"
    ).encode()

    async def publish(i: int) -> None:
        status, _ = await pool.call(publish_head, PAYLOAD)
        assert status == 204, status

    calls = {f"get-{store}": getter(STORE_OF[store]) for store in STORE_OF}
    calls["publish"] = publish
    return calls, pool.close


__all__ = ["KEYS", "PAYLOAD", "PUBSUB", "STORE_OF", "VALUE", "Call", "grpc_calls", "http_calls"]
