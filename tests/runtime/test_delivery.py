"""Delivery to the app: subscriptions, the app's answers, dead letters, routing, input bindings.

Most tests drive :class:`Delivery` over a started :class:`Runtime` against a real HTTP app
(Starlette under uvicorn, in this event loop); one runs a real ``mechakit run`` process, one
a gRPC app built with ``dapr.ext.grpc`` (``dapr[grpc]``). Absence of a redelivery is checked without
sleeping: the in-memory broker delivers one message at a time in order (``concurrency: 1``)
and hands unacked messages back when its last subscription stops, so after ``stop`` a
fresh subscriber sees whatever was still pending before a sentinel published last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dapr.ext.grpc import App, BindingRequest, SubscriptionMessage, TopicEventResponse

from mechakit.conformance.backends import free_port
from mechakit.runtime.app_channels import AppStatus, GrpcAppChannel, HttpAppChannel, http_answer
from mechakit.runtime.clients import TopicEvent
from mechakit.runtime.delivery import Delivery
from mechakit.runtime.in_process import Runtime
from mechakit.runtime.routing import RouteRule, RouteSyntaxError

from .recording_app import WAIT, RecordingApp, serving

WriteFiles = Callable[..., Path]

# --- resources ----------------------------------------------------------------------------


def pubsub_yaml(*, max_deliveries: int = 3, interval: str = "10ms") -> str:
    return f"""
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata:
          name: pubsub
        spec:
          type: pubsub.in-memory
          version: v1
          metadata:
            - name: maxDeliveries
              value: "{max_deliveries}"
            - name: redeliveryInterval
              value: {interval}
            - name: concurrency
              value: "1"
        """


def subscribe(topic: str, route: str, **extra: Any) -> dict[str, Any]:
    return {"pubsubname": "pubsub", "topic": topic, "route": route, **extra}


@contextlib.asynccontextmanager
async def delivering(
    resources: WriteFiles, app: RecordingApp, app_id: str = "myapp", **files: str
) -> AsyncIterator[tuple[Runtime, Delivery]]:
    folder = resources(**({"pubsub": pubsub_yaml()} | files))
    async with serving(app), Runtime(folder, app_id=app_id) as runtime:
        delivery = Delivery(runtime, HttpAppChannel(app.port), ready_timeout=WAIT)
        await delivery.start()
        try:
            yield runtime, delivery
        finally:
            await delivery.stop()


async def pending_after_stop(runtime: Runtime, delivery: Delivery, topic: str) -> list[Any]:
    """Stop ``delivery``, then the payloads still pending on ``topic`` (in order)."""
    await delivery.stop()
    pubsub = runtime.pubsub("pubsub")
    seen: list[Any] = []
    sentinel = asyncio.Event()

    async def collect(event: TopicEvent) -> None:
        if event.data == "sentinel":
            sentinel.set()
        else:
            seen.append(event.data)

    subscription = await pubsub.subscribe(topic, collect)
    await pubsub.publish(topic, "sentinel")
    await asyncio.wait_for(sentinel.wait(), WAIT)
    await subscription.cancel()
    return seen


def cloud_event(type_: str, data: Any, **extra: Any) -> bytes:
    event = {"specversion": "1.0", "id": f"id-{type_}", "source": "test", "type": type_}
    return json.dumps(
        {**event, "datacontenttype": "application/json", "data": data, **extra}
    ).encode()


# --- the app's answers ----------------------------------------------------------------------


async def test_retry_answers_are_redelivered_until_the_app_answers_success(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[subscribe("orders", "orders")],
        answers={"/orders": [(200, {"status": "RETRY"}), (200, {"status": "retry"}), (200, {})]},
    )
    async with delivering(resources, app) as (runtime, delivery):
        await runtime.pubsub("pubsub").publish("orders", {"id": 7})
        calls = await app.wait_for("/orders", 3)
        assert await pending_after_stop(runtime, delivery, "orders") == []
    assert len(app.at("/orders")) == 3
    assert {c.headers["content-type"] for c in calls} == {"application/cloudevents+json"}
    events = [c.event for c in calls]
    assert {e["id"] for e in events} == {events[0]["id"]}
    assert events[0]["data"] == {"id": 7}
    assert events[0]["topic"] == "orders" and events[0]["pubsubname"] == "pubsub"
    assert events[0]["specversion"] == "1.0" and events[0]["source"] == "myapp"


async def test_a_drop_answer_is_acked_and_never_redelivered(resources: WriteFiles) -> None:
    app = RecordingApp(
        subscriptions=[subscribe("orders", "/orders")],
        always={"/orders": (200, {"status": "DROP"})},
    )
    async with delivering(resources, app, pubsub=pubsub_yaml(interval="30s")) as (
        runtime,
        delivery,
    ):
        await runtime.pubsub("pubsub").publish("orders", "poison")
        await app.wait_for("/orders")
        assert await pending_after_stop(runtime, delivery, "orders") == []
    assert len(app.at("/orders")) == 1


@pytest.mark.parametrize(
    ("status", "pending"), [(404, []), (500, ["order"]), (503, ["order"])], ids=str
)
async def test_http_404_drops_the_event_and_other_errors_keep_it_for_redelivery(
    resources: WriteFiles, status: int, pending: list[str]
) -> None:
    app = RecordingApp(
        subscriptions=[subscribe("orders", "/orders")], always={"/orders": (status, None)}
    )
    async with delivering(resources, app, pubsub=pubsub_yaml(interval="30s")) as (rt, delivery):
        await rt.pubsub("pubsub").publish("orders", "order")
        await app.wait_for("/orders")
        assert await pending_after_stop(rt, delivery, "orders") == pending


async def test_an_event_failing_every_delivery_moves_to_the_dead_letter_topic(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[
            subscribe("orders", "/orders", deadLetterTopic="poison"),
            subscribe("poison", "/poison"),
        ],
        always={"/orders": (500, None)},
    )
    async with delivering(resources, app, pubsub=pubsub_yaml(max_deliveries=3, interval="0s")) as (
        runtime,
        _,
    ):
        await runtime.pubsub("pubsub").publish("orders", {"n": 1})
        dead = await app.wait_for("/poison")
        assert len(app.at("/orders")) == 3
    assert dead[0].event["data"] == {"n": 1}
    assert dead[0].event["id"] == app.at("/orders")[0].event["id"]


@pytest.mark.parametrize(
    ("code", "body", "status"),
    [
        (200, b"", AppStatus.SUCCESS),
        (204, b"", AppStatus.SUCCESS),
        (200, b"{}", AppStatus.SUCCESS),
        (200, b'{"status": ""}', AppStatus.SUCCESS),
        (200, b"ok, thanks", AppStatus.SUCCESS),
        (200, b'{"status": "success"}', AppStatus.SUCCESS),
        (201, b'{"status": "RETRY"}', AppStatus.RETRY),
        (200, b'{"status": "Drop"}', AppStatus.DROP),
        (200, b'{"status": "LATER"}', AppStatus.RETRY),
        (404, b"", AppStatus.DROP),
        (400, b"", AppStatus.RETRY),
        (500, b'{"status": "DROP"}', AppStatus.RETRY),
    ],
)
def test_http_answers_are_read_as_dapr_reads_them(
    code: int, body: bytes, status: AppStatus
) -> None:
    assert http_answer(code, body).status is status


# --- events ---------------------------------------------------------------------------------


async def test_expired_events_are_dropped_before_they_reach_the_app(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(subscriptions=[subscribe("orders", "/orders")])
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    async with delivering(resources, app) as (runtime, _):
        pubsub = runtime.pubsub("pubsub")
        ce = "application/cloudevents+json"
        await pubsub.publish("orders", cloud_event("old", 1, expiration=past), content_type=ce)
        await pubsub.publish("orders", cloud_event("new", 2), content_type=ce)
        calls = await app.wait_for("/orders")
    assert [c.event["type"] for c in calls] == ["new"]


async def test_raw_payloads_reach_the_app_wrapped_with_data_base64(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(subscriptions=[subscribe("raw", "/raw")])
    async with delivering(resources, app) as (runtime, _):
        await runtime.pubsub("pubsub").publish(
            "raw", b"\x00\x01bytes", metadata={"rawPayload": "true"}
        )
        (call,) = await app.wait_for("/raw")
    event = call.event
    assert base64.b64decode(event["data_base64"]) == b"\x00\x01bytes"
    assert event["datacontenttype"] == "application/octet-stream"
    assert event["topic"] == "raw" and event["pubsubname"] == "pubsub"


# --- routing and declarative subscriptions ------------------------------------------------------

ROUTED = """
    apiVersion: dapr.io/v2alpha1
    kind: Subscription
    metadata:
      name: inventory
    spec:
      pubsubname: pubsub
      topic: inventory
      routes:
        rules:
          - match: event.type == "widget"
            path: /widgets
          - match: event.type == 'gadget' && event.data.price > 100
            path: /expensive-gadgets
        default: /products
    scopes: [myapp]
"""


async def test_routing_rules_choose_the_path_and_the_rest_goes_to_the_default(
    resources: WriteFiles,
) -> None:
    app = RecordingApp()
    async with delivering(resources, app, subscription=ROUTED) as (runtime, delivery):
        pubsub = runtime.pubsub("pubsub")
        ce = "application/cloudevents+json"
        for type_, price in [("widget", 1), ("gadget", 500), ("gadget", 5)]:
            await pubsub.publish("inventory", cloud_event(type_, {"price": price}), content_type=ce)
        await pubsub.publish("inventory", {"plain": True})
        await app.wait_for("/products", 2)
        widgets = await app.wait_for("/widgets")
        gadgets = await app.wait_for("/expensive-gadgets")
        assert [s.origin for s in delivery.subscriptions] == ["Subscription 'inventory'"]
    assert widgets[0].event["data"] == {"price": 1}
    assert gadgets[0].event["data"] == {"price": 500}
    assert [c.event["data"] for c in app.at("/products")] == [{"price": 5}, {"plain": True}]


def subscription_yaml(name: str, topic: str, route: str, scopes: str) -> str:
    return f"""
        apiVersion: dapr.io/v1alpha1
        kind: Subscription
        metadata:
          name: {name}
        spec:
          pubsubname: pubsub
          topic: {topic}
          route: {route}
        scopes: {scopes}
        """


async def test_declarative_subscriptions_scoped_to_other_apps_are_not_delivered(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(subscriptions=[subscribe("from-app", "/from-app")])
    files = {
        "mine": subscription_yaml("mine", "orders", "/orders", "[myapp, other]"),
        "theirs": subscription_yaml("theirs", "payments", "/payments", "[other]"),
    }
    async with delivering(resources, app, **files) as (runtime, delivery):
        pubsub = runtime.pubsub("pubsub")
        await pubsub.publish("payments", "not for me")
        await pubsub.publish("orders", "for me")
        await pubsub.publish("from-app", "asked for")
        (order,) = await app.wait_for("/orders")
        await app.wait_for("/from-app")
        assert [(s.topic, s.origin) for s in delivery.subscriptions] == [
            ("orders", "Subscription 'mine'"),
            ("from-app", "programmatic"),
        ]
    assert order.event["data"] == "for me"
    assert app.at("/payments") == []


async def test_an_invalid_match_expression_skips_only_that_subscription(
    resources: WriteFiles,
) -> None:
    bad = ROUTED.replace('event.type == "widget"', "event.type = widget").replace(
        "scopes: [myapp]", ""
    )
    app = RecordingApp(subscriptions=[subscribe("orders", "/orders")])
    async with delivering(resources, app, subscription=bad) as (_, delivery):
        assert [s.topic for s in delivery.subscriptions] == ["orders"]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ('event.type == "widget"', True),
        ("event.type == 'gadget'", False),
        ("event.type != 'gadget' && event.data.price >= 10.5", True),
        ("event.data.price > 100 || event.data.name == 'x'", False),
        ("event.data.missing == 1 || event.data.price == 20", True),
        ("event.data.missing == 1", False),
        ("!(event.data.price < 10)", True),
        ("event.data.price == 20.0", True),
        ("event.data.flag == 1", False),
        ("event.data.flag && event.data.tags[0] == 'a'", True),
        ('event.data["name"].startsWith("ab") && size(event.data.tags) == 2', True),
        ('event.type in ["gadget", "widget"]', True),
        ("has(event.data.missing)", False),
        ("event.data.name > 1", False),
    ],
)
def test_route_rules_evaluate_the_cel_subset_dapr_documents(match: str, expected: bool) -> None:
    event = {
        "type": "widget",
        "id": "1",
        "data": {"price": 20, "name": "abc", "flag": True, "tags": ["a", "b"]},
    }
    assert RouteRule.parse(match, "/x").matches(event) is expected


@pytest.mark.parametrize(
    "match",
    ["event.type ==", "type == 'x'", "event.type = 'x'", "event.type == 'x", "eval('1')", ""],
)
def test_route_rules_outside_the_subset_are_rejected_when_loaded(match: str) -> None:
    with pytest.raises(RouteSyntaxError, match="match"):
        RouteRule.parse(match, "/x")


# --- input bindings ---------------------------------------------------------------------------

CRON = """
    apiVersion: dapr.io/v1alpha1
    kind: Component
    metadata:
      name: {name}
    spec:
      type: bindings.cron
      version: v1
      metadata:
        - name: schedule
          value: "@every 1s"
"""


async def test_input_binding_events_are_posted_to_the_binding_name(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(not_listening={"/ignored"})
    files = {"tick": CRON.format(name="tick"), "ignored": CRON.format(name="ignored")}
    async with delivering(resources, app, **files) as (_, delivery):
        (call, *_) = await app.wait_for("/tick")
        assert delivery.bindings == {"tick": "/tick"}
    assert call.method == "POST"
    assert "time" in json.loads(call.body)
    assert call.headers["readtimeutc"] and call.headers["timezone"]
    assert app.at("/ignored") == []


# --- gRPC app ---------------------------------------------------------------------------------


class GrpcRecorder:
    """What the gRPC app's handlers (on grpc's worker threads) saw, awaitable from the loop."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        """The ``SubscriptionMessage`` of each delivery (the SDK's accessors are untyped)."""
        self.bindings: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def record(self, into: list[Any], item: Any) -> None:
        into.append(item)
        self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, probe: Callable[[], bool]) -> None:
        async def until() -> None:
            while not probe():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), WAIT)


async def test_a_grpc_app_receives_events_over_on_topic_event_and_its_answers_count(
    resources: WriteFiles,
) -> None:
    recorder = GrpcRecorder()
    grpc_app = App()
    answers = ["retry", "success"]

    @grpc_app.subscribe(pubsub_name="pubsub", topic="orders")  # type: ignore[untyped-decorator]
    def orders(event: SubscriptionMessage) -> TopicEventResponse:
        answer = TopicEventResponse(answers.pop(0) if answers else "success")
        recorder.record(recorder.events, event)
        return answer

    @grpc_app.binding("tick")  # type: ignore[untyped-decorator]
    def tick(request: BindingRequest) -> None:
        recorder.record(recorder.bindings, request.data)

    port = free_port()
    thread = threading.Thread(target=grpc_app.run, args=(port, "127.0.0.1"), daemon=True)
    thread.start()
    folder = resources(pubsub=pubsub_yaml(), tick=CRON.format(name="tick"))
    try:
        async with Runtime(folder, app_id="myapp") as runtime:
            delivery = Delivery(runtime, GrpcAppChannel(port), ready_timeout=WAIT)
            await delivery.start()
            try:
                assert [s.topic for s in delivery.subscriptions] == ["orders"]
                await runtime.pubsub("pubsub").publish("orders", {"n": 1})
                await recorder.wait(lambda: len(recorder.events) == 2)
                await recorder.wait(lambda: len(recorder.bindings) >= 1)
                assert await pending_after_stop(runtime, delivery, "orders") == []
            finally:
                await delivery.stop()
    finally:
        grpc_app.stop()
        thread.join(WAIT)
    first, second = recorder.events
    assert first.id() == second.id()
    assert first.data() == {"n": 1} and first.data_content_type() == "application/json"
    assert (first.topic(), first.pubsub_name(), first.source()) == ("orders", "pubsub", "myapp")
    assert "time" in json.loads(recorder.bindings[0])


# --- mechakit run ---------------------------------------------------------------------------


async def test_mechakit_run_delivers_to_the_app_port_until_the_app_answers_success(
    resources: WriteFiles, tmp_path: Path
) -> None:
    app = RecordingApp(
        subscriptions=[subscribe("orders", "/orders")],
        answers={"/orders": [(500, None), (200, {"status": "SUCCESS"})]},
    )
    folder = resources(
        pubsub=pubsub_yaml(),
        tick=CRON.format(name="tick"),
        sub=subscription_yaml("audit", "audit", "/audit", "[shop]"),
    )
    dapr_port = free_port()
    logs = tmp_path / "run.log"
    async with serving(app):
        with logs.open("w") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "shop",
                "--resources-path", str(folder), "--dapr-http-port", str(dapr_port),
                "--dapr-grpc-port", "0", "--app-port", str(app.port),
                env={**os.environ, "MECHAKIT_HOME": str(tmp_path / "home")},
                stderr=sink,
            )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{dapr_port}/v1.0"
            async with httpx.AsyncClient(base_url=base) as client:
                await wait_healthy(client)
                published = await client.post("/publish/pubsub/orders", json={"id": 1})
                assert published.status_code == 204
                await client.post("/publish/pubsub/audit", json={"id": 2})
                orders = await app.wait_for("/orders", 2)
                audit = await app.wait_for("/audit")
                await app.wait_for("/tick")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), WAIT) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [o.event["data"] for o in orders] == [{"id": 1}, {"id": 1}]
    assert audit[0].event["data"] == {"id": 2}
    text = logs.read_text()
    assert "delivering topic 'orders' on 'pubsub' (programmatic) -> /orders" in text
    assert "delivering input binding 'tick' to the app (POST /tick)" in text
    assert "delivery of subscriptions to the app is not served yet" not in text


async def wait_healthy(client: httpx.AsyncClient) -> None:
    for _ in range(400):
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/healthz")).status_code == 204:
                return
        await asyncio.sleep(0.05)
    pytest.fail("mechakit run did not become healthy within 20s")
