"""Streaming subscriptions (gRPC ``SubscribeTopicEventsAlpha1``): the dapr SDK's
``subscribe`` (a sync loop) and the asyncio ``subscribe_with_handler`` against a real
``mechakit run``, on ``pubsub.in-memory`` and ``pubsub.redis``; then the protocol's edges on
an in-process server.

"Not redelivered" is checked by time: after the answers, a wait of many redelivery
intervals (both backends redeliver within tens of ms here) brings no other copy.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import DaprClient
from dapr.clients.grpc._response import TopicEventResponse
from dapr.common.pubsub.subscription import StreamCancelledError, StreamInactiveError
from dapr.proto.runtime.v1 import appcallback_pb2, dapr_pb2_grpc, metadata_pb2, pubsub_pb2

import mechakit
from mechakit.runtime.grpc_server import GrpcServer, start_server
from mechakit.runtime.in_process import Runtime

from . import pubsub_sidecar as sidecars
from .pubsub_sidecar import TOKEN, StartSidecar, component_yaml

pubsub_yaml = sidecars.pubsub_yaml
redis_address = sidecars.redis_address
start_sidecar = sidecars.start_sidecar

WAIT = 10.0
QUIET = 0.6
"""How long nothing more may arrive once every event is answered (many redelivery intervals)."""


def topic() -> str:
    return f"orders-{uuid.uuid4().hex[:8]}"


@dataclass
class Seen:
    id: str
    data: Any
    answer: str


@dataclass
class SyncLoop:
    """``for message in client.subscribe(...)`` on a thread of its own, answering each
    message with ``decide(message, times_seen_before)`` (``success``, ``retry``, ``drop`` or
    ``none`` for no answer)."""

    subscription: Any
    decide: Callable[[Any, int], str]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        counts: dict[str, int] = {}
        try:
            for message in self.subscription:
                before = counts.get(message.id(), 0)
                counts[message.id()] = before + 1
                answer = self.decide(message, before)
                if answer == "success":
                    self.subscription.respond_success(message)
                elif answer == "retry":
                    self.subscription.respond_retry(message)
                elif answer == "drop":
                    self.subscription.respond_drop(message)
                with self._changed:
                    self.seen.append(Seen(message.id(), message.data(), answer))
                    self._changed.notify_all()
        except (StreamInactiveError, StreamCancelledError):
            return

    def wait_for(self, count: int) -> list[Seen]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.seen) >= count, WAIT):
                pytest.fail(f"saw {self.seen}, waited for {count} messages")
            return list(self.seen)

    def close(self) -> None:
        self.subscription.close()
        self._thread.join(WAIT)


def by_data(data: Any) -> Callable[[Seen], bool]:
    return lambda seen: seen.data == data


# --- the sync SDK: client.subscribe(...) and a loop ----------------------------------------


def test_sync_subscribe_loop_success_retry_and_drop(start_sidecar: StartSidecar) -> None:
    start_sidecar()
    name = topic()

    def decide(message: Any, before: int) -> str:
        kind = message.data()["kind"]
        return "success" if kind == "retry" and before else kind

    with DaprClient() as client:
        loop = SyncLoop(client.subscribe("pubsub", name), decide)
        try:
            for kind in ("success", "retry", "drop"):
                client.publish_event(
                    "pubsub", name, json.dumps({"kind": kind}), data_content_type="application/json"
                )
            loop.wait_for(4)
            time.sleep(QUIET)
            seen = loop.wait_for(4)
        finally:
            loop.close()
    answers = {
        kind: [s.answer for s in seen if s.data == {"kind": kind}]
        for kind in ("success", "retry", "drop")
    }
    assert answers == {"success": ["success"], "retry": ["retry", "success"], "drop": ["drop"]}
    assert len(seen) == 4
    retried = [s.id for s in seen if s.data == {"kind": "retry"}]
    assert retried[0] == retried[1]


def test_a_stream_closed_with_an_unanswered_event_leaves_it_for_the_next_stream(
    start_sidecar: StartSidecar,
) -> None:
    sidecar = start_sidecar()
    name = topic()
    with DaprClient() as client:
        first = SyncLoop(client.subscribe("pubsub", name), lambda message, before: "none")
        client.publish_event(
            "pubsub", name, json.dumps({"n": 1}), data_content_type="application/json"
        )
        (held,) = first.wait_for(1)
        first.close()
        sidecar.wait_for_log("1 unanswered event(s) left for redelivery")
        second = SyncLoop(client.subscribe("pubsub", name), lambda message, before: "success")
        try:
            (again,) = second.wait_for(1)
            time.sleep(QUIET)
            assert len(second.wait_for(1)) == 1
        finally:
            second.close()
    assert (again.id, again.data) == (held.id, {"n": 1})


def test_sync_subscribe_with_handler(start_sidecar: StartSidecar) -> None:
    start_sidecar()
    name = topic()
    seen: list[str] = []
    changed = threading.Condition()

    def handler(message: Any) -> TopicEventResponse:
        kind = message.data()["kind"]
        answer = "success" if kind == "retry" and kind in seen else kind
        with changed:
            seen.append(kind)
            changed.notify_all()
        return TopicEventResponse(answer)

    with DaprClient() as client:
        close = client.subscribe_with_handler("pubsub", name, handler)
        try:
            for kind in ("success", "retry", "drop"):
                client.publish_event(
                    "pubsub", name, json.dumps({"kind": kind}), data_content_type="application/json"
                )
            with changed:
                assert changed.wait_for(lambda: len(seen) >= 4, WAIT), seen
            time.sleep(QUIET)
        finally:
            close()
    assert sorted(seen) == ["drop", "retry", "retry", "success"]


# --- the asyncio SDK: subscribe_with_handler ------------------------------------------------


async def test_asyncio_subscribe_with_handler(start_sidecar: StartSidecar) -> None:
    # No API token: the asyncio SDK (1.19) registers its token interceptor, which is both
    # unary-unary and stream-stream, where grpc.aio takes it as unary-unary only, so its
    # streams go without the token, which daprd (and mechakit) require on every call.
    await asyncio.to_thread(start_sidecar, token=None)
    name = topic()
    seen: list[tuple[str, Any]] = []
    changed = asyncio.Event()

    async def handler(message: Any) -> TopicEventResponse:
        kind = message.data()["kind"]
        retried_before = any(k == "retry" for k, _ in seen) and kind == "retry"
        seen.append((kind, message.id()))
        changed.set()
        return TopicEventResponse("success" if retried_before else kind)

    async def until(count: int) -> None:
        while len(seen) < count:
            changed.clear()
            await changed.wait()

    async with AsyncDaprClient() as client:
        close = await client.subscribe_with_handler("pubsub", name, handler)
        try:
            for kind in ("success", "retry", "drop"):
                await client.publish_event(
                    "pubsub", name, json.dumps({"kind": kind}), data_content_type="application/json"
                )
            await asyncio.wait_for(until(4), WAIT)
            await asyncio.sleep(QUIET)
        finally:
            await close()
    assert sorted(kind for kind, _ in seen) == ["drop", "retry", "retry", "success"]
    retried = {event_id for kind, event_id in seen if kind == "retry"}
    assert len(retried) == 1


# --- the protocol's edges, on an in-process server ------------------------------------------


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "pubsub.yaml").write_text(
        component_yaml("pubsub.in-memory", {"redeliveryInterval": "20ms", "maxDeliveries": "2"})
    )
    async with mechakit.open(folder, app_id="shop") as runtime:
        yield runtime


@pytest.fixture
async def server(rt: Runtime) -> AsyncIterator[GrpcServer]:
    started = await start_server(rt, "127.0.0.1", 0, api_token=TOKEN)
    yield started
    await started.stop(0)


@pytest.fixture
async def stub(server: GrpcServer) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]


AUTH = (("dapr-api-token", TOKEN),)
Request = pubsub_pb2.SubscribeTopicEventsRequestAlpha1


def initial(pubsub: str = "pubsub", name: str = "orders", **extra: Any) -> Request:
    return Request(
        initial_request=pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(
            pubsub_name=pubsub, topic=name, **extra
        )
    )


Status = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
SUCCESS, RETRY = (
    appcallback_pb2.TopicEventResponse.SUCCESS,
    appcallback_pb2.TopicEventResponse.RETRY,
)


def processed(event_id: str, status: Status.ValueType) -> Request:
    return Request(
        event_processed=pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1(
            id=event_id, status=appcallback_pb2.TopicEventResponse(status=status)
        )
    )


class Client:
    """One raw stream: what the test writes, and the sidecar's messages read back."""

    def __init__(self, stub: Any) -> None:
        self.outgoing: asyncio.Queue[Request | None] = asyncio.Queue()
        self.call = stub.SubscribeTopicEventsAlpha1(self._requests(), metadata=AUTH)

    async def _requests(self) -> AsyncIterator[Request]:
        while (request := await self.outgoing.get()) is not None:
            yield request

    def send(self, request: Request | None) -> None:
        self.outgoing.put_nowait(request)

    async def read(self) -> Any:
        return await asyncio.wait_for(self.call.read(), WAIT)


async def error_of(client: Client) -> grpc.aio.AioRpcError:
    async def read_to_the_end() -> None:
        while True:
            await client.read()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_to_the_end()
    return caught.value


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (initial(pubsub=""), "DAPR_PUBSUB_NAME_EMPTY"),
        (initial(name=" "), "DAPR_PUBSUB_TOPIC_NAME_EMPTY"),
        (initial(pubsub="nope"), "DAPR_PUBSUB_NOT_FOUND"),
        (processed("x", SUCCESS), "ERR_MALFORMED_REQUEST"),
    ],
    ids=["no pubsub", "no topic", "unknown pubsub", "no initial request"],
)
async def test_a_bad_first_message_ends_the_stream_invalid(
    stub: Any, first: Request, reason: str
) -> None:
    client = Client(stub)
    client.send(first)
    error = await error_of(client)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason in str(error.trailing_metadata())


async def test_events_carry_the_cloudevent_and_answers_settle_them(stub: Any, rt: Runtime) -> None:
    client = Client(stub)
    client.send(initial(metadata={"rawPayload": "false"}))
    first = await client.read()
    assert first.WhichOneof("subscribe_topic_events_response_type") == "initial_response"
    pubsub = rt.pubsub("pubsub")
    await pubsub.publish("orders", {"n": 1}, metadata={"x-tenant": "acme"})
    event = (await client.read()).event_message
    assert (event.topic, event.pubsub_name, event.source, event.path) == (
        "orders",
        "pubsub",
        "shop",
        "/",
    )
    assert json.loads(event.data) == {"n": 1} and event.data_content_type == "application/json"
    client.send(processed("not-waiting", SUCCESS))  # ignored
    client.send(processed(event.id, RETRY))  # delivered again, same id
    again = (await client.read()).event_message
    assert again.id == event.id
    client.send(processed(event.id, SUCCESS))
    client.send(initial())  # a second initial request ends the stream
    error = await error_of(client)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_sidecar_stop_ends_open_streams_and_keeps_their_events(
    rt: Runtime, tmp_path: Path
) -> None:
    server = await start_server(rt, "127.0.0.1", 0, api_token=TOKEN)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = Client(dapr_pb2_grpc.DaprStub(channel))  # type: ignore[no-untyped-call]
        client.send(initial())
        await client.read()
        assert [s.type for s in server.api.streams.subscriptions] == ["STREAMING"]
        await rt.pubsub("pubsub").publish("orders", "held")
        held = (await client.read()).event_message
        await server.stop(1.0)
        assert await client.read() is grpc.aio.EOF
    assert server.api.streams.subscriptions == []
    received: asyncio.Queue[Any] = asyncio.Queue()
    subscription = await rt.pubsub("pubsub").subscribe("orders", received.put)
    try:
        event = await asyncio.wait_for(received.get(), WAIT)
    finally:
        await subscription.cancel()
    assert event.data == "held" and event.cloud_event["id"] == held.id


# --- inbound resiliency and the metadata API, on a real sidecar ------------------------------

INBOUND = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: inbound}
spec:
  policies:
    timeouts: {brief: 300ms}
    retries:
      twice: {policy: constant, duration: 10ms, maxRetries: 2}
  targets:
    components:
      pubsub:
        inbound: {timeout: brief, retry: twice}
"""


def test_each_broker_delivery_of_a_streamed_event_gets_the_inbound_retries(
    start_sidecar: StartSidecar,
) -> None:
    start_sidecar(files={"resiliency.yaml": INBOUND})
    name = topic()
    with DaprClient() as client:
        loop = SyncLoop(client.subscribe("pubsub", name), lambda message, before: "retry")
        try:
            client.publish_event(
                "pubsub", name, json.dumps({"n": 1}), data_content_type="application/json"
            )
            loop.wait_for(15)
            time.sleep(QUIET)
            seen = loop.wait_for(15)
        finally:
            loop.close()
    # maxDeliveries 5 (then dropped: no dead-letter topic), each tried 1 + 2 times.
    assert len(seen) == 5 * 3
    assert len({s.id for s in seen}) == 1


def test_an_inbound_timeout_ends_the_wait_for_an_answer_and_the_retry_sends_it_again(
    start_sidecar: StartSidecar,
) -> None:
    start_sidecar(files={"resiliency.yaml": INBOUND})
    name = topic()
    with DaprClient() as client:
        # No answer to the first sight: without a timeout it would wait for ever.
        loop = SyncLoop(
            client.subscribe("pubsub", name),
            lambda message, before: "success" if before else "none",
        )
        try:
            client.publish_event(
                "pubsub", name, json.dumps({"n": 1}), data_content_type="application/json"
            )
            loop.wait_for(2)
            time.sleep(QUIET)
            seen = loop.wait_for(2)
        finally:
            loop.close()
    assert [s.answer for s in seen] == ["none", "success"]
    assert seen[0].id == seen[1].id


def listed_streams(sidecar: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """The streaming subscriptions of the sidecar's metadata: HTTP, then gRPC."""
    answer = httpx.get(f"{sidecar.http}/metadata", headers={"dapr-api-token": TOKEN}, timeout=WAIT)
    answer.raise_for_status()
    http = [s for s in answer.json().get("subscriptions", []) if s["type"] == "STREAMING"]
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        found = stub.GetMetadata(metadata_pb2.GetMetadataRequest(), metadata=AUTH, timeout=WAIT)
    streaming = [s for s in found.subscriptions if s.type == metadata_pb2.STREAMING]
    return http, streaming


def test_the_metadata_api_lists_open_streams_as_streaming_subscriptions(
    start_sidecar: StartSidecar,
) -> None:
    sidecar = start_sidecar()
    name = topic()
    with DaprClient() as client:
        stream: Any = client.subscribe("pubsub", name, dead_letter_topic="poison")
        try:
            http, grpc_listed = listed_streams(sidecar)
        finally:
            stream.close()
    assert [(s["pubsubname"], s["topic"], s["deadLetterTopic"]) for s in http] == [
        ("pubsub", name, "poison")
    ]
    assert [r["path"] for r in http[0]["rules"]] == ["/"]
    assert [(s.pubsub_name, s.topic, s.dead_letter_topic) for s in grpc_listed] == [
        ("pubsub", name, "poison")
    ]
    deadline = time.monotonic() + WAIT
    while listed_streams(sidecar) != ([], []):  # the stream's end reaches the sidecar
        assert time.monotonic() < deadline, "a closed stream is still listed"
        time.sleep(0.05)
