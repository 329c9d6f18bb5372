"""A redis-py asyncio connection pool that waits for a free connection, cheaply.

redis-py's plain ``ConnectionPool`` fails a call at once with "Too many connections" when
all ``max_connections`` are busy, and its ``BlockingConnectionPool`` waits but takes a
condition lock and arms a timeout on every checkout, even when connections are free; that
cost 10-20% of the throughput of small commands (benchmarks/README.md). This pool counts
free connections with a semaphore: an uncontended checkout never suspends, and only a
caller that finds the pool exhausted waits, up to ``timeout`` seconds.

It imports redis-py, so :func:`mechakit.components._shared.redis.connect` imports it
lazily, when a client is built.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError


class WaitingConnectionPool(ConnectionPool):
    """At most ``max_connections``; a checkout waits up to ``timeout`` seconds for one."""

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._free = asyncio.Semaphore(self.max_connections)
        # Connections handed out by get_connection, each holding one semaphore slot.
        # ConnectionPool.get_connection may release a connection it never handed out (when
        # connecting fails); that must not give back a slot twice.
        self._holding: set[AbstractConnection] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._free.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free connection within {self.timeout:g}s: all "
                    f"{self.max_connections} are busy (raise poolSize or poolTimeout)"
                ) from None
        else:
            await self._free.acquire()  # a free slot: returns without suspending
        try:
            connection: AbstractConnection = await super().get_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._free.release()
            raise
        self._holding.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            if connection in self._holding:
                self._holding.discard(connection)
                self._free.release()


__all__ = ["WaitingConnectionPool"]
