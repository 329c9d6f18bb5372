"""state.redis while Redis stalls for longer than ``readTimeout`` (SIGSTOP, then SIGCONT).

redis-py sends a command again after a read timeout. The first copy of a conditional write
runs when Redis resumes, so a naive retry finds its own write and reports a false ETag or
first-write conflict. Each caller here must get the true outcome, or a retriable error
saying the outcome is unknown: never an ``ETagError`` for its own write.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import pytest

from mechakit.conformance.backends import BackendInfo
from mechakit.core.errors import ConnectionFailedError, ETagError
from mechakit.core.state import (
    Concurrency,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateOptions,
)

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]

FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def stalled(server: BackendInfo, seconds: float) -> AsyncIterator[None]:
    """Redis answers nothing from entering the block until ``seconds`` after it."""
    if server.freeze is None:
        pytest.skip("the redis backend was not started by this test run")
    freeze = server.freeze
    freeze(True)
    try:
        yield
        await asyncio.sleep(seconds)
    finally:
        freeze(False)


async def outcome(call: Awaitable[Any]) -> Exception | None:
    try:
        await call
    except Exception as exc:
        return exc
    return None


async def load_every_script(store: Any) -> None:
    """As on a server in use: otherwise a first call answers NOSCRIPT and runs only once."""
    key = new_key("warm")
    await store.set(SetRequest(key, 0, options=FIRST_WRITE))
    await store.set(SetRequest(key, 1, etag="1"))
    await store.transact([SetRequest(key, 2, etag="2")])
    await store.delete(DeleteRequest(key, etag="3"))


def assert_true_outcome_or_unknown(result: Exception | None) -> None:
    assert not isinstance(result, ETagError), f"false conflict for its own write: {result}"
    if result is not None:
        assert isinstance(result, ConnectionFailedError) and result.retriable, result
        assert "may or may not have been applied" in str(result)


async def test_conditional_writes_across_a_stall_never_conflict_with_themselves(
    redis_driver: RedisDriver, redis_server: BackendInfo
) -> None:
    """Twelve writes of each conditional kind in flight while Redis stalls for 4.5 s.

    Which copy of a write Redis runs first on resuming is up to its event loop, so many
    writes are needed for a naive retry to show its false conflicts.
    """
    store = await redis_driver("state.redis", poolSize="64")
    n = 12
    etag_keys = [new_key("etag") for _ in range(n)]
    first_keys = [new_key("first") for _ in range(n)]
    delete_keys = [new_key("del") for _ in range(n)]
    tx_keys = [(new_key("tx-a"), new_key("tx-b")) for _ in range(n)]
    for key in etag_keys + delete_keys + [a for a, _ in tx_keys]:
        await store.set(SetRequest(key, 0))
    await load_every_script(store)

    def calls() -> list[Awaitable[None]]:
        return [
            *(store.set(SetRequest(k, 1, etag="1")) for k in etag_keys),
            *(store.set(SetRequest(k, 1, options=FIRST_WRITE)) for k in first_keys),
            *(store.delete(DeleteRequest(k, etag="1")) for k in delete_keys),
            *(
                store.transact([SetRequest(a, 1, etag="1"), SetRequest(b, 1, options=FIRST_WRITE)])
                for a, b in tx_keys
            ),
        ]

    async with stalled(redis_server, 4.5):
        tasks = [asyncio.create_task(outcome(call)) for call in calls()]
    results = await asyncio.gather(*tasks)

    for result in results:
        assert_true_outcome_or_unknown(result)
    etag_results, first_results = results[:n], results[n : 2 * n]
    delete_results, tx_results = results[2 * n : 3 * n], results[3 * n :]
    for key, result in zip(etag_keys, etag_results, strict=True):
        item = await store.get(GetRequest(key))
        assert item is not None and item.etag in {"1", "2"}  # applied at most once
        if result is None:
            assert (item.value, item.etag) == (1, "2")
    for key, result in zip(first_keys, first_results, strict=True):
        item = await store.get(GetRequest(key))
        if result is None:
            assert item is not None and (item.value, item.etag) == (1, "1")
    for key, result in zip(delete_keys, delete_results, strict=True):
        if result is None:
            assert await store.get(GetRequest(key)) is None
    for (a, b), result in zip(tx_keys, tx_results, strict=True):
        item_a, item_b = await store.get(GetRequest(a)), await store.get(GetRequest(b))
        assert item_a is not None and item_a.etag in {"1", "2"}
        if result is None:
            assert item_b is not None and (item_a.value, item_b.value) == (1, 1)


async def test_read_modify_write_counter_across_a_stall_counts_every_acknowledged_write(
    redis_driver: RedisDriver, redis_server: BackendInfo
) -> None:
    """Ten clients increment one counter with ETags while Redis stalls for 3 s."""
    store = await redis_driver("state.redis")
    key = new_key("counter")
    await store.set(SetRequest(key, 0))
    await load_every_script(store)
    acknowledged = unknown = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal acknowledged, unknown
        while not stop.is_set():
            try:
                item = await store.get(GetRequest(key))
            except ConnectionFailedError:
                continue  # a read during the stall: nothing was written
            assert item is not None
            try:
                await store.set(SetRequest(key, item.value + 1, etag=item.etag))
            except ETagError:
                continue  # another client won this round: a true conflict
            except ConnectionFailedError:
                unknown += 1
                continue
            acknowledged += 1

    clients = [asyncio.create_task(client()) for _ in range(10)]
    await asyncio.sleep(0.5)
    async with stalled(redis_server, 3):
        pass
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)

    final = await store.get(GetRequest(key))
    assert final is not None
    assert acknowledged <= final.value <= acknowledged + unknown
    assert int(final.etag) == final.value + 1
