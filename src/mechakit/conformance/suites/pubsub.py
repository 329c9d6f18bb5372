"""Pub/sub conformance: delivery, metadata, redelivery, fan-out, cancelling, dead letters.

Every test uses fresh topic names, so targets on a shared broker do not see each other's
messages. Waits are bounded; negative checks ("nothing else arrives") watch for a quiet
period. Options (``options:`` of the target):

- ``receive_timeout`` (seconds, default 10): how long a message may take to arrive.
- ``quiet_period`` (seconds, default 1): how long to watch that nothing more arrives;
  must exceed the target's redelivery interval.
- ``ordered`` (default false): messages of one publisher on one topic arrive in order.
- ``supports_dead_letter`` (default true): exhausted messages reach the dead-letter topic
  (configure the target's metadata so that happens within ``receive_timeout``).
- ``counts_deliveries`` (default true): ``Message.delivery_count`` grows on redelivery.
- ``shared_broker`` (default false): two components of the target reach the same broker,
  so a second subscriber is a second component built with ``second_subscriber_metadata``
  (default ``{consumerID: conformance-second}``); otherwise it is a second ``subscribe``
  on the same component.
- ``subscribe_delay`` (seconds, default 0): wait after subscribing before publishing, for
  brokers whose subscriptions take effect asynchronously.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mechakit.conformance import requires
from mechakit.conformance.targets import Target
from mechakit.core.component import Subscription
from mechakit.core.errors import InvalidRequestError
from mechakit.core.pubsub import (
    BulkPublishEntry,
    BulkPublisher,
    BulkPublishRequest,
    DropMessage,
    Message,
    PublishRequest,
    PubSub,
    PubSubFeature,
    SubscribeRequest,
)

pytestmark = pytest.mark.asyncio

Behaviour = Callable[[Message, int], Awaitable[None]]
"""What a test handler does with a message, given how often that payload was seen."""


@dataclass(frozen=True)
class PubSubOptions:
    receive_timeout: float = 10.0
    quiet_period: float = 1.0
    ordered: bool = False
    supports_dead_letter: bool = True
    counts_deliveries: bool = True
    shared_broker: bool = False
    second_subscriber_metadata: tuple[tuple[str, str], ...] = (
        ("consumerID", "conformance-second"),
    )
    subscribe_delay: float = 0.0

    @classmethod
    def of(cls, target: Target) -> PubSubOptions:
        o = target.options
        second = o.get("second_subscriber_metadata") or dict(cls.second_subscriber_metadata)
        return cls(
            receive_timeout=float(o.get("receive_timeout", cls.receive_timeout)),
            quiet_period=float(o.get("quiet_period", cls.quiet_period)),
            ordered=bool(o.get("ordered", cls.ordered)),
            supports_dead_letter=bool(o.get("supports_dead_letter", cls.supports_dead_letter)),
            counts_deliveries=bool(o.get("counts_deliveries", cls.counts_deliveries)),
            shared_broker=bool(o.get("shared_broker", cls.shared_broker)),
            second_subscriber_metadata=tuple((str(k), str(v)) for k, v in second.items()),
            subscribe_delay=float(o.get("subscribe_delay", cls.subscribe_delay)),
        )


class Inbox:
    """A handler that records every call and lets a test wait, boundedly, for what it expects."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.calls: list[Message] = []
        self.acked: list[Message] = []
        self._behaviour = behaviour
        self._changed = asyncio.Condition()

    async def __call__(self, message: Message) -> None:
        seen = sum(1 for m in self.calls if m.data == message.data)
        self.calls.append(message)
        await self._notify()
        try:
            if self._behaviour is not None:
                await self._behaviour(message, seen + 1)
            self.acked.append(message)
        finally:
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @property
    def payloads(self) -> list[bytes]:
        return [m.data for m in self.acked]

    async def wait_until(self, done: Callable[[], bool], within: float, what: str) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(done)

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            pytest.fail(
                f"timed out after {within}s waiting for {what}; "
                f"handled {[m.data for m in self.calls]}, acked {self.payloads}"
            )

    async def wait_for_acked(self, count: int, within: float) -> None:
        await self.wait_until(lambda: len(self.acked) >= count, within, f"{count} message(s)")


def unique_topic(label: str) -> str:
    return f"conformance-{label}-{uuid.uuid4().hex[:10]}"


def payloads(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(count)]


class PubSubSuite:
    category = "pubsub"
    pytestmark = [pytest.mark.asyncio]  # on the class: subclasses in other modules inherit it

    @pytest.fixture
    def pubsub_options(self, conformance_target: Target) -> PubSubOptions:
        return PubSubOptions.of(conformance_target)

    async def _subscribe(
        self, component: PubSub[Any], topic: str, inbox: Inbox, options: PubSubOptions, **kw: Any
    ) -> Subscription:
        subscription = await component.subscribe(SubscribeRequest(topic=topic, **kw), inbox)
        if options.subscribe_delay:
            await asyncio.sleep(options.subscribe_delay)
        return subscription

    async def _second_subscriber(
        self, component: PubSub[Any], component_factory: Any, options: PubSubOptions
    ) -> PubSub[Any]:
        if not options.shared_broker:
            return component
        second: PubSub[Any] = await component_factory(
            name="conformance-second", **dict(options.second_subscriber_metadata)
        )
        return second

    async def _publish_all(self, component: PubSub[Any], topic: str, datas: list[bytes]) -> None:
        for data in datas:
            await component.publish(PublishRequest(topic=topic, data=data))

    async def _quiet(self, options: PubSubOptions) -> None:
        """Gives stray or redelivered messages the chance to show up (a negative check)."""
        await asyncio.sleep(options.quiet_period)

    # --- declared features ------------------------------------------------------------

    async def test_features_are_exactly_the_declared_ones(
        self, component: PubSub[Any], expected_features: frozenset[str]
    ) -> None:
        assert frozenset(str(f) for f in component.features()) == expected_features

    async def test_bulk_publish_feature_matches_native_bulk_publisher(
        self, component: PubSub[Any], expected_features: frozenset[str]
    ) -> None:
        assert isinstance(component, BulkPublisher) == ("BULK_PUBLISH" in expected_features)

    # --- delivery ---------------------------------------------------------------------

    async def test_every_published_message_is_received(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        topic, inbox = unique_topic("all"), Inbox()
        sent = payloads("message", 10)
        await self._subscribe(component, topic, inbox, pubsub_options)
        await self._publish_all(component, topic, sent)
        await inbox.wait_for_acked(len(sent), pubsub_options.receive_timeout)
        if pubsub_options.ordered:
            assert inbox.payloads == sent
        else:
            assert sorted(inbox.payloads) == sorted(sent)
        assert all(m.topic == topic for m in inbox.acked)

    async def test_metadata_and_content_type_reach_the_subscriber(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        topic, inbox = unique_topic("meta"), Inbox()
        await self._subscribe(component, topic, inbox, pubsub_options)
        await component.publish(
            PublishRequest(
                topic=topic,
                data=b'{"order": 7}',
                content_type="application/json",
                metadata={"conformance-key": "conformance-value"},
            )
        )
        await inbox.wait_for_acked(1, pubsub_options.receive_timeout)
        message = inbox.acked[0]
        assert message.data == b'{"order": 7}'
        assert message.content_type == "application/json"
        assert message.metadata.get("conformance-key") == "conformance-value"

    async def test_failed_handler_gets_the_message_again_until_it_succeeds(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        async def fail_first(message: Message, seen: int) -> None:
            if seen == 1:
                raise RuntimeError("conformance: first delivery fails")

        topic, inbox = unique_topic("retry"), Inbox(fail_first)
        await self._subscribe(component, topic, inbox, pubsub_options)
        await component.publish(PublishRequest(topic=topic, data=b"retry-me"))
        await inbox.wait_for_acked(1, pubsub_options.receive_timeout)
        assert [m.data for m in inbox.calls] == [b"retry-me", b"retry-me"]
        if pubsub_options.counts_deliveries:
            assert [m.delivery_count for m in inbox.calls] == [1, 2]
        await self._quiet(pubsub_options)
        assert len(inbox.calls) == 2, "a message was delivered again after its handler succeeded"

    async def test_dropped_message_is_not_delivered_again(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        async def drop_poison(message: Message, seen: int) -> None:
            if message.data == b"poison":
                raise DropMessage("conformance: not wanted")

        topic, inbox = unique_topic("drop"), Inbox(drop_poison)
        await self._subscribe(component, topic, inbox, pubsub_options)
        await self._publish_all(component, topic, [b"poison", b"fine"])
        await inbox.wait_until(
            lambda: b"fine" in inbox.payloads, pubsub_options.receive_timeout, "b'fine'"
        )
        await self._quiet(pubsub_options)
        assert [m.data for m in inbox.calls].count(b"poison") == 1
        assert inbox.payloads == [b"fine"]

    async def test_each_topic_sees_only_its_own_messages(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        topic_a, topic_b = unique_topic("a"), unique_topic("b")
        inbox_a, inbox_b = Inbox(), Inbox()
        await self._subscribe(component, topic_a, inbox_a, pubsub_options)
        await self._subscribe(component, topic_b, inbox_b, pubsub_options)
        sent_a, sent_b = payloads("for-a", 3), payloads("for-b", 3)
        for data_a, data_b in zip(sent_a, sent_b, strict=True):
            await component.publish(PublishRequest(topic=topic_a, data=data_a))
            await component.publish(PublishRequest(topic=topic_b, data=data_b))
        await inbox_a.wait_for_acked(3, pubsub_options.receive_timeout)
        await inbox_b.wait_for_acked(3, pubsub_options.receive_timeout)
        await self._quiet(pubsub_options)
        assert sorted(inbox_a.payloads) == sent_a
        assert sorted(inbox_b.payloads) == sent_b

    async def test_two_subscriptions_on_one_topic_each_get_every_message(
        self, component: PubSub[Any], component_factory: Any, pubsub_options: PubSubOptions
    ) -> None:
        topic, first, second = unique_topic("fanout"), Inbox(), Inbox()
        other = await self._second_subscriber(component, component_factory, pubsub_options)
        await self._subscribe(component, topic, first, pubsub_options)
        await self._subscribe(other, topic, second, pubsub_options)
        sent = payloads("fan", 5)
        await self._publish_all(component, topic, sent)
        await first.wait_for_acked(5, pubsub_options.receive_timeout)
        await second.wait_for_acked(5, pubsub_options.receive_timeout)
        assert sorted(first.payloads) == sorted(second.payloads) == sent

    async def test_cancelled_subscription_receives_nothing_while_another_keeps_running(
        self, component: PubSub[Any], component_factory: Any, pubsub_options: PubSubOptions
    ) -> None:
        topic, kept, cancelled = unique_topic("cancel"), Inbox(), Inbox()
        other = await self._second_subscriber(component, component_factory, pubsub_options)
        await self._subscribe(component, topic, kept, pubsub_options)
        subscription = await self._subscribe(other, topic, cancelled, pubsub_options)
        await component.publish(PublishRequest(topic=topic, data=b"before"))
        await kept.wait_for_acked(1, pubsub_options.receive_timeout)
        await cancelled.wait_for_acked(1, pubsub_options.receive_timeout)

        await asyncio.wait_for(subscription.cancel(), pubsub_options.receive_timeout)
        assert not subscription.active
        await subscription.cancel()
        after = payloads("after", 3)
        await self._publish_all(component, topic, after)
        await kept.wait_for_acked(4, pubsub_options.receive_timeout)
        await self._quiet(pubsub_options)
        assert sorted(kept.payloads) == sorted([b"before", *after])
        assert [m.data for m in cancelled.calls] == [b"before"]

    async def test_bulk_publish_delivers_every_entry(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        topic, inbox = unique_topic("bulk"), Inbox()
        sent = payloads("bulk", 5)
        await self._subscribe(component, topic, inbox, pubsub_options)
        response = await component.bulk_publish(
            BulkPublishRequest(
                topic=topic,
                entries=[
                    BulkPublishEntry(entry_id=str(i), data=d, content_type="text/plain")
                    for i, d in enumerate(sent)
                ],
            )
        )
        assert list(response.failed) == []
        await inbox.wait_for_acked(len(sent), pubsub_options.receive_timeout)
        assert sorted(inbox.payloads) == sent
        assert {m.content_type for m in inbox.acked} == {"text/plain"}

    async def test_exhausted_message_goes_to_the_dead_letter_topic(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        if not pubsub_options.supports_dead_letter:
            pytest.skip("the target sets supports_dead_letter: false")

        async def always_fail(message: Message, seen: int) -> None:
            raise RuntimeError("conformance: always fails")

        topic, dead_letter_topic = unique_topic("poisoned"), unique_topic("dead")
        failing, dead = Inbox(always_fail), Inbox()
        await self._subscribe(component, dead_letter_topic, dead, pubsub_options)
        await self._subscribe(
            component, topic, failing, pubsub_options, dead_letter_topic=dead_letter_topic
        )
        await component.publish(PublishRequest(topic=topic, data=b"poison"))
        await dead.wait_for_acked(1, pubsub_options.receive_timeout)
        assert dead.payloads == [b"poison"]
        assert len(failing.calls) >= 1
        calls = len(failing.calls)
        await self._quiet(pubsub_options)
        assert len(failing.calls) == calls, "a dead-lettered message was delivered again"

    # --- MESSAGE_TTL ------------------------------------------------------------------

    @requires(PubSubFeature.MESSAGE_TTL)
    async def test_message_expired_before_delivery_never_arrives(
        self, component: PubSub[Any], pubsub_options: PubSubOptions
    ) -> None:
        topic, inbox = unique_topic("ttl"), Inbox()
        # Subscribe once first so that brokers with durable subscriptions retain what follows.
        await (await self._subscribe(component, topic, Inbox(), pubsub_options)).cancel()
        await component.publish(
            PublishRequest(topic=topic, data=b"short-lived", metadata={"ttlInSeconds": "1"})
        )
        await asyncio.sleep(2)
        await component.publish(PublishRequest(topic=topic, data=b"long-lived"))
        await self._subscribe(component, topic, inbox, pubsub_options)
        await inbox.wait_until(
            lambda: b"long-lived" in inbox.payloads,
            pubsub_options.receive_timeout,
            "b'long-lived'",
        )
        await self._quiet(pubsub_options)
        assert b"short-lived" not in [m.data for m in inbox.calls]

    @requires(PubSubFeature.MESSAGE_TTL)
    async def test_invalid_ttl_is_rejected(self, component: PubSub[Any]) -> None:
        with pytest.raises(InvalidRequestError, match="ttlInSeconds"):
            await component.publish(
                PublishRequest(
                    topic=unique_topic("bad-ttl"), data=b"x", metadata={"ttlInSeconds": "soon"}
                )
            )
