"""Configuration subscriptions over the Dapr HTTP API, delivered to a real app; and metadata.

The app is a real Starlette app under uvicorn in this event loop; the HTTP API is driven
in-process through ASGI with a :class:`Delivery` to that app, as ``mechakit run --app-port``
wires them. Items change through ``configuration.in-memory``'s ``set_items``/``delete_items``.
Absence of an update is checked without sleeping: the store drops a subscription as soon as
``unsubscribe`` returns, so after a sentinel sent to another subscription has arrived, no
update of the dropped one can still be on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from dapr.ext.grpc import App, InvokeMethodRequest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mechakit.components.configuration.in_memory import InMemoryConfigurationStore
from mechakit.conformance.backends import free_port
from mechakit.runtime.app_channels import GrpcAppChannel, HttpAppChannel
from mechakit.runtime.delivery import Delivery
from mechakit.runtime.http_api import create_app
from mechakit.runtime.in_process import Runtime

from .recording_app import WAIT, serving

WriteFiles = Callable[..., Path]

CONFIG = """
    apiVersion: dapr.io/v1alpha1
    kind: Component
    metadata:
      name: config
    spec:
      type: configuration.in-memory
      version: v1
    """
PUBSUB = """
    apiVersion: dapr.io/v1alpha1
    kind: Component
    metadata:
      name: pubsub
    spec:
      type: pubsub.in-memory
      version: v1
    """


# --- a real app ------------------------------------------------------------------------------


@dataclass
class ConfigApp:
    """An app recording each ``POST /configuration/...`` body; scripted statuses per path."""

    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()

    async def handle(self, request: Request) -> Response:
        if request.url.path == "/dapr/subscribe":
            return JSONResponse(self.subscriptions)
        self.received.append((request.url.path, json.loads(await request.body())))
        self._changed.set()
        script = self.statuses.get(request.url.path)
        return Response(status_code=script.pop(0) if script else 200)

    def at(self, path: str) -> list[dict[str, Any]]:
        return [body for seen, body in self.received if seen == path]

    async def wait_for(self, path: str, count: int = 1) -> list[dict[str, Any]]:
        async def until() -> None:
            while len(self.at(path)) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), WAIT)
        return self.at(path)


@dataclass
class Sidecar:
    runtime: Runtime
    delivery: Delivery
    http: httpx.AsyncClient

    @property
    def store(self) -> InMemoryConfigurationStore:
        component = self.runtime.configuration("config").component
        assert isinstance(component, InMemoryConfigurationStore)
        return component

    async def subscribe(self, *keys: str, version: str = "v1.0") -> str:
        response = await self.http.get(
            f"/{version}/configuration/config/subscribe", params=[("key", k) for k in keys]
        )
        assert response.status_code == 200, response.text
        subscription_id: str = response.json()["id"]
        return subscription_id


@contextlib.asynccontextmanager
async def sidecar(resources: WriteFiles, app: ConfigApp, **files: str) -> AsyncIterator[Sidecar]:
    folder = resources(config=CONFIG, pubsub=PUBSUB, **files)
    async with serving(app), Runtime(folder, app_id="myapp") as runtime:
        delivery = Delivery(runtime, HttpAppChannel(app.port), ready_timeout=WAIT)
        await delivery.start()
        api = create_app(runtime, app_port=app.port, delivery=delivery)
        transport = httpx.ASGITransport(app=api)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as http:
                yield Sidecar(runtime, delivery, http)
        finally:
            await delivery.stop()


def item(value: str, version: str) -> dict[str, Any]:
    return {"value": value, "version": version, "metadata": {}}


# --- subscribe and delivery ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1.0", "v1.0-alpha1"])
async def test_each_changed_key_is_posted_to_the_app_with_the_whole_update(
    resources: WriteFiles, version: str
) -> None:
    app = ConfigApp()
    async with sidecar(resources, app) as dapr:
        subscription_id = await dapr.subscribe("a", "b", version=version)
        await dapr.store.set_items({"a": "1", "b": "2", "unwatched": "3"})
        (to_a,) = await app.wait_for("/configuration/config/a")
        (to_b,) = await app.wait_for("/configuration/config/b")
    update = {"id": subscription_id, "items": {"a": item("1", "1"), "b": item("2", "1")}}
    assert to_a == to_b == update
    assert [path for path, _ in app.received] == [
        "/configuration/config/a",
        "/configuration/config/b",
    ]


async def test_a_deleted_key_reaches_the_app_as_an_empty_value(resources: WriteFiles) -> None:
    app = ConfigApp()
    async with sidecar(resources, app) as dapr:
        await dapr.store.set_items({"flag": "on"})
        subscription_id = await dapr.subscribe()
        await dapr.store.delete_items(["flag"])
        (deleted,) = await app.wait_for("/configuration/config/flag")
    assert deleted == {"id": subscription_id, "items": {"flag": item("", "")}}


async def test_an_update_the_app_fails_is_not_retried_and_later_ones_still_arrive(
    resources: WriteFiles,
) -> None:
    app = ConfigApp(statuses={"/configuration/config/a": [500]})
    async with sidecar(resources, app) as dapr:
        await dapr.subscribe("a")
        await dapr.store.set_items({"a": "first"})
        await dapr.store.set_items({"a": "second"})
        calls = await app.wait_for("/configuration/config/a", 2)
    assert [c["items"]["a"]["value"] for c in calls] == ["first", "second"]


# --- unsubscribe ---------------------------------------------------------------------------


async def test_unsubscribe_answers_ok_and_stops_the_updates(resources: WriteFiles) -> None:
    app = ConfigApp()
    async with sidecar(resources, app) as dapr:
        dropped = await dapr.subscribe("a")
        await dapr.subscribe("sentinel")
        response = await dapr.http.get(f"/v1.0/configuration/config/{dropped}/unsubscribe")
        assert (response.status_code, response.json()) == (200, {"ok": True})
        await dapr.store.set_items({"a": "after"})
        await dapr.store.set_items({"sentinel": "done"})
        await app.wait_for("/configuration/config/sentinel")
        again = await dapr.http.get(f"/v1.0-alpha1/configuration/config/{dropped}/unsubscribe")
    assert app.at("/configuration/config/a") == []
    assert again.status_code == 404 and again.json()["ok"] is False


async def test_unsubscribing_an_unknown_id_is_an_error_naming_it(resources: WriteFiles) -> None:
    async with sidecar(resources, ConfigApp()) as dapr:
        response = await dapr.http.get("/v1.0/configuration/config/no-such-id/unsubscribe")
    body = response.json()
    assert response.status_code == 404
    assert body["ok"] is False and body["errorCode"] == "ERR_CONFIGURATION_UNSUBSCRIBE"
    assert "no-such-id" in body["message"]


@pytest.mark.parametrize(
    "path", ["/v1.0/configuration/nope/subscribe", "/v1.0/configuration/nope/x/unsubscribe"]
)
async def test_an_unknown_store_is_a_store_not_found_error(
    resources: WriteFiles, path: str
) -> None:
    async with sidecar(resources, ConfigApp()) as dapr:
        response = await dapr.http.get(path)
    assert response.status_code == 400
    assert response.json()["errorCode"] == "ERR_CONFIGURATION_STORE_NOT_FOUND"


async def test_subscribing_without_an_app_to_deliver_to_is_rejected(
    resources: WriteFiles,
) -> None:
    async with Runtime(resources(config=CONFIG), app_id="myapp") as runtime:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as http:
            response = await http.get("/v1.0/configuration/config/subscribe?key=a")
    assert response.status_code == 400
    assert response.json()["errorCode"] == "ERR_APP_CHANNEL_NIL"


async def test_a_grpc_app_receives_updates_over_on_invoke(resources: WriteFiles) -> None:
    grpc_app = App()
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[tuple[str | None, Any]] = asyncio.Queue()

    @grpc_app.method("/configuration/config/a")  # type: ignore[untyped-decorator]
    def on_a(request: InvokeMethodRequest) -> None:
        body = (request.content_type, json.loads(request.data))
        loop.call_soon_threadsafe(received.put_nowait, body)

    port = free_port()
    thread = threading.Thread(target=grpc_app.run, args=(port, "127.0.0.1"), daemon=True)
    thread.start()
    try:
        async with Runtime(resources(config=CONFIG), app_id="myapp") as runtime:
            delivery = Delivery(runtime, GrpcAppChannel(port), ready_timeout=WAIT)
            await delivery.start()
            transport = httpx.ASGITransport(app=create_app(runtime, delivery=delivery))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as http:
                    response = await http.get("/v1.0/configuration/config/subscribe?key=a")
                    store = runtime.configuration("config").component
                    assert isinstance(store, InMemoryConfigurationStore)
                    await store.set_items({"a": "1"})
                    content_type, update = await asyncio.wait_for(received.get(), WAIT)
            finally:
                await delivery.stop()
    finally:
        grpc_app.stop()
        thread.join(WAIT)
    assert content_type == "application/json"
    assert update == {"id": response.json()["id"], "items": {"a": item("1", "1")}}


# --- metadata --------------------------------------------------------------------------------

DECLARATIVE = """
    apiVersion: dapr.io/v2alpha1
    kind: Subscription
    metadata:
      name: {name}
    spec:
      pubsubname: {pubsub}
      topic: {topic}
      routes:
        rules:
          - match: event.type == "big"
            path: /big
        default: /{topic}
    scopes: [myapp]
    """


async def test_metadata_lists_the_subscriptions_delivered_to_the_app(
    resources: WriteFiles,
) -> None:
    app = ConfigApp(
        subscriptions=[
            {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
            {
                "pubsubname": "pubsub",
                "topic": "payments",
                "route": "/payments",
                "deadLetterTopic": "dead",
                "metadata": {"rawPayload": "true"},
            },
        ]
    )
    files = {
        "mine": DECLARATIVE.format(name="mine", pubsub="pubsub", topic="shipments"),
        "broken": DECLARATIVE.format(name="broken", pubsub="no-such-pubsub", topic="lost"),
    }
    async with sidecar(resources, app, **files) as dapr:
        response = await dapr.http.get("/v1.0/metadata")
    assert response.status_code == 200
    assert response.json()["subscriptions"] == [
        {
            "pubsubname": "pubsub",
            "topic": "shipments",
            "metadata": {},
            "rules": [
                {"match": 'event.type == "big"', "path": "/big"},
                {"match": "", "path": "/shipments"},
            ],
            "deadLetterTopic": "",
            "type": "DECLARATIVE",
        },
        {
            "pubsubname": "pubsub",
            "topic": "orders",
            "metadata": {},
            "rules": [{"match": "", "path": "/orders"}],
            "deadLetterTopic": "",
            "type": "PROGRAMMATIC",
        },
        {
            "pubsubname": "pubsub",
            "topic": "payments",
            "metadata": {"rawPayload": "true"},
            "rules": [{"match": "", "path": "/payments"}],
            "deadLetterTopic": "dead",
            "type": "PROGRAMMATIC",
        },
    ]
