"""pubsub.mqtt3 beyond the conformance suite, on MQTT 3.1.1 (the default): wildcards,
competing consumers and fan-out by app id, no PUBACK for a failed handler, a subscriber
process killed with a message in its handler, a broker restart, bad metadata.

Runs against the "mosquitto" conformance backend (``MECHAKIT_TEST_MQTT_URL``, else a local
``mosquitto`` on a free port with persistence); skipped with the reason when neither is
available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components._shared.mqtt import MQTTSettings
from mechakit.components._shared.mqtt.settings import (
    INSTANCE_ENV,
    instance_identity,
    release_identity,
)
from mechakit.components.pubsub.mqtt3 import MQTTPubSub
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.conformance.backends_mqtt import MosquittoBackend
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ConnectionFailedError, InvalidRequestError, MetadataError
from mechakit.core.pubsub import Message, PublishRequest, PubSubFeature, SubscribeRequest
from mechakit.core.registry import default_registry

TIMEOUT = 10.0
Make = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def broker() -> Iterator[BackendInfo]:
    try:
        info = provision("mosquitto")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest_asyncio.fixture
async def make(broker: BackendInfo) -> AsyncIterator[Make]:
    """``await make(app_id="orders", name="mqtt", **metadata)``: open, closed after."""
    made: list[Any] = []

    async def build(app_id: str = "test-app", name: str = "mqtt", **metadata: str) -> Any:
        driver = default_registry().create("pubsub.mqtt3")
        properties = {"url": broker.values["url"], **metadata}
        await driver.init(
            ComponentMetadata(name=name, type="pubsub.mqtt3", properties=properties, app_id=app_id)
        )
        made.append(driver)
        return driver

    yield build
    for driver in reversed(made):
        await driver.close()


def topic(label: str) -> str:
    return f"test/{label}/{uuid.uuid4().hex[:8]}"


async def publish(driver: Any, name: str, datas: list[bytes]) -> None:
    for data in datas:
        await driver.publish(PublishRequest(topic=name, data=data))


async def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}")
        await asyncio.sleep(0.05)


async def init_fails(broker: BackendInfo, **metadata: str) -> Exception:
    driver = MQTTPubSub()
    with pytest.raises((MetadataError, ConnectionFailedError)) as caught:
        await driver.init(
            ComponentMetadata(
                "bad", "pubsub.mqtt3", {"url": broker.values["url"], **metadata}, app_id="a"
            )
        )
    return caught.value


# --- metadata -------------------------------------------------------------------------


async def test_bad_metadata_names_the_component_and_field(broker: BackendInfo) -> None:
    for metadata, field in [
        ({"url": "http://127.0.0.1:1"}, "url"),
        ({"qos": "3"}, "qos"),
        ({"clientCert": "-----BEGIN CERTIFICATE-----"}, "clientKey"),
        ({"cleanSession": "maybe"}, "cleanSession"),
    ]:
        error = await init_fails(broker, **metadata)
        assert isinstance(error, MetadataError), metadata
        assert error.field == field and error.component is not None, (metadata, error)


async def test_without_consumer_id_or_app_id_init_says_consumer_id(broker: BackendInfo) -> None:
    driver = MQTTPubSub()
    with pytest.raises(MetadataError, match="consumerID"):
        await driver.init(ComponentMetadata("m", "pubsub.mqtt3", {"url": broker.values["url"]}))


async def test_unreachable_broker_fails_init() -> None:
    driver = MQTTPubSub()
    with pytest.raises(ConnectionFailedError):
        await driver.init(
            ComponentMetadata(
                "m", "pubsub.mqtt3", {"url": "tcp://127.0.0.1:9", "connectTimeout": "1s"},
                app_id="a",
            )
        )  # fmt: skip


async def test_many_concurrent_publishes_log_no_warning(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Publishes waiting for their PUBACK are routine: no log line per publish."""
    publisher = await make(app_id="busy")
    name = topic("busy")
    with caplog.at_level(logging.WARNING):
        await asyncio.gather(*(publisher.publish(PublishRequest(name, b"x")) for _ in range(64)))
    assert not [r for r in caplog.records if "pending publish" in r.getMessage()]


async def test_publishing_to_a_wildcard_is_an_invalid_request(make: Make) -> None:
    driver = await make()
    with pytest.raises(InvalidRequestError):
        await driver.publish(PublishRequest(topic="a/+/b", data=b"x"))
    with pytest.raises(InvalidRequestError):
        await driver.subscribe(SubscribeRequest(topic="a/#/b"), Inbox())


async def test_a_topic_has_one_handler_per_component_until_cancelled(make: Make) -> None:
    driver, name = await make(), topic("twice")
    first = await driver.subscribe(SubscribeRequest(topic=name), Inbox())
    with pytest.raises(InvalidRequestError, match="already has a handler"):
        await driver.subscribe(SubscribeRequest(topic=name), Inbox())
    await first.cancel()
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, [b"second-handler"])
    await inbox.wait_for_acked(1, TIMEOUT)


def test_the_backend_takes_the_broker_url_from_the_environment() -> None:
    backend = MosquittoBackend()
    info = backend.from_environment({"MECHAKIT_TEST_MQTT_URL": "mqtt://broker:1884"})
    assert info is not None and info.values["url"] == "tcp://broker:1884"
    assert backend.parse_address("broker")["port"] == "1883"
    with pytest.raises(BackendUnavailable):
        backend.parse_address("http://broker:1883")


def test_client_ids_are_stable_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    def identity(**metadata: str) -> str:
        settings = MQTTSettings.from_metadata({"url": "tcp://x", **metadata}, component="x")
        return instance_identity(settings, "component")

    monkeypatch.delenv(INSTANCE_ENV, raising=False)
    first = identity()
    release_identity(first)
    again = identity()
    release_identity(again)
    assert again == first != identity(instanceID="pod-1")
    assert identity(instanceID="pod 1/a") == "pod_1_a"
    monkeypatch.setenv(INSTANCE_ENV, "replica-2")
    assert identity() == "replica-2"
    assert identity(instanceID="pod-1") == "pod-1"


def test_live_instances_on_one_host_get_different_ids_and_a_restart_gets_its_own_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two instances started from one folder must not share a client id (the broker would
    drop one of them every time the other connects); a restarted one gets its old id."""
    monkeypatch.delenv(INSTANCE_ENV, raising=False)
    monkeypatch.setenv("MECHAKIT_HOME", str(tmp_path))
    settings = MQTTSettings.from_metadata({"url": "tcp://x"}, component="x")
    holder = subprocess.Popen(  # another live instance, holding the first slot
        [sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert holder.stdout is not None
        theirs = holder.stdout.readline().strip()
        ours = instance_identity(settings, "component")
        assert ours != theirs and ours.startswith(theirs)
        release_identity(ours)
    finally:
        holder.kill()  # as a crash: the OS releases its slot
        holder.wait()
    restarted = instance_identity(settings, "component")
    try:
        assert restarted == theirs
    finally:
        release_identity(restarted)


_HOLDER = """
import time
from mechakit.components._shared.mqtt.settings import MQTTSettings, instance_identity
settings = MQTTSettings.from_metadata({"url": "tcp://x"}, component="x")
print(instance_identity(settings, "component"), flush=True)
time.sleep(60)
"""


# --- wildcards, competing consumers, fan-out ------------------------------------------


async def test_wildcard_subscriptions_get_matching_topics_with_the_real_topic(
    make: Make,
) -> None:
    driver = await make()
    assert PubSubFeature.SUBSCRIBE_WILDCARDS in driver.features()
    base = topic("wild")
    plus, hash_ = Inbox(), Inbox()
    await driver.subscribe(SubscribeRequest(topic=f"{base}/+/temp"), plus)
    await driver.subscribe(SubscribeRequest(topic=f"{base}/room/#"), hash_)
    await driver.publish(PublishRequest(topic=f"{base}/kitchen/temp", data=b"k"))
    await driver.publish(PublishRequest(topic=f"{base}/room/a/b", data=b"deep"))
    await driver.publish(PublishRequest(topic=f"{base}/kitchen/humidity", data=b"no"))
    await plus.wait_for_acked(1, TIMEOUT)
    await hash_.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(0.5)
    assert [(m.topic, m.data) for m in plus.acked] == [(f"{base}/kitchen/temp", b"k")]
    assert [(m.topic, m.data) for m in hash_.acked] == [(f"{base}/room/a/b", b"deep")]
    assert hash_.acked[0].metadata["topic"] == f"{base}/room/a/b"


async def test_instances_of_one_app_id_share_the_messages_each_once(make: Make) -> None:
    name = topic("share")
    first = await make(app_id="shared-app", name="one")
    second = await make(app_id="shared-app", name="two")
    inbox_a, inbox_b = Inbox(), Inbox()
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    sent = [f"s-{i}".encode() for i in range(20)]
    await publish(first, name, sent)
    await wait_for(lambda: len(inbox_a.acked) + len(inbox_b.acked) >= 20, "20 messages")
    await asyncio.sleep(0.5)
    assert sorted(inbox_a.payloads + inbox_b.payloads) == sorted(sent)
    assert inbox_a.payloads and inbox_b.payloads, "one instance got nothing"


async def test_different_app_ids_each_get_every_message(make: Make) -> None:
    name = topic("fan")
    first, second = await make(app_id="app-one"), await make(app_id="app-two")
    inbox_a, inbox_b = Inbox(), Inbox()
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    sent = [f"f-{i}".encode() for i in range(5)]
    await publish(first, name, sent)
    await inbox_a.wait_for_acked(5, TIMEOUT)
    await inbox_b.wait_for_acked(5, TIMEOUT)
    assert sorted(inbox_a.payloads) == sorted(inbox_b.payloads) == sent


# --- acks only after success ----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_failed_message_is_not_acked_so_the_next_session_gets_it(
    make: Make, protocol: str
) -> None:
    """The handler keeps failing, then the component closes: nothing was PUBACKed, so the
    broker hands the message to the next client with that client id (same session)."""
    name, app = topic("unacked"), f"unacked-{uuid.uuid4().hex[:6]}"

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("not today")

    first = await make(app_id=app, maxDeliveries="100", protocolVersion=protocol)
    failing = Inbox(always_fail)
    await first.subscribe(SubscribeRequest(topic=name), failing)
    await publish(first, name, [b"precious"])
    await failing.wait_until(lambda: len(failing.calls) >= 2, TIMEOUT, "a redelivery in process")
    assert [m.delivery_count for m in failing.calls[:2]] == [1, 2]
    await first.close()

    successor = await make(app_id=app, protocolVersion=protocol)
    inbox = Inbox()
    await successor.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)
    assert inbox.payloads == [b"precious"]
    assert inbox.acked[0].delivery_count >= 2  # the broker's DUP flag
    await asyncio.sleep(0.5)
    assert len(inbox.calls) == 1


async def test_exhausted_message_goes_to_the_dead_letter_topic(make: Make) -> None:
    name, dead_name = topic("poison"), topic("dead")

    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("poison")

    driver = await make(backOffMaxRetries="1", deadLetterTopic=dead_name)
    failing, dead = Inbox(always_fail), Inbox()
    await driver.subscribe(SubscribeRequest(topic=dead_name), dead)
    await driver.subscribe(SubscribeRequest(topic=name), failing)
    await publish(driver, name, [b"bad"])
    await dead.wait_for_acked(1, TIMEOUT)
    assert dead.payloads == [b"bad"]
    assert len(failing.calls) == 2  # backOffMaxRetries 1: one retry


# --- faults ---------------------------------------------------------------------------

_SUBSCRIBER = """
import asyncio, sys
from mechakit.components._shared.mqtt import MQTTSettings
from mechakit.components._shared.mqtt.settings import INSTANCE_ENV, instance_identity
from mechakit.components.pubsub.mqtt3 import MQTTPubSub
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import SubscribeRequest

url, name, app, out = sys.argv[1:5]

async def main() -> None:
    driver = MQTTPubSub()
    await driver.init(ComponentMetadata("fault", "pubsub.mqtt3", {
        "url": url, "concurrency": "1"}, app_id=app))
    with open(out, "a", buffering=1) as log:
        async def handle(message) -> None:
            log.write(message.data.decode() + "\\n")
            await asyncio.Event().wait()  # holds it, unacked, until killed
        await driver.subscribe(SubscribeRequest(topic=name), handle)
        log.write("subscribed\\n")
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.fault
async def test_a_message_in_a_killed_subscribers_handler_goes_to_its_successor(
    make: Make, broker: BackendInfo, tmp_path: Path
) -> None:
    name, app, log = topic("crash"), f"crash-{uuid.uuid4().hex[:6]}", tmp_path / "handled"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBSCRIBER, broker.values["url"], name, app, str(log)
    )
    try:
        await _wait_for_lines(log, ["subscribed"], process)
        publisher = await make(app_id="publisher")
        await publish(publisher, name, [b"in-the-handler"])
        await _wait_for_lines(log, ["subscribed", "in-the-handler"], process)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()

    # Same host, working directory and component name: the same client id, with no setting.
    successor = await make(app_id=app, name="fault")
    inbox = Inbox()
    await successor.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)
    assert inbox.payloads == [b"in-the-handler"]


def _logged(path: Path) -> list[str]:
    """Complete lines only: the process may be in the middle of writing one."""
    return path.read_text().split("\n")[:-1] if path.exists() else []


async def _wait_for_lines(path: Path, lines: list[str], process: Any) -> None:
    deadline = time.monotonic() + 20
    while _logged(path) != lines:
        assert process.returncode is None, "the subscriber process died"
        assert time.monotonic() < deadline, f"the subscriber process did not log {lines}"
        await asyncio.sleep(0.05)


@pytest.mark.fault
async def test_the_subscription_resumes_after_a_broker_restart(
    make: Make, broker: BackendInfo
) -> None:
    """Reconnects and subscribes again. (mosquitto 2.0 does not restore shared
    subscriptions from its persistence file, so what is published after the restart and
    before the subscriber is back is not kept for it there: the test publishes until the
    subscriber is back, then checks that nothing is lost or repeated.)"""
    if broker.restart is None:
        pytest.skip("the broker is not ours to restart")
    name, inbox = topic("restart"), Inbox()
    driver = await make(app_id=f"restart-{uuid.uuid4().hex[:6]}")
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, [b"before"])
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.to_thread(broker.restart)
    deadline = time.monotonic() + TIMEOUT
    while b"probe" not in inbox.payloads:
        assert time.monotonic() < deadline, "the subscription did not resume"
        with contextlib.suppress(ConnectionFailedError):
            await publish(driver, name, [b"probe"])
        await asyncio.sleep(0.2)
    sent = [f"after-{i}".encode() for i in range(10)]
    await publish(driver, name, sent)
    await wait_for(lambda: set(sent) <= set(inbox.payloads), "every message after the restart")
    await asyncio.sleep(0.3)
    assert sorted(p for p in inbox.payloads if p.startswith(b"after")) == sorted(sent)


async def test_clean_session_forgets_what_came_while_away(make: Make) -> None:
    name, app = topic("clean"), f"clean-{uuid.uuid4().hex[:6]}"
    first = await make(app_id=app, cleanSession="true")
    inbox = Inbox()
    await first.subscribe(SubscribeRequest(topic=name), inbox)
    await first.close()
    publisher = await make(app_id="clean-publisher")
    await publish(publisher, name, [b"while-away"])
    later = await make(app_id=app, cleanSession="true")
    await later.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(publisher, name, [b"now"])
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.sleep(0.5)
    assert inbox.payloads == [b"now"]


async def test_persistent_session_keeps_what_came_while_away(make: Make) -> None:
    name, app = topic("kept"), f"kept-{uuid.uuid4().hex[:6]}"
    first = await make(app_id=app)
    inbox = Inbox()
    await first.subscribe(SubscribeRequest(topic=name), inbox)
    await first.close()
    publisher = await make(app_id="kept-publisher")
    await publish(publisher, name, [b"while-away"])
    later = await make(app_id=app)
    await later.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)
    assert inbox.payloads == [b"while-away"]
