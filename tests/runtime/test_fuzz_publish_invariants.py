"""Fuzzed publishes over the HTTP API: a 4xx delivered nothing; a 2xx delivered each event
once, its payload exactly as sent.

A subscription on the pub/sub component itself records what reaches a handler. After every
request a sentinel is published behind it; with one delivery at a time the broker hands
messages out in order, so what arrived before the sentinel is all the request delivered.
Bounded (150 examples per door) so that it runs in CI.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechakit.core.pubsub import Message, PublishRequest, PubSub, SubscribeRequest

TOPIC = "orders"
SENTINEL = b"-- sentinel --"
CLOUDEVENT = "application/cloudevents+json"
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/octet-stream",
    CLOUDEVENT,
    "application/xml",
    "image/png",
    "",
]
TTLS = ["", "60", "-1", "0", "-5", "x", "1.5", "2147483647", "2147483648", str(10**20)]
RAW = ["", "true", "false", "1", "yes", "maybe"]


@dataclass
class Recorder:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    pubsub: PubSub[Any]
    received: list[Message] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, message: Message) -> None:
        self.received.append(message)
        if message.data == SENTINEL:
            self.arrived.set()

    async def delivered_by(self, request: Any) -> tuple[httpx.Response, list[Message]]:
        """The answer to ``request`` and the messages it delivered (the sentinel left out)."""
        self.received.clear()
        self.arrived.clear()
        answer = await request
        await self.pubsub.publish(PublishRequest(TOPIC, SENTINEL, "text/plain"))
        await asyncio.wait_for(self.arrived.wait(), 10)
        return answer, [m for m in self.received if m.data != SENTINEL]


@pytest.fixture
def recorder(
    resources: Callable[..., Path],
    component: Callable[..., str],
    private_runtime: Callable[[Path], Any],
) -> Iterator[Recorder]:
    folder = resources(bus=component("bus", "pubsub.in-memory", ("concurrency", "1")))
    with private_runtime(folder) as (loop, runtime, client):
        pubsub = runtime.pubsub("bus").component
        recorder = Recorder(loop, client, pubsub)
        subscription = loop.run_until_complete(
            pubsub.subscribe(SubscribeRequest(TOPIC), recorder.handle)
        )
        try:
            yield recorder
        finally:
            loop.run_until_complete(subscription.cancel())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# Bodies as a client may send them: JSON (NaN and Infinity included, which are not JSON),
# CloudEvents with and without their required attributes, text, and bytes that are not UTF-8.
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"data": json_values},
        optional={"id": st.text(max_size=4), "source": st.just("app"), "type": st.just("t")},
    ).map(lambda v: json.dumps({"specversion": "1.0", **v}).encode()),
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=12),
    st.sampled_from([b"", b"1e400", b"[1, 2", b"\xff\xfe"]),
)
query = st.fixed_dictionaries(
    {},
    optional={
        "metadata.rawPayload": st.sampled_from(RAW),
        "metadata.ttlInSeconds": st.sampled_from(TTLS),
    },
)


def is_json(content_type: str) -> bool:
    base = content_type.split(";")[0].strip()
    return base == "application/json" or base.endswith("+json")


def strict_json(text: str) -> tuple[bool, Any]:
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError:
        return False, None
    try:  # a number past a float's range reads as inf: Go's decoder refuses it
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False, value
    return True, value


def assert_carries(event: dict[str, Any], body: bytes, content_type: str) -> None:
    """The event's payload is ``body``, however the envelope carried it."""
    if "data_base64" in event:
        assert base64.b64decode(event["data_base64"]) == body
        return
    text = body.decode()  # a payload carried as data must have been text
    data = event.get("data")
    if is_json(content_type or "application/json") and text:
        valid, value = strict_json(text)
        assert data == (value if valid else text)
    elif text:
        assert data == text
    else:
        assert data in (None, "")


def assert_delivered(body: bytes, content_type: str, raw: bool, message: Message) -> None:
    if raw:
        assert message.data == body
        return
    event = json.loads(message.data)  # never anything but JSON
    assert json.loads(json.dumps(event)) == event
    if content_type.split(";")[0].strip() == CLOUDEVENT:
        sent = json.loads(body)
        assert {
            k: v for k, v in event.items() if k in sent and k not in ("topic", "pubsubname")
        } == {k: v for k, v in sent.items() if k not in ("topic", "pubsubname")}
        return
    assert_carries(event, body, content_type)


def raw_flag(params: dict[str, str]) -> bool:
    """Dapr reads rawPayload as a truthy word (``strconv``-like and ``yes``/``on``)."""
    return params.get("metadata.rawPayload", "").lower() in ("true", "1", "yes", "y", "on", "t")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, content_type=st.sampled_from(CONTENT_TYPES), params=query)
def test_a_refused_publish_delivers_nothing_and_an_accepted_one_delivers_it_exactly(
    recorder: Recorder, body: bytes, content_type: str, params: dict[str, str]
) -> None:
    async def check() -> None:
        headers = {"content-type": content_type} if content_type else {}
        answer, delivered = await recorder.delivered_by(
            recorder.client.post(
                f"/v1.0/publish/bus/{TOPIC}", content=body, headers=headers, params=params
            )
        )
        case = (body, content_type, params, answer.text)
        assert answer.status_code < 500, case
        if answer.status_code >= 400:
            assert delivered == [], case
            return
        assert len(delivered) == 1, case
        assert_delivered(body, content_type or "text/plain", raw_flag(params), delivered[0])

    recorder.loop.run_until_complete(check())


entries = st.fixed_dictionaries(
    {
        "entryId": st.sampled_from(["a", "b", "c", ""]),
        "contentType": st.sampled_from(CONTENT_TYPES),
        "event": json_values | st.binary(max_size=6).map(lambda b: base64.b64encode(b).decode()),
    },
    optional={
        "metadata": st.fixed_dictionaries({}, optional={"ttlInSeconds": st.sampled_from(TTLS)})
    },
)


def entry_bytes(entry: dict[str, Any]) -> bytes:
    """The payload an entry stands for, read the way the API documents it."""
    base = entry["contentType"].split(";")[0].strip()
    if base == "application/octet-stream":
        return base64.b64decode(entry["event"])
    if isinstance(entry["event"], str) and not is_json(base):
        return str(entry["event"]).encode()
    return json.dumps(entry["event"], separators=(",", ":")).encode()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(entries, max_size=3), params=query)
def test_a_refused_bulk_publish_delivers_nothing_and_an_accepted_one_delivers_each_entry(
    recorder: Recorder, batch: list[dict[str, Any]], params: dict[str, str]
) -> None:
    async def check() -> None:
        answer, delivered = await recorder.delivered_by(
            recorder.client.post(
                f"/v1.0-alpha1/publish/bulk/bus/{TOPIC}",
                content=json.dumps(batch).encode(),  # NaN and Infinity too, which are not JSON
                headers={"content-type": "application/json"},
                params=params,
            )
        )
        case = (batch, params, answer.text)
        assert answer.status_code < 500, case
        if answer.status_code >= 400:
            assert delivered == [], case
            return
        assert len(delivered) == len(batch), case
        for entry, message in zip(batch, delivered, strict=True):
            content_type = entry["contentType"] or "text/plain"
            assert_delivered(entry_bytes(entry), content_type, raw_flag(params), message)

    recorder.loop.run_until_complete(check())
