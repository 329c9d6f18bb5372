"""Bulk subscribe: batches to a real HTTP app and a real ``dapr.ext.grpc`` app, statuses per entry.

The broker is the in-memory one with ``concurrency: 1``: a bulk subscription must still get
full batches (the engine runs ``maxMessagesCount`` handlers for it), and what the app did not
answer SUCCESS or DROP for must come back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from dapr.ext.grpc import App, SubscriptionMessage, TopicEventResponse

from mechakit.conformance.backends import free_port
from mechakit.runtime.app_channels import GrpcAppChannel, HttpAppChannel
from mechakit.runtime.bulk_subscribe import http_outcome
from mechakit.runtime.delivery import Delivery
from mechakit.runtime.in_process import Runtime
from mechakit.runtime.routing import AppSubscription, BulkConfig

from .recording_app import WAIT, Received, RecordingApp, serving

WriteFiles = Callable[..., Path]

PUBSUB = """
    apiVersion: dapr.io/v1alpha1
    kind: Component
    metadata:
      name: pubsub
    spec:
      type: pubsub.in-memory
      version: v1
      metadata:
        - name: maxDeliveries
          value: "3"
        - name: redeliveryInterval
          value: 10ms
        - name: concurrency
          value: "1"
    """


def bulk_subscription(topic: str, route: str, count: int, await_ms: int, **extra: Any) -> Any:
    return {
        "pubsubname": "pubsub",
        "topic": topic,
        "route": route,
        "bulkSubscribe": {
            "enabled": True,
            "maxMessagesCount": count,
            "maxAwaitDurationMs": await_ms,
        },
        **extra,
    }


def entries(call: Received) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = call.event["entries"]
    return found


def answer_by_data(statuses: Callable[[Any], str]) -> Callable[[Received], tuple[int, Any]]:
    """An app's bulk answer: each entry's status from its event's data."""

    def respond(call: Received) -> tuple[int, Any]:
        return 200, {
            "statuses": [
                {"entryId": e["entryId"], "status": statuses(e["event"]["data"])}
                for e in entries(call)
            ]
        }

    return respond


def all_success(call: Received) -> tuple[int, Any]:
    """An app that takes every entry (an empty 200 would retry them all, as in Dapr)."""
    return 200, {
        "statuses": [{"entryId": e["entryId"], "status": "SUCCESS"} for e in entries(call)]
    }


@contextlib.asynccontextmanager
async def delivering(
    resources: WriteFiles, app: RecordingApp, **files: str
) -> AsyncIterator[Runtime]:
    folder = resources(pubsub=PUBSUB, **files)
    async with serving(app), Runtime(folder, app_id="myapp") as runtime:
        delivery = Delivery(runtime, HttpAppChannel(app.port), ready_timeout=WAIT)
        await delivery.start()
        try:
            yield runtime
        finally:
            await delivery.stop()


async def publish_all(runtime: Runtime, topic: str, payloads: list[Any]) -> None:
    pubsub = runtime.pubsub("pubsub")
    await asyncio.gather(*(pubsub.publish(topic, p) for p in payloads))


async def test_events_reach_the_app_in_daprs_bulk_envelope_in_full_batches(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[bulk_subscription("orders", "/orders", 5, 30_000)],
        computed={"/orders": all_success},
    )
    async with delivering(resources, app) as runtime:
        await publish_all(runtime, "orders", [{"n": n} for n in range(10)])
        calls = await app.wait_for("/orders", 2)
    # maxAwaitDurationMs is 30 s: both batches went because they were full.
    assert [len(entries(c)) for c in calls] == [5, 5]
    envelope = calls[0].event
    assert envelope["type"] == "com.dapr.event.sent.bulk"
    assert envelope["topic"] == "orders" and envelope["pubsubname"] == "pubsub"
    assert envelope["metadata"] == {"pubsubName": "pubsub"} and envelope["id"]
    assert calls[0].headers["content-type"] == "application/json"
    entry = entries(calls[0])[0]
    assert set(entry) == {"entryId", "event", "metadata", "contentType"}
    assert entry["contentType"] == "application/cloudevents+json"
    assert entry["event"]["specversion"] == "1.0" and entry["event"]["topic"] == "orders"
    data = sorted(e["event"]["data"]["n"] for c in calls for e in entries(c))
    assert data == list(range(10))
    assert len({e["entryId"] for c in calls for e in entries(c)}) == 10


async def test_a_partial_batch_goes_once_the_await_duration_passed(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[bulk_subscription("orders", "/orders", 100, 200)],
        computed={"/orders": all_success},
    )
    async with delivering(resources, app) as runtime:
        await publish_all(runtime, "orders", ["a", "b", "c"])
        calls = await app.wait_for("/orders")
    assert sorted(e["event"]["data"] for e in entries(calls[0])) == ["a", "b", "c"]


async def test_the_await_timer_starts_again_after_a_count_triggered_flush(
    resources: WriteFiles,
) -> None:
    """dapr#9211: upstream's timer kept its old rhythm after a full batch, so the next
    batch could go almost at once. Here a batch waits the whole window from its first
    entry (only a lower bound is asserted: the machine may be slow, never fast)."""
    window = 0.6
    app = RecordingApp(
        subscriptions=[bulk_subscription("orders", "/orders", 3, int(window * 1000))],
        computed={"/orders": all_success},
    )
    async with delivering(resources, app) as runtime:
        await publish_all(runtime, "orders", [1, 2, 3])
        await app.wait_for("/orders")
        await asyncio.sleep(window * 0.7)  # late in the first window an old timer would end
        sent = time.monotonic()
        await runtime.pubsub("pubsub").publish("orders", 4)
        calls = await app.wait_for("/orders", 2)
        waited = time.monotonic() - sent
    assert [e["event"]["data"] for e in entries(calls[1])] == [4]
    assert waited >= window * 0.95


async def test_statuses_per_entry_retry_is_redelivered_drop_and_success_are_not(
    resources: WriteFiles,
) -> None:
    tries: dict[str, int] = {}

    def status(data: str) -> str:
        tries[data] = tries.get(data, 0) + 1
        if data == "flaky":
            return "RETRY" if tries[data] == 1 else "SUCCESS"
        return {"poison": "DROP", "unsure": "MAYBE"}.get(data, "SUCCESS")

    app = RecordingApp(
        subscriptions=[
            bulk_subscription("orders", "/orders", 4, 100, deadLetterTopic="dead"),
            {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
        ],
        computed={"/orders": answer_by_data(status)},
    )
    async with delivering(resources, app) as runtime:
        await publish_all(runtime, "orders", ["ok", "flaky", "poison", "unsure"])
        dead = await app.wait_for("/dead")
    # "unsure" got a status Dapr does not know: retried until maxDeliveries (3), then the
    # dead-letter topic; "flaky" succeeded on its second delivery; the rest went once.
    assert tries == {"ok": 1, "flaky": 2, "poison": 1, "unsure": 3}
    assert [c.event["data"] for c in dead] == ["unsure"]


async def test_an_entry_the_app_leaves_out_is_retried(resources: WriteFiles) -> None:
    seen: list[list[str]] = []

    def respond(call: Received) -> tuple[int, Any]:
        batch = entries(call)
        seen.append([e["event"]["data"] for e in batch])
        answered = [e for e in batch if e["event"]["data"] != "forgotten" or len(seen) > 1]
        return 200, {"statuses": [{"entryId": e["entryId"], "status": "SUCCESS"} for e in answered]}

    app = RecordingApp(
        subscriptions=[bulk_subscription("orders", "/orders", 2, 100)],
        computed={"/orders": respond},
    )
    async with delivering(resources, app) as runtime:
        await publish_all(runtime, "orders", ["kept", "forgotten"])
        await app.wait_for("/orders", 2)
    assert sorted(seen[0]) == ["forgotten", "kept"]
    assert seen[1] == ["forgotten"]


@pytest.mark.parametrize(("status", "again"), [(404, False), (500, True)], ids=str)
async def test_http_404_drops_the_batch_and_other_errors_retry_all_of_it(
    resources: WriteFiles, status: int, again: bool
) -> None:
    app = RecordingApp(
        subscriptions=[bulk_subscription("orders", "/orders", 2, 100)],
        answers={"/orders": [(status, None)]},
        computed={"/orders": all_success},
    )
    async with delivering(resources, app) as runtime:
        await publish_all(runtime, "orders", ["a", "b"])
        await app.wait_for("/orders")
        await runtime.pubsub("pubsub").publish("orders", "last")
        calls = await app.wait_for("/orders", 2)
        if again:
            calls = await app.wait_for("/orders", 3)
    delivered = [sorted(e["event"]["data"] for e in entries(c)) for c in calls]
    assert delivered[0] == ["a", "b"]
    if again:
        assert sorted(d for batch in delivered[1:] for d in batch) == ["a", "b", "last"]
    else:
        assert delivered[1] == ["last"]


async def test_routing_rules_split_a_batch_into_one_call_per_route(resources: WriteFiles) -> None:
    subscription = """
        apiVersion: dapr.io/v2alpha1
        kind: Subscription
        metadata:
          name: orders
        spec:
          pubsubname: pubsub
          topic: orders
          routes:
            rules:
              - match: event.data.kind == "big"
                path: /big
            default: /small
          bulkSubscribe:
            enabled: true
            maxMessagesCount: 4
            maxAwaitDurationMs: 30000
        """
    app = RecordingApp(computed={"/big": all_success, "/small": all_success})
    async with delivering(resources, app, subscription=subscription) as runtime:
        kinds = ["big", "small", "big", "small"]
        await publish_all(runtime, "orders", [{"kind": k} for k in kinds])
        big, small = await app.wait_for("/big"), await app.wait_for("/small")
    assert [e["event"]["data"]["kind"] for e in entries(big[0])] == ["big", "big"]
    assert [e["event"]["data"]["kind"] for e in entries(small[0])] == ["small", "small"]


async def test_a_raw_payload_entry_carries_the_bytes_base64_encoded(resources: WriteFiles) -> None:
    app = RecordingApp(
        subscriptions=[bulk_subscription("raw", "/raw", 1, 100, metadata={"rawPayload": "true"})]
    )
    async with delivering(resources, app) as runtime:
        await runtime.pubsub("pubsub").publish(
            "raw",
            b"\x00\xffbytes",
            content_type="application/octet-stream",
            metadata={"rawPayload": "true"},
        )
        calls = await app.wait_for("/raw")
    entry = entries(calls[0])[0]
    assert base64.b64decode(entry["event"]) == b"\x00\xffbytes"
    assert entry["contentType"] == "application/octet-stream"


def test_bulk_settings_are_read_as_daprd_reads_them() -> None:
    sub = AppSubscription.from_json(bulk_subscription("t", "/t", 0, -5))
    assert sub.bulk == BulkConfig(100, 1000)  # unset or not positive: daprd's defaults
    plain = AppSubscription.from_json({"pubsubname": "p", "topic": "t", "route": "/t"})
    assert plain.bulk is None
    off = {"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": {"enabled": False}}
    assert AppSubscription.from_json(off).bulk is None
    with pytest.raises(ValueError, match="maxMessagesCount must be an integer"):
        AppSubscription.from_json(bulk_subscription("t", "/t", "ten", 5))  # type: ignore[arg-type]
    outcome = http_outcome(
        200, json.dumps({"statuses": [{"entryId": "a", "status": "drop"}]}).encode(), "x"
    )
    assert outcome.status_of("a") == "DROP" and outcome.status_of("b") == "RETRY"
    assert http_outcome(200, b"not json", "x").status_of("a") == "RETRY"


async def test_a_grpc_app_gets_batches_through_on_bulk_topic_event(resources: WriteFiles) -> None:
    """The SDK's App answers OnBulkTopicEvent by calling its topic handler per entry."""
    port = free_port()
    app = App()
    got: list[str] = []
    lock = threading.Lock()

    @app.subscribe(pubsub_name="pubsub", topic="orders")  # type: ignore[untyped-decorator]
    def orders(event: SubscriptionMessage) -> TopicEventResponse:
        with lock:
            data = event.data()  # type: ignore[no-untyped-call]
            got.append(data)
            if data == "flaky" and got.count("flaky") == 1:
                return TopicEventResponse("retry")
        return TopicEventResponse("success")

    # The Python SDK cannot declare bulkSubscribe yet (the Go and Java ones can): its
    # ListTopicSubscriptions answer is given the BulkSubscribeConfig such an app sends.
    (declared,) = app._servicer._registered_topics
    declared.bulk_subscribe.enabled = True
    declared.bulk_subscribe.max_messages_count = 3
    declared.bulk_subscribe.max_await_duration_ms = 100
    folder = resources(pubsub=PUBSUB)
    server = threading.Thread(target=app.run, args=(port,), daemon=True)
    server.start()
    try:
        async with Runtime(folder, app_id="myapp") as runtime:
            delivery = Delivery(runtime, GrpcAppChannel(port), ready_timeout=WAIT)
            await delivery.start()
            try:
                await publish_all(runtime, "orders", ["a", "flaky", "b"])
                for _ in range(int(WAIT / 0.05)):
                    if got.count("flaky") == 2:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await delivery.stop()
    finally:
        app.stop()
    assert sorted(got) == ["a", "b", "flaky", "flaky"]


# --- inbound resiliency on batches ------------------------------------------------------------

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


async def test_an_inbound_retry_sends_again_only_the_entries_the_app_did_not_take(
    resources: WriteFiles,
) -> None:
    tries: dict[str, int] = {}

    def status(data: str) -> str:
        tries[data] = tries.get(data, 0) + 1
        return {"taken": "SUCCESS", "poison": "DROP"}.get(data, "RETRY")

    app = RecordingApp(
        subscriptions=[
            bulk_subscription("orders", "/orders", 3, 100, deadLetterTopic="dead"),
            {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
        ],
        computed={"/orders": answer_by_data(status)},
    )
    async with delivering(resources, app, resiliency=INBOUND) as runtime:
        await publish_all(runtime, "orders", ["taken", "poison", "refused"])
        dead = await app.wait_for("/dead")
    calls = [sorted(e["event"]["data"] for e in entries(c)) for c in app.at("/orders")]
    assert calls[0] == ["poison", "refused", "taken"]
    assert calls[1:] == [["refused"]] * (3 * 3 - 1)
    # maxDeliveries 3, each delivery of the batch tried 1 + 2 times, then the dead letter.
    assert tries == {"taken": 1, "poison": 1, "refused": 3 * 3}
    assert [c.event["data"] for c in dead] == ["refused"]


async def test_an_inbound_timeout_cuts_a_batch_call_and_the_retry_sends_it_again(
    resources: WriteFiles,
) -> None:
    from .test_resiliency import StallingApp

    app = StallingApp(
        subscriptions=[bulk_subscription("orders", "/orders", 2, 100)],
        computed={"/orders": all_success},
        stalls=[2.0],
    )
    async with delivering(resources, app, resiliency=INBOUND) as runtime:
        await publish_all(runtime, "orders", ["a", "b"])
        first, again = await app.wait_for("/orders", 2)
    assert [e["entryId"] for e in entries(again)] == [e["entryId"] for e in entries(first)]
    assert sorted(e["event"]["data"] for e in entries(again)) == ["a", "b"]


async def test_a_batch_refused_while_the_app_is_unhealthy_uses_up_none_of_its_deliveries(
    resources: WriteFiles,
) -> None:
    """``mechakit run``'s gate refuses what is sent while the app is unhealthy; the broker
    gets the batch's messages back uncounted, so each still has its 3 deliveries."""
    from mechakit.runtime.cli._app_gate import gate

    tries: list[str] = []

    def status(data: str) -> str:
        tries.append(data)
        return "RETRY"

    app = RecordingApp(
        subscriptions=[
            bulk_subscription("orders", "/orders", 2, 50, deadLetterTopic="dead"),
            {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
        ],
        computed={"/orders": answer_by_data(status)},
    )
    folder = resources(pubsub=PUBSUB)
    async with serving(app), Runtime(folder, app_id="myapp") as runtime:
        app_gate = gate(HttpAppChannel(app.port), health_checked=True)
        await app_gate.set_healthy(False, refuse=True)
        delivery = Delivery(runtime, app_gate, ready_timeout=WAIT)
        await delivery.start()
        try:
            await runtime.pubsub("pubsub").publish("orders", "x")
            await asyncio.sleep(0.5)  # refused several times meanwhile (every 50 ms)
            assert tries == []
            await app_gate.set_healthy(True)
            dead = await app.wait_for("/dead")
        finally:
            await delivery.stop()
    assert tries == ["x"] * 3
    assert [c.event["data"] for c in dead] == ["x"]
