"""lock.redis: one Redis string per resource (``SET resource owner NX PX expiry``).

Release is a Lua script that deletes the key only when the caller owns it, so checking
and deleting cannot interleave with another client. Redis expires the key, so a crashed
owner's lock frees itself. Standalone and Sentinel only: Redis Cluster is refused because
a lock must live on one primary.
"""

from __future__ import annotations

from mechakit.components._shared.redis import (
    RedisDriver,
    RedisScript,
    RedisSettings,
    RedisType,
    redis_errors,
)
from mechakit.core.errors import MetadataError
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus


class RedisLockSettings(RedisSettings):
    """The common Redis settings; ``redisType: cluster`` is refused at init."""


class RedisLockStore(RedisDriver[RedisLockSettings], LockStore[RedisLockSettings]):
    async def open(self) -> None:
        if self.settings.redis_type is RedisType.CLUSTER:
            raise MetadataError(
                "metadata 'redisType' 'cluster' is not supported: a lock must live on a single "
                "primary; use redisType 'node' (with failover: true for Sentinel)",
                component=self.label,
                field="redisType",
            )
        await super().open()

    async def try_lock(self, request: TryLockRequest) -> bool:
        with redis_errors(self.label, key=request.resource_id, action="lock"):
            acquired = await self._calls.command(
                lambda r: r.set(
                    request.resource_id, request.owner, nx=True, px=request.expiry_seconds * 1000
                )
            )
        return bool(acquired)

    async def unlock(self, request: UnlockRequest) -> UnlockStatus:
        with redis_errors(self.label, key=request.resource_id, action="unlock"):
            status = await self._calls.script(_UNLOCK, [request.resource_id], [request.owner])
        return UnlockStatus(int(status))


# Returns an UnlockStatus number: 0 released, 1 no such lock, 2 held by another owner.
_UNLOCK = RedisScript(
    """
local owner = redis.call('GET', KEYS[1])
if not owner then return 1 end
if owner ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 0
"""
)

__all__ = ["RedisLockSettings", "RedisLockStore"]
