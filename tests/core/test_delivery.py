"""The pub/sub delivery engine over a fake transport: the rules every broker driver shares.

The fake records what the engine asks of it and fails on demand; real brokers are tested
in tests/components/test_pubsub_*.py and the conformance suite.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from mechakit.core.component import ComponentMetadata, Subscription
from mechakit.core.delivery import (
    DeliveryEngine,
    DeliveryPolicy,
    DeliverySettings,
    SubscriptionEngines,
)
from mechakit.core.errors import BulkError, ComponentError, ConnectionFailedError
from mechakit.core.pubsub import (
    Delivery,
    DropMessage,
    Handler,
    Message,
    PublishRequest,
    PubSub,
    SubscribeRequest,
    Transport,
)

LABEL = "pubsub.fake 'events'"
GUARD = 5.0
"""Bounds every wait, so a broken engine fails the test instead of hanging it."""


class FakeTransport(Transport):
    source = "topic 'orders'"

    def __init__(self) -> None:
        self.waiting: asyncio.Queue[Delivery] = asyncio.Queue()
        self.asked: list[int] = []
        self.acks: list[list[str]] = []
        self.retries: list[tuple[str, float]] = []
        self.dead_letters: list[tuple[str, str]] = []
        self.released: list[str] = []
        self.events: list[str] = []
        self.closed = False
        self.receive_errors: list[Exception] = []
        self.ack_error: Exception | None = None
        self.dead_letter_error: Exception | None = None
        self.ack_gate: asyncio.Event | None = None
        self._changed = asyncio.Condition()

    def put(self, *deliveries: Delivery) -> None:
        for delivery in deliveries:
            self.waiting.put_nowait(delivery)

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        self.asked.append(max_count)
        if self.receive_errors:
            await self._record("receive failed")
            raise self.receive_errors.pop(0)
        batch = [await self.waiting.get()]
        while len(batch) < max_count and not self.waiting.empty():
            batch.append(self.waiting.get_nowait())
        return batch

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if self.ack_gate is not None:
            await self.ack_gate.wait()
        self.acks.append([d.key for d in deliveries])
        await self._record(*(f"ack {d.key}" for d in deliveries))
        if self.ack_error is not None:
            raise self.ack_error

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        self.retries.append((delivery.key, delay))
        await self._record(f"retry {delivery.key}")

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        if self.dead_letter_error is not None:
            await self._record(f"dead-letter failed {delivery.key}")
            raise self.dead_letter_error
        self.dead_letters.append((delivery.key, topic))
        await self._record(f"dead-letter {delivery.key}")

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(d.key for d in deliveries)
        await self._record(*(f"release {d.key}" for d in deliveries))

    async def close(self) -> None:
        self.closed = True
        await self._record("close")

    @property
    def acked(self) -> list[str]:
        return [key for batch in self.acks for key in batch]

    async def _record(self, *events: str) -> None:
        async with self._changed:
            self.events.extend(events)
            self._changed.notify_all()

    async def wait_until(self, done: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(done)

        try:
            await asyncio.wait_for(wait(), GUARD)
        except TimeoutError:
            pytest.fail(f"waited in vain for {what}; the transport saw {self.events}")


def delivery(key: str, *, topic: str = "orders", count: int = 1, **fields: Any) -> Delivery:
    message = Message(topic=topic, data=key.encode(), id=key, delivery_count=count)
    return Delivery(message, **fields)


class Calls:
    """A handler that records its calls; ``behave`` decides what each call does."""

    def __init__(self, behave: Callable[[Message], Awaitable[None]] | None = None) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.running = 0
        self.most = 0
        self._behave = behave
        self._changed = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        self.started.append(message.id)
        self.running += 1
        self.most = max(self.most, self.running)
        self._changed.set()
        try:
            if self._behave is not None:
                await self._behave(message)
            self.finished.append(message.id)
        finally:
            self.running -= 1
            self._changed.set()

    async def wait_until(self, done: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            while not done():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), GUARD)
        except TimeoutError:
            pytest.fail(f"waited in vain for {what}; started {self.started}")


def engine_for(transport: FakeTransport, **policy: Any) -> DeliveryEngine:
    return DeliveryEngine(
        transport, DeliveryPolicy(**policy), label=LABEL, log=logging.getLogger("mechakit.fake")
    )


async def settle_down() -> None:
    """Lets every ready task run (no clock involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def fail(message: Message) -> None:
    raise RuntimeError(f"cannot handle {message.id}")


# --- the policy --------------------------------------------------------------------------


def test_redelivery_wait_doubles_per_delivery_up_to_its_bound() -> None:
    policy = DeliveryPolicy(redelivery_delay=0.5, max_redelivery_delay=3)
    assert [policy.redelivery_wait(n) for n in (1, 2, 3, 4, 40)] == [0.5, 1, 2, 3, 3]


def test_redelivery_wait_is_constant_without_a_bound_and_none_when_disabled() -> None:
    assert DeliveryPolicy(redelivery_delay=2).redelivery_wait(5) == 2
    assert DeliveryPolicy(redelivery_delay=None).redelivery_wait(1) is None


def test_prefetch_defaults_to_the_concurrency() -> None:
    assert DeliveryPolicy(concurrency=4).room == 4
    assert DeliveryPolicy(concurrency=4, prefetch=9).room == 9
    with pytest.raises(ValueError, match="invalid delivery policy"):
        DeliveryPolicy(concurrency=0)


def test_delivery_settings_give_the_policy_and_the_default_dead_letter_topic() -> None:
    settings = DeliverySettings.from_metadata(
        {"maxDeliveryCount": "5", "concurrency": "2", "deadLetterTopic": "poison"}, component="x"
    )
    policy = settings.delivery_policy()
    assert (policy.concurrency, policy.max_deliveries) == (2, 5)
    assert settings.dead_letter_topic_of(SubscribeRequest("orders")) == "poison"
    assert settings.dead_letter_topic_of(SubscribeRequest("orders", dead_letter_topic="x")) == "x"
    default = DeliverySettings()
    assert (default.max_deliveries, default.concurrency, default.dead_letter_topic) == (3, 10, "")


# --- acking --------------------------------------------------------------------------------


async def test_message_is_acked_only_after_its_handler_returned() -> None:
    transport, release = FakeTransport(), asyncio.Event()

    async def blocked(message: Message) -> None:
        await release.wait()

    calls = Calls(blocked)
    engine = engine_for(transport)
    engine.subscribe("orders", calls)
    transport.put(delivery("m1"))
    await calls.wait_until(lambda: calls.started == ["m1"], "the handler to start")
    await settle_down()
    assert transport.acked == []
    release.set()
    await transport.wait_until(lambda: transport.acked == ["m1"], "the ack")
    await engine.stop()


async def test_handler_dropping_a_message_gets_it_acked_and_never_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def drop(message: Message) -> None:
        raise DropMessage("malformed order")

    transport = FakeTransport()
    engine = engine_for(transport, max_deliveries=5)
    engine.subscribe("orders", Calls(drop))
    with caplog.at_level(logging.INFO, logger="mechakit.fake"):
        transport.put(delivery("m1"))
        await transport.wait_until(lambda: transport.acked == ["m1"], "the ack")
    assert transport.retries == []
    [line] = [r.getMessage() for r in caplog.records if "dropped by its handler" in r.getMessage()]
    assert all(part in line for part in (LABEL, "m1", "'orders'", "malformed order"))
    await engine.stop()


async def test_expired_message_is_acked_without_reaching_the_handler() -> None:
    transport, calls = FakeTransport(), Calls()
    engine = engine_for(transport)
    engine.subscribe("orders", calls)
    transport.put(delivery("old", expires_at=time.time() - 1), delivery("new"))
    await transport.wait_until(lambda: sorted(transport.acked) == ["new", "old"], "both acks")
    assert calls.started == ["new"]
    await engine.stop()


async def test_acks_that_arrive_during_an_ack_call_go_out_together_in_the_next() -> None:
    transport, calls = FakeTransport(), Calls()
    transport.ack_gate = asyncio.Event()
    engine = engine_for(transport, concurrency=4)
    engine.subscribe("orders", calls)
    transport.put(delivery("a"))
    await calls.wait_until(lambda: calls.finished == ["a"], "the first handler")
    transport.put(delivery("b"), delivery("c"), delivery("d"))
    await calls.wait_until(lambda: len(calls.finished) == 4, "every handler")
    transport.ack_gate.set()
    await transport.wait_until(lambda: len(transport.acked) == 4, "every ack")
    assert transport.acks == [["a"], ["b", "c", "d"]]
    await engine.stop()


async def test_a_failed_ack_is_logged_for_each_message_the_broker_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    transport.ack_error = BulkError({"m2": ConnectionFailedError("receipt expired")})
    engine = engine_for(transport, concurrency=1)
    engine.subscribe("orders", Calls())
    with caplog.at_level(logging.WARNING, logger="mechakit.fake"):
        transport.put(delivery("m1"))
        await transport.wait_until(lambda: transport.acked == ["m1"], "the first ack")
        transport.put(delivery("m2"))
        await transport.wait_until(lambda: transport.acked == ["m1", "m2"], "the second ack")
        await settle_down()
    [line] = [r.getMessage() for r in caplog.records if "could not ack" in r.getMessage()]
    assert all(part in line for part in (LABEL, "m2", "'orders'", "receipt expired"))
    await engine.stop()


# --- limits ----------------------------------------------------------------------------


async def test_no_more_handlers_run_than_the_concurrency_allows() -> None:
    transport, release = FakeTransport(), asyncio.Event()

    async def blocked(message: Message) -> None:
        await release.wait()

    calls = Calls(blocked)
    engine = engine_for(transport, concurrency=2, prefetch=10)
    engine.subscribe("orders", calls)
    transport.put(*(delivery(f"m{i}") for i in range(6)))
    await calls.wait_until(lambda: calls.running == 2, "two running handlers")
    await settle_down()
    assert calls.started == ["m0", "m1"]
    release.set()
    await transport.wait_until(lambda: len(transport.acked) == 6, "every ack")
    assert calls.most == 2
    await engine.stop()


async def test_receive_is_asked_only_for_the_room_left_by_unsettled_deliveries() -> None:
    transport, release = FakeTransport(), asyncio.Event()

    async def blocked(message: Message) -> None:
        await release.wait()

    calls = Calls(blocked)
    engine = engine_for(transport, concurrency=1, prefetch=3)
    engine.subscribe("orders", calls)
    transport.put(*(delivery(f"m{i}") for i in range(5)))
    await calls.wait_until(lambda: calls.started == ["m0"], "the first handler")
    await settle_down()
    assert transport.asked == [3]
    assert transport.waiting.qsize() == 2, "more than prefetch deliveries were taken"
    release.set()
    await transport.wait_until(lambda: len(transport.acked) == 5, "every ack")
    assert all(n <= 3 for n in transport.asked)
    await engine.stop()


# --- failures, redelivery, dead letters -----------------------------------------------------


async def test_failed_handler_asks_for_redelivery_after_the_policy_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    engine = engine_for(transport, max_deliveries=5, redelivery_delay=0.5, max_redelivery_delay=4)
    engine.subscribe("orders", Calls(fail))
    with caplog.at_level(logging.WARNING, logger="mechakit.fake"):
        transport.put(delivery("m1", count=1), delivery("m2", count=3))
        await transport.wait_until(lambda: len(transport.retries) == 2, "two retries")
    assert sorted(transport.retries) == [("m1", 0.5), ("m2", 2.0)]
    assert transport.acked == []
    lines = [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage()]
    assert any("m2" in line and "(delivery 3 of 5)" in line for line in lines)
    assert all(LABEL in line and "'orders'" in line for line in lines)
    await engine.stop()


async def test_failed_message_stays_unacked_when_redelivery_is_disabled() -> None:
    transport, calls = FakeTransport(), Calls(fail)
    engine = engine_for(transport, redelivery_delay=None)
    engine.subscribe("orders", calls)
    transport.put(delivery("m1"))
    await calls.wait_until(lambda: calls.running == 0 and calls.started == ["m1"], "the call")
    await settle_down()
    await engine.stop()
    assert (transport.acked, transport.retries, transport.released) == ([], [], [])


async def test_exhausted_message_is_dead_lettered_then_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    engine = engine_for(transport, max_deliveries=3)
    engine.subscribe("orders", Calls(fail), dead_letter_topic="poison")
    with caplog.at_level(logging.WARNING, logger="mechakit.fake"):
        transport.put(delivery("m1", count=2), delivery("m2", count=3))
        await transport.wait_until(lambda: "ack m2" in transport.events, "the ack of m2")
        await transport.wait_until(lambda: transport.retries != [], "the retry of m1")
    assert transport.dead_letters == [("m2", "poison")]
    assert transport.events.index("dead-letter m2") < transport.events.index("ack m2")
    assert [key for key, _delay in transport.retries] == ["m1"]
    [line] = [r.getMessage() for r in caplog.records if "dead-letter topic" in r.getMessage()]
    assert all(part in line for part in (LABEL, "m2", "'orders'", "'poison'", "3 deliveries"))
    await engine.stop()


async def test_exhausted_message_without_dead_letter_topic_is_acked_with_one_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    engine = engine_for(transport, max_deliveries=1)
    engine.subscribe("orders", Calls(fail))
    with caplog.at_level(logging.WARNING, logger="mechakit.fake"):
        transport.put(delivery("m1"))
        await transport.wait_until(lambda: transport.acked == ["m1"], "the ack")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert all(part in errors[0] for part in (LABEL, "m1", "'orders'", "dropped"))
    assert transport.dead_letters == []
    await engine.stop()


async def test_dead_letter_topic_equal_to_the_topic_counts_as_none() -> None:
    transport = FakeTransport()
    engine = engine_for(transport, max_deliveries=1)
    engine.subscribe("orders", Calls(fail), dead_letter_topic="orders")
    transport.put(delivery("m1"))
    await transport.wait_until(lambda: transport.acked == ["m1"], "the ack")
    assert transport.dead_letters == []
    await engine.stop()


async def test_exhausted_message_is_redelivered_when_the_policy_does_not_drop() -> None:
    transport = FakeTransport()
    engine = engine_for(transport, max_deliveries=1, drop_exhausted=False)
    engine.subscribe("orders", Calls(fail))
    transport.put(delivery("m1", count=4))
    await transport.wait_until(lambda: transport.retries != [], "the retry")
    assert transport.acked == []
    await engine.stop()


async def test_a_failed_dead_letter_publish_leaves_the_message_unacked_for_a_later_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    transport.dead_letter_error = ConnectionFailedError("broker away")
    engine = engine_for(transport, max_deliveries=1)
    engine.subscribe("orders", Calls(fail), dead_letter_topic="poison")
    with caplog.at_level(logging.WARNING, logger="mechakit.fake"):
        transport.put(delivery("m1"))
        await transport.wait_until(lambda: transport.retries != [], "the retry")
    assert transport.acked == []
    assert any(
        "could not move message m1" in r.getMessage() and "broker away" in r.getMessage()
        for r in caplog.records
    )
    await engine.stop()


async def test_delivery_already_past_its_limit_is_given_up_without_a_handler_call() -> None:
    transport, calls = FakeTransport(), Calls()
    engine = engine_for(transport, max_deliveries=3)
    engine.subscribe("orders", calls, dead_letter_topic="poison")
    transport.put(delivery("crashed-consumers", count=4), delivery("fine", count=3))
    await transport.wait_until(lambda: len(transport.acked) == 2, "both acks")
    assert calls.started == ["fine"]
    assert transport.dead_letters == [("crashed-consumers", "poison")]
    await engine.stop()


async def test_delivery_past_its_limit_reaches_the_handler_when_the_policy_says_so() -> None:
    transport, calls = FakeTransport(), Calls()
    engine = engine_for(transport, max_deliveries=3, give_up_on_receive=False)
    engine.subscribe("orders", calls, dead_letter_topic="poison")
    transport.put(delivery("bounced-often", count=7))
    await transport.wait_until(lambda: transport.acked == ["bounced-often"], "the ack")
    assert calls.started == ["bounced-often"]
    await engine.stop()


# --- receiving -----------------------------------------------------------------------------


async def test_receive_errors_are_logged_with_component_and_source_and_receiving_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, calls = FakeTransport(), Calls()
    transport.receive_errors = [ConnectionFailedError("connection refused")]
    engine = engine_for(transport)
    engine.subscribe("orders", calls)
    with caplog.at_level(logging.WARNING, logger="mechakit.fake"):
        transport.put(delivery("m1"))
        await transport.wait_until(lambda: transport.acked == ["m1"], "the ack")
    [line] = [r.getMessage() for r in caplog.records if "could not receive" in r.getMessage()]
    assert line.startswith(f"{LABEL}: could not receive from topic 'orders': ")
    assert "connection refused" in line and "retrying in" in line
    await engine.stop()


async def test_a_delivery_with_the_key_of_an_unsettled_one_is_ignored() -> None:
    transport, release = FakeTransport(), asyncio.Event()

    async def blocked(message: Message) -> None:
        await release.wait()

    calls = Calls(blocked)
    engine = engine_for(transport, concurrency=2)
    engine.subscribe("orders", calls)
    transport.put(delivery("m1"))
    await calls.wait_until(lambda: calls.started == ["m1"], "the handler")
    transport.put(delivery("m1", count=2), delivery("m2"))
    await calls.wait_until(lambda: calls.started == ["m1", "m2"], "the second handler")
    release.set()
    await transport.wait_until(lambda: len(transport.acked) == 2, "both acks")
    await settle_down()
    assert calls.started == ["m1", "m2"]
    await engine.stop()


async def test_one_ordering_key_is_handled_in_order_and_a_failure_releases_the_rest() -> None:
    async def fail_b2(message: Message) -> None:
        if message.id == "b2":
            raise RuntimeError("b2 must come first")

    transport, calls = FakeTransport(), Calls(fail_b2)
    engine = engine_for(transport, concurrency=10)
    engine.subscribe("orders", calls)
    transport.put(*(delivery(f"{k}{i}", ordering_key=k) for i in (1, 2, 3, 4) for k in "ab"))
    await transport.wait_until(
        lambda: len(transport.acked) + len(transport.retries) + len(transport.released) == 8,
        "every delivery settled",
    )
    assert [m for m in calls.started if m.startswith("a")] == ["a1", "a2", "a3", "a4"]
    assert [m for m in calls.started if m.startswith("b")] == ["b1", "b2"]
    assert [key for key, _ in transport.retries] == ["b2"]
    assert transport.released == ["b3", "b4"]
    await engine.stop()


async def test_message_of_a_topic_without_a_handler_is_released() -> None:
    transport, calls = FakeTransport(), Calls()
    engine = engine_for(transport)
    engine.subscribe("orders", calls)
    transport.put(delivery("stray", topic="payments"))
    await transport.wait_until(lambda: transport.released == ["stray"], "the release")
    assert calls.started == []
    await engine.stop()


# --- stopping ------------------------------------------------------------------------------


async def test_stop_lets_a_running_handler_finish_and_releases_what_did_not_start() -> None:
    transport, release = FakeTransport(), asyncio.Event()

    async def blocked(message: Message) -> None:
        await release.wait()

    calls = Calls(blocked)
    engine = engine_for(transport, concurrency=1, prefetch=3)
    subscription = engine.subscribe("orders", calls)
    transport.put(delivery("m1"), delivery("m2"), delivery("m3"))
    await calls.wait_until(lambda: calls.started == ["m1"], "the handler")
    stopping = asyncio.create_task(subscription.cancel())
    await transport.wait_until(lambda: sorted(transport.released) == ["m2", "m3"], "releases")
    assert not subscription.active
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, GUARD)
    assert transport.acked == ["m1"]
    assert transport.closed
    asked = len(transport.asked)
    transport.put(delivery("m4"))
    await settle_down()
    assert len(transport.asked) == asked, "a stopped engine received again"


async def test_handler_still_running_after_the_grace_is_cancelled_and_never_acked() -> None:
    transport, cancelled = FakeTransport(), asyncio.Event()

    async def stuck(message: Message) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    calls = Calls(stuck)
    engine = engine_for(transport, stop_grace=0)
    engine.subscribe("orders", calls)
    transport.put(delivery("m1"))
    await calls.wait_until(lambda: calls.started == ["m1"], "the handler")
    await asyncio.wait_for(engine.stop(), GUARD)
    assert cancelled.is_set()
    assert transport.acked == []
    assert transport.released == ["m1"]
    assert transport.closed


async def test_cancelling_a_stop_cancels_running_handlers_and_releases_their_messages() -> None:
    async def stuck(message: Message) -> None:
        await asyncio.Event().wait()

    transport, calls = FakeTransport(), Calls(stuck)
    engine = engine_for(transport)
    engine.subscribe("orders", calls)
    transport.put(delivery("m1"))
    await calls.wait_until(lambda: calls.started == ["m1"], "the handler")
    stopping = asyncio.create_task(engine.stop())
    await settle_down()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert calls.running == 0
    assert (transport.acked, transport.released, transport.closed) == ([], ["m1"], True)


async def test_handler_may_cancel_its_own_subscription_and_its_message_is_acked() -> None:
    transport = FakeTransport()
    subscriptions: list[Subscription] = []

    async def cancel_own(message: Message) -> None:
        await subscriptions[0].cancel()
        assert not subscriptions[0].active

    engine = engine_for(transport)
    subscriptions.append(engine.subscribe("orders", Calls(cancel_own)))
    transport.put(delivery("m1"))
    await transport.wait_until(lambda: transport.closed, "the transport to close")
    assert transport.acked == ["m1"]
    assert transport.events.index("ack m1") < transport.events.index("close")
    assert transport.released == []


async def test_handler_cancelled_by_something_else_gets_its_message_released() -> None:
    async def interrupted(message: Message) -> None:
        raise asyncio.CancelledError

    transport = FakeTransport()
    engine = engine_for(transport)
    engine.subscribe("orders", Calls(interrupted))
    transport.put(delivery("m1"))
    await transport.wait_until(lambda: transport.released == ["m1"], "the release")
    assert transport.acked == []
    await engine.stop()


async def test_cancelling_one_route_keeps_the_others_and_releases_its_messages() -> None:
    transport, orders, payments = FakeTransport(), Calls(), Calls()
    engine = engine_for(transport)
    first = engine.subscribe("orders", orders)
    engine.subscribe("payments", payments)
    await first.cancel()
    assert not first.active
    assert not engine.stopping
    transport.put(delivery("o1"), delivery("p1", topic="payments"))
    await transport.wait_until(lambda: transport.acked == ["p1"], "the payment's ack")
    await transport.wait_until(lambda: transport.released == ["o1"], "the order's release")
    assert orders.started == []
    await engine.stop()
    assert transport.closed


async def test_stopped_engine_refuses_new_routes_and_stops_only_once() -> None:
    transport = FakeTransport()
    engine = engine_for(transport)
    subscription = engine.subscribe("orders", Calls())
    await engine.stop()
    await engine.stop()
    await subscription.cancel()
    assert transport.events.count("close") == 1
    with pytest.raises(ComponentError, match="stopped"):
        engine.subscribe("orders", Calls())


# --- a component's engines -----------------------------------------------------------------


class EnginePubSub(PubSub[DeliverySettings]):
    """Runs an engine per subscription, each over a fake transport of its topic."""

    def __init__(self) -> None:
        super().__init__()
        self.engines = SubscriptionEngines(self)
        self.transports: dict[str, FakeTransport] = {}

    async def shut(self) -> None:
        await self.engines.stop()

    async def publish(self, request: PublishRequest) -> None:
        self.transports[request.topic].put(delivery(request.data.decode(), topic=request.topic))

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        transport = self.transports[request.topic] = FakeTransport()
        return self.engines.start(transport, request, handler)


async def test_closing_a_component_from_a_handler_stops_every_engine_and_acks_that_message() -> (
    None
):
    pubsub = EnginePubSub()
    await pubsub.init(ComponentMetadata("events", "pubsub.fake"))

    async def close_component(message: Message) -> None:
        await pubsub.close()

    orders = await pubsub.subscribe(SubscribeRequest("orders"), Calls(close_component))
    payments = await pubsub.subscribe(SubscribeRequest("payments"), Calls())
    await pubsub.publish(PublishRequest("orders", b"o1"))
    first, second = pubsub.transports["orders"], pubsub.transports["payments"]
    await first.wait_until(lambda: first.closed, "the orders transport to close")
    await second.wait_until(lambda: second.closed, "the payments transport to close")
    assert first.acked == ["o1"]
    assert not orders.active and not payments.active
