"""lock.in-memory: leases held in this instance's memory, for tests and single-process apps.

A lock is held by one owner until it is unlocked or its expiry passes; re-acquiring a held
lock fails even for its owner, as in Dapr. Time is ``time.monotonic()``, so a wall-clock
change neither frees nor extends a lock.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus
from mechakit.core.metadata import Settings


class InMemoryLockSettings(Settings):
    """The in-memory lock store has no settings."""


class InMemoryLockStore(LockStore[InMemoryLockSettings]):
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` is a monotonic seconds counter; tests pass their own to step time."""
        super().__init__()
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._expiries: list[tuple[float, str]] = []

    async def shut(self) -> None:
        self._leases.clear()
        self._expiries.clear()

    async def ping(self) -> None:
        self.require_open()

    async def try_lock(self, request: TryLockRequest) -> bool:
        self.require_open()
        now = self._clock()
        self._forget_expired(now)
        if request.resource_id in self._leases:
            return False
        lease = _Lease(request.owner, now + request.expiry_seconds)
        self._leases[request.resource_id] = lease
        heapq.heappush(self._expiries, (lease.expires_at, request.resource_id))
        return True

    async def unlock(self, request: UnlockRequest) -> UnlockStatus:
        self.require_open()
        self._forget_expired(self._clock())
        lease = self._leases.get(request.resource_id)
        if lease is None:
            return UnlockStatus.LOCK_DOES_NOT_EXIST
        if lease.owner != request.owner:
            return UnlockStatus.LOCK_BELONGS_TO_OTHERS
        del self._leases[request.resource_id]
        return UnlockStatus.SUCCESS

    def _forget_expired(self, now: float) -> None:
        """Drops every lease whose expiry has passed, so memory follows the live locks."""
        while self._expiries and self._expiries[0][0] <= now:
            _, resource_id = heapq.heappop(self._expiries)
            lease = self._leases.get(resource_id)
            if lease is not None and lease.expires_at <= now:
                del self._leases[resource_id]


@dataclass(frozen=True)
class _Lease:
    owner: str
    expires_at: float
