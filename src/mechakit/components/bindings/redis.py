"""bindings.redis: an output binding over Redis string keys, as Dapr's.

Every operation names its key in the request metadata ``key``:

- ``create``: store the data (``SET``); ``ttlInSeconds`` sets its expiry in the same
  command (upstream uses a second EXPIRE); ``-1`` or no TTL stores it without expiry.
- ``get``: the stored bytes, or empty data when the key does not exist; ``delete: "true"``
  reads and removes the key in one step (GETDEL).
- ``delete``: remove the key; succeeds when it does not exist.
- ``increment``: add 1 (``INCR``) and answer with the new value; ``ttlInSeconds`` sets
  the expiry (``-1`` removes it) atomically with the increment.

Retries: redis-py sends a command again after a timeout or lost connection
(``maxRetries``), though the first copy may have run. ``create`` and ``delete`` repeat
harmlessly and keep that. ``increment`` and ``get`` with ``delete`` would count twice or
lose the value, so they go through a second client (made on first use) that never
retries: a lost answer is a retriable error saying it may or may not have happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mechakit.components._shared.redis import (
    RedisDriver,
    RedisSettings,
    close_client,
    connect,
    redis_errors,
)
from mechakit.components._shared.requests import metadata_flag, metadata_value
from mechakit.core.bindings import InvokeRequest, InvokeResponse, OperationKind, OutputBinding
from mechakit.core.errors import ConnectionFailedError, InvalidRequestError, OperationTimeoutError
from mechakit.core.state import parse_ttl

INCREMENT = "increment"


class RedisBindingSettings(RedisSettings):
    """The common Redis settings."""


class RedisBinding(RedisDriver[RedisBindingSettings], OutputBinding[RedisBindingSettings]):
    def __init__(self) -> None:
        super().__init__()
        self._once_client: Any = None
        self._once_lock = asyncio.Lock()

    async def shut(self) -> None:
        once, self._once_client = self._once_client, None
        await super().shut()
        await close_client(once)

    def operations(self) -> Sequence[str]:
        return (OperationKind.CREATE, OperationKind.GET, OperationKind.DELETE, INCREMENT)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        operation = self.check_operation(request)
        key = metadata_value(request.metadata, "key")
        if not key:
            raise InvalidRequestError(
                f"operation {operation!r} needs the key in request metadata 'key'",
                component=self.label,
                field="key",
            )
        with redis_errors(self.label, key=key, action=operation):
            if operation == OperationKind.CREATE:
                ttl = self._ttl(request, key)
                expiry = ttl if ttl and ttl > 0 else None
                await self._calls.command(lambda r: r.set(key, request.data, ex=expiry))
                return InvokeResponse()
            if operation == OperationKind.GET:
                if self._flag(request, "delete", key):
                    data = await self._once(key, "get and delete", lambda r: r.getdel(key))
                else:
                    data = await self._calls.command(lambda r: r.get(key))
                return InvokeResponse(data=b"" if data is None else bytes(data))
            if operation == OperationKind.DELETE:
                await self._calls.command(lambda r: r.delete(key))
                return InvokeResponse()
            ttl = self._ttl(request, key)
            count = await self._once(key, "increment", lambda r: _increment(r, key, ttl))
            return InvokeResponse(data=str(count).encode())

    async def _once(self, key: str, action: str, command: Any) -> Any:
        """``command(client)`` on the client that never sends a command twice; a lost
        answer (timeout, dropped connection) is an error saying the outcome is unknown."""
        from redis import exceptions as rexc

        client = await self._no_retry_client()
        try:
            with redis_errors(self.label, key=key, action=action):
                return await command(client)
        except ConnectionFailedError as exc:
            lost = rexc.ConnectionError | rexc.TimeoutError | OSError
            if not isinstance(exc.__cause__, lost):  # e.g. READONLY: refused, not run
                raise
            raise OperationTimeoutError(
                f"{exc.reason}; it was sent and may or may not have happened (not retried, "
                "as a second copy would run again)",
                component=self.label,
                key=key,
            ) from exc

    async def _no_retry_client(self) -> Any:
        if self._once_client is None:
            async with self._once_lock:
                if self._once_client is None:
                    self.require_open()
                    settings = self.settings.model_copy(update={"max_retries": 0})
                    self._once_client = await connect(settings, component=self.label)
        return self._once_client

    def _ttl(self, request: InvokeRequest, key: str) -> int | None:
        try:
            return parse_ttl(request.metadata)
        except InvalidRequestError as exc:
            raise InvalidRequestError(
                exc.reason, component=self.label, key=key, field="ttlInSeconds"
            ) from None

    def _flag(self, request: InvokeRequest, name: str, key: str) -> bool:
        value = metadata_value(request.metadata, name)
        return metadata_flag(value, name, default=False, component=self.label, key=key)


async def _increment(redis: Any, key: str, ttl: int | None) -> int:
    """INCR and the TTL change in one MULTI/EXEC."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        if ttl == -1:
            pipe.persist(key)
        elif ttl is not None:
            pipe.expire(key, ttl)
        results = await pipe.execute()
    return int(results[0])


__all__ = ["RedisBinding", "RedisBindingSettings"]
