"""bindings.mqtt3 against a real broker: output (topic and retain per request), input
(events with their topic, acked only after the handler succeeded, shared among instances),
cancel, and mutual TLS with Dapr's caCert / clientCert / clientKey given as PEM text.

Runs against the "mosquitto" conformance backend (``MECHAKIT_TEST_MQTT_URL``, else a local
``mosquitto`` on a free port); skipped with the reason when neither is available.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.bindings.mqtt3 import MQTTBinding
from mechakit.conformance.backends import (
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
    provision,
)
from mechakit.core.bindings import BindingEvent, InvokeRequest
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
    NotSupportedError,
)

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
    made: list[Any] = []

    async def build(app_id: str = "test-app", name: str = "mqtt", **metadata: str) -> Any:
        driver = MQTTBinding()
        properties = {"url": broker.values["url"], **metadata}
        await driver.init(
            ComponentMetadata(name, "bindings.mqtt3", properties=properties, app_id=app_id)
        )
        made.append(driver)
        return driver

    yield build
    for driver in reversed(made):
        await driver.close()


def topic(label: str) -> str:
    return f"binding/{label}/{uuid.uuid4().hex[:8]}"


class Events:
    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[BindingEvent] = []
        self.handled: list[BindingEvent] = []
        self._fail_first = fail_first

    async def __call__(self, event: BindingEvent) -> None:
        self.calls.append(event)
        if self._fail_first and len(self.calls) == 1:
            raise RuntimeError("first call fails")
        self.handled.append(event)

    async def wait(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(self.handled) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {count} events; got {self.handled}")
            await asyncio.sleep(0.05)


async def test_topic_is_required_and_bad_metadata_is_named(broker: BackendInfo) -> None:
    for properties, field in [({}, "topic"), ({"topic": "a", "qos": "x"}, "qos")]:
        driver = MQTTBinding()
        with pytest.raises(MetadataError) as caught:
            await driver.init(
                ComponentMetadata(
                    "b", "bindings.mqtt3", {"url": broker.values["url"], **properties}, app_id="a"
                )
            )
        assert caught.value.field == field


async def test_output_publishes_and_input_reads_with_the_topic(make: Make) -> None:
    name = topic("io")
    binding = await make(topic=name)
    events = Events()
    await binding.read(events)
    assert list(binding.operations()) == ["create"]
    await binding.invoke(InvokeRequest("create", data=b"hello"))
    await events.wait(1)
    assert events.handled[0].data == b"hello"
    assert events.handled[0].metadata["topic"] == name


async def test_topic_in_request_metadata_overrides_and_wildcards_read_it(make: Make) -> None:
    base = topic("override")
    reader = await make(app_id="reader", topic=f"{base}/#")
    writer = await make(app_id="writer", topic=f"{base}/default")
    events = Events()
    await reader.read(events)
    await writer.invoke(InvokeRequest("create", data=b"a", metadata={"topic": f"{base}/x/y"}))
    await writer.invoke(InvokeRequest("create", data=b"b"))
    await events.wait(2)
    assert [(e.metadata["topic"], e.data) for e in events.handled] == [
        (f"{base}/x/y", b"a"),
        (f"{base}/default", b"b"),
    ]
    with pytest.raises(InvalidRequestError):
        await writer.invoke(InvokeRequest("create", data=b"x", metadata={"topic": "a/+"}))
    with pytest.raises(NotSupportedError):
        await writer.invoke(InvokeRequest("delete"))


async def test_retain_per_request_keeps_the_last_message_for_later_readers(
    make: Make, broker: BackendInfo
) -> None:
    import aiomqtt

    name = topic("retain")
    writer = await make(app_id="writer", topic=name)
    await writer.invoke(InvokeRequest("create", data=b"last", metadata={"retain": "true"}))
    port = int(broker.values["port"])
    async with aiomqtt.Client(broker.values["host"], port) as client:  # a plain subscriber
        await client.subscribe(name, qos=1)
        async with asyncio.timeout(TIMEOUT):
            message = await anext(aiter(client.messages))
    assert (message.payload, message.retain) == (b"last", True)
    await writer.invoke(InvokeRequest("create", data=b"", metadata={"retain": "true"}))  # clear


async def test_a_failed_event_is_handed_over_again_then_acked(make: Make) -> None:
    binding = await make(topic=topic("retry"))
    events = Events(fail_first=True)
    await binding.read(events)
    await binding.invoke(InvokeRequest("create", data=b"again"))
    await events.wait(1)
    assert [e.data for e in events.calls] == [b"again", b"again"]
    await asyncio.sleep(0.8)
    assert len(events.calls) == 2


async def test_instances_of_one_app_share_the_events(make: Make) -> None:
    name = topic("shared")
    first = await make(app_id="one-app", name="first", topic=name)
    second = await make(app_id="one-app", name="second", topic=name)
    events_a, events_b = Events(), Events()
    await first.read(events_a)
    await second.read(events_b)
    for i in range(10):
        await first.invoke(InvokeRequest("create", data=f"e-{i}".encode()))
    deadline = time.monotonic() + TIMEOUT
    while len(events_a.handled) + len(events_b.handled) < 10:
        assert time.monotonic() < deadline, "not every event arrived"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    datas = [e.data for e in events_a.handled + events_b.handled]
    assert sorted(datas) == sorted(f"e-{i}".encode() for i in range(10))
    assert events_a.handled and events_b.handled


async def test_cancel_stops_delivery(make: Make) -> None:
    binding = await make(topic=topic("cancel"))
    events = Events()
    subscription = await binding.read(events)
    await binding.invoke(InvokeRequest("create", data=b"one"))
    await events.wait(1)
    with pytest.raises(InvalidRequestError, match="already being read"):
        await binding.read(Events())
    await subscription.cancel()
    assert not subscription.active
    await binding.invoke(InvokeRequest("create", data=b"two"))
    await asyncio.sleep(0.8)
    assert [e.data for e in events.calls] == [b"one"]
    again = Events()
    await binding.read(again)
    await binding.invoke(InvokeRequest("create", data=b"three"))
    await again.wait(1)
    assert [e.data for e in again.handled] == [b"three"]


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


async def test_mutual_tls_with_pem_text(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs mosquitto and openssl")
    await asyncio.to_thread(_certificates, tmp_path)
    port = free_port()
    (tmp_path / "tls.conf").write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n"
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.key'}\n"
    )
    server = LocalProcess([binary, "-c", str(tmp_path / "tls.conf")], port, tmp_path, "tls")
    await asyncio.to_thread(server.start)
    pem = {n: (tmp_path / f).read_text() for n, f in
           [("caCert", "ca.pem"), ("clientCert", "client.pem"), ("clientKey", "client.key")]}  # fmt: skip
    name = topic("tls")
    binding = MQTTBinding()
    try:
        await binding.init(
            ComponentMetadata(
                "tls", "bindings.mqtt3",
                {"url": f"ssl://127.0.0.1:{port}", "topic": name, **pem}, app_id="tls",
            )
        )  # fmt: skip
        events = Events()
        await binding.read(events)
        await binding.invoke(InvokeRequest("create", data=b"secret"))
        await events.wait(1)
        await binding.close()
        without_cert = MQTTBinding()
        with pytest.raises(ConnectionFailedError):
            await without_cert.init(
                ComponentMetadata(
                    "tls", "bindings.mqtt3",
                    {"url": f"ssl://127.0.0.1:{port}", "topic": name, "caCert": pem["caCert"],
                     "connectTimeout": "2s"}, app_id="tls",
                )
            )  # fmt: skip
    finally:
        await binding.close()
        await asyncio.to_thread(server.stop)
