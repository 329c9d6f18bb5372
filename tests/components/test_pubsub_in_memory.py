"""pubsub.in-memory beyond the conformance suite: settings, limits, backlog, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest

from mechakit.components.pubsub.in_memory import InMemoryPubSub, InMemoryPubSubSettings
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata, Subscription
from mechakit.core.errors import (
    NOT_OPEN,
    ComponentNotOpenError,
    InvalidRequestError,
    MetadataError,
)
from mechakit.core.pubsub import (
    BulkPublishEntry,
    BulkPublishRequest,
    DropMessage,
    Message,
    PublishRequest,
    SubscribeRequest,
)
from mechakit.core.registry import default_registry

Factory = Callable[..., Awaitable[InMemoryPubSub]]
TIMEOUT = 5.0
FAST = {"redeliveryInterval": "10ms", "maxRedeliveryInterval": "50ms"}


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    made: list[InMemoryPubSub] = []

    async def build(name: str = "messages", **properties: str) -> InMemoryPubSub:
        pubsub = InMemoryPubSub()
        await pubsub.init(ComponentMetadata(name, "pubsub.in-memory", properties))
        made.append(pubsub)
        return pubsub

    yield build
    for pubsub in made:
        await pubsub.close()


async def publish(pubsub: InMemoryPubSub, topic: str, *datas: bytes) -> None:
    for data in datas:
        await pubsub.publish(PublishRequest(topic=topic, data=data))


def test_registry_builds_the_driver_from_its_type_string() -> None:
    assert isinstance(default_registry().create("pubsub.in-memory"), InMemoryPubSub)


def test_settings_read_dapr_names_aliases_and_durations() -> None:
    settings = InMemoryPubSubSettings.from_metadata(
        {"maxDeliveryCount": "5", "redeliverInterval": "1s", "CONCURRENCY": "4"}, component="x"
    )
    assert settings.max_deliveries == 5
    assert settings.redelivery_interval == timedelta(seconds=1)
    assert settings.concurrency == 4
    assert (settings.dead_letter_topic, settings.backlog_size) == ("", 1000)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("concurrency", "0"),
        ("maxDeliveries", "0"),
        ("backlogSize", "-1"),
        ("redeliveryInterval", "-1s"),
    ],
)
async def test_out_of_range_settings_fail_init_naming_component_and_field(
    make: Factory, name: str, value: str
) -> None:
    with pytest.raises(MetadataError) as info:
        await make(**{name: value})
    assert info.value.field == name
    assert "pubsub.in-memory 'messages'" in str(info.value)


async def test_publishing_before_init_or_after_close_is_refused(make: Factory) -> None:
    with pytest.raises(ComponentNotOpenError) as before:
        await InMemoryPubSub().publish(PublishRequest(topic="t", data=b"x"))
    assert (before.value.reason, before.value.component) == (NOT_OPEN, "InMemoryPubSub")
    pubsub = await make()
    await pubsub.close()
    with pytest.raises(ComponentNotOpenError) as after:
        await publish(pubsub, "t", b"x")
    assert (after.value.reason, after.value.component) == (NOT_OPEN, "pubsub.in-memory 'messages'")
    assert not after.value.retriable


async def test_a_closed_broker_can_be_initialised_again_and_starts_empty(make: Factory) -> None:
    pubsub = await make()
    await publish(pubsub, "kept", b"before close")
    await pubsub.close()
    await pubsub.init(ComponentMetadata("messages", "pubsub.in-memory", {}))
    inbox = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="kept"), inbox)
    await publish(pubsub, "kept", b"after init")
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(0.05)
    assert inbox.payloads == [b"after init"]


async def test_no_more_than_concurrency_handlers_run_at_once(make: Factory) -> None:
    pubsub = await make(concurrency="2")
    running, peak, release = 0, 0, asyncio.Event()

    async def slow(message: Message, seen: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1

    inbox = Inbox(slow)
    await pubsub.subscribe(SubscribeRequest(topic="work"), inbox)
    try:
        await publish(pubsub, "work", *[f"job-{i}".encode() for i in range(6)])
        await inbox.wait_until(lambda: len(inbox.calls) == 2, TIMEOUT, "two running handlers")
        for _ in range(20):
            await asyncio.sleep(0)
        assert (running, len(inbox.calls)) == (2, 2)
    finally:
        release.set()
    await inbox.wait_for_acked(6, TIMEOUT)
    assert peak == 2


async def test_redelivery_counts_deliveries_and_waits_longer_each_time(make: Factory) -> None:
    pubsub = await make(maxDeliveries="3", redeliveryInterval="50ms", maxRedeliveryInterval="1s")
    times: list[float] = []

    async def fail_twice(message: Message, seen: int) -> None:
        times.append(time.monotonic())
        if seen < 3:
            raise RuntimeError("not yet")

    inbox = Inbox(fail_twice)
    await pubsub.subscribe(SubscribeRequest(topic="flaky"), inbox)
    await publish(pubsub, "flaky", b"payload")
    await inbox.wait_for_acked(1, TIMEOUT)
    assert [m.delivery_count for m in inbox.calls] == [1, 2, 3]
    assert len({m.id for m in inbox.calls}) == 1
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    assert first_wait >= 0.045
    assert second_wait >= 0.095


async def test_exhausted_message_goes_to_the_component_dead_letter_topic(make: Factory) -> None:
    pubsub = await make(maxDeliveries="2", deadLetterTopic="poison", **FAST)

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("broken")

    failing, dead = Inbox(always_fail), Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="orders"), failing)
    await pubsub.subscribe(SubscribeRequest(topic="poison"), dead)
    await pubsub.publish(
        PublishRequest(topic="orders", data=b"bad", content_type="text/plain", metadata={"k": "v"})
    )
    await dead.wait_for_acked(1, TIMEOUT)
    assert len(failing.calls) == 2
    letter = dead.acked[0]
    assert (letter.topic, letter.data, letter.content_type) == ("poison", b"bad", "text/plain")
    assert dict(letter.metadata) == {"k": "v"}
    assert letter.id == failing.calls[0].id
    assert letter.delivery_count == 1


async def test_subscription_dead_letter_topic_wins_over_the_component_setting(
    make: Factory,
) -> None:
    pubsub = await make(maxDeliveries="1", deadLetterTopic="component-dlq")

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("broken")

    mine, components = Inbox(), Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="component-dlq"), components)
    await pubsub.subscribe(SubscribeRequest(topic="my-dlq"), mine)
    await pubsub.subscribe(
        SubscribeRequest(topic="orders", dead_letter_topic="my-dlq"), Inbox(always_fail)
    )
    await publish(pubsub, "orders", b"bad")
    await mine.wait_for_acked(1, TIMEOUT)
    assert components.calls == []


async def test_exhausted_message_without_dead_letter_topic_is_dropped_with_an_error_log(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    pubsub = await make(maxDeliveries="2", **FAST)
    done = asyncio.Event()

    async def always_fail(message: Message, seen: int) -> None:
        if seen == 2:
            done.set()
        raise RuntimeError("broken")

    inbox = Inbox(always_fail)
    await pubsub.subscribe(SubscribeRequest(topic="orders"), inbox)
    with caplog.at_level(logging.WARNING, logger="mechakit.pubsub.in-memory"):
        await publish(pubsub, "orders", b"bad")
        await asyncio.wait_for(done.wait(), TIMEOUT)
        await asyncio.sleep(0.1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "pubsub.in-memory 'messages'" in errors[0]
    assert "'orders'" in errors[0]
    assert "dropped" in errors[0]
    assert len(inbox.calls) == 2


async def test_handler_dropping_a_message_is_logged_and_not_retried(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    pubsub = await make(**FAST)

    async def drop(message: Message, seen: int) -> None:
        raise DropMessage("malformed order")

    inbox = Inbox(drop)
    await pubsub.subscribe(SubscribeRequest(topic="orders"), inbox)
    with caplog.at_level(logging.INFO, logger="mechakit.pubsub.in-memory"):
        await publish(pubsub, "orders", b"bad")
        await inbox.wait_until(lambda: len(inbox.calls) == 1, TIMEOUT, "one call")
        await asyncio.sleep(0.1)
    assert len(inbox.calls) == 1
    assert any("malformed order" in r.getMessage() for r in caplog.records)


async def test_messages_published_before_any_subscriber_go_to_the_first_one_only(
    make: Factory,
) -> None:
    pubsub = await make()
    await publish(pubsub, "early", b"one", b"two")
    first, second = Inbox(), Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="early"), first)
    await pubsub.subscribe(SubscribeRequest(topic="early"), second)
    await publish(pubsub, "early", b"three")
    await first.wait_for_acked(3, TIMEOUT)
    await second.wait_for_acked(1, TIMEOUT)
    assert first.payloads == [b"one", b"two", b"three"]
    assert second.payloads == [b"three"]


async def test_full_backlog_keeps_the_newest_messages_and_logs_the_drop(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    pubsub = await make(backlogSize="2")
    with caplog.at_level(logging.WARNING, logger="mechakit.pubsub.in-memory"):
        await publish(pubsub, "early", b"one", b"two", b"three")
    assert any("backlog is full" in r.getMessage() for r in caplog.records)
    inbox = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="early"), inbox)
    await inbox.wait_for_acked(2, TIMEOUT)
    assert inbox.payloads == [b"two", b"three"]


async def test_backlog_size_zero_drops_messages_nobody_subscribes_to(make: Factory) -> None:
    pubsub = await make(backlogSize="0")
    await publish(pubsub, "early", b"lost")
    inbox = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="early"), inbox)
    await publish(pubsub, "early", b"kept")
    await inbox.wait_for_acked(1, TIMEOUT)
    assert inbox.payloads == [b"kept"]


async def test_cancel_returns_only_after_the_running_handler_finished(make: Factory) -> None:
    pubsub = await make()
    release = asyncio.Event()

    async def slow(message: Message, seen: int) -> None:
        await release.wait()

    inbox = Inbox(slow)
    subscription = await pubsub.subscribe(SubscribeRequest(topic="slow"), inbox)
    await publish(pubsub, "slow", b"job")
    await inbox.wait_until(lambda: len(inbox.calls) == 1, TIMEOUT, "the handler to start")
    cancelling = asyncio.create_task(subscription.cancel())
    await asyncio.sleep(0.05)
    assert not cancelling.done()
    assert not subscription.active
    release.set()
    await asyncio.wait_for(cancelling, TIMEOUT)
    assert inbox.payloads == [b"job"]


async def test_unacked_messages_of_the_last_subscription_go_to_the_next_subscriber(
    make: Factory,
) -> None:
    pubsub = await make(concurrency="1", redeliveryInterval="10s")
    release = asyncio.Event()

    async def fail_then_block(message: Message, seen: int) -> None:
        if message.data == b"fails":
            raise RuntimeError("try later")
        await release.wait()

    inbox = Inbox(fail_then_block)
    subscription = await pubsub.subscribe(SubscribeRequest(topic="jobs"), inbox)
    await publish(pubsub, "jobs", b"fails", b"running", b"queued")
    await inbox.wait_until(lambda: len(inbox.calls) == 2, TIMEOUT, "the second job to start")
    cancelling = asyncio.create_task(subscription.cancel())
    release.set()
    await asyncio.wait_for(cancelling, TIMEOUT)
    assert inbox.payloads == [b"running"]

    successor = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="jobs"), successor)
    await successor.wait_for_acked(2, TIMEOUT)
    assert successor.payloads == [b"fails", b"queued"]
    assert [m.delivery_count for m in successor.acked] == [2, 1]


async def test_handler_may_cancel_its_own_subscription(make: Factory) -> None:
    pubsub = await make()
    subscriptions: list[Subscription] = []

    async def stop_after_first(message: Message, seen: int) -> None:
        await subscriptions[0].cancel()

    inbox = Inbox(stop_after_first)
    subscriptions.append(await pubsub.subscribe(SubscribeRequest(topic="once"), inbox))
    await publish(pubsub, "once", b"first")
    await inbox.wait_for_acked(1, TIMEOUT)
    assert not subscriptions[0].active


async def test_close_cancels_every_subscription_and_is_idempotent(make: Factory) -> None:
    pubsub = await make()
    first = await pubsub.subscribe(SubscribeRequest(topic="a"), Inbox())
    second = await pubsub.subscribe(SubscribeRequest(topic="b"), Inbox())
    await asyncio.wait_for(pubsub.close(), TIMEOUT)
    await pubsub.close()
    assert not first.active
    assert not second.active
    with pytest.raises(ComponentNotOpenError):
        await pubsub.subscribe(SubscribeRequest(topic="a"), Inbox())


async def test_close_bounded_by_a_timeout_cancels_a_stuck_handler(make: Factory) -> None:
    pubsub = await make()
    cancelled = asyncio.Event()

    async def stuck(message: Message, seen: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    inbox = Inbox(stuck)
    subscription = await pubsub.subscribe(SubscribeRequest(topic="stuck"), inbox)
    await publish(pubsub, "stuck", b"job")
    await inbox.wait_until(lambda: len(inbox.calls) == 1, TIMEOUT, "the handler to start")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pubsub.close(), 0.05)
    assert cancelled.is_set()
    assert not subscription.active
    await asyncio.wait_for(pubsub.close(), TIMEOUT)


async def test_each_instance_is_its_own_broker_even_under_the_same_name(make: Factory) -> None:
    publisher, other = await make("shared-name"), await make("shared-name")
    mine, theirs = Inbox(), Inbox()
    await publisher.subscribe(SubscribeRequest(topic="news"), mine)
    await other.subscribe(SubscribeRequest(topic="news"), theirs)
    await publish(publisher, "news", b"hello")
    await mine.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(0.05)
    assert theirs.calls == []


async def test_invalid_ttl_error_names_the_component(make: Factory) -> None:
    pubsub = await make()
    with pytest.raises(InvalidRequestError) as info:
        await pubsub.publish(PublishRequest(topic="t", data=b"x", metadata={"ttlInSeconds": "0"}))
    assert info.value.component == "pubsub.in-memory 'messages'"
    assert info.value.field == "ttlInSeconds"


async def test_ttl_of_minus_one_never_expires(make: Factory) -> None:
    pubsub = await make()
    await pubsub.publish(PublishRequest(topic="t", data=b"x", metadata={"ttlInSeconds": "-1"}))
    inbox = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="t"), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)


async def test_bulk_publish_reports_bad_entries_and_delivers_the_rest_in_order(
    make: Factory,
) -> None:
    pubsub = await make()
    inbox = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="bulk"), inbox)
    response = await pubsub.bulk_publish(
        BulkPublishRequest(
            topic="bulk",
            metadata={"source": "batch"},
            entries=[
                BulkPublishEntry("1", b"first"),
                BulkPublishEntry("2", b"bad", metadata={"ttlInSeconds": "never"}),
                BulkPublishEntry("3", b"third", metadata={"source": "entry"}),
            ],
        )
    )
    assert [f.entry_id for f in response.failed] == ["2"]
    assert "ttlInSeconds" in response.failed[0].error
    await inbox.wait_for_acked(2, TIMEOUT)
    assert inbox.payloads == [b"first", b"third"]
    assert [m.metadata["source"] for m in inbox.acked] == ["batch", "entry"]


async def test_delivered_metadata_cannot_be_changed_by_a_handler(make: Factory) -> None:
    pubsub = await make()
    inbox = Inbox()
    await pubsub.subscribe(SubscribeRequest(topic="t"), inbox)
    await pubsub.publish(PublishRequest(topic="t", data=b"x", metadata={"k": "v"}))
    await inbox.wait_for_acked(1, TIMEOUT)
    with pytest.raises(TypeError):
        inbox.acked[0].metadata["k"] = "changed"  # type: ignore[index]
