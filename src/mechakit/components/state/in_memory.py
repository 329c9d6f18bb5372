"""``state.in-memory``: state held in this process, with ETags, TTL and transactions.

Every operation runs without awaiting between its check and its write, so each one (and
each transaction) is atomic with respect to other coroutines on the event loop. Values are
stored encoded, so later changes to a caller's object never leak into the store. Each
instance has its own data; nothing survives ``close`` or the process.

ETags are decimal strings of one counter shared by every key of the instance: each write
takes the next number, so an ETag is never reused, not even after a key is deleted and
written again. A write without ``ttlInSeconds`` stores the value without expiry (like
``-1``), as Dapr's SQL stores do.

Keys with a TTL are also filed by the second they expire in, so the periodic cleanup visits
only what has expired (not every key), and pauses for half a millisecond after every
half millisecond of work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from mechakit.core.metadata import Duration
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
    PreparedOperation,
    SetRequest,
    StateFeature,
    StateItem,
    StateSettings,
    TransactionalStore,
    TransactionOperation,
    cleanup_interval_setting,
    decode_value,
    ttl_metadata,
)


class InMemorySettings(StateSettings):
    cleanup_interval: Duration = cleanup_interval_setting(timedelta(seconds=10), example="10s")


class InMemoryStateStore(TransactionalStore[InMemorySettings]):
    """Key/value state in process memory; lost when the process exits."""

    FEATURES = frozenset({StateFeature.ETAG, StateFeature.TTL})

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, _Entry] = {}
        self._etags = itertools.count(1)
        self._expiring: dict[int, set[str]] = {}
        """Stored keys with a TTL by the second their entry expires in (``_second``)."""
        self._seconds: list[int] = []
        """Heap of the seconds in ``_expiring``, soonest first."""
        self._filing = True
        """Whether keys are filed in ``_expiring``: only for the cleanup, which may be off."""

    async def open(self) -> None:
        self._filing = self.settings.cleanup_interval.total_seconds() > 0
        self.clean_expired_every(self.settings.cleanup_interval, self._purge_expired)

    async def shut(self) -> None:
        self._items.clear()
        self._expiring.clear()
        self._seconds.clear()

    async def ping(self) -> None:
        """Memory always answers."""
        self.require_open()

    async def get(self, request: GetRequest) -> StateItem | None:
        self.require_open()
        entry = self._live(self.stored_key(request.key), time.time())
        if entry is None:
            return None
        return StateItem(
            key=request.key,
            value=decode_value(entry.data, entry.is_binary),
            etag=str(entry.etag),
            metadata=ttl_metadata(entry.expires_at),
        )

    async def set(self, request: SetRequest) -> None:
        self.require_open()
        self._apply(self.prepare(request), time.time())

    async def delete(self, request: DeleteRequest) -> None:
        self.require_open()
        self._apply(self.prepare(request), time.time())

    async def transact(
        self, operations: Sequence[TransactionOperation], metadata: Mapping[str, str] | None = None
    ) -> None:
        """Apply every operation in order; on any failure restore the touched keys."""
        self.require_open()
        prepared = [self.prepare(op) for op in operations]
        before = {op.stored_key: self._items.get(op.stored_key) for op in prepared}
        now = time.time()
        try:
            for op in prepared:
                self._apply(op, now)
        except BaseException:
            for stored_key, entry in before.items():
                self._put(stored_key, entry)
            raise

    # --- helpers --------------------------------------------------------------------

    def _live(self, stored_key: str, now: float) -> _Entry | None:
        """The entry unless missing or expired; an expired one is dropped on the way."""
        entry = self._items.get(stored_key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            self._put(stored_key, None)
            return None
        return entry

    def _put(self, stored_key: str, entry: _Entry | None) -> None:
        """Store (or, for None, remove) the entry of ``stored_key``, keeping ``_expiring`` true."""
        old = self._items.pop(stored_key, None) if entry is None else self._items.get(stored_key)
        if old is not None and old.expires_at is not None:
            self._expiring.get(_second(old.expires_at), set()).discard(stored_key)
        if entry is None:
            return
        self._items[stored_key] = entry
        if entry.expires_at is not None and self._filing:
            self._file(_second(entry.expires_at), stored_key)

    def _file(self, second: int, stored_key: str) -> None:
        keys = self._expiring.get(second)
        if keys is None:
            keys = self._expiring[second] = set()
            heapq.heappush(self._seconds, second)
        keys.add(stored_key)

    def check_write(self, request: SetRequest | DeleteRequest) -> None:
        self.prepare(request)

    def _apply(self, op: PreparedOperation, now: float) -> None:
        current = self._live(op.stored_key, now)
        stored_etag = current.etag if current is not None else None
        if op.etag is not None and op.etag != stored_etag:
            raise self.etag_mismatch(op.key)
        if op.etag is None and op.first_write and current is not None:
            raise self.etag_mismatch(op.key, first_write=True)
        if op.value is None:
            self._put(op.stored_key, None)
        else:
            value = op.value
            entry = _Entry(value.data, value.is_binary, next(self._etags), value.expires_at)
            self._put(op.stored_key, entry)

    async def _purge_expired(self) -> int:
        """Delete the expired entries of every second that has begun; the number deleted.
        After every ``_PURGE_SLICE`` seconds of work it pauses as long, so requests wait
        for one slice at most; each key is checked when its turn comes, so one written
        meanwhile stays."""
        deleted, now = 0, time.time()
        slice_end = time.perf_counter() + _PURGE_SLICE
        later: list[tuple[int, str]] = []  # in the current second, not expired yet
        while self._seconds and self._seconds[0] <= now:
            second = heapq.heappop(self._seconds)
            for stored_key in self._expiring.pop(second, ()):
                entry = self._items.get(stored_key)
                if entry is None or entry.expires_at is None:
                    continue
                if entry.expires_at > now:
                    if _second(entry.expires_at) == second:
                        later.append((second, stored_key))
                    continue
                del self._items[stored_key]
                deleted += 1
                if time.perf_counter() >= slice_end:
                    await asyncio.sleep(_PURGE_SLICE)  # a pause, not just a turn: half the CPU
                    now, slice_end = time.time(), time.perf_counter() + _PURGE_SLICE
        for second, stored_key in later:
            self._file(second, stored_key)
        return deleted


@dataclass(frozen=True)
class _Entry:
    data: bytes
    is_binary: bool
    etag: int
    expires_at: float | None
    """Seconds since the epoch; None for no expiry."""


_PURGE_SLICE = 0.0005
"""Seconds the cleanup works before it pauses for as long."""


def _second(expires_at: float) -> int:
    """The second an entry with a TTL is filed under: the one its expiry falls in."""
    return math.floor(expires_at)
