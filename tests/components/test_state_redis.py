"""state.redis beyond the conformance suite: round trips, atomicity, contention, restarts."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from redis_server import assert_a_burst_waits_for_connections

from mechakit.conformance.backends import BackendInfo
from mechakit.core.errors import ConnectionFailedError, ETagError, ETagErrorKind
from mechakit.core.state import (
    TTL_EXPIRE_TIME,
    Concurrency,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateItem,
    StateOptions,
)

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis

FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def command_calls(client: Any) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


async def test_etag_set_with_ttl_is_one_evalsha_and_no_other_command(
    redis_driver: RedisDriver, raw_redis: Any, redis_server: BackendInfo
) -> None:
    """The check, the write and the TTL travel as one EVALSHA (nothing before or after it)."""
    store = await redis_driver("state.redis")
    key = new_key("one-trip")
    # Loads the checking script and opens the pooled connection.
    await store.set(SetRequest(key, "v1", options=FIRST_WRITE))
    etag = (await store.get(GetRequest(key))).etag

    marker = f"end-of-{key}"
    before = await command_calls(raw_redis)  # also leaves raw_redis a pooled connection for ECHO
    watcher = type(raw_redis)(
        host=redis_server.values["host"], port=int(redis_server.values["port"])
    )
    async with watcher.monitor() as monitor:
        await store.set(SetRequest(key, "v2", etag=etag, metadata={"ttlInSeconds": "60"}))
        await raw_redis.echo(marker)
        sent: list[str] = []

        async def until_marker() -> None:
            while True:
                entry = await monitor.next_command()
                if marker in entry["command"]:
                    return
                if entry["client_type"] != "lua":
                    sent.append(entry["command"].split()[0].upper())

        await asyncio.wait_for(until_marker(), 5)
    await watcher.aclose()
    after = await command_calls(raw_redis)

    assert sent == ["EVALSHA"]
    assert after["evalsha"] - before["evalsha"] == 1
    assert after.get("eval", 0) == before.get("eval", 0)
    assert after.get("script|load", 0) == before.get("script|load", 0)
    assert 0 < await raw_redis.ttl(f"test-app||{key}") <= 60


async def test_failed_etag_check_in_a_transaction_leaves_every_key_untouched(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("state.redis")
    kept, removed, stale = new_key("kept"), new_key("removed"), new_key("stale")
    for key in (kept, removed, stale):
        await store.set(SetRequest(key, f"original {key}"))
    await store.set(SetRequest(stale, "moved on"))  # version 2: ETag "1" is now stale
    before = {k: await store.get(GetRequest(k)) for k in (kept, removed, stale)}

    with pytest.raises(ETagError) as caught:
        await store.transact(
            [
                SetRequest(kept, "changed", metadata={"ttlInSeconds": "100"}),
                DeleteRequest(removed),
                SetRequest(new_key("created"), "new"),
                SetRequest(stale, "too late", etag="1"),
            ]
        )

    assert caught.value.kind is ETagErrorKind.MISMATCH
    assert caught.value.key == stale
    assert {k: await store.get(GetRequest(k)) for k in (kept, removed, stale)} == before
    assert await raw_redis.ttl(f"test-app||{kept}") == -1


async def test_first_write_conflict_in_a_transaction_writes_nothing(
    redis_driver: RedisDriver,
) -> None:
    store = await redis_driver("state.redis")
    fresh, existing = new_key("fresh"), new_key("existing")
    await store.set(SetRequest(existing, "there"))
    with pytest.raises(ETagError) as caught:
        await store.transact(
            [
                SetRequest(fresh, "x", options=FIRST_WRITE),
                SetRequest(existing, "y", options=FIRST_WRITE),
            ]
        )
    assert caught.value.key == existing
    assert await store.get(GetRequest(fresh)) is None


async def test_transaction_checks_see_the_earlier_operations_of_the_same_transaction(
    redis_driver: RedisDriver,
) -> None:
    store = await redis_driver("state.redis")
    key = new_key("chain")
    await store.set(SetRequest(key, 1))
    await store.transact(
        [SetRequest(key, 2, etag="1"), SetRequest(key, 3, etag="2"), DeleteRequest(key, etag="3")]
    )
    assert await store.get(GetRequest(key)) is None


async def test_first_write_applies_to_its_request_only(redis_driver: RedisDriver) -> None:
    """Upstream marks the key for ever; here a later plain write still overwrites."""
    store = await redis_driver("state.redis")
    key = new_key("first")
    await store.set(SetRequest(key, "first", options=FIRST_WRITE))
    with pytest.raises(ETagError):
        await store.set(SetRequest(key, "second", options=FIRST_WRITE))
    await store.set(SetRequest(key, "last write wins"))
    item = await store.get(GetRequest(key))
    assert item is not None and item.value == "last write wins"


async def test_twenty_concurrent_read_modify_writers_with_etags_count_to_twenty(
    redis_driver: RedisDriver,
) -> None:
    store = await redis_driver("state.redis")
    key, writers = new_key("counter"), 20
    await store.set(SetRequest(key, 0))
    mismatches: list[ETagErrorKind] = []

    async def increment() -> None:
        while True:
            item = await store.get(GetRequest(key))
            assert item is not None
            try:
                await store.set(SetRequest(key, item.value + 1, etag=item.etag))
            except ETagError as exc:
                mismatches.append(exc.kind)
            else:
                return

    await asyncio.wait_for(asyncio.gather(*(increment() for _ in range(writers))), 30)
    final = await store.get(GetRequest(key))
    assert final is not None and final.value == writers
    assert mismatches and set(mismatches) == {ETagErrorKind.MISMATCH}


async def test_ttl_is_reported_and_minus_one_removes_it(redis_driver: RedisDriver) -> None:
    store = await redis_driver("state.redis")
    key = new_key("ttl")
    await store.set(SetRequest(key, "v", metadata={"ttlInSeconds": "100"}))
    item = await store.get(GetRequest(key))
    assert item is not None and TTL_EXPIRE_TIME in item.metadata
    await store.set(SetRequest(key, "v", metadata={"ttlInSeconds": "-1"}))
    item = await store.get(GetRequest(key))
    assert item is not None and TTL_EXPIRE_TIME not in item.metadata


async def test_component_default_ttl_applies_when_the_request_names_none(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("state.redis", ttlInSeconds="50")
    key = new_key("default-ttl")
    await store.set(SetRequest(key, "v"))
    assert 0 < await raw_redis.ttl(f"test-app||{key}") <= 50
    await store.set(SetRequest(key, "v", metadata={"ttlInSeconds": "-1"}))
    assert await raw_redis.ttl(f"test-app||{key}") == -1


async def test_scripts_flushed_from_the_server_are_loaded_again(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("state.redis")
    key = new_key("flushed")
    await store.set(SetRequest(key, 1))
    await raw_redis.script_flush()
    await store.set(SetRequest(key, 2, etag="1"))
    await raw_redis.script_flush()
    await store.bulk_set([SetRequest(key, 3, etag="2"), SetRequest(new_key("other"), 1)])
    item = await store.get(GetRequest(key))
    assert item is not None and (item.value, item.etag) == (3, "3")


async def test_hash_written_by_dapr_is_read_with_its_version_as_etag(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    store = await redis_driver("state.redis")
    key = new_key("dapr")
    await raw_redis.hset(f"test-app||{key}", mapping={"data": '{"n":1}', "version": 7})
    assert await store.get(GetRequest(key)) == StateItem(key, {"n": 1}, etag="7")
    await store.set(SetRequest(key, {"n": 2}, etag="7"))
    assert await raw_redis.hget(f"test-app||{key}", "version") == b"8"


async def test_etag_with_leading_zeros_matches_its_version(redis_driver: RedisDriver) -> None:
    store = await redis_driver("state.redis")
    key = new_key("zeros")
    await store.set(SetRequest(key, 1))
    await store.set(SetRequest(key, 2, etag="001"))
    item = await store.get(GetRequest(key))
    assert item is not None and (item.value, item.etag) == (2, "2")


@pytest.mark.parametrize("etag", ["-2", "0", " 2", "2.0", "\u0662", "abc"])
async def test_etags_other_than_positive_ascii_integers_are_invalid(
    redis_driver: RedisDriver, etag: str
) -> None:
    store = await redis_driver("state.redis")
    key = new_key("invalid")
    await store.set(SetRequest(key, 1))
    with pytest.raises(ETagError) as caught:
        await store.set(SetRequest(key, 3, etag=etag))
    assert caught.value.kind is ETagErrorKind.INVALID


async def test_unreachable_server_fails_init_as_retriable_naming_the_host(
    redis_driver: RedisDriver,
) -> None:
    with pytest.raises(ConnectionFailedError) as caught:
        await redis_driver("state.redis", redisHost="127.0.0.1:1", maxRetries="0", dialTimeout="1s")
    assert caught.value.retriable
    assert "127.0.0.1:1" in str(caught.value) and "state.redis 'test'" in str(caught.value)


@pytest.mark.fault
async def test_restart_gives_retriable_connection_errors_never_etag_errors_then_recovers(
    redis_driver: RedisDriver, redis_server: BackendInfo
) -> None:
    """Only writes that cannot conflict are used, so any ETagError would be a misreport."""
    if redis_server.restart is None:
        pytest.skip("the redis backend was not started by this test run")
    store = await redis_driver("state.redis", maxRetries="0", dialTimeout="500ms", readTimeout="1s")
    errors: list[Exception] = []
    succeeded = 0

    async def one_round() -> None:
        fresh = new_key("outage")
        await store.set(SetRequest(fresh, "first", options=FIRST_WRITE))
        await store.get(GetRequest(fresh))
        await store.transact(
            [SetRequest(new_key("tx"), 1, options=FIRST_WRITE), DeleteRequest(fresh)]
        )

    restart = asyncio.create_task(asyncio.to_thread(redis_server.restart))
    while not restart.done():
        try:
            await one_round()
            succeeded += 1
        except Exception as exc:
            errors.append(exc)
            await asyncio.sleep(0.005)
    await restart

    assert errors, "no operation ran while the server was down"
    assert not [e for e in errors if isinstance(e, ETagError)]
    assert all(isinstance(e, ConnectionFailedError) and e.retriable for e in errors), errors

    async def recovered() -> None:
        while True:
            try:
                await one_round()
                return
            except ConnectionFailedError:
                await asyncio.sleep(0.05)

    await asyncio.wait_for(recovered(), 10)
    key = new_key("after")
    await store.set(SetRequest(key, "back"))
    await store.set(SetRequest(key, "again", etag="1"))
    item = await store.get(GetRequest(key))
    assert item is not None and (item.value, item.etag) == ("again", "2")


async def test_a_burst_larger_than_the_pool_waits_for_connections_instead_of_failing(
    redis_driver: RedisDriver,
) -> None:
    store = await redis_driver("state.redis", poolSize="4")
    await assert_a_burst_waits_for_connections(store)
