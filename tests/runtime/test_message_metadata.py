"""Message metadata reaches the app as daprd passes it: what the publisher attached (and
``pubsubName``, which the sidecar adds) as HTTP headers on the delivery, or as a gRPC app's
call metadata; an input binding's metadata as headers, or in the request and as call
metadata. Real ``mechakit run`` with real apps, on ``pubsub.in-memory`` and ``pubsub.redis``;
then the header and call-metadata rules on their own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from dapr.clients import DaprClient
from dapr.ext.grpc import App, BindingRequest, SubscriptionMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mechakit.conformance.backends import free_port
from mechakit.runtime.app_channels import grpc_metadata, http_headers

from . import pubsub_sidecar as sidecars
from .pubsub_sidecar import TOKEN, StartSidecar

pubsub_yaml = sidecars.pubsub_yaml
redis_address = sidecars.redis_address
start_sidecar = sidecars.start_sidecar

WAIT = 10.0
CRON = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: tick
spec:
  type: bindings.cron
  version: v1
  metadata:
    - name: schedule
      value: "@every 1s"
"""


# --- an HTTP app ----------------------------------------------------------------------------


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def http_app(topic: str) -> AsyncIterator[tuple[int, asyncio.Queue[dict[str, str]]]]:
    """An app subscribing ``topic`` (route ``/orders``); the headers of each delivery."""
    deliveries: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def subscribe(request: Request) -> Response:
        return JSONResponse([{"pubsubname": "pubsub", "topic": topic, "route": "/orders"}])

    async def orders(request: Request) -> Response:
        await request.body()
        deliveries.put_nowait(dict(request.headers))
        return Response(status_code=200)

    port = free_port()
    routes = [Route("/dapr/subscribe", subscribe), Route("/orders", orders, methods=["POST"])]
    config = uvicorn.Config(
        Starlette(routes=routes),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="off",
        access_log=False,
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        yield port, deliveries
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)


async def test_an_http_app_gets_the_publishers_metadata_as_headers(
    start_sidecar: StartSidecar,
) -> None:
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    async with http_app(topic) as (port, deliveries):
        sidecar = await asyncio.to_thread(start_sidecar, "--app-port", str(port))
        async with httpx.AsyncClient(
            base_url=sidecar.http, headers={"dapr-api-token": TOKEN}
        ) as client:
            for _ in range(100):  # until the sidecar has subscribed for the app
                if (await client.get("/metadata")).json().get("subscriptions"):
                    break
                await asyncio.sleep(0.05)
            published = await client.post(
                f"/publish/pubsub/{topic}",
                params={"metadata.x-tenant": "acme", "metadata.bad header": "x"},
                json={"id": 1},
            )
            assert published.status_code == 204
            headers = await asyncio.wait_for(deliveries.get(), WAIT)
    assert headers["x-tenant"] == "acme"
    assert headers["pubsubname"] == "pubsub"
    assert headers["content-type"] == "application/cloudevents+json"
    assert not any(" " in name for name in headers)


# --- a gRPC app -----------------------------------------------------------------------------


class GrpcRecorder:
    def __init__(self) -> None:
        self.events: list[SubscriptionMessage] = []
        self.bindings: list[BindingRequest] = []
        self.changed = threading.Condition()

    def record(self, into: list[Any], item: Any) -> None:
        with self.changed:
            into.append(item)
            self.changed.notify_all()

    def wait(self, probe: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(probe, WAIT), "the gRPC app got nothing in time"


def test_a_grpc_app_gets_the_metadata_of_events_and_binding_events_as_call_metadata(
    start_sidecar: StartSidecar,
) -> None:
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    recorder = GrpcRecorder()
    app = App()

    @app.subscribe(pubsub_name="pubsub", topic=topic)  # type: ignore[untyped-decorator]
    def orders(event: SubscriptionMessage) -> None:
        recorder.record(recorder.events, event)

    @app.binding("tick")  # type: ignore[untyped-decorator]
    def tick(request: BindingRequest) -> None:
        recorder.record(recorder.bindings, request)

    port = free_port()
    thread = threading.Thread(target=app.run, args=(port, "127.0.0.1"), daemon=True)
    thread.start()
    try:
        start_sidecar("--app-port", str(port), "--app-protocol", "grpc", files={"tick.yaml": CRON})
        with DaprClient() as client:
            for _ in range(100):  # until the sidecar has subscribed for the app
                client.publish_event(
                    "pubsub",
                    topic,
                    '{"id": 1}',
                    data_content_type="application/json",
                    publish_metadata={"x-tenant": "acme", "Upper-Case": "kept"},
                )
                with recorder.changed:
                    if recorder.changed.wait_for(lambda: bool(recorder.events), 0.1):
                        break
            recorder.wait(lambda: bool(recorder.events) and bool(recorder.bindings))
    finally:
        app.stop()
        thread.join(WAIT)
    metadata = recorder.events[0].metadata()
    assert metadata["x-tenant"] == "acme" and metadata["upper-case"] == "kept"
    assert metadata["pubsubname"] == "pubsub"
    binding = recorder.bindings[0]
    assert "readTimeUTC" in binding.binding_metadata  # the request's own metadata, as daprd
    assert "readtimeutc" in binding.metadata  # and the call's, what the SDK reads here


# --- the rules ------------------------------------------------------------------------------


def test_http_headers_are_what_daprd_sends_and_what_http_can_carry() -> None:
    headers = http_headers(
        {
            "X-Tenant": "acme",
            "pubsubName": "pubsub",
            "grpc-trace": "t",
            "content-type": "text/plain",
            "Content-Length": "9",
            "dapr-app-id": "other",
            "trace-bin": "\x00",
            "bad name": "x",
            "newline": "a\r\nInjected: 1",
            "unicode": "café",
            "padded": " v ",
        }
    )
    assert headers == {
        "x-tenant": "acme",
        "pubsubname": "pubsub",
        "dapr-grpc-trace": "t",
        "padded": "v",
    }


def test_grpc_metadata_is_what_daprd_sends_and_what_grpc_can_carry() -> None:
    pairs = grpc_metadata(
        {
            "X-Tenant": "acme",
            "pubsubName": "pubsub",
            "grpc-timeout": "1S",
            "content-type": "text/plain",
            "user-agent": "me",
            "trace-bin": "\x00\x01",
            "bad name": "x",
            "newline": "a\nb",
        }
    )
    assert pairs == (("x-tenant", "acme"), ("pubsubname", "pubsub"), ("trace-bin", b"\x00\x01"))


@pytest.mark.parametrize("value", ["", "plain"])
def test_an_empty_or_plain_value_is_kept(value: str) -> None:
    assert http_headers({"k": value}) == {"k": value}
    assert grpc_metadata({"k": value}) == (("k", value),)
