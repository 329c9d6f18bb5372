"""What the SQL state stores share (``state.sqlite``, ``state.postgresql``).

Both read many keys in one statement and write a batch of prepared operations in one
database transaction: a set, a delete and a transaction are batches that a failed check
rolls back whole; a bulk set or delete is a batch in which a failed check skips only its
item. :class:`SQLStateStore` says that once; a driver prepares, reads and writes.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from mechakit.core.component import SettingsT
from mechakit.core.errors import BulkError, ConfigurationError
from mechakit.core.state import (
    BulkGetItem,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateItem,
    TransactionalStore,
    TransactionOperation,
    prepare_each,
)

OperationT = TypeVar("OperationT")

PURGE_BATCH = 500
"""Expired rows the periodic cleanup deletes in its first transaction; later batches are
sized to take about ``PURGE_BATCH_SECONDS`` each (between ``PURGE_BATCH_MIN`` and
``PURGE_BATCH_MAX`` rows)."""
PURGE_BATCH_SECONDS = 0.005
PURGE_BATCH_MIN, PURGE_BATCH_MAX = 100, 5000


class SQLStateStore(TransactionalStore[SettingsT], Generic[SettingsT, OperationT]):
    """A state store over SQL tables: every public operation is one read or one batch."""

    SCHEMA_VERSION = 1
    """The version of the tables this mechakit creates (kept in the metadata table)."""

    @abstractmethod
    def _prepare_write(self, request: TransactionOperation) -> OperationT:
        """``request`` checked for all that does not depend on stored data."""

    @abstractmethod
    async def _read(
        self, stored_keys: Sequence[str], what: str, key: str | None = None
    ) -> Mapping[str, StateItem]:
        """The live items of ``stored_keys``, by stored key (each item under its own key)."""

    @abstractmethod
    async def _write(
        self, ops: Sequence[OperationT], what: str, key: str | None = None, *, atomic: bool
    ) -> Mapping[str, Exception]:
        """Apply ``ops`` in order in one transaction. ``atomic``: the first failed check
        raises and nothing is written; else each failed check skips its operation and is
        returned by key."""

    async def get(self, request: GetRequest) -> StateItem | None:
        stored_key = self.stored_key(request.key)
        found = await self._read([stored_key], "get", request.key)
        return found.get(stored_key)

    async def bulk_get(self, requests: Sequence[GetRequest]) -> list[BulkGetItem]:
        """One read for all keys; a missing or expired key is an entry with ``found`` False."""

        async def fetch(keys: list[str]) -> Mapping[str, StateItem]:
            return await self._read(keys, "bulk get")

        return await self.bulk_get_stored(requests, fetch)

    async def set(self, request: SetRequest) -> None:
        await self._write([self._prepare_write(request)], "set", request.key, atomic=True)

    async def delete(self, request: DeleteRequest) -> None:
        await self._write([self._prepare_write(request)], "delete", request.key, atomic=True)

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        await self._write_each(requests, "bulk set")

    async def bulk_delete(self, requests: Sequence[DeleteRequest]) -> None:
        await self._write_each(requests, "bulk delete")

    async def transact(
        self, operations: Sequence[TransactionOperation], metadata: Mapping[str, str] | None = None
    ) -> None:
        """All operations in order in one database transaction; a failed check rolls back all."""
        ops = [self._prepare_write(op) for op in operations]
        if ops:
            await self._write(ops, "transaction", atomic=True)

    async def _write_each(
        self, requests: Sequence[SetRequest] | Sequence[DeleteRequest], what: str
    ) -> None:
        """Every item checked first (an invalid one fails the batch), then one batch in which
        an item whose check fails is named in the ``BulkError`` and every other committed."""
        ops = prepare_each(requests, self._prepare_write, component=self.label)
        errors = await self._write(ops, what, atomic=False) if ops else {}
        if errors:
            raise BulkError(dict(errors), component=self.label)

    async def purge_in_batches(
        self, delete_batch: Callable[[int], Awaitable[int]], batch: int = PURGE_BATCH
    ) -> int:
        """Run ``delete_batch(n)`` (delete at most ``n`` expired rows in a short transaction
        of its own, answer how many) until it deletes fewer than asked; the total.

        One statement over 10^5 expired rows would hold the database (SQLite: the one
        connection) for its whole length. Here a request waits for one batch of about
        ``PURGE_BATCH_SECONDS`` at most, and after each batch the sweep pauses as long as
        the batch took, so it never takes more than half of the database's time.
        """
        total = 0
        while True:
            started = time.monotonic()
            deleted = await delete_batch(batch)
            total += deleted
            if deleted < batch:
                return total
            took = time.monotonic() - started
            await asyncio.sleep(took)
            scaled = int(batch * PURGE_BATCH_SECONDS / max(took, 1e-6))
            batch = min(PURGE_BATCH_MAX, max(PURGE_BATCH_MIN, scaled))

    def check_schema_version(self, table: str, version: int) -> None:
        """Refuse tables that a newer mechakit made (their version is above ours)."""
        if version > self.SCHEMA_VERSION:
            raise ConfigurationError(
                f"table {table!r} has schema version {version}, newer than the "
                f"{self.SCHEMA_VERSION} this mechakit knows; upgrade mechakit",
                component=self.label,
                field="tableName",
            )


__all__ = ["PURGE_BATCH", "SQLStateStore"]
