"""pubsub.jetstream and pubsub.natsstreaming beyond the conformance suite: competing
consumers and fan-out by app id with no extra metadata, redelivery with backOff, a
subscriber process killed mid-stream, and the old NATS Streaming YAML.

Runs against the "nats" conformance backend (``MECHAKIT_TEST_NATS_URL``, else a local
``nats-server -js``); skipped with the reason when neither is available.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.pubsub.jetstream import JetStreamPubSub, JetStreamSettings
from mechakit.conformance.backends import (
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
    provision,
)
from mechakit.conformance.suites.pubsub import Inbox
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ConnectionFailedError, MetadataError, MissingDependencyError
from mechakit.core.pubsub import Message, PublishRequest, SubscribeRequest
from mechakit.core.registry import default_registry

TIMEOUT = 10.0
Make = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def nats_server() -> Iterator[BackendInfo]:
    try:
        info = provision("nats")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest_asyncio.fixture
async def make(nats_server: BackendInfo) -> AsyncIterator[Make]:
    """``await make("pubsub.jetstream", app_id="orders", **metadata)``: open, closed after."""
    made: list[Any] = []

    async def build(type_: str, app_id: str = "test-app", **metadata: str) -> Any:
        driver = default_registry().create(type_)
        properties = {"natsURL": nats_server.values["url"], **metadata}
        await driver.init(
            ComponentMetadata(name="nats", type=type_, properties=properties, app_id=app_id)
        )
        made.append(driver)
        return driver

    yield build
    for driver in reversed(made):
        await driver.close()


def topic(label: str) -> str:
    return f"test-{label}-{uuid.uuid4().hex[:8]}"


async def publish(driver: Any, name: str, datas: list[bytes]) -> None:
    for data in datas:
        await driver.publish(PublishRequest(topic=name, data=data))


def slow(seconds: float) -> Callable[[Message, int], Awaitable[None]]:
    async def behaviour(message: Message, seen: int) -> None:
        await asyncio.sleep(seconds)

    return behaviour


async def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}")
        await asyncio.sleep(0.05)


# --- settings -------------------------------------------------------------------------


def test_dapr_concurrency_words_and_back_off_list() -> None:
    single = JetStreamSettings.from_metadata(
        {"natsURL": "nats://x", "concurrency": "single"}, component="x"
    )
    parallel = JetStreamSettings.from_metadata(
        {"natsURL": "nats://x", "concurrency": "parallel", "backOff": "200ms, 1s"}, component="x"
    )
    assert single.concurrency == 1
    assert parallel.concurrency == 10
    assert [d.total_seconds() for d in parallel.back_off] == [0.2, 1.0]
    upstream = JetStreamSettings.from_metadata({"natsURL": "x", "maxDeliver": "4"}, component="x")
    assert upstream.max_deliveries == 4


async def test_deliver_policy_sequence_needs_start_sequence(nats_server: BackendInfo) -> None:
    driver = JetStreamPubSub()
    with pytest.raises(MetadataError, match="startSequence"):
        await driver.init(
            ComponentMetadata(
                "nats",
                "pubsub.jetstream",
                {"natsURL": nats_server.values["url"], "deliverPolicy": "sequence"},
                app_id="a",
            )
        )


async def test_jwt_and_seed_key_go_together(nats_server: BackendInfo) -> None:
    driver = JetStreamPubSub()
    with pytest.raises(MetadataError, match="seedKey"):
        await driver.init(
            ComponentMetadata(
                "nats", "pubsub.jetstream",
                {"natsURL": nats_server.values["url"], "jwt": "eyJ0eXAi"}, app_id="a",
            )
        )  # fmt: skip


async def test_jwt_credentials_without_nkeys_say_what_to_install(
    nats_server: BackendInfo,
) -> None:
    if importlib.util.find_spec("nkeys") is not None:
        pytest.skip("nkeys is installed here")
    driver = JetStreamPubSub()
    with pytest.raises(MissingDependencyError, match="pip install nkeys"):
        await driver.init(
            ComponentMetadata(
                "nats", "pubsub.jetstream",
                {"natsURL": nats_server.values["url"], "jwt": "eyJ0", "seedKey": "SUAB"},
                app_id="a",
            )
        )  # fmt: skip


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, ("new", None)),
        ({"deliverAll": "true"}, ("all", None)),
        ({"startWithLastReceived": "true"}, ("last", None)),
        ({"startAtSequence": "5"}, ("sequence", 5)),
        ({"startAtTimeDelta": "10m"}, ("time", None)),
        ({"startAtTime": "2026-01-02T03:04:05Z"}, ("time", None)),
    ],
)
async def test_natsstreaming_start_options_map_to_deliver_policies(
    make: Make, metadata: dict[str, str], expected: tuple[str, int | None]
) -> None:
    driver = await make("pubsub.natsstreaming", app_id="orders", **metadata)
    config = driver.config
    assert (config.deliver_policy, config.start_sequence) == expected
    assert (config.start_time is not None) == (expected[0] == "time")
    assert config.consumer == "orders" and not config.per_instance


async def test_deliver_policies_new_and_sequence(make: Make) -> None:
    name = topic("policy")
    publisher = await make("pubsub.jetstream", app_id="publisher")
    await publish(publisher, name, [b"one", b"two", b"three"])
    new = await make("pubsub.jetstream", app_id="new", deliverPolicy="new")
    from_two = await make(
        "pubsub.jetstream", app_id="seq", deliverPolicy="sequence", startSequence="2"
    )
    inbox_new, inbox_seq = Inbox(), Inbox()
    await new.subscribe(SubscribeRequest(topic=name), inbox_new)
    await from_two.subscribe(SubscribeRequest(topic=name), inbox_seq)
    await publish(publisher, name, [b"four"])
    await inbox_new.wait_for_acked(1, TIMEOUT)
    await inbox_seq.wait_for_acked(3, TIMEOUT)
    await asyncio.sleep(0.5)
    assert inbox_new.payloads == [b"four"]
    assert inbox_seq.payloads == [b"two", b"three", b"four"]


# --- consumers by app id --------------------------------------------------------------


async def test_instances_of_one_app_id_share_the_messages_each_once(make: Make) -> None:
    name, sent = topic("compete"), [f"m-{i}".encode() for i in range(40)]
    first = await make("pubsub.jetstream", app_id="orders", concurrency="1")
    second = await make("pubsub.jetstream", app_id="orders", concurrency="1")
    inbox_a, inbox_b = Inbox(slow(0.02)), Inbox(slow(0.02))
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(first, name, sent)
    await wait_for(lambda: len(inbox_a.acked) + len(inbox_b.acked) >= len(sent), "all messages")
    await asyncio.sleep(1.0)
    counts = Counter(inbox_a.payloads + inbox_b.payloads)
    assert set(counts) == set(sent)
    assert max(counts.values()) == 1, "a message was handled twice"
    assert inbox_a.acked and inbox_b.acked, "one instance got all the work"


async def test_different_app_ids_each_get_every_message(make: Make) -> None:
    name, sent = topic("fanout"), [f"m-{i}".encode() for i in range(10)]
    orders = await make("pubsub.jetstream", app_id="orders")
    billing = await make("pubsub.jetstream", app_id="billing")
    inbox_a, inbox_b = Inbox(), Inbox()
    await orders.subscribe(SubscribeRequest(topic=name), inbox_a)
    await billing.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(orders, name, sent)
    await inbox_a.wait_for_acked(len(sent), TIMEOUT)
    await inbox_b.wait_for_acked(len(sent), TIMEOUT)
    assert sorted(inbox_a.payloads) == sorted(inbox_b.payloads) == sorted(sent)


async def test_messages_published_before_the_first_subscriber_are_delivered(make: Make) -> None:
    name = topic("early")
    driver = await make("pubsub.jetstream")
    await publish(driver, name, [b"early"])
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_for_acked(1, TIMEOUT)
    assert inbox.payloads == [b"early"]


async def test_create_stream_false_refuses_a_topic_without_stream(make: Make) -> None:
    driver = await make("pubsub.jetstream", createStream="false")
    with pytest.raises(MetadataError, match="createStream"):
        await driver.publish(PublishRequest(topic=topic("nostream"), data=b"x"))


async def test_named_stream_is_created_and_gets_each_topic(make: Make) -> None:
    stream = f"orders-{uuid.uuid4().hex[:6]}"
    driver = await make("pubsub.jetstream", streamName=stream)
    names = [topic("one"), topic("two")]
    inboxes = [Inbox(), Inbox()]
    for name, inbox in zip(names, inboxes, strict=True):
        await driver.subscribe(SubscribeRequest(topic=name), inbox)
        await publish(driver, name, [name.encode()])
    for name, inbox in zip(names, inboxes, strict=True):
        await inbox.wait_for_acked(1, TIMEOUT)
        assert inbox.payloads == [name.encode()]
    info = await driver._js.stream_info(stream)
    assert set(info.config.subjects) == set(names)


def _nats_binary() -> str | None:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    return binary if Path(binary).exists() else None


def _certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
            "-keyout", f"{who}.key", "-out", f"{who}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{who}.pem")  # fmt: skip


async def test_mutual_tls_with_the_upstream_metadata_names(make: Make, tmp_path: Path) -> None:
    binary = _nats_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs nats-server and openssl")
    await asyncio.to_thread(_certificates, tmp_path)
    port = free_port()
    argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js"),
            "--tlsverify", "--tlscert", str(tmp_path / "server.pem"),
            "--tlskey", str(tmp_path / "server.key"), "--tlscacert", str(tmp_path / "ca.pem")]  # fmt: skip
    server = LocalProcess(argv, port, tmp_path, "nats-tls")
    await asyncio.to_thread(server.start)
    try:
        driver = await make(
            "pubsub.jetstream",
            natsURL=f"tls://127.0.0.1:{port}",
            tls_client_cert=str(tmp_path / "client.pem"),
            tls_client_key=str(tmp_path / "client.key"),
            ca=str(tmp_path / "ca.pem"),
        )
        name, inbox = topic("tls"), Inbox()
        await driver.subscribe(SubscribeRequest(topic=name), inbox)
        await publish(driver, name, [b"secret"])
        await inbox.wait_for_acked(1, TIMEOUT)
        await driver.close()
        without_cert = JetStreamPubSub()
        with pytest.raises(ConnectionFailedError):
            await without_cert.init(
                ComponentMetadata(
                    "nats", "pubsub.jetstream",
                    {"natsURL": f"tls://127.0.0.1:{port}", "ca": str(tmp_path / "ca.pem")},
                    app_id="a",
                )
            )  # fmt: skip
    finally:
        await asyncio.to_thread(server.stop)


# --- redelivery -----------------------------------------------------------------------


async def test_failed_handler_is_nakked_and_redelivered_after_the_back_off(make: Make) -> None:
    calls: list[float] = []

    async def fail_first(message: Message, seen: int) -> None:
        calls.append(time.monotonic())
        if seen == 1:
            raise RuntimeError("first delivery fails")

    name, inbox = topic("retry"), Inbox(fail_first)
    driver = await make("pubsub.jetstream", backOff="700ms")
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, [b"again"])
    await inbox.wait_for_acked(1, TIMEOUT)
    assert [m.delivery_count for m in inbox.calls] == [1, 2]
    assert calls[1] - calls[0] >= 0.6, "redelivered before the backOff delay"


async def test_exhausted_message_without_dead_letter_topic_is_dropped(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    async def always_fail(message: Message, seen: int) -> None:
        raise RuntimeError("always fails")

    name, inbox = topic("exhaust"), Inbox(always_fail)
    driver = await make("pubsub.jetstream", maxDeliver="2", backOff="50ms")
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, [b"poison"])
    await wait_for(lambda: len(inbox.calls) >= 2, "two deliveries")
    await asyncio.sleep(1.0)
    assert len(inbox.calls) == 2


async def test_a_handler_longer_than_ack_wait_is_not_redelivered_meanwhile(make: Make) -> None:
    name = topic("long")
    first = await make("pubsub.jetstream", app_id="orders", ackWait="1s", concurrency="1")
    second = await make("pubsub.jetstream", app_id="orders", ackWait="1s", concurrency="1")
    inbox_a, inbox_b = Inbox(slow(2.5)), Inbox(slow(2.5))
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(first, name, [b"slow-1", b"slow-2"])
    await wait_for(lambda: len(inbox_a.acked) + len(inbox_b.acked) >= 2, "both messages")
    await asyncio.sleep(1.5)
    assert sorted(m.data for m in inbox_a.calls + inbox_b.calls) == [b"slow-1", b"slow-2"]


async def test_subscription_carries_on_after_a_server_restart(
    make: Make, nats_server: BackendInfo
) -> None:
    if nats_server.restart is None:
        pytest.skip("the server is not ours to restart")
    name, inbox = topic("restart"), Inbox()
    driver = await make("pubsub.jetstream")
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await publish(driver, name, [b"before"])
    await inbox.wait_for_acked(1, TIMEOUT)
    await asyncio.to_thread(nats_server.restart)

    async def publish_after() -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                await publish(driver, name, [b"after"])
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    await publish_after()
    await inbox.wait_until(lambda: b"after" in inbox.payloads, TIMEOUT, "b'after'")


# --- a subscriber process killed mid-stream -------------------------------------------

_SUBSCRIBER = """
import asyncio, sys
from mechakit.components.pubsub.jetstream import JetStreamPubSub
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import SubscribeRequest

url, name, app, out = sys.argv[1:5]

async def main() -> None:
    driver = JetStreamPubSub()
    await driver.init(ComponentMetadata("fault", "pubsub.jetstream", {
        "natsURL": url, "concurrency": "1", "ackWait": "1s"}, app_id=app))
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
    make: Make, nats_server: BackendInfo, tmp_path: Path
) -> None:
    name, app, handled_file = topic("crash"), f"crash-{uuid.uuid4().hex[:6]}", tmp_path / "h"
    publisher = await make("pubsub.jetstream", app_id="publisher")
    sent = [f"m-{i}" for i in range(100)]
    await publish(publisher, name, [s.encode() for s in sent[:60]])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBSCRIBER, nats_server.values["url"], name, app,
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
    await publish(publisher, name, [s.encode() for s in sent[60:]])
    by_dead_process = set(_lines(handled_file))
    assert len(by_dead_process) < len(sent)
    stream = await publisher._js.find_stream_name_by_subject(name)
    held = await publisher._js.consumer_info(stream, f"{app}-{name}")
    assert held.num_ack_pending > 0, "the killed process held no unacked message"

    successor = await make("pubsub.jetstream", app_id=app, ackWait="1s")
    inbox = Inbox()
    await successor.subscribe(SubscribeRequest(topic=name), inbox)
    await inbox.wait_until(
        lambda: by_dead_process | {m.decode() for m in inbox.payloads} == set(sent),
        TIMEOUT,
        "every message to be handled",
    )


def _lines(path: Path) -> list[str]:
    """Complete lines only: the process may have died in the middle of writing one."""
    return path.read_text().split("\n")[:-1]


# --- pubsub.natsstreaming -------------------------------------------------------------

STAN = {
    "natsStreamingClusterID": "test-cluster",
    "durableSubscriptionName": "my-durable",
    "deliverAll": "true",
    "ackWaitTime": "2s",
    "maxInFlight": "20",
}


async def test_natsstreaming_queue_group_shares_the_messages_among_instances(
    make: Make,
) -> None:
    name, sent = topic("stanq"), [f"m-{i}".encode() for i in range(30)]
    first = await make("pubsub.natsstreaming", app_id="orders", **STAN)
    second = await make("pubsub.natsstreaming", app_id="orders", **STAN)
    inbox_a, inbox_b = Inbox(slow(0.02)), Inbox(slow(0.02))
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(first, name, sent)
    await wait_for(lambda: len(inbox_a.acked) + len(inbox_b.acked) >= len(sent), "all messages")
    await asyncio.sleep(1.0)
    counts = Counter(inbox_a.payloads + inbox_b.payloads)
    assert set(counts) == set(sent) and max(counts.values()) == 1


async def test_natsstreaming_topic_mode_gives_every_instance_every_message(make: Make) -> None:
    name, sent = topic("stant"), [f"m-{i}".encode() for i in range(10)]
    stan = {**STAN, "subscriptionType": "topic"}
    first = await make("pubsub.natsstreaming", app_id="orders", **stan)
    second = await make("pubsub.natsstreaming", app_id="orders", **stan)
    inbox_a, inbox_b = Inbox(), Inbox()
    await first.subscribe(SubscribeRequest(topic=name), inbox_a)
    await second.subscribe(SubscribeRequest(topic=name), inbox_b)
    await publish(first, name, sent)
    await inbox_a.wait_for_acked(len(sent), TIMEOUT)
    await inbox_b.wait_for_acked(len(sent), TIMEOUT)
    assert sorted(inbox_a.payloads) == sorted(inbox_b.payloads) == sorted(sent)


async def test_natsstreaming_logs_one_deprecation_warning_naming_jetstream(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    name = topic("stanw")
    driver = await make("pubsub.natsstreaming", app_id="orders", **STAN)
    inbox = Inbox()
    await driver.subscribe(SubscribeRequest(topic=name), inbox)
    await driver.subscribe(SubscribeRequest(topic=topic("stanw2")), Inbox())
    await publish(driver, name, [b"x"])
    await inbox.wait_for_acked(1, TIMEOUT)
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1
    assert "pubsub.jetstream" in warnings[0].getMessage()
