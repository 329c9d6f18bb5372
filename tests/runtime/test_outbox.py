"""The transactional outbox against real stores: SQLite files and a redis-server the suite
starts, with the in-memory and Redis brokers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import mechakit
from mechakit.core.errors import ETagError
from mechakit.core.pubsub import Message, SubscribeRequest
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest
from mechakit.runtime.http_api import create_app
from mechakit.runtime.in_process import Runtime

WAIT = 10.0


def outbox_store(
    component: Callable[..., str], name: str, path: Path, topic: str, *where: tuple[str, str]
) -> str:
    """An outbox-enabled store: SQLite at ``path``, or what ``where`` says (Redis)."""
    if not where:
        where = (("connectionString", str(path)),)
    type_ = "state.redis" if any(key == "redisHost" for key, _ in where) else "state.sqlite"
    return component(
        name,
        type_,
        *where,
        ("outboxPublishPubsub", "bus"),
        ("outboxPublishTopic", topic),
    )


@pytest.fixture(params=["sqlite+in-memory", "redis+redis"])
async def runtime(
    request: pytest.FixtureRequest,
    resources: Callable[..., Path],
    component: Callable[..., str],
    tmp_path: Path,
) -> AsyncIterator[Runtime]:
    redis: tuple[tuple[str, str], ...] = ()
    if request.param == "redis+redis":
        address = request.getfixturevalue("redis_server").values["address"]
        redis = (("redisHost", address), ("keyPrefix", "name"))
        bus = component(
            "bus", "pubsub.redis", ("redisHost", address), ("redeliverInterval", "100ms")
        )
    else:
        bus = component("bus", "pubsub.in-memory", ("redeliveryInterval", "50ms"))
    app_id = f"shop-{uuid.uuid4().hex[:8]}"  # topics of their own on a shared Redis
    folder = resources(
        orders=outbox_store(
            component, "orders", tmp_path / "o.db", f"order-events-{app_id}", *redis
        ),
        stock=outbox_store(component, "stock", tmp_path / "s.db", f"stock-events-{app_id}", *redis),
        bus=bus,
    )
    async with mechakit.open(folder, app_id=app_id) as rt:
        yield rt


class Inbox:
    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(self, message: Message) -> None:
        await self.events.put(json.loads(message.data))

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), WAIT)


async def inbox(runtime: Runtime, topic: str) -> Inbox:
    """What arrives on ``topic`` (the runtime's own: ``order-events-<app id>``)."""
    box = Inbox()
    request = SubscribeRequest(f"{topic}-{runtime.app_id}")
    await runtime.pubsub("bus").component.subscribe(request, box.handle)
    return box


async def test_a_committed_transaction_publishes_each_upsert_once_with_a_stable_id(
    runtime: Runtime,
) -> None:
    events = await inbox(runtime, "order-events")
    orders = runtime.state("orders")
    await orders.transact(
        [SetRequest("o1", {"id": 1}), SetRequest("o2", {"id": 2}), DeleteRequest("o0")]
    )
    got = [await events.next(), await events.next()]
    assert sorted(e["data"]["id"] for e in got) == [1, 2]
    assert {e["topic"] for e in got} == {f"order-events-{runtime.app_id}"}
    assert all(e["id"].endswith(("-0", "-1")) for e in got)
    assert (await orders.get("o1")).value == {"id": 1}  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert events.events.empty()  # once each
    # The markers that gated publishing are gone once published.
    store = orders.component
    for event in got:
        assert await store.get(GetRequest(f"outbox-marker-{event['id']}")) is None


async def test_a_failed_transaction_publishes_nothing(runtime: Runtime) -> None:
    events = await inbox(runtime, "order-events")
    orders = runtime.state("orders")
    await orders.set("o1", {"v": 1})
    stale = (await orders.get("o1")).etag  # type: ignore[union-attr]
    await orders.set("o1", {"v": 2})
    with pytest.raises(ETagError):
        await orders.transact([SetRequest("o1", {"v": 3}, etag=stale), SetRequest("o9", 9)])
    await orders.transact([SetRequest("after", {"v": 4})])
    first = await events.next()
    assert first["data"] == {"v": 4}
    await asyncio.sleep(1.0)  # the failed one's internal message is retried, never published
    assert events.events.empty()
    assert await orders.get("o9") is None


async def test_a_projection_is_published_and_the_state_is_saved(runtime: Runtime) -> None:
    events = await inbox(runtime, "order-events")
    orders = runtime.state("orders")
    await orders.transact(
        [
            SetRequest("o1", {"id": 1, "secret": "x"}),
            SetRequest("o1", {"id": 1}, metadata={"outbox.projection": "true"}),
        ]
    )
    assert (await events.next())["data"] == {"id": 1}
    assert (await orders.get("o1")).value == {"id": 1, "secret": "x"}  # type: ignore[union-attr]


async def test_two_outbox_stores_each_publish_to_their_own_topic(runtime: Runtime) -> None:
    order_events, stock_events = (
        await inbox(runtime, "order-events"),
        await inbox(runtime, "stock-events"),
    )
    await runtime.state("orders").transact([SetRequest("o1", "order")])
    await runtime.state("stock").transact([SetRequest("s1", "stock")])
    assert (await order_events.next())["data"] == "order"
    assert (await stock_events.next())["data"] == "stock"
    await asyncio.sleep(0.3)
    assert order_events.events.empty() and stock_events.events.empty()


async def test_the_http_api_transaction_publishes_through_the_outbox(runtime: Runtime) -> None:
    events = await inbox(runtime, "order-events")
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as http:
        answer = await http.post(
            "/v1.0/state/orders/transaction",
            json={"operations": [{"operation": "upsert", "request": {"key": "k", "value": 5}}]},
        )
    assert answer.status_code == 204, answer.text
    assert (await events.next())["data"] == 5


async def test_an_outbox_with_an_unknown_pubsub_fails_the_start(
    resources: Callable[..., Path], component: Callable[..., str], tmp_path: Path
) -> None:
    folder = resources(orders=outbox_store(component, "orders", tmp_path / "o.db", "t"))
    with pytest.raises(Exception, match="outbox pub/sub 'bus'"):
        async with mechakit.open(folder, app_id="shop"):
            pass
