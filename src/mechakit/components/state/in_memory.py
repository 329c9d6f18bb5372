"""``state.in-memory``: state held in this process, with ETags, TTL and transactions.

Every operation runs without awaiting between its check and its write, so each one (and
each transaction) is atomic with respect to other coroutines on the event loop. Values are
stored encoded, so later changes to a caller's object never leak into the store. Each
instance has its own data; nothing survives ``close`` or the process.

ETags are decimal strings of one counter shared by every key of the instance: each write
takes the next number, so an ETag is never reused, not even after a key is deleted and
written again. A write without ``ttlInSeconds`` stores the value without expiry (like
``-1``), as Dapr's SQL stores do.
"""

from __future__ import annotations

import itertools
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

    async def open(self) -> None:
        self.clean_expired_every(self.settings.cleanup_interval, self._purge_expired)

    async def shut(self) -> None:
        self._items.clear()

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
                if entry is None:
                    self._items.pop(stored_key, None)
                else:
                    self._items[stored_key] = entry
            raise

    # --- helpers --------------------------------------------------------------------

    def _live(self, stored_key: str, now: float) -> _Entry | None:
        """The entry unless missing or expired; an expired one is dropped on the way."""
        entry = self._items.get(stored_key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self._items[stored_key]
            return None
        return entry

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
            self._items.pop(op.stored_key, None)
        else:
            self._items[op.stored_key] = _Entry(
                op.value.data, op.value.is_binary, next(self._etags), op.value.expires_at
            )

    async def _purge_expired(self) -> None:
        now = time.time()
        expired = [
            k for k, e in self._items.items() if e.expires_at is not None and e.expires_at <= now
        ]
        for stored_key in expired:
            del self._items[stored_key]


@dataclass(frozen=True)
class _Entry:
    data: bytes
    is_binary: bool
    etag: int
    expires_at: float | None
    """Seconds since the epoch; None for no expiry."""
