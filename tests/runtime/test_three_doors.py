"""The same request through the three front doors — ``mechakit.open`` clients, the HTTP API
and the gRPC API — gets the same answer: one rule, written once in the service layer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
import httpx
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2, state_pb2

import mechakit
from mechakit.core.errors import ETagError, ETagErrorKind, InvalidRequestError
from mechakit.core.pubsub import Message, SubscribeRequest
from mechakit.runtime.grpc_server import start_server
from mechakit.runtime.http_api import create_app
from mechakit.runtime.in_process import Runtime

STORE, BUS = "statestore", "bus"


class Door(Protocol):
    """One way in; ``value`` is a JSON value. Each call answers "ok", "invalid" or "conflict"."""

    async def save(
        self, key: str, value: Any, metadata: Mapping[str, str], etag: str | None = None
    ) -> str: ...

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> str: ...


class InProcess:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def save(
        self, key: str, value: Any, metadata: Mapping[str, str], etag: str | None = None
    ) -> str:
        return await self._outcome(
            self.runtime.state(STORE).set(key, value, etag=etag, metadata=metadata)
        )

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> str:
        return await self._outcome(
            self.runtime.pubsub(BUS).publish(
                topic, data, content_type="application/json", metadata=metadata
            )
        )

    @staticmethod
    async def _outcome(call: Any) -> str:
        try:
            await call
        except ETagError as exc:
            return "conflict" if exc.kind is ETagErrorKind.MISMATCH else "invalid"
        except InvalidRequestError:
            return "invalid"
        return "ok"


class Http:
    STATUS = {204: "ok", 400: "invalid", 409: "conflict"}

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def save(
        self, key: str, value: Any, metadata: Mapping[str, str], etag: str | None = None
    ) -> str:
        item: dict[str, Any] = {"key": key, "value": value, "metadata": dict(metadata)}
        if etag is not None:
            item["etag"] = etag
        answer = await self.client.post(f"/v1.0/state/{STORE}", json=[item])
        return self.STATUS[answer.status_code]

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> str:
        params = {f"metadata.{k}": v for k, v in metadata.items()}
        answer = await self.client.post(
            f"/v1.0/publish/{BUS}/{topic}",
            content=data,
            params=params,
            headers={"content-type": "application/json"},
        )
        return self.STATUS[answer.status_code]


class Grpc:
    def __init__(self, stub: Any) -> None:
        self.stub = stub

    async def save(
        self, key: str, value: Any, metadata: Mapping[str, str], etag: str | None = None
    ) -> str:
        data = json.dumps(value, separators=(",", ":")).encode()
        item = common_pb2.StateItem(key=key, value=data, metadata=dict(metadata))
        if etag is not None:
            item.etag.value = etag
        return await self._outcome(
            self.stub.SaveState(state_pb2.SaveStateRequest(store_name=STORE, states=[item]))
        )

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> str:
        request = pubsub_pb2.PublishEventRequest(
            pubsub_name=BUS,
            topic=topic,
            data=data,
            data_content_type="application/json",
            metadata=dict(metadata),
        )
        return await self._outcome(self.stub.PublishEvent(request))

    @staticmethod
    async def _outcome(call: Any) -> str:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            codes = {
                grpc.StatusCode.INVALID_ARGUMENT: "invalid",
                grpc.StatusCode.ABORTED: "conflict",
            }
            return codes[exc.code()]
        return "ok"


@pytest.fixture
async def runtime(
    resources: Callable[..., Path], component: Callable[..., str], tmp_path: Path
) -> AsyncIterator[Runtime]:
    folder = resources(
        state=component(STORE, "state.sqlite", ("connectionString", str(tmp_path / "s.db"))),
        bus=component(BUS, "pubsub.in-memory"),
    )
    async with mechakit.open(folder, app_id="doors") as rt:
        yield rt


@pytest.fixture(params=["in-process", "http", "grpc"])
async def door(request: pytest.FixtureRequest, runtime: Runtime) -> AsyncIterator[Door]:
    if request.param == "in-process":
        yield InProcess(runtime)
    elif request.param == "http":
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as client:
            yield Http(client)
    else:
        server = await start_server(runtime, "127.0.0.1", 0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Grpc(dapr_pb2_grpc.DaprStub(channel))  # type: ignore[no-untyped-call]
        await server.stop(0)


async def stored(runtime: Runtime, key: str) -> Any:
    item = await runtime.state(STORE).component.get(mechakit.core.state.GetRequest(key))
    return None if item is None else item.value


@pytest.mark.parametrize(
    ("key", "metadata"),
    [
        ("a||b", {}),
        ("k", {"ttlInSeconds": "soon"}),
        ("k", {"ttlInSeconds": str(2**63)}),
        ("k", {"ttlInSeconds": "0"}),
    ],
    ids=["key-with-separator", "ttl-not-a-number", "ttl-past-int32", "ttl-zero"],
)
async def test_an_invalid_save_is_refused_the_same_way_and_writes_nothing(
    door: Door, runtime: Runtime, key: str, metadata: dict[str, str]
) -> None:
    assert await door.save(key, "v", metadata) == "invalid"
    assert await stored(runtime, key) is None


async def test_a_stale_etag_is_a_conflict_through_every_door(door: Door, runtime: Runtime) -> None:
    assert await door.save("k", "one", {}) == "ok"
    assert await door.save("k", "two", {}) == "ok"
    assert await door.save("k", "three", {}, etag="1") == "conflict"
    assert await door.save("k", "three", {}, etag="x") == "invalid"
    assert await stored(runtime, "k") == "two"


@pytest.mark.parametrize("word", ["true", "on", "yes", "1"])
async def test_raw_payload_means_raw_through_every_door(
    door: Door, runtime: Runtime, word: str
) -> None:
    received: asyncio.Queue[Message] = asyncio.Queue()
    pubsub = runtime.pubsub(BUS).component
    subscription = await pubsub.subscribe(SubscribeRequest("orders"), received.put)
    try:
        assert await door.publish("orders", b'{"id": 1}', {"rawPayload": word}) == "ok"
        message = await asyncio.wait_for(received.get(), 5)
    finally:
        await subscription.cancel()
    assert message.data == b'{"id": 1}'


async def test_a_wrapped_payload_is_the_same_cloudevent_through_every_door(
    door: Door, runtime: Runtime
) -> None:
    received: asyncio.Queue[Message] = asyncio.Queue()
    pubsub = runtime.pubsub(BUS).component
    subscription = await pubsub.subscribe(SubscribeRequest("orders"), received.put)
    try:
        assert await door.publish("orders", b'{"id": 1}', {}) == "ok"
        message = await asyncio.wait_for(received.get(), 5)
    finally:
        await subscription.cancel()
    event = json.loads(message.data)
    assert (event["data"], event["source"], event["topic"]) == ({"id": 1}, "doors", "orders")


@pytest.mark.parametrize(
    "metadata",
    [
        {"rawPayload": "maybe"},
        {"ttlInSeconds": "soon"},
        {"rawPayload": "true", "ttlInSeconds": "0"},
    ],
    ids=["raw-not-a-boolean", "ttl-not-a-number", "raw-with-bad-ttl"],
)
async def test_an_invalid_publish_is_refused_the_same_way(
    door: Door, metadata: dict[str, str]
) -> None:
    assert await door.publish("orders", b"{}", metadata) == "invalid"


async def test_metadata_an_app_sets_through_one_api_is_read_through_the_other(
    runtime: Runtime,
) -> None:
    from dapr.proto.runtime.v1 import metadata_pb2

    transport = httpx.ASGITransport(app=create_app(runtime))
    server = await start_server(runtime, "127.0.0.1", 0)
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://dapr") as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub: Any = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
            assert (await http.put("/v1.0/metadata/color", content=b"blue")).status_code == 204
            await stub.SetMetadata(metadata_pb2.SetMetadataRequest(key="size", value="L"))
            over_grpc = await stub.GetMetadata(metadata_pb2.GetMetadataRequest())
            over_http = (await http.get("/v1.0/metadata")).json()
    finally:
        await server.stop(0)
    assert over_grpc.extended_metadata["color"] == "blue"
    assert over_http["extended"]["size"] == "L"
    assert {c.name for c in over_grpc.registered_components} == {
        c["name"] for c in over_http["components"]
    }
