"""pubsub.rabbitmq beyond the conformance suite: queues per app id (competing consumers and
fan-out), Dapr's metadata (exchange kinds and routing keys, priorities, TTLs, queue
arguments, the broker's dead-letter queue, quorum queues' delivery count), and faults:
a subscription made while the broker is down, a broker restart with nothing confirmed
lost, a subscriber process killed mid-stream.

Runs against the "rabbitmq" conformance backend (``MECHAKIT_TEST_RABBITMQ_URL``, else a
``rabbitmq-server`` node of our own); skipped with the reason when neither is available.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rabbitmq_helpers import TIMEOUT, Make, unique, wait_for

from mechakit.components.pubsub.rabbitmq import RabbitMQPubSub, RabbitMQSettings
from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.backends_rabbitmq import RabbitMQNode
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
)
from mechakit.core.pubsub import Message, PublishRequest, SubscribeRequest

pytest_plugins = ["rabbitmq_server"]

KEEP = {"durable": "true", "deletedWhenUnused": "false", "publisherConfirm": "true"}
"""Queues that outlive their consumers (Dapr's defaults drop them), and publishes that
return once the broker has the message."""


async def publish(driver: Any, name: str, datas: list[bytes], **metadata: str) -> None:
    for data in datas:
        await driver.publish(PublishRequest(topic=name, data=data, metadata=metadata))


def slow(seconds: float) -> Any:
    async def behaviour(message: Message, seen: int) -> None:
        await asyncio.sleep(seconds)

    return behaviour


# --- settings -------------------------------------------------------------------------


def test_dapr_defaults_and_words() -> None:
    s = RabbitMQSettings.from_metadata({"host": "amqp://h", "concurrency": "single"}, component="x")
    assert (s.durable, s.deleted_when_unused, s.exchange_kind) == (False, True, "fanout")
    assert s.concurrency == 1
    assert s.reconnect_wait.total_seconds() == 3
    assert s.url("x") == "amqp://h"
    parts = RabbitMQSettings.from_metadata(
        {"hostname": "broker:5673", "username": "u", "password": "p@ss"}, component="x"
    )
    assert parts.url("x") == "amqp://u:p%40ss@broker:5673/"
    policy = RabbitMQSettings.from_metadata({"requeueInFailure": "true"}, component="x")
    assert policy.delivery_policy().max_deliveries == 0, "requeueInFailure: never give up"


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"deliveryMode": "3"}, "deliveryMode"),
        ({"exchangeKind": "broadcast"}, "exchangeKind"),
        ({"prefetchCount": "-1"}, "prefetchCount"),
    ],
)
def test_bad_metadata_names_the_field(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(MetadataError, match=field):
        RabbitMQSettings.from_metadata(metadata, component="pubsub.rabbitmq 'x'")


async def test_protocol_clashing_with_the_connection_string_is_refused(
    rabbitmq: BackendInfo,
) -> None:
    driver = RabbitMQPubSub()
    with pytest.raises(MetadataError, match="protocol") as caught:
        await driver.init(
            ComponentMetadata(
                "rabbit", "pubsub.rabbitmq",
                {"connectionString": rabbitmq.values["url"], "protocol": "amqps"}, app_id="a",
            )
        )  # fmt: skip
    assert caught.value.field == "protocol"


async def test_unreachable_broker_fails_init() -> None:
    from mechakit.conformance.backends import free_port

    driver = RabbitMQPubSub()
    with pytest.raises(ConnectionFailedError):
        await driver.init(
            ComponentMetadata(
                "rabbit", "pubsub.rabbitmq",
                {"connectionString": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}, app_id="a",
            )
        )  # fmt: skip


async def test_dapr_defaults_are_announced_at_start_up_in_debug(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await make("pubsub.rabbitmq")
    assert any("deleted when its last consumer goes" in r.getMessage() for r in caplog.records)


# --- queues by app id -----------------------------------------------------------------


async def test_instances_of_one_app_id_share_the_messages_each_once(make: Make) -> None:
    name, sent = unique("compete"), [f"m-{i}".encode() for i in range(40)]
    first = await make("pubsub.rabbitmq", app_id="orders", concurrency="1", prefetchCount="1")
    second = await make("pubsub.rabbitmq", app_id="orders", concurrency="1", prefetchCount="1")
    inbox_a, inbox_b = Inbox(slow(0.02)), Inbox(slow(0.02))
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(first, name, sent)
    await wait_for(lambda: len(inbox_a.acked) + len(inbox_b.acked) >= len(sent), "all")
    await asyncio.sleep(0.5)
    counts = Counter(inbox_a.payloads + inbox_b.payloads)
    assert set(counts) == set(sent) and max(counts.values()) == 1
    assert inbox_a.acked and inbox_b.acked, "one instance got all the work"


async def test_different_app_ids_each_get_every_message(make: Make) -> None:
    name, sent = unique("fanout"), [f"m-{i}".encode() for i in range(10)]
    orders = await make("pubsub.rabbitmq", app_id="orders")
    billing = await make("pubsub.rabbitmq", app_id="billing")
    inbox_a, inbox_b = Inbox(), Inbox()
    await orders.subscribe(SubscribeRequest(topic=name), inbox_a)
    await billing.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(orders, name, sent)
    await inbox_a.wait_for_acked(len(sent), TIMEOUT)
    await inbox_b.wait_for_acked(len(sent), TIMEOUT)
    assert sorted(inbox_a.payloads) == sorted(inbox_b.payloads) == sorted(sent)


async def test_the_queue_is_consumer_id_dash_topic(make: Make, raw_channel: Any) -> None:
    name = unique("naming")
    driver = await make("pubsub.rabbitmq", app_id="orders", **KEEP)
    await (await driver.subscribe(SubscribeRequest(topic=name), Inbox())).cancel()
    await publish(driver, name, [b"kept"])  # confirmed: in the queue when this returns
    queue = await raw_channel.declare_queue(f"orders-{name}", passive=True)
    assert queue.declaration_result.message_count == 1


async def test_dapr_defaults_drop_a_queue_with_its_messages_when_its_consumer_goes(
    make: Make, raw_channel: Any
) -> None:
    import aiormq.exceptions

    name = unique("defaults")
    driver = await make("pubsub.rabbitmq", app_id="orders", publisherConfirm="true")
    await (await driver.subscribe(SubscribeRequest(topic=name), Inbox())).cancel()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await raw_channel.declare_queue(f"orders-{name}", passive=True)


async def test_a_queue_the_broker_refuses_fails_the_subscribe(make: Make) -> None:
    name = unique("refused")
    kept = await make("pubsub.rabbitmq", app_id="orders", **KEEP)
    await (await kept.subscribe(SubscribeRequest(topic=name), Inbox())).cancel()
    other = await make("pubsub.rabbitmq", app_id="orders", maxLen="5", **KEEP)
    with pytest.raises(ComponentError, match="refused"):
        await other.subscribe(SubscribeRequest(topic=name), Inbox())


# --- publish and subscribe metadata ---------------------------------------------------


async def test_topic_exchange_routes_by_routing_key(make: Make) -> None:
    name = unique("routed")
    driver = await make("pubsub.rabbitmq", exchangeKind="topic")
    eu, everything = Inbox(), Inbox()
    other = await make("pubsub.rabbitmq", app_id="all", exchangeKind="topic")
    await driver.subscribe(SubscribeRequest(topic=name, metadata={"routingKey": "eu.*"}), eu)
    await other.subscribe(SubscribeRequest(topic=name, metadata={"routingKey": "#"}), everything)
    await publish(driver, name, [b"paris"], routingKey="eu.fr")
    await publish(driver, name, [b"tokyo"], routingKey="asia.jp")
    await everything.wait_for_acked(2, TIMEOUT)
    await asyncio.sleep(0.5)
    assert eu.payloads == [b"paris"]


async def test_higher_priority_is_delivered_first(make: Make) -> None:
    name = unique("prio")
    driver = await make("pubsub.rabbitmq", concurrency="1", prefetchCount="1", **KEEP)
    request = SubscribeRequest(topic=name, metadata={"maxPriority": "5"})
    await (await driver.subscribe(request, Inbox())).cancel()
    await publish(driver, name, [b"low"], priority="1")
    await publish(driver, name, [b"high"], priority="5")
    inbox = Inbox()
    await driver.subscribe(request, inbox)
    await inbox.wait_for_acked(2, TIMEOUT)
    assert inbox.payloads == [b"high", b"low"]


async def test_bad_priority_and_ttl_are_refused(make: Make) -> None:
    driver = await make("pubsub.rabbitmq")
    with pytest.raises(InvalidRequestError, match="priority"):
        await publish(driver, unique("bad"), [b"x"], priority="urgent")
    with pytest.raises(InvalidRequestError, match="ttlInSeconds"):
        await publish(driver, unique("bad"), [b"x"], ttlInSeconds="-5")


async def test_component_ttl_is_the_default_message_ttl(make: Make) -> None:
    name = unique("ttl")
    driver = await make("pubsub.rabbitmq", ttlInSeconds="1", **KEEP)
    await (await driver.subscribe(SubscribeRequest(topic=name), Inbox())).cancel()
    await publish(driver, name, [b"short"])
    await publish(driver, name, [b"long"], ttlInSeconds="60")
    await asyncio.sleep(1.5)
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(0.5)
    assert inbox.payloads == [b"long"]


async def test_max_len_keeps_only_the_newest(make: Make) -> None:
    name = unique("maxlen")
    driver = await make("pubsub.rabbitmq", maxLen="2", **KEEP)
    await (await driver.subscribe(SubscribeRequest(topic=name), Inbox())).cancel()
    await publish(driver, name, [b"1", b"2", b"3"])
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(2, TIMEOUT)
    await asyncio.sleep(0.3)
    assert inbox.payloads == [b"2", b"3"]


async def test_bad_subscribe_metadata_names_the_field(make: Make) -> None:
    driver = await make("pubsub.rabbitmq")
    with pytest.raises(MetadataError, match="maxPriority"):
        await driver.subscribe(
            SubscribeRequest(topic=unique("x"), metadata={"maxPriority": "high"}), Inbox()
        )
    with pytest.raises(MetadataError, match="queueType"):
        await driver.subscribe(
            SubscribeRequest(topic=unique("x"), metadata={"queueType": "quorum"}), Inbox()
        )


# --- redelivery -----------------------------------------------------------------------


async def always_fail(message: Message, seen: int) -> None:
    raise RuntimeError("always fails")


async def test_enable_dead_letter_moves_exhausted_messages_to_the_dlq(
    make: Make, raw_channel: Any
) -> None:
    name = unique("dlx")
    driver = await make(
        "pubsub.rabbitmq", app_id="orders", enableDeadLetter="true", maxDeliveries="2"
    )
    inbox = Inbox(always_fail)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, [b"poison"])
    await wait_for(lambda: len(inbox.calls) >= 2, "two deliveries")
    queue = await raw_channel.declare_queue(f"dlq-orders-{name}", passive=True)
    deadline = time.monotonic() + TIMEOUT
    got = None
    while got is None and time.monotonic() < deadline:
        got = await queue.get(fail=False)
        await asyncio.sleep(0.05)
    assert got is not None and got.body == b"poison"
    assert [m.delivery_count for m in inbox.calls] == [1, 2]


async def test_quorum_queue_counts_deliveries(make: Make) -> None:
    calls: list[float] = []

    async def fail_twice(message: Message, seen: int) -> None:
        calls.append(time.monotonic())
        if seen < 3:
            raise RuntimeError("fails twice")

    name, inbox = unique("quorum"), Inbox(fail_twice)
    driver = await make("pubsub.rabbitmq", **KEEP)
    request = SubscribeRequest(topic=name, metadata={"queueType": "quorum"})
    await driver.subscribe(request, inbox)
    await publish(driver, name, [b"again"])
    await inbox.wait_for_acked(1, TIMEOUT)
    assert [m.delivery_count for m in inbox.calls] == [1, 2, 3]
    assert calls[1] - calls[0] >= 0.9, "redelivered before the engine's delay"


# --- faults ---------------------------------------------------------------------------


async def _stopped(node: RabbitMQNode) -> None:
    await asyncio.to_thread(node.stop)


async def _started(node: RabbitMQNode) -> None:
    await asyncio.to_thread(node.start)


@pytest.mark.fault
async def test_subscription_made_while_the_broker_is_down_receives_once_it_is_back(
    make: Make, rabbitmq_node: RabbitMQNode
) -> None:
    name, inbox = unique("down"), Inbox()
    subscriber = await make("pubsub.rabbitmq", reconnectWaitSeconds="500ms", **KEEP)
    publisher = await make(
        "pubsub.rabbitmq", app_id="pub", reconnectWaitSeconds="500ms", **KEEP,
    )  # fmt: skip
    await _stopped(rabbitmq_node)
    try:
        started = time.monotonic()
        await asyncio.wait_for(subscriber.subscribe(SubscribeRequest(topic=name), inbox), 2)
        assert time.monotonic() - started < 1.5, "subscribe waited for the broker"
        with pytest.raises(ConnectionFailedError):
            await publish(publisher, name, [b"while-down"])
    finally:
        await _started(rabbitmq_node)
    await asyncio.sleep(2)  # upstream gives a pending subscription up after a minute
    deadline = time.monotonic() + TIMEOUT
    while not inbox.acked and time.monotonic() < deadline:
        await publish(publisher, name, [b"after"])
        await asyncio.sleep(0.3)
    assert b"after" in inbox.payloads


@pytest.mark.fault
async def test_a_restart_loses_no_confirmed_message_and_subscriptions_resume(
    make: Make, rabbitmq_node: RabbitMQNode
) -> None:
    name, inbox = unique("restart"), Inbox()
    settings = {"reconnectWaitSeconds": "500ms", "deliveryMode": "2", **KEEP}
    subscriber = await make("pubsub.rabbitmq", app_id="orders", **settings)
    publisher = await make("pubsub.rabbitmq", app_id="pub", **settings)
    await subscriber.subscribe(SubscribeRequest(topic=name), inbox)
    confirmed: list[bytes] = []
    failed = 0
    stop = asyncio.Event()

    async def steady() -> None:
        nonlocal failed
        i = 0
        while not stop.is_set():
            data = f"m-{i}".encode()
            i += 1
            try:
                await publish(publisher, name, [data])
                confirmed.append(data)
            except ConnectionFailedError:
                failed += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(steady())
    await wait_for(lambda: len(confirmed) >= 20, "publishes before the restart")
    await asyncio.to_thread(rabbitmq_node.restart)
    count = len(confirmed)
    await wait_for(lambda: len(confirmed) >= count + 20, "publishes after the restart", 20)
    stop.set()
    await task
    await inbox.wait_until(
        lambda: set(confirmed) <= set(inbox.payloads), 20, "every confirmed message"
    )
    assert failed > 0, "no publish failed while the broker was down"


_SUBSCRIBER = """
import asyncio, sys
from mechakit.components.pubsub.rabbitmq import RabbitMQPubSub
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import SubscribeRequest

url, name, app, out = sys.argv[1:5]

async def main() -> None:
    driver = RabbitMQPubSub()
    await driver.init(ComponentMetadata("fault", "pubsub.rabbitmq", {
        "connectionString": url, "concurrency": "1", "prefetchCount": "5",
        "durable": "true", "deletedWhenUnused": "false"}, app_id=app))
    with open(out, "a", buffering=1) as log:
        async def handle(message) -> None:
            await asyncio.sleep(0.02)
            log.write(message.data.decode() + "\\n")
        await driver.subscribe(SubscribeRequest(topic=name), handle)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.fault
async def test_messages_of_a_killed_subscriber_process_go_to_its_successor(
    make: Make, rabbitmq: BackendInfo, tmp_path: Path, raw_channel: Any
) -> None:
    name, app, handled_file = unique("crash"), unique("app"), tmp_path / "h"
    settings = KEEP
    first = await make("pubsub.rabbitmq", app_id=app, **settings)
    await (await first.subscribe(SubscribeRequest(topic=name), Inbox())).cancel()
    sent = [f"m-{i}" for i in range(100)]
    await publish(first, name, [s.encode() for s in sent[:60]])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBSCRIBER, rabbitmq.values["url"], name, app,
        str(handled_file),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (handled_file.exists() and len(_lines(handled_file)) >= 10):
            assert time.monotonic() < deadline, "the subscriber process handled nothing"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await publish(first, name, [s.encode() for s in sent[60:]])
    by_dead_process = set(_lines(handled_file))
    assert len(by_dead_process) < len(sent)

    successor = await make("pubsub.rabbitmq", app_id=app, **settings)
    inbox = Inbox()
    await successor.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_until(
        lambda: by_dead_process | {m.decode() for m in inbox.payloads} == set(sent),
        TIMEOUT,
        "every message to be handled",
    )
    redelivered = [m for m in inbox.acked if m.delivery_count > 1]
    assert redelivered, "nothing the killed process held came back as a redelivery"


def _lines(path: Path) -> list[str]:
    """Complete lines only: the process may have died in the middle of writing one."""
    return path.read_text().split("\n")[:-1]
