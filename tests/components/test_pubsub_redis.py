"""pubsub.redis beyond the conformance suite: pending entries, dead letters, trimming,
consumer groups, limits, restarts, and a subscriber process killed mid-stream.

Runs against the "redis" conformance backend (``MECHAKIT_TEST_REDIS_URL``, else a local
``redis-server``); skipped with the reason when neither is available.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mechakit.components.pubsub.redis import RedisPubSub, RedisPubSubSettings
from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    NOT_OPEN,
    ComponentNotOpenError,
    ConnectionFailedError,
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

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis

TIMEOUT = 10.0
FAST = {"processingTimeout": "1s", "redeliverInterval": "100ms"}


def topic(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:8]}"


async def pubsub(redis_driver: RedisDriver, **metadata: str) -> RedisPubSub:
    driver: RedisPubSub = await redis_driver("pubsub.redis", **{**FAST, **metadata})
    return driver


async def publish(driver: RedisPubSub, name: str, *datas: bytes, **metadata: str) -> None:
    for data in datas:
        await driver.publish(PublishRequest(topic=name, data=data, metadata=metadata))


async def pending(raw: Any, name: str, group: str) -> int:
    return int((await raw.xpending(name, group))["pending"])


async def pending_is(raw: Any, name: str, group: str, expected: int) -> bool:
    return await pending(raw, name, group) == expected


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    async def poll() -> None:
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.05)  # the condition lives in Redis: nothing to wait on

    try:
        await asyncio.wait_for(poll(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}")


# --- settings -------------------------------------------------------------------------


def test_bare_numbers_for_processing_timeout_and_redeliver_interval_are_milliseconds() -> None:
    settings = RedisPubSubSettings.from_metadata(
        {"redisHost": "localhost:6379", "processingTimeout": "1500", "redeliverInterval": "250"},
        component="x",
    )
    assert settings.processing_timeout == timedelta(milliseconds=1500)
    assert settings.redeliver_interval == timedelta(milliseconds=250)


def test_stream_ttl_accepts_days_as_in_dapr_examples() -> None:
    settings = RedisPubSubSettings.from_metadata(
        {"redisHost": "localhost:6379", "streamTTL": "30d"}, component="x"
    )
    assert settings.stream_ttl == timedelta(days=30)


def test_defaults_follow_dapr() -> None:
    settings = RedisPubSubSettings.from_metadata({"redisHost": "localhost:6379"}, component="x")
    assert settings.processing_timeout == timedelta(seconds=60)
    assert settings.redeliver_interval == timedelta(seconds=15)
    assert (settings.queue_depth, settings.concurrency, settings.group_start_id) == (100, 10, "0")
    assert settings.max_len_approx is None
    assert settings.stream_ttl is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("groupStartID", "latest"), ("queueDepth", "0"), ("concurrency", "0"), ("maxLenApprox", "0")],
)
def test_invalid_settings_name_their_field(name: str, value: str) -> None:
    with pytest.raises(MetadataError) as info:
        RedisPubSubSettings.from_metadata(
            {"redisHost": "localhost:6379", name: value}, component="pubsub.redis 'x'"
        )
    assert info.value.field == name


async def test_init_without_consumer_id_or_app_id_fails_naming_consumer_id() -> None:
    driver = RedisPubSub()
    with pytest.raises(MetadataError, match="consumerID") as info:
        await driver.init(
            ComponentMetadata("events", "pubsub.redis", {"redisHost": "localhost:1"}, app_id="")
        )
    assert info.value.component == "pubsub.redis 'events'"


async def test_consumer_group_defaults_to_the_app_id_and_each_instance_has_its_own_consumer(
    redis_driver: RedisDriver,
) -> None:
    first, second = await pubsub(redis_driver), await pubsub(redis_driver)
    assert first.consumer_group == second.consumer_group == "test-app"
    assert first.consumer_name != second.consumer_name


# --- acknowledgement and redelivery ------------------------------------------------------


async def test_message_is_acked_only_after_its_handler_succeeds(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver), topic("ack")
    pending_during_calls: list[int] = []

    async def fail_first(message: Message, seen: int) -> None:
        pending_during_calls.append(await pending(raw_redis, name, driver.consumer_group))
        if seen == 1:
            raise RuntimeError("first delivery fails")

    inbox = Inbox(fail_first)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"order-1")
    await inbox.wait_for_acked(1, TIMEOUT)

    assert pending_during_calls == [1, 1], "the message was acked before its handler succeeded"
    assert [m.delivery_count for m in inbox.calls] == [1, 2]
    assert inbox.calls[0].id == inbox.calls[1].id
    await eventually(
        lambda: pending_is(raw_redis, name, driver.consumer_group, 0), "the ack after success"
    )


async def test_failed_message_stays_pending_while_redelivery_is_disabled(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver = await pubsub(redis_driver, redeliverInterval="0")
    name = topic("no-redelivery")

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("fails")

    inbox = Inbox(always_fail)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"kept")
    await inbox.wait_until(lambda: len(inbox.calls) == 1, TIMEOUT, "the first delivery")
    await asyncio.sleep(0.3)
    assert len(inbox.calls) == 1
    assert await pending(raw_redis, name, driver.consumer_group) == 1


async def test_exhausted_message_moves_to_the_dead_letter_topic_with_its_metadata(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    name, dead_name = topic("poison"), topic("dead")
    driver = await pubsub(redis_driver, maxDeliveries="2", deadLetterTopic=dead_name)

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("poison")

    failing, dead = Inbox(always_fail), Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), failing)
    await driver.subscribe(SubscribeRequest(topic=dead_name), dead)
    await driver.publish(
        PublishRequest(topic=name, data=b"bad", content_type="text/plain", metadata={"k": "v"})
    )
    await dead.wait_for_acked(1, TIMEOUT)

    assert [m.delivery_count for m in failing.calls] == [1, 2]
    assert (dead.acked[0].data, dead.acked[0].content_type) == (b"bad", "text/plain")
    assert dict(dead.acked[0].metadata) == {"k": "v"}
    await eventually(
        lambda: pending_is(raw_redis, name, driver.consumer_group, 0),
        "the dead-lettered message to be acked",
    )


async def test_exhausted_message_without_dead_letter_topic_is_acked_and_logged(
    redis_driver: RedisDriver, raw_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mechakit")
    driver, name = await pubsub(redis_driver, maxDeliveries="1"), topic("dropped")

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("poison")

    inbox = Inbox(always_fail)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"lost")
    await eventually(
        lambda: pending_is(raw_redis, name, driver.consumer_group, 0), "the drop to be acked"
    )
    message_id = inbox.calls[0].id
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert all(part in dropped[0] for part in (driver.label, repr(name), message_id))


async def test_message_dropped_by_its_handler_is_acked_at_once(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver), topic("drop")

    async def drop(message: Message, seen: int) -> None:
        raise DropMessage("unwanted")

    inbox = Inbox(drop)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"unwanted")
    await inbox.wait_until(lambda: len(inbox.calls) == 1, TIMEOUT, "the delivery")
    await eventually(lambda: pending_is(raw_redis, name, driver.consumer_group, 0), "the ack")


# --- what a subscriber gets ----------------------------------------------------------------


async def test_messages_published_before_the_first_subscriber_are_delivered(
    redis_driver: RedisDriver,
) -> None:
    driver, name = await pubsub(redis_driver), topic("early")
    await publish(driver, name, b"early-1", b"early-2")
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(2, TIMEOUT)
    assert sorted(inbox.payloads) == [b"early-1", b"early-2"]


async def test_group_start_dollar_delivers_only_what_is_published_after_subscribing(
    redis_driver: RedisDriver,
) -> None:
    driver, name = await pubsub(redis_driver, groupStartID="$"), topic("latest")
    await publish(driver, name, b"before")
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"after")
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(0.3)
    assert inbox.payloads == [b"after"]


async def test_two_instances_in_one_group_share_the_work_and_handle_each_message_once(
    redis_driver: RedisDriver,
) -> None:
    first = await pubsub(redis_driver, consumerID="workers")
    second = await pubsub(redis_driver, consumerID="workers")
    name, inbox_a, inbox_b = topic("shared"), Inbox(), Inbox()
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    sent = [f"job-{i}".encode() for i in range(40)]
    await publish(first, name, *sent)

    await eventually(lambda: len(inbox_a.acked) + len(inbox_b.acked) >= len(sent), "every job")
    await asyncio.sleep(0.3)
    handled = inbox_a.payloads + inbox_b.payloads
    assert sorted(handled) == sorted(sent), "a job was lost or handled twice"
    assert inbox_a.payloads and inbox_b.payloads, "one instance did all the work"


async def test_queue_depth_bounds_messages_read_but_not_acked(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver = await pubsub(redis_driver, queueDepth="5", concurrency="1")
    name, release = topic("depth"), asyncio.Event()

    async def blocked(message: Message, seen: int) -> None:
        await release.wait()

    inbox = Inbox(blocked)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, *[f"m-{i}".encode() for i in range(20)])
    await eventually(lambda: pending_is(raw_redis, name, driver.consumer_group, 5), "5 reads")
    await asyncio.sleep(0.3)
    assert await pending(raw_redis, name, driver.consumer_group) == 5
    assert len(inbox.calls) == 1
    release.set()
    await inbox.wait_for_acked(20, TIMEOUT)


async def test_concurrency_bounds_simultaneous_handler_calls(redis_driver: RedisDriver) -> None:
    driver = await pubsub(redis_driver, concurrency="3")
    name, release = topic("concurrency"), asyncio.Event()
    running, peak = 0, 0

    async def slow(message: Message, seen: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1

    inbox = Inbox(slow)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, *[f"m-{i}".encode() for i in range(10)])
    await inbox.wait_until(lambda: len(inbox.calls) >= 3, TIMEOUT, "3 running handlers")
    await asyncio.sleep(0.3)
    assert peak == 3
    release.set()
    await inbox.wait_for_acked(10, TIMEOUT)
    assert peak == 3


async def test_expired_message_is_acked_and_never_delivered(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver), topic("ttl")
    await publish(driver, name, b"short", ttlInSeconds="1")
    await asyncio.sleep(1.1)
    await publish(driver, name, b"long")
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)
    await eventually(lambda: pending_is(raw_redis, name, driver.consumer_group, 0), "acks")
    assert inbox.payloads == [b"long"]


# --- publishing ----------------------------------------------------------------------------


async def test_max_len_approx_trims_the_stream_on_publish(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver, maxLenApprox="10"), topic("trim")
    await publish(driver, name, *[f"m-{i}".encode() for i in range(1000)])
    length = await raw_redis.xlen(name)
    assert 10 <= length <= 200, f"stream holds {length} entries"


async def test_stream_ttl_trims_old_entries_on_publish(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver, streamTTL="1s"), topic("stream-ttl")
    await publish(driver, name, *[f"old-{i}".encode() for i in range(300)])
    await asyncio.sleep(1.1)
    await publish(driver, name, b"new")
    length = await raw_redis.xlen(name)
    assert 1 <= length <= 101, f"stream holds {length} entries"


async def test_publish_writes_data_content_type_and_metadata_fields(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver), topic("fields")
    await driver.publish(
        PublishRequest(topic=name, data=b"\x00raw", content_type="a/b", metadata={"k": "v"})
    )
    [(_entry_id, fields)] = await raw_redis.xrange(name)
    assert fields[b"data"] == b"\x00raw"
    assert fields[b"contentType"] == b"a/b"
    assert json.loads(fields[b"metadata"]) == {"k": "v"}


async def test_bulk_publish_fails_a_bad_entry_alone(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver), topic("bulk")
    response = await driver.bulk_publish(
        BulkPublishRequest(
            topic=name,
            entries=[
                BulkPublishEntry("good-1", b"1"),
                BulkPublishEntry("bad", b"2", metadata={"ttlInSeconds": "soon"}),
                BulkPublishEntry("good-2", b"3"),
            ],
        )
    )
    assert [f.entry_id for f in response.failed] == ["bad"]
    assert "ttlInSeconds" in response.failed[0].error
    assert [f[b"data"] for _id, f in await raw_redis.xrange(name)] == [b"1", b"3"]


# --- lifecycle -----------------------------------------------------------------------------


async def test_cancelled_subscription_stops_and_leaves_no_idle_consumer_behind(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name, inbox = await pubsub(redis_driver), topic("cancel"), Inbox()
    subscription = await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"one")
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.wait_for(subscription.cancel(), TIMEOUT)
    assert not subscription.active
    await publish(driver, name, b"two")
    await asyncio.sleep(0.3)
    assert inbox.payloads == [b"one"]
    assert await raw_redis.xinfo_consumers(name, driver.consumer_group) == []


async def test_closed_component_refuses_to_publish(redis_driver: RedisDriver) -> None:
    driver = await pubsub(redis_driver)
    await driver.close()
    await driver.close()
    with pytest.raises(ComponentNotOpenError) as info:
        await publish(driver, topic("closed"), b"x")
    assert (info.value.reason, info.value.component) == (NOT_OPEN, driver.label)
    assert not info.value.retriable


async def test_a_subscription_stopped_by_close_acks_what_its_handlers_finish(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    driver, name = await pubsub(redis_driver), topic("close-acks")
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(message: Message, seen: int) -> None:
        started.set()
        await release.wait()

    inbox = Inbox(slow)
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"finishing")
    await asyncio.wait_for(started.wait(), TIMEOUT)
    closing = asyncio.create_task(driver.close())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(closing, TIMEOUT)
    assert inbox.payloads == [b"finishing"]
    assert await pending(raw_redis, name, driver.consumer_group) == 0


@pytest.mark.fault
async def test_subscription_survives_a_server_restart_and_recreates_its_group(
    redis_driver: RedisDriver, redis_server: BackendInfo, caplog: pytest.LogCaptureFixture
) -> None:
    if redis_server.restart is None:
        pytest.skip(f"the Redis server ({redis_server.source}) cannot be restarted by the tests")
    caplog.set_level(logging.WARNING, logger="mechakit")
    driver, name, inbox = await pubsub(redis_driver), topic("restart"), Inbox()
    subscription = await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, b"before")
    await inbox.wait_for_acked(1, TIMEOUT)

    await asyncio.to_thread(redis_server.restart)  # nothing is persisted: the group is gone

    async def delivered_after_restart() -> bool:
        if b"after" in inbox.payloads:
            return True
        try:  # publish until the client has reconnected; the subscriber must then get it
            await publish(driver, name, b"after")
        except ConnectionFailedError:
            return False
        await asyncio.sleep(0.2)
        return b"after" in inbox.payloads

    await eventually(delivered_after_restart, "a delivery after the restart")
    assert subscription.active
    assert any(driver.label in r.getMessage() for r in caplog.records)


# --- a subscriber process killed mid-stream ---------------------------------------------------

_SUBSCRIBER = """
import asyncio, sys
from mechakit.components.pubsub.redis import RedisPubSub
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import SubscribeRequest

address, name, group, out = sys.argv[1:5]

async def main() -> None:
    driver = RedisPubSub()
    await driver.init(ComponentMetadata("fault", "pubsub.redis", {
        "redisHost": address, "consumerID": group, "queueDepth": "5", "concurrency": "1",
        "processingTimeout": "1s", "redeliverInterval": "100ms"}))
    with open(out, "a", buffering=1) as log:
        async def handle(message) -> None:
            await asyncio.sleep(0.02)
            log.write(message.data.decode() + "\\n")
        await driver.subscribe(SubscribeRequest(topic=name), handle)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.fault
async def test_messages_of_a_killed_subscriber_process_are_all_handled_by_its_successor(
    redis_driver: RedisDriver, redis_server: BackendInfo, raw_redis: Any, tmp_path: Path
) -> None:
    name, group, handled_file = topic("crash"), f"crash-{uuid.uuid4().hex[:6]}", tmp_path / "h"
    publisher = await pubsub(redis_driver, consumerID="publisher")
    sent = [f"m-{i}" for i in range(100)]
    await publish(publisher, name, *[s.encode() for s in sent[:60]])

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBSCRIBER, redis_server.values["address"], name, group,
        str(handled_file),
    )  # fmt: skip
    try:

        async def handled_some() -> bool:
            return handled_file.exists() and len(_lines(handled_file)) >= 10

        await eventually(handled_some, "the subscriber process to handle 10 messages")
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await publish(publisher, name, *[s.encode() for s in sent[60:]])

    by_dead_process = set(_lines(handled_file))
    assert await pending(raw_redis, name, group) > 0, "the killed process held no message"
    assert len(by_dead_process) < len(sent)

    successor = await pubsub(redis_driver, consumerID=group)
    inbox = Inbox()
    await successor.subscribe(SubscribeRequest(topic=name), inbox)

    def everything_handled() -> bool:
        return by_dead_process | {m.decode() for m in inbox.payloads} == set(sent)

    await inbox.wait_until(everything_handled, TIMEOUT, "every message to be handled")
    await eventually(lambda: pending_is(raw_redis, name, group, 0), "every message acked")


def _lines(path: Path) -> list[str]:
    """Complete lines only: the process may have died in the middle of writing one."""
    text = path.read_text()
    return text.split("\n")[:-1]
