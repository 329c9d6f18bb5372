"""pubsub.azure.servicebus.topics / .queues: what is checked without a broker (metadata
mapping both ways, connection settings and their error wording, the delivery policy, the
receiver's lock-loss and redelivery handling through a fake receiver that injects
failures), and what needs one (competing consumers, fan-out, a handler outlasting its
lock), which runs only where ``MECHAKIT_TEST_SERVICEBUS_CONNECTION_STRING`` names a
namespace and is skipped with that reason otherwise, as on this project's CI.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.pubsub.azure_servicebus import (
    ServiceBusQueuesPubSub,
    ServiceBusSettings,
    ServiceBusTopicsPubSub,
)
from mechakit.components.pubsub.azure_servicebus.component import ReceiverTransport
from mechakit.components.pubsub.azure_servicebus.messages import message_fields, received_message
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    BulkError,
    InvalidRequestError,
    MetadataError,
    MissingDependencyError,
)
from mechakit.core.pubsub import (
    BulkPublisher,
    Message,
    PublishRequest,
    PubSubFeature,
    SubscribeRequest,
)
from mechakit.core.registry import default_registry

LABEL = "pubsub.azure.servicebus.topics 'sb'"
SECRET = "c2VjcmV0LWtleS12YWx1ZQ=="
CONNECTION = (
    "Endpoint=sb://myns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
    f"SharedAccessKey={SECRET}"
)


def settings(**metadata: str) -> ServiceBusSettings:
    return ServiceBusSettings.from_metadata(metadata, component=LABEL)


async def init(cls: type[Any] = ServiceBusTopicsPubSub, app_id: str = "", **metadata: str) -> Any:
    driver = cls()
    kind = "topics" if cls is ServiceBusTopicsPubSub else "queues"
    await driver.init(
        ComponentMetadata(
            name="sb", type=f"pubsub.azure.servicebus.{kind}", properties=metadata, app_id=app_id
        )
    )
    return driver


# --- registration and features --------------------------------------------------------


def test_registered_as_alpha_with_bulk_publish_and_message_ttl() -> None:
    registry = default_registry()
    for name, alias, cls in (
        ("pubsub.azure.servicebus.topics", "pubsub.azure.servicebus", ServiceBusTopicsPubSub),
        ("pubsub.azure.servicebus.queues", "pubsub.azure.servicebusqueues", ServiceBusQueuesPubSub),
    ):
        spec = registry.resolve(name)
        assert spec.status == "alpha" and "not run against a broker" in spec.description
        assert registry.resolve(alias).load() is cls
        driver = registry.create(name)
        assert isinstance(driver, BulkPublisher)
        assert set(driver.features()) == {PubSubFeature.MESSAGE_TTL, PubSubFeature.BULK_PUBLISH}


# --- connection settings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wording"),
    [
        ("SharedAccessKeyName=a;SharedAccessKey=b", "has no Endpoint=sb://"),
        ("Endpoint=sb://myns.servicebus.windows.net/", "has no SharedAccessKeyName"),
        (CONNECTION + ";EntityPath=orders", "names an EntityPath"),
    ],
)
def test_malformed_connection_strings_are_refused_without_showing_the_key(
    value: str, wording: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        settings(connectionString=value).endpoint(LABEL)
    error = caught.value
    assert error.field == "connectionString" and wording in str(error) and LABEL in str(error)
    assert SECRET not in str(error)


def test_connection_string_forms_that_are_accepted() -> None:
    assert settings(connectionString=CONNECTION).endpoint(LABEL) == ("connection", CONNECTION)
    emulator = (
        "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
    )
    assert settings(connectionString=emulator).endpoint(LABEL)[0] == "connection"
    sas = "Endpoint=sb://myns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x"
    assert settings(connectionString=sas).endpoint(LABEL)[0] == "connection"


def test_namespace_name_is_completed_and_checked() -> None:
    assert settings(namespaceName="myns").endpoint(LABEL) == (
        "namespace",
        "myns.servicebus.windows.net",
    )
    assert settings(namespaceName="sb://myns.servicebus.chinacloudapi.cn/").endpoint(LABEL) == (
        "namespace",
        "myns.servicebus.chinacloudapi.cn",
    )
    with pytest.raises(MetadataError, match="not a namespace name") as caught:
        settings(namespaceName="Endpoint=sb://x;").endpoint(LABEL)
    assert caught.value.field == "namespaceName"


def test_neither_or_both_connection_settings_are_refused() -> None:
    with pytest.raises(MetadataError, match="'connectionString' or 'namespaceName' is required"):
        settings().endpoint(LABEL)
    with pytest.raises(MetadataError, match="not both") as caught:
        settings(connectionString=CONNECTION, namespaceName="myns").endpoint(LABEL)
    assert caught.value.field == "namespaceName"


async def test_init_reports_the_bad_field_and_needs_no_broker_for_good_settings() -> None:
    with pytest.raises(MetadataError, match="connectionString has no Endpoint"):
        await init(connectionString="nonsense")
    driver = await init(connectionString=CONNECTION, app_id="")  # clients connect lazily
    try:
        with pytest.raises(MetadataError, match="consumerID") as caught:
            await driver.subscribe(SubscribeRequest(topic="orders"), Inbox())
        assert caught.value.field == "consumerID"
    finally:
        await driver.close()


async def test_namespace_name_without_azure_identity_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)
    with pytest.raises(MissingDependencyError, match="pip install azure-identity") as caught:
        await init(namespaceName="myns")
    assert caught.value.field == "namespaceName"


def test_upstream_names_defaults_and_the_delivery_policy() -> None:
    s = settings(
        connectionString=CONNECTION,
        maxActiveMessages="50",
        maxDeliveryCount="4",
        lockRenewalInSec="15",
        publishInitialRetryInternalInMs="250",  # upstream's old misspelling
    )
    assert (s.max_active_messages, s.max_deliveries, s.handler_timeout_in_sec) == (50, 4, 60)
    assert s.publish_initial_retry_interval_in_ms == 250
    policy = s.delivery_policy()
    assert (policy.concurrency, policy.prefetch, policy.max_deliveries) == (50, 50, 4)
    assert not policy.drop_exhausted  # the broker's own dead-letter queue takes over
    assert settings(maxConcurrentHandlers="3").delivery_policy().concurrency == 3
    with pytest.raises(MetadataError, match="autoDeleteOnIdleInSec"):
        settings(autoDeleteOnIdleInSec="60")
    with pytest.raises(MetadataError, match="defaultMessageTimeToLiveInSec"):
        settings(defaultMessageTimeToLiveInSec="0")


# --- message metadata -----------------------------------------------------------------


def test_publish_metadata_maps_to_message_properties() -> None:
    request = PublishRequest(
        topic="orders",
        data=b"{}",
        content_type="application/json",
        metadata={
            "MessageId": "m-1",
            "correlationID": "c-1",
            "SessionId": "s-1",
            "Label": "created",
            "ReplyTo": "replies",
            "To": "billing",
            "PartitionKey": "s-1",
            "ScheduledEnqueueTimeUtc": "2030-01-02T03:04:05Z",
            "ttlInSeconds": "30",
            "tenant": "acme",
        },
    )
    fields = message_fields(request, component=LABEL)
    assert fields == {
        "body": b"{}",
        "message_id": "m-1",
        "correlation_id": "c-1",
        "session_id": "s-1",
        "subject": "created",
        "reply_to": "replies",
        "to": "billing",
        "partition_key": "s-1",
        "scheduled_enqueue_time_utc": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        "time_to_live": timedelta(seconds=30),
        "content_type": "application/json",
        "application_properties": {"tenant": "acme"},
    }
    from azure.servicebus import ServiceBusMessage

    ServiceBusMessage(**fields)  # the SDK accepts every one of them


def test_bad_ttl_or_schedule_names_the_component_topic_and_field() -> None:
    for metadata, field in (
        ({"ttlInSeconds": "soon"}, "ttlInSeconds"),
        ({"ScheduledEnqueueTimeUtc": "tomorrow"}, "ScheduledEnqueueTimeUtc"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            message_fields(
                PublishRequest(topic="orders", data=b"x", metadata=metadata), component=LABEL
            )
        assert caught.value.field == field and LABEL in str(caught.value)


def received(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "body": iter([b"he", b"llo"]),
        "application_properties": {b"tenant": b"acme"},
        "message_id": "m-1",
        "correlation_id": "c-1",
        "session_id": None,
        "subject": "created",
        "reply_to": None,
        "to": None,
        "partition_key": None,
        "reply_to_session_id": None,
        "content_type": "text/plain",
        "delivery_count": 2,
        "enqueued_time_utc": datetime(2030, 1, 1, tzinfo=UTC),
        "locked_until_utc": None,
        "sequence_number": 42,
    }
    base.update(fields)
    return SimpleNamespace(**base)


def test_received_message_maps_back_as_upstream_does() -> None:
    message = received_message("orders", received())
    assert (message.data, message.content_type, message.id) == (b"hello", "text/plain", "m-1")
    assert message.delivery_count == 2
    assert message.metadata["tenant"] == "acme"
    assert message.metadata["metadata.CorrelationId"] == "c-1"
    assert message.metadata["metadata.Label"] == "created"
    assert message.metadata["metadata.SequenceNumber"] == "42"
    assert message.metadata["metadata.DeliveryCount"] == "2"
    assert "metadata.SessionId" not in message.metadata


# --- the receiver, with failures injected by a fake ---------------------------------


class FakeReceiver:
    """Records settlements; ``fail_complete`` makes completing those message ids fail."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.completed: list[Any] = []
        self.abandoned: list[Any] = []
        self.fail_complete: set[str] = set()

    async def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Any]:
        return self.batches.pop(0) if self.batches else []

    async def complete_message(self, msg: Any) -> None:
        if msg.message_id in self.fail_complete:
            raise RuntimeError("MessageLockLostError: the lock was lost")
        self.completed.append(msg)

    async def abandon_message(self, msg: Any) -> None:
        self.abandoned.append(msg)

    async def close(self) -> None:
        return None


class RecordingRenewer:
    def __init__(self) -> None:
        self.registered: list[Any] = []

    def register(self, receiver: Any, msg: Any) -> None:
        self.registered.append(msg)

    async def close(self) -> None:
        return None


@pytest_asyncio.fixture
async def transport() -> AsyncIterator[tuple[ReceiverTransport, FakeReceiver, RecordingRenewer]]:
    driver = await init(connectionString=CONNECTION, app_id="app", disableEntityManagement="true")
    receiver, renewer = FakeReceiver(), RecordingRenewer()
    t = ReceiverTransport(driver, receiver, "orders")
    t._renewer = renewer  # type: ignore[assignment]
    yield t, receiver, renewer
    await t.close()
    await driver.close()


async def test_every_received_message_has_its_lock_renewed(transport: Any) -> None:
    t, receiver, renewer = transport
    first, second = received(message_id="a"), received(message_id="b")
    receiver.batches.append([first, second])
    deliveries = await t.receive(10)
    assert [d.message.id for d in deliveries] == ["a", "b"]
    assert renewer.registered == [first, second]


async def test_a_lost_lock_is_logged_and_the_redelivered_copy_is_the_one_completed(
    transport: Any, caplog: pytest.LogCaptureFixture
) -> None:
    t, receiver, _renewer = transport
    old = received(message_id="a")
    receiver.batches.append([old])
    [delivery] = await t.receive(10)
    with caplog.at_level(logging.WARNING):
        await t.lock_lost(old, RuntimeError("renew failed"))
    assert "could not renew the lock of message a" in caplog.text and "renew failed" in caplog.text
    assert t.lost == {"a"}
    new = received(message_id="a", delivery_count=3)
    receiver.batches.append([new])
    assert await t.receive(10) == []  # not handed out twice: the handler still runs
    await t.ack([delivery])
    assert receiver.completed == [new] and t.lost == frozenset()


async def test_failed_completes_are_reported_per_delivery(transport: Any) -> None:
    t, receiver, _renewer = transport
    receiver.batches.append([received(message_id="a"), received(message_id="b")])
    deliveries = await t.receive(10)
    receiver.fail_complete = {"b"}
    with pytest.raises(BulkError) as caught:
        await t.ack(deliveries)
    assert set(caught.value.errors) == {"b"}
    assert [m.message_id for m in receiver.completed] == ["a"]


async def test_a_failed_message_is_held_for_the_delay_then_abandoned(transport: Any) -> None:
    t, receiver, _renewer = transport
    receiver.batches.append([received(message_id="a")])
    [delivery] = await t.receive(10)
    await t.retry_later(delivery, 0.3)
    await asyncio.sleep(0.1)
    assert receiver.abandoned == []  # still locked (and renewed): nobody else gets it yet
    await asyncio.sleep(0.4)
    assert [m.message_id for m in receiver.abandoned] == ["a"]


async def test_closing_abandons_what_waits_for_redelivery_at_once(transport: Any) -> None:
    t, receiver, _renewer = transport
    receiver.batches.append([received(message_id="a")])
    [delivery] = await t.receive(10)
    await t.retry_later(delivery, 60)
    await t.close()
    assert [m.message_id for m in receiver.abandoned] == ["a"]


async def test_handler_timeout_fails_a_handler_that_runs_too_long() -> None:
    driver = await init(connectionString=CONNECTION, app_id="app", handlerTimeoutInSec="1")
    try:

        async def forever(message: Message) -> None:
            await asyncio.sleep(10)

        with pytest.raises(TimeoutError, match="longer than 1s"):
            await driver._bounded(forever)(Message(topic="t", data=b""))
    finally:
        await driver.close()


# --- against a broker (skipped here: no Service Bus emulator runs on this machine) -----

Make = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def namespace() -> Iterator[BackendInfo]:
    try:
        info = provision("azure-servicebus")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest_asyncio.fixture
async def make(namespace: BackendInfo) -> AsyncIterator[Make]:
    made: list[Any] = []

    async def build(cls: type[Any] = ServiceBusTopicsPubSub, app_id: str = "app", **md: str) -> Any:
        driver = await init(
            cls,
            app_id=app_id,
            connectionString=namespace.values["connection_string"],
            autoDeleteOnIdleInSec="300",
            **md,
        )
        made.append(driver)
        return driver

    yield build
    for driver in reversed(made):
        await driver.close()


def topic(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:8]}"


async def test_instances_of_one_app_id_share_and_app_ids_fan_out(make: Make) -> None:
    name = topic("share")
    one, two, other = await make(app_id="a"), await make(app_id="a"), await make(app_id="b")
    first, second, third = Inbox(), Inbox(), Inbox()
    for driver, inbox in ((one, first), (two, second), (other, third)):
        await driver.subscribe(SubscribeRequest(topic=name), inbox)
    sent = [f"m-{i}".encode() for i in range(20)]
    for data in sent:
        await one.publish(PublishRequest(topic=name, data=data))
    await third.wait_for_acked(20, 30)
    await first.wait_until(lambda: len(first.acked) + len(second.acked) >= 20, 30, "20 messages")
    assert sorted(first.payloads + second.payloads) == sorted(third.payloads) == sorted(sent)


async def test_a_handler_longer_than_the_lock_is_not_redelivered_meanwhile(make: Make) -> None:
    async def slow(message: Message, seen: int) -> None:
        await asyncio.sleep(20)

    name, first, second = topic("lock"), Inbox(slow), Inbox(slow)
    one = await make(app_id="lock", lockDurationInSec="5", handlerTimeoutInSec="0")
    two = await make(app_id="lock", lockDurationInSec="5", handlerTimeoutInSec="0")
    await one.subscribe(SubscribeRequest(topic=name), first)
    await two.subscribe(SubscribeRequest(topic=name), second)
    await one.publish(PublishRequest(topic=name, data=b"long"))
    await first.wait_until(lambda: len(first.acked) + len(second.acked) >= 1, 40, "b'long'")
    assert len(first.calls) + len(second.calls) == 1
