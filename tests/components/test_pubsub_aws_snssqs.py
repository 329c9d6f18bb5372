"""pubsub.aws.snssqs beyond the conformance suite, against moto's server: attributes,
unhandled topics, redelivery counts, dead-letter queues, FIFO groups, existing entities
only, name sanitizing, and a consumer process killed mid-stream.

Every test uses its own consumerID (so its own queue) and fresh topic names.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.pubsub.aws_snssqs import SnsSqsPubSub, SnsSqsSettings, aws_name
from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.backends_aws import boto3_client
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import InvalidRequestError, MetadataError, NotFoundError
from mechakit.core.pubsub import Message, PublishRequest, SubscribeRequest

pytest.importorskip("boto3")
pytest_plugins = ["moto_server"]  # fixture moto

Driver = Callable[..., Awaitable[SnsSqsPubSub]]
TIMEOUT = 30.0  # generous: moto runs in Python on the same 2 cores; a passing run is quick
FAST = {"messageVisibilityTimeout": "1", "messageWaitTimeSeconds": "1"}


def new_name(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sqs(moto: BackendInfo) -> Any:
    return boto3_client(moto.values, "sqs")


@pytest.fixture(scope="module")
def sns(moto: BackendInfo) -> Any:
    return boto3_client(moto.values, "sns")


def aws_metadata(moto: BackendInfo) -> dict[str, str]:
    v = moto.values
    return {
        "endpoint": v["endpoint"],
        "region": v["region"],
        "accessKey": v["accessKey"],
        "secretKey": v["secretKey"],
    }


@pytest_asyncio.fixture
async def driver(moto: BackendInfo) -> AsyncIterator[Driver]:
    """``await driver(**metadata)``: an initialised pubsub.aws.snssqs, closed after the test."""
    made: list[SnsSqsPubSub] = []
    consumer = new_name("consumer")

    async def make(name: str = "test", **metadata: str) -> SnsSqsPubSub:
        pubsub = SnsSqsPubSub()
        properties = {**aws_metadata(moto), "consumerID": consumer, **FAST, **metadata}
        await pubsub.init(ComponentMetadata(name, "pubsub.aws.snssqs", properties, app_id="app"))
        made.append(pubsub)
        return pubsub

    yield make
    for pubsub in reversed(made):
        await pubsub.close()


async def publish(pubsub: SnsSqsPubSub, topic: str, *datas: bytes, **metadata: str) -> None:
    for data in datas:
        await pubsub.publish(PublishRequest(topic=topic, data=data, metadata=metadata))


async def subscribe(pubsub: SnsSqsPubSub, topic: str, handler: Any) -> Any:
    return await pubsub.subscribe(SubscribeRequest(topic=topic), handler)


def receive_raw(sqs: Any, queue_name: str, wait: float = TIMEOUT) -> list[dict[str, Any]]:
    """Messages of a queue as plain boto3 sees them (bodies are SNS envelopes)."""
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    reply = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=int(min(wait, 20)),
        MessageAttributeNames=["All"],
    )
    return list(reply.get("Messages") or [])


# --- settings -------------------------------------------------------------------------


def test_defaults_follow_dapr() -> None:
    settings = SnsSqsSettings.from_metadata({}, component="test")
    assert settings.message_visibility_timeout == 10
    assert settings.message_retry_limit == 10
    assert settings.message_max_number == 10
    assert not settings.fifo
    assert not settings.disable_entity_management
    assert settings.redrive_max_receive_count == 11


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("messageMaxNumber", "11"),
        ("messageWaitTimeSeconds", "21"),
        ("messageVisibilityTimeout", "0"),
        ("concurrencyMode", "sometimes"),
        ("fifo", "maybe"),
    ],
)
def test_invalid_settings_name_their_field(name: str, value: str) -> None:
    with pytest.raises(MetadataError, match=name) as caught:
        SnsSqsSettings.from_metadata({name: value}, component="test")
    assert caught.value.field == name


def test_names_keep_letters_digits_dashes_and_underscores_within_80_characters() -> None:
    assert aws_name("orders.v1/eu west", fifo=False) == "ordersv1euwest"
    assert aws_name("a" * 100, fifo=False) == "a" * 80
    assert aws_name("a" * 100, fifo=True) == "a" * 75 + ".fifo"
    assert aws_name("orders_eu-1", fifo=True) == "orders_eu-1.fifo"


async def test_init_without_consumer_id_or_app_id_fails_naming_consumer_id(
    moto: BackendInfo,
) -> None:
    pubsub = SnsSqsPubSub()
    with pytest.raises(MetadataError, match="consumerID") as caught:
        await pubsub.init(ComponentMetadata("x", "pubsub.aws.snssqs", aws_metadata(moto)))
    assert caught.value.field == "consumerID"


async def test_dead_letter_queue_and_keeping_failed_messages_exclude_each_other(
    driver: Driver,
) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(sqsDeadLettersQueueName="dlq", disableDeleteOnRetryLimit="true")
    assert caught.value.field == "disableDeleteOnRetryLimit"


# --- entities -------------------------------------------------------------------------


async def test_topic_and_queue_names_are_sanitized(driver: Driver, sns: Any, sqs: Any) -> None:
    raw = f"orders.v1/eu {uuid.uuid4().hex[:8]}"
    pubsub = await driver(consumerID=f"my.app/{uuid.uuid4().hex[:8]}")
    inbox = Inbox()
    await subscribe(pubsub, raw, inbox)
    await publish(pubsub, raw, b"sanitized")
    await inbox.wait_for_acked(1, TIMEOUT)

    assert inbox.acked[0].topic == raw  # handlers see the topic as subscribed
    topics = await asyncio.to_thread(sns.list_topics)
    names = {t["TopicArn"].rsplit(":", 1)[-1] for t in topics["Topics"]}
    assert aws_name(raw, fifo=False) in names
    assert pubsub.queue_name.startswith("myapp")
    await asyncio.to_thread(sqs.get_queue_url, QueueName=pubsub.queue_name)


async def test_queue_policy_lets_only_the_subscribed_topics_send(driver: Driver, sqs: Any) -> None:
    pubsub = await driver()
    first, second = new_name("a"), new_name("b")
    await subscribe(pubsub, first, Inbox())
    await subscribe(pubsub, second, Inbox())

    url = (await asyncio.to_thread(sqs.get_queue_url, QueueName=pubsub.queue_name))["QueueUrl"]
    attributes = await asyncio.to_thread(
        sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["Policy"]
    )
    policy = json.loads(attributes["Attributes"]["Policy"])
    sources = {s["Condition"]["ArnEquals"]["aws:SourceArn"] for s in policy["Statement"]}
    assert {arn.rsplit(":", 1)[-1] for arn in sources} == {first, second}
    assert {s["Principal"]["Service"] for s in policy["Statement"]} == {"sns.amazonaws.com"}


async def test_without_entity_management_a_missing_topic_is_an_error_naming_the_field(
    driver: Driver, sqs: Any
) -> None:
    owner = await driver()
    await subscribe(owner, new_name("existing"), Inbox())  # creates the queue only
    pubsub = await driver(disableEntityManagement="true")
    missing = new_name("missing")

    with pytest.raises(NotFoundError, match="disableEntityManagement") as caught:
        await publish(pubsub, missing, b"x")
    assert caught.value.field == "disableEntityManagement"
    assert caught.value.key == missing
    with pytest.raises(NotFoundError, match="disableEntityManagement"):
        await subscribe(pubsub, missing, Inbox())


async def test_without_entity_management_a_missing_queue_fails_init_naming_consumer_id(
    driver: Driver,
) -> None:
    with pytest.raises(NotFoundError, match="does not exist") as caught:
        await driver(consumerID=new_name("nowhere"), disableEntityManagement="true")
    assert caught.value.field == "consumerID"


async def test_without_entity_management_existing_entities_are_used(
    driver: Driver, sns: Any
) -> None:
    topic = new_name("existing")
    owner = await driver()
    await (await subscribe(owner, topic, Inbox())).cancel()  # topic, queue, subscription
    await owner.close()
    topics_before = len((await asyncio.to_thread(sns.list_topics))["Topics"])

    pubsub = await driver(disableEntityManagement="true")
    inbox = Inbox()
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"through existing entities")
    await inbox.wait_for_acked(1, TIMEOUT)
    assert len((await asyncio.to_thread(sns.list_topics))["Topics"]) == topics_before


# --- publishing -----------------------------------------------------------------------


async def test_metadata_travel_as_sns_message_attributes(driver: Driver, sqs: Any) -> None:
    """A plain SQS reader sees the metadata and content type as attributes of the envelope."""
    pubsub = await driver()
    topic = new_name("attrs")
    await (await subscribe(pubsub, topic, Inbox())).cancel()  # queue subscribed, no handler
    queue = pubsub.queue_name
    await pubsub.close()
    publisher = await driver(consumerID=new_name("publisher"))
    await publisher.publish(
        PublishRequest(
            topic=topic,
            data=b'{"order": 1}',
            content_type="application/json",
            metadata={"tenant": "eu-1", "trace.id": "abc"},
        )
    )

    raw = await asyncio.to_thread(receive_raw, sqs, queue)
    envelope = json.loads(raw[0]["Body"])
    assert envelope["Message"] == '{"order": 1}'
    attributes = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
    assert attributes == {"tenant": "eu-1", "trace.id": "abc", "contentType": "application/json"}


async def test_binary_data_and_empty_metadata_values_round_trip(driver: Driver) -> None:
    pubsub, topic, inbox = await driver(), new_name("binary"), Inbox()
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"\x00\xff\xfe", blank="", kept="yes")
    await publish(pubsub, topic, b"")
    await inbox.wait_for_acked(2, TIMEOUT)
    by_data = {m.data: m for m in inbox.acked}
    assert dict(by_data[b"\x00\xff\xfe"].metadata) == {"blank": "", "kept": "yes"}
    assert b"" in by_data


@pytest.mark.parametrize("key", ["has space", "AWS.reserved", "mechakit.encoding", "a..b"])
async def test_metadata_keys_that_cannot_be_attribute_names_are_rejected(
    driver: Driver, key: str
) -> None:
    pubsub = await driver()
    with pytest.raises(InvalidRequestError, match="attribute name") as caught:
        await publish(pubsub, new_name("bad-key"), b"x", **{key: "v"})
    assert caught.value.field == key


# --- delivery -------------------------------------------------------------------------


async def test_message_of_a_topic_without_handler_is_delivered_once_one_subscribes(
    driver: Driver,
) -> None:
    """Upstream deletes it; here it stays in the queue until its topic has a handler."""
    pubsub = await driver()
    kept_topic, later_topic = new_name("kept"), new_name("later")
    kept = Inbox()
    await subscribe(pubsub, kept_topic, kept)
    await (await subscribe(pubsub, later_topic, Inbox())).cancel()  # the queue still gets it

    await publish(pubsub, later_topic, b"waiting for a handler")
    await publish(pubsub, kept_topic, b"marker")
    await kept.wait_for_acked(1, TIMEOUT)  # the loop has run past the unhandled message
    await asyncio.sleep(1.5)

    later = Inbox()
    await subscribe(pubsub, later_topic, later)
    await later.wait_for_acked(1, TIMEOUT)
    assert later.payloads == [b"waiting for a handler"]
    assert later.acked[0].delivery_count >= 2  # it was received (and given back) before


async def test_failed_message_is_redelivered_with_a_growing_delivery_count(
    driver: Driver,
) -> None:
    async def fail_twice(message: Message, seen: int) -> None:
        if seen <= 2:
            raise RuntimeError("not yet")

    pubsub, topic, inbox = await driver(), new_name("retry"), Inbox(fail_twice)
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"again")
    await inbox.wait_for_acked(1, TIMEOUT)
    assert [m.delivery_count for m in inbox.calls] == [1, 2, 3]
    assert len({m.id for m in inbox.calls}) == 1


async def test_slow_handler_keeps_its_message_invisible_and_gets_no_duplicate(
    driver: Driver,
) -> None:
    async def slow(message: Message, seen: int) -> None:
        await asyncio.sleep(2.2)  # longer than the 1 s visibility timeout

    pubsub, topic, inbox = await driver(), new_name("slow"), Inbox(slow)
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"slow")
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(1.5)
    assert len(inbox.calls) == 1


async def test_exhausted_message_without_dead_letter_is_deleted(driver: Driver, sqs: Any) -> None:
    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("never")

    pubsub, topic, inbox = await driver(messageRetryLimit="1"), new_name("gone"), Inbox(always_fail)
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"poison")
    await inbox.wait_until(lambda: len(inbox.calls) >= 2, TIMEOUT, "two deliveries")
    await asyncio.sleep(2)
    assert len(inbox.calls) == 2
    url = (await asyncio.to_thread(sqs.get_queue_url, QueueName=pubsub.queue_name))["QueueUrl"]
    counts = await asyncio.to_thread(
        sqs.get_queue_attributes,
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    assert set(counts["Attributes"].values()) == {"0"}


async def test_dead_letter_queue_receives_the_message_after_the_receive_limit(
    driver: Driver, sqs: Any
) -> None:
    dead_letters = new_name("dlq")

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("never")

    pubsub = await driver(sqsDeadLettersQueueName=dead_letters, messageReceiveLimit="2")
    topic, inbox = new_name("poisoned"), Inbox(always_fail)
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"poison", reason="test")

    async def dead_lettered() -> list[dict[str, Any]]:
        while True:
            found = await asyncio.to_thread(receive_raw, sqs, dead_letters, 1)
            if found:
                return found

    found = await asyncio.wait_for(dead_lettered(), TIMEOUT)
    envelope = json.loads(found[0]["Body"])
    assert envelope["Message"] == "poison"
    assert envelope["MessageAttributes"]["reason"]["Value"] == "test"
    assert [m.delivery_count for m in inbox.calls] == [1, 2]


async def test_dead_letter_topic_of_the_subscription_gets_the_message_with_its_metadata(
    driver: Driver,
) -> None:
    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("never")

    pubsub = await driver(messageRetryLimit="1")
    topic, dead_topic, dead = new_name("failing"), new_name("dead"), Inbox()
    await subscribe(pubsub, dead_topic, dead)
    await pubsub.subscribe(
        SubscribeRequest(topic=topic, dead_letter_topic=dead_topic), Inbox(always_fail)
    )
    await publish(pubsub, topic, b"poison", reason="test")
    await dead.wait_for_acked(1, TIMEOUT)
    assert dead.acked[0].data == b"poison"
    assert dead.acked[0].metadata["reason"] == "test"


async def test_a_second_handler_for_the_same_topic_on_one_component_is_refused(
    driver: Driver,
) -> None:
    pubsub, topic = await driver(), new_name("twice")
    await subscribe(pubsub, topic, Inbox())
    with pytest.raises(InvalidRequestError, match="consumerID"):
        await subscribe(pubsub, topic, Inbox())


async def test_components_with_one_consumer_id_share_the_work(driver: Driver) -> None:
    first, second = await driver(name="one"), await driver(name="two")
    # One inbox for both: either component may handle the last message, and the inbox's
    # wait wakes on whichever records it.
    topic, inbox = new_name("shared"), Inbox()
    await subscribe(first, topic, inbox)
    await subscribe(second, topic, inbox)
    sent = [f"m-{i}".encode() for i in range(30)]
    await publish(first, topic, *sent)
    await inbox.wait_until(lambda: set(inbox.payloads) == set(sent), TIMEOUT, "every message")
    assert set(inbox.payloads) == set(sent)


async def test_concurrency_limit_bounds_simultaneous_handler_calls(driver: Driver) -> None:
    running, most = 0, 0

    async def busy(message: Message, seen: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    pubsub, topic, inbox = await driver(concurrencyLimit="3"), new_name("limit"), Inbox(busy)
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, *[f"m-{i}".encode() for i in range(15)])
    await inbox.wait_for_acked(15, TIMEOUT)
    assert most <= 3


# --- FIFO -----------------------------------------------------------------------------


async def test_fifo_keeps_order_within_each_message_group(driver: Driver) -> None:
    failed_once: set[bytes] = set()

    async def jittery(message: Message, seen: int) -> None:
        await asyncio.sleep(random.uniform(0, 0.02))
        if message.data == b"g1-3" and message.data not in failed_once:
            failed_once.add(message.data)
            raise RuntimeError("the group must wait for this one")

    # 3 s: a visibility that lapses on a loaded machine would let moto hand out the group again
    pubsub = await driver(fifo="true", concurrencyLimit="10", messageVisibilityTimeout="3")
    assert pubsub.queue_name.endswith(".fifo")
    topic, inbox = new_name("fifo"), Inbox(jittery)
    await subscribe(pubsub, topic, inbox)
    for i in range(8):
        for group in ("g1", "g2"):
            await publish(pubsub, topic, f"{group}-{i}".encode(), fifoMessageGroupID=group)
    await inbox.wait_for_acked(16, TIMEOUT)
    for group in ("g1", "g2"):
        order = [p for p in inbox.payloads if p.startswith(group.encode())]
        assert order == [f"{group}-{i}".encode() for i in range(8)]


async def test_fifo_group_defaults_to_the_component_setting(driver: Driver) -> None:
    # 3 s visibility, as above: a lapse on a loaded machine would redeliver out of order
    pubsub = await driver(
        fifo="true",
        fifoMessageGroupID="one-group",
        concurrencyLimit="10",
        messageVisibilityTimeout="3",
    )
    topic, inbox = new_name("fifo-default"), Inbox()
    await subscribe(pubsub, topic, inbox)
    sent = [f"m-{i}".encode() for i in range(10)]
    await publish(pubsub, topic, *sent)
    await inbox.wait_for_acked(10, TIMEOUT)
    assert inbox.payloads == sent


async def test_a_subscription_stopped_by_close_deletes_what_its_handlers_finish(
    driver: Driver, sqs: Any
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(message: Message, seen: int) -> None:
        started.set()
        await release.wait()

    pubsub, topic, inbox = await driver(), new_name("closing"), Inbox(slow)
    queue = pubsub.queue_name
    await subscribe(pubsub, topic, inbox)
    await publish(pubsub, topic, b"finishing")
    await asyncio.wait_for(started.wait(), TIMEOUT)
    closing = asyncio.create_task(pubsub.close())
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.wait_for(closing, TIMEOUT)
    assert inbox.payloads == [b"finishing"]
    url = (await asyncio.to_thread(sqs.get_queue_url, QueueName=queue))["QueueUrl"]
    counts = await asyncio.to_thread(
        sqs.get_queue_attributes,
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    assert set(counts["Attributes"].values()) == {"0"}


# --- a consumer process killed mid-stream ---------------------------------------------

_CONSUMER = """
import asyncio, sys
from mechakit.components.pubsub.aws_snssqs import SnsSqsPubSub
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import SubscribeRequest

endpoint, region, key, secret, topic, consumer, out = sys.argv[1:8]

async def main() -> None:
    pubsub = SnsSqsPubSub()
    await pubsub.init(ComponentMetadata("fault", "pubsub.aws.snssqs", {
        "endpoint": endpoint, "region": region, "accessKey": key, "secretKey": secret,
        "consumerID": consumer, "messageVisibilityTimeout": "2", "messageWaitTimeSeconds": "1",
        "concurrencyLimit": "5"}))
    with open(out, "a", buffering=1) as log:
        async def handle(message) -> None:
            await asyncio.sleep(0.05)
            log.write(message.data.decode() + "\\n")
        await pubsub.subscribe(SubscribeRequest(topic=topic), handle)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.fault
async def test_messages_of_a_killed_consumer_process_are_all_handled_by_its_successor(
    driver: Driver, moto: BackendInfo, sqs: Any, tmp_path: Path
) -> None:
    topic, consumer, handled_file = new_name("crash"), new_name("crash"), tmp_path / "handled"
    publisher = await driver(consumerID=new_name("publisher"))
    await (await subscribe(await driver(consumerID=consumer), topic, Inbox())).cancel()
    sent = [f"m-{i}" for i in range(60)]
    await publish(publisher, topic, *[s.encode() for s in sent[:40]])

    v = moto.values
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CONSUMER, v["endpoint"], v["region"], v["accessKey"],
        v["secretKey"], topic, consumer, str(handled_file),
    )  # fmt: skip
    try:

        async def handled_some() -> None:
            while not (handled_file.exists() and len(_lines(handled_file)) >= 10):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # another process writes the file: nothing to await

        await asyncio.wait_for(handled_some(), TIMEOUT)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    held = await asyncio.to_thread(_invisible, sqs, consumer)
    await publish(publisher, topic, *[s.encode() for s in sent[40:]])
    by_dead_process = set(_lines(handled_file))
    assert held > 0, "the killed process held no message"
    assert len(by_dead_process) < len(sent)

    successor, inbox = await driver(consumerID=consumer), Inbox()
    await subscribe(successor, topic, inbox)

    def everything_handled() -> bool:
        return by_dead_process | {m.decode() for m in inbox.payloads} == set(sent)

    await inbox.wait_until(everything_handled, TIMEOUT, "every message to be handled")


def _invisible(sqs: Any, queue_name: str) -> int:
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    reply = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )
    return int(reply["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


def _lines(path: Path) -> list[str]:
    """Complete lines only: the process may have died in the middle of writing one."""
    return path.read_text().split("\n")[:-1]
