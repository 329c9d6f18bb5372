"""redis-py asyncio clients that wait for a free connection, cheaply, instead of failing.

redis-py's plain ``ConnectionPool`` and its cluster client fail a call at once with "Too
many connections" when all ``max_connections`` are busy, so a burst of calls larger than
``poolSize`` loses most of them. redis-py's ``BlockingConnectionPool`` waits, but takes a
condition lock and arms a timeout on every checkout, even when connections are free; that
cost 10-20% of the throughput of small commands (benchmarks/README.md). Here free
connections are counted with a semaphore: an uncontended checkout never suspends, and only
a caller that finds them all busy waits, up to ``poolTimeout``.

It imports redis-py, so :func:`mechakit.components._shared.redis.connect` imports it
lazily, when a client is built.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError


class ConnectionSlots:
    """``size`` slots; taking one waits up to ``timeout`` seconds when none is free."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size, self.timeout = size, timeout
        self._free = asyncio.Semaphore(size)

    async def take(self) -> None:
        if not self._free.locked():
            await self._free.acquire()  # a free slot: returns without suspending
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._free.acquire()
        except TimeoutError:
            raise RedisConnectionError(
                f"no free connection within {self.timeout:g}s: all {self.size} are busy "
                "(raise poolSize or poolTimeout)"
            ) from None

    def give_back(self) -> None:
        self._free.release()


class _WaitsForSlots:
    """Mixin for a redis-py ``ConnectionPool`` class: checkouts wait for a free slot."""

    max_connections: int

    def __init__(self, *args: Any, pool_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = ConnectionSlots(self.max_connections, pool_timeout)
        # Connections handed out by get_connection, each holding one slot.
        # ConnectionPool.get_connection may release a connection it never handed out (when
        # connecting fails); that must not give back a slot twice.
        self._holding: set[AbstractConnection] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        await self._slots.take()
        try:
            connection: AbstractConnection = await super().get_connection()  # type: ignore[misc]
        except BaseException:
            self._slots.give_back()
            raise
        self._holding.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)  # type: ignore[misc]
        finally:
            if connection in self._holding:
                self._holding.discard(connection)
                self._slots.give_back()


class WaitingConnectionPool(_WaitsForSlots, ConnectionPool):
    """A standalone server's pool: at most ``max_connections``, waiting ``pool_timeout``."""


class WaitingSentinelConnectionPool(_WaitsForSlots, SentinelConnectionPool):
    """The pool of a Sentinel-managed master, waiting as :class:`WaitingConnectionPool`."""


_holding_slot: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mechakit_redis_cluster_slot", default=False
)
"""Set while a task runs a command or pipeline: a command redis-py issues from inside
(a redirected pipeline command) must not wait for a second slot."""


class WaitingRedisCluster(RedisCluster):
    """A cluster client with at most ``max_connections`` commands and pipelines under way.

    redis-py keeps ``max_connections`` per node; bounding the calls under way at that
    number keeps every node within it, and makes the rest wait for ``pool_timeout``.
    """

    def __init__(self, *, pool_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._slots = ConnectionSlots(max_connections, pool_timeout)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if _holding_slot.get():
            yield
            return
        await self._slots.take()
        token = _holding_slot.set(True)
        try:
            yield
        finally:
            _holding_slot.reset(token)
            self._slots.give_back()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.slot():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:  # refused by redis-py with its own message
            return super().pipeline(transaction, shard_hint)
        return _WaitingClusterPipeline(self, transaction)  # type: ignore[abstract]


class _WaitingClusterPipeline(ClusterPipeline):
    def __init__(self, client: WaitingRedisCluster, transaction: Any = None) -> None:
        super().__init__(client, transaction)
        self._waiting_client = client

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with self._waiting_client.slot():
            return await super().execute(raise_on_error, allow_redirections)


__all__ = [
    "ConnectionSlots",
    "WaitingConnectionPool",
    "WaitingRedisCluster",
    "WaitingSentinelConnectionPool",
]
