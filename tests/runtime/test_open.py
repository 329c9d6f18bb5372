"""``mechakit.open``: the in-process API over real embedded drivers, from Dapr YAML."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import mechakit
from mechakit.core.bindings import BindingEvent
from mechakit.core.configuration import ConfigurationUpdate
from mechakit.core.errors import (
    ConfigurationError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
)
from mechakit.core.lock import UnlockStatus
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest
from mechakit.runtime.clients import LockLostError, LockNotAcquiredError, TopicEvent
from mechakit.runtime.in_process import Runtime

WriteFiles = Callable[..., Path]
WAIT = 5.0


@pytest.fixture
def folder(resources: WriteFiles, component: Callable[..., str], tmp_path: Path) -> Path:
    (tmp_path / "secrets.json").write_text(
        json.dumps({"db-password": "pw", "api-key": "k", "root": "r"})
    )
    return resources(
        state=component("statestore", "state.sqlite", ("connectionString", str(tmp_path / "s.db"))),
        pubsub=component(
            "pubsub",
            "pubsub.in-memory",
            ("redeliveryInterval", "10ms"),
            ("maxRedeliveryInterval", "20ms"),
        ),
        lock=component("lockstore", "lock.in-memory"),
        secrets=component(
            "secretstore",
            "secretstores.local.file",
            ("secretsFile", str(tmp_path / "secrets.json")),
        ),
        files=component("files", "bindings.localstorage", ("rootPath", str(tmp_path / "files"))),
        ticker=component("ticker", "bindings.cron", ("schedule", "@every 50ms")),
        config=component(
            "config", "configuration.in-memory", ("items", '{"greeting": "hello", "limit": "10"}')
        ),
        appconfig="""
        apiVersion: dapr.io/v1alpha1
        kind: Configuration
        metadata: {name: appconfig}
        spec:
          secrets:
            scopes:
              - storeName: secretstore
                defaultAccess: allow
                deniedSecrets: [root]
        """,
    )


@pytest.fixture
async def rt(folder: Path) -> AsyncIterator[Runtime]:
    async with mechakit.open(folder, app_id="myapp") as runtime:
        yield runtime


# --- state ------------------------------------------------------------------------------


async def test_state_set_then_get_returns_the_value_and_an_etag(rt: Runtime) -> None:
    store = rt.state("statestore")
    await store.set("k", {"n": 1})
    item = await store.get("k")
    assert item is not None and item.value == {"n": 1} and item.etag
    assert await store.get("missing") is None


async def test_stale_etag_is_rejected_and_the_value_stays(rt: Runtime) -> None:
    store = rt.state("statestore")
    await store.set("k", 1)
    first = await store.get("k")
    assert first is not None
    await store.set("k", 2, etag=first.etag)
    with pytest.raises(ETagError) as info:
        await store.set("k", 3, etag=first.etag)
    assert info.value.kind is ETagErrorKind.MISMATCH
    current = await store.get("k")
    assert current is not None and current.value == 2


async def test_first_write_refuses_to_overwrite_an_existing_key(rt: Runtime) -> None:
    store = rt.state("statestore")
    await store.set("k", "a", first_write=True)
    with pytest.raises(ETagError):
        await store.set("k", "b", first_write=True)


async def test_ttl_is_passed_as_ttl_in_seconds_and_returns_an_expire_time(rt: Runtime) -> None:
    store = rt.state("statestore")
    await store.set("k", "v", ttl=60)
    item = await store.get("k")
    assert item is not None and "ttlExpireTime" in item.metadata
    with pytest.raises(InvalidRequestError, match="ttlInSeconds"):
        await store.set("k", "v", ttl=0)


async def test_request_objects_carry_every_option_and_cannot_be_mixed_with_keywords(
    rt: Runtime,
) -> None:
    store = rt.state("statestore")
    await store.set(SetRequest("k", b"\x00raw"))
    item = await store.get(GetRequest("k"))
    assert item is not None and item.value == b"\x00raw"
    with pytest.raises(TypeError, match="pass etag inside the SetRequest"):
        await store.set(SetRequest("k", 1), etag="1")
    await store.delete(DeleteRequest("k", etag=item.etag))
    assert await store.get("k") is None


async def test_bad_option_words_are_invalid_requests(rt: Runtime) -> None:
    with pytest.raises(InvalidRequestError, match="consistency"):
        await rt.state("statestore").get("k", consistency="sometimes")
    with pytest.raises(InvalidRequestError, match="key must be a non-empty string"):
        await rt.state("statestore").set("", 1)


async def test_bulk_operations_and_transactions(rt: Runtime) -> None:
    store = rt.state("statestore")
    await store.bulk_set({"a": 1, "b": 2, "c": 3})
    items = await store.bulk_get(["a", "b", "nope"])
    assert [(i.key, i.value, i.found) for i in items] == [
        ("a", 1, True),
        ("b", 2, True),
        ("nope", None, False),
    ]
    await store.bulk_delete(["a"])
    await store.transact([SetRequest("b", 20), DeleteRequest("c")])
    assert [i.value for i in await store.bulk_get(["a", "b", "c"])] == [None, 20, None]


async def test_query_on_a_store_without_the_query_api_is_not_supported(rt: Runtime) -> None:
    with pytest.raises(NotSupportedError, match="does not support querying"):
        await rt.state("statestore").query({"filter": {"EQ": {"n": 1}}})


# --- pub/sub ----------------------------------------------------------------------------


async def receive(rt: Runtime, topic: str, count: int = 1) -> asyncio.Queue[TopicEvent]:
    queue: asyncio.Queue[TopicEvent] = asyncio.Queue()

    async def handler(event: TopicEvent) -> None:
        await queue.put(event)

    await rt.pubsub("pubsub").subscribe(topic, handler)
    return queue


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ({"order": 1, "items": ["a"]}, "application/json"),
        ("plain text", "text/plain"),
        (b"\x00\x01binary", "application/octet-stream"),
    ],
)
async def test_published_data_arrives_decoded_inside_a_cloud_event(
    rt: Runtime, data: Any, content_type: str
) -> None:
    queue = await receive(rt, "orders")
    await rt.pubsub("pubsub").publish("orders", data)
    event = await asyncio.wait_for(queue.get(), WAIT)
    assert event.data == data
    assert event.content_type == content_type
    assert event.cloud_event is not None
    assert event.cloud_event["source"] == "myapp"
    assert event.cloud_event["pubsubname"] == "pubsub"
    assert event.cloud_event["topic"] == "orders"
    assert event.id == event.cloud_event["id"]


async def test_raw_payload_is_delivered_without_an_envelope(rt: Runtime) -> None:
    queue = await receive(rt, "raw")
    await rt.pubsub("pubsub").publish("raw", b"as-is", metadata={"rawPayload": "true"})
    event = await asyncio.wait_for(queue.get(), WAIT)
    assert event.cloud_event is None and event.raw == b"as-is"


async def test_an_expired_cloud_event_is_dropped_before_the_handler(rt: Runtime) -> None:
    queue = await receive(rt, "t")
    expired = {
        "specversion": "1.0",
        "id": "old",
        "source": "x",
        "type": "t",
        "expiration": "2000-01-01T00:00:00Z",
        "data": 1,
    }
    pubsub = rt.pubsub("pubsub")
    await pubsub.publish("t", json.dumps(expired), content_type="application/cloudevents+json")
    await pubsub.publish("t", "fresh")
    event = await asyncio.wait_for(queue.get(), WAIT)
    assert event.data == "fresh" and queue.empty()


async def test_a_failing_handler_gets_the_message_again(rt: Runtime) -> None:
    calls: list[int] = []
    done = asyncio.Event()

    async def flaky(event: TopicEvent) -> None:
        calls.append(event.delivery_count)
        if len(calls) == 1:
            raise RuntimeError("try again")
        done.set()

    await rt.pubsub("pubsub").subscribe("retry", flaky)
    await rt.pubsub("pubsub").publish("retry", {"n": 1})
    await asyncio.wait_for(done.wait(), WAIT)
    assert calls == [1, 2]


async def test_closing_the_runtime_cancels_subscriptions(folder: Path) -> None:
    async with mechakit.open(folder) as runtime:
        subscription = await runtime.pubsub("pubsub").subscribe("t", _ignore)
        assert subscription.active
    assert not subscription.active


async def _ignore(event: TopicEvent) -> None:
    return None


# --- locks, secrets, bindings, configuration --------------------------------------------------


async def test_lock_hold_excludes_others_and_releases_on_exit(rt: Runtime) -> None:
    locks = rt.lock("lockstore")
    async with locks.hold("res", "a", expiry_seconds=10):
        assert not await locks.try_lock("res", "b", 10)
        with pytest.raises(LockNotAcquiredError, match="'res' is held by another owner"):
            async with locks.hold("res", "b", 10, wait=0.05):
                pass
    assert await locks.try_lock("res", "b", 10)
    assert await locks.unlock("res", "a") is UnlockStatus.LOCK_BELONGS_TO_OTHERS
    assert await locks.unlock("res", "b") is UnlockStatus.SUCCESS


async def test_hold_waits_for_a_lock_released_meanwhile(rt: Runtime) -> None:
    locks = rt.lock("lockstore")
    assert await locks.try_lock("res", "a", 10)

    async def release_soon() -> None:
        await asyncio.sleep(0.05)
        await locks.unlock("res", "a")

    releaser = asyncio.create_task(release_soon())
    async with locks.hold("res", "b", 10, wait=WAIT, retry_interval=0.01):
        assert not await locks.try_lock("res", "c", 10)
    await releaser


async def test_a_lock_that_expired_during_hold_is_reported(rt: Runtime) -> None:
    locks = rt.lock("lockstore")
    with pytest.raises(LockLostError, match="no longer held"):
        async with locks.hold("res", "a", expiry_seconds=1):
            await asyncio.sleep(1.1)


async def test_secrets_respect_the_configuration_scopes(rt: Runtime) -> None:
    secrets = rt.secrets("secretstore")
    assert await secrets.get("db-password") == {"db-password": "pw"}
    with pytest.raises(PermissionDeniedError, match="'root' is denied"):
        await secrets.get("root")
    assert sorted(await secrets.bulk_get()) == ["api-key", "db-password"]


async def test_output_binding_create_then_get(rt: Runtime) -> None:
    files = rt.binding("files")
    assert "create" in files.operations()
    await files.invoke("create", {"hello": "world"}, {"fileName": "a.json"})
    response = await files.invoke("get", metadata={"fileName": "a.json"})
    assert json.loads(response.data) == {"hello": "world"}
    with pytest.raises(NotSupportedError, match="not an input binding"):
        await files.read(_no_event)


async def test_input_binding_delivers_events_and_has_nothing_to_invoke(rt: Runtime) -> None:
    ticker = rt.binding("ticker")
    fired = asyncio.Event()

    async def on_tick(event: BindingEvent) -> bytes | None:
        fired.set()
        return None

    await ticker.read(on_tick)
    await asyncio.wait_for(fired.wait(), WAIT)
    with pytest.raises(NotSupportedError, match="input binding only"):
        await ticker.invoke("create")


async def _no_event(event: BindingEvent) -> bytes | None:
    return None


async def test_configuration_get_and_subscribe(rt: Runtime) -> None:
    config = rt.configuration("config")
    items = await config.get(["greeting", "missing"])
    assert list(items) == ["greeting"] and items["greeting"].value == "hello"
    updates: asyncio.Queue[ConfigurationUpdate] = asyncio.Queue()

    async def on_update(update: ConfigurationUpdate) -> None:
        await updates.put(update)

    subscription_id = await config.subscribe(["greeting"], on_update)
    store = config.component
    await store.set_items({"greeting": "hi"})  # type: ignore[attr-defined]
    update = await asyncio.wait_for(updates.get(), WAIT)
    assert update.items["greeting"].value == "hi"
    await config.unsubscribe(subscription_id)
    with pytest.raises(NotFoundError):
        await config.unsubscribe(subscription_id)


# --- lookup and lifecycle ------------------------------------------------------------------


async def test_asking_for_an_unknown_or_mistyped_component_lists_the_configured_ones(
    rt: Runtime,
) -> None:
    with pytest.raises(
        NotFoundError, match=r"no state store named 'cache' \(configured state stores: statestore\)"
    ):
        rt.state("cache")
    with pytest.raises(
        NotFoundError, match="'pubsub' is a pubsub.in-memory component, not a state store"
    ):
        rt.state("pubsub")


async def test_the_runtime_lists_its_components_and_clients_are_reused(rt: Runtime) -> None:
    assert set(rt.components) == {
        "secretstore",
        "statestore",
        "pubsub",
        "lockstore",
        "files",
        "ticker",
        "config",
    }
    assert rt.state("statestore") is rt.state("statestore")


async def test_clients_need_a_started_runtime(folder: Path) -> None:
    runtime = mechakit.open(folder)
    with pytest.raises(ConfigurationError, match="not started"):
        runtime.state("statestore")
    await runtime.start()
    await runtime.close()
    with pytest.raises(ConfigurationError, match="not started"):
        runtime.state("statestore")


async def test_a_failed_start_leaves_nothing_running(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    folder = resources(a=component("locks", "lock.in-memory"), b=component("s", "state.sqlite"))
    runtime = mechakit.open(folder)
    with pytest.raises(ConfigurationError, match="connectionString"):
        async with runtime:
            pytest.fail("must not start")
    with pytest.raises(ConfigurationError, match="not started"):
        runtime.state("s")


def test_the_application_api_is_public_at_the_top_and_imported_on_first_use() -> None:
    code = (
        "import sys, mechakit\n"
        "assert [m for m in sys.modules if m.startswith('mechakit.')] == [], sys.modules\n"
        "missing = [n for n in mechakit.__all__ if getattr(mechakit, n, None) is None]\n"
        "assert not missing, missing\n"
        "from mechakit import Runtime, StateClient, ETagError\n"
        "assert Runtime.__module__ == 'mechakit.runtime.in_process'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
