"""``state.sqlite``: state in a SQLite file, safe for several processes sharing that file.

The file is opened in WAL mode (readers never block the writer) and every write runs in a
``BEGIN IMMEDIATE`` transaction, so an ETag check and the write it guards are one atomic
step even when other processes write the same file. One connection per component, used
from one dedicated thread, keeps the event loop free.

ETags are decimal strings of one counter kept in the metadata table and shared by every
key (and every process): each write takes the next number, so an ETag is never reused, not
even after a key is deleted and written again. A write without ``ttlInSeconds`` stores the
value without expiry (like ``-1``). Expired rows are invisible at once, replaced or removed
when next written, and deleted by a periodic cleanup.

Bulk set and bulk delete run in one write transaction: an item that fails (bad value, bad
TTL, ETag check) is skipped and named in the ``BulkError``; every other item is committed.
A connection or I/O failure fails the whole call (nothing is written) with a retriable
``ConnectionFailedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from pydantic import field_validator

from mechakit.components.state._sql import SQLStateStore
from mechakit.core.errors import (
    ConnectionFailedError,
    ETagError,
    InvalidRequestError,
    OperationTimeoutError,
)
from mechakit.core.metadata import Bool, Duration, setting, timeout_setting
from mechakit.core.state import (
    PreparedOperation,
    StateFeature,
    StateItem,
    StateSettings,
    TransactionOperation,
    cleanup_interval_setting,
    decode_value,
    ttl_metadata,
)

T = TypeVar("T")


class SQLiteSettings(StateSettings):
    connection_string: str = setting(
        description=(
            "The database file: a path, a 'file:' URI (e.g. file:data.db?mode=rwc), "
            "or ':memory:' for a private in-memory database."
        ),
        example="data.db",
    )
    table_name: str = setting(
        "state",
        description="Table holding the state; created when missing.",
        example="state",
    )
    metadata_table_name: str = setting(
        "metadata",
        description="Table holding the schema version and the ETag counter.",
        example="metadata",
    )
    timeout: Duration = timeout_setting(
        timedelta(seconds=20),
        description="How long one operation may take before it fails with a timeout; 0 for no limit.",
    )
    busy_timeout: Duration = setting(
        timedelta(seconds=2),
        description="How long a write waits for another connection's write lock.",
        example="2s",
    )
    cleanup_interval: Duration = cleanup_interval_setting(timedelta(hours=1), example="1h")
    disable_wal: Bool = setting(
        False,
        name="disableWAL",
        description="Keep the rollback journal instead of WAL (for network file systems).",
        example="false",
    )

    @field_validator("table_name", "metadata_table_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError("must be a SQL identifier: letters, digits and '_', not first a digit")
        return value


class SQLiteStateStore(SQLStateStore[SQLiteSettings, PreparedOperation]):
    """Key/value state in a SQLite file; ETags, TTL and transactions across processes."""

    FEATURES = frozenset({StateFeature.ETAG, StateFeature.TTL})

    def __init__(self) -> None:
        super().__init__()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._sql = _Statements("state", "metadata")
        self._timeout: float | None = 20.0

    async def open(self) -> None:
        settings = self.settings
        self._sql = _Statements(settings.table_name, settings.metadata_table_name)
        timeout = settings.timeout.total_seconds()
        self._timeout = timeout if timeout > 0 else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.label)
        try:
            self._conn = await self._call(lambda: self._connect(settings), "open the database")
            await self._run(self._migrate, "create the tables")
        except ConnectionFailedError as exc:
            raise ConnectionFailedError(
                f"cannot open {settings.connection_string!r}: {exc.reason}",
                component=self.label,
                field="connectionString",
            ) from exc
        self.clean_expired_every(settings.cleanup_interval, self._purge_expired)

    async def shut(self) -> None:
        conn, self._conn = self._conn, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchall(), "ping")

    # --- reading and writing -----------------------------------------------------------

    def _prepare_write(self, request: TransactionOperation) -> PreparedOperation:
        return self.prepare(request)

    async def _read(
        self, stored_keys: Sequence[str], what: str, key: str | None = None
    ) -> dict[str, StateItem]:
        return await self._run(lambda conn: self._select(conn, stored_keys, time.time()), what, key)

    async def _write(
        self,
        ops: Sequence[PreparedOperation],
        what: str,
        key: str | None = None,
        *,
        atomic: bool,
    ) -> dict[str, Exception]:
        return await self._run(
            lambda conn: self._in_transaction(conn, lambda: self._apply(conn, ops, atomic=atomic)),
            what,
            key,
        )

    # --- running on the database thread -----------------------------------------------

    async def _call(self, fn: Callable[[], T], what: str, key: str | None = None) -> T:
        """Run ``fn`` on the database thread; sqlite errors become core errors."""
        future = asyncio.get_running_loop().run_in_executor(self.opened(self._executor), fn)
        try:
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            if self._conn is not None:
                self._conn.interrupt()
            raise OperationTimeoutError(
                f"{what} did not finish within {self._timeout:g}s; it may or may not have happened",
                component=self.label,
                key=key,
            ) from None
        except sqlite3.DataError as exc:
            raise InvalidRequestError(
                f"{what} failed: {exc}", component=self.label, key=key
            ) from exc
        except sqlite3.Error as exc:
            raise ConnectionFailedError(
                f"{what} failed: {exc}", component=self.label, key=key
            ) from exc

    async def _run(
        self, fn: Callable[[sqlite3.Connection], T], what: str, key: str | None = None
    ) -> T:
        conn = self.opened(self._conn)
        return await self._call(lambda: fn(conn), what, key)

    def _connect(self, settings: SQLiteSettings) -> sqlite3.Connection:
        target = settings.connection_string
        uri = target.startswith("file:")
        if not uri and target != ":memory:":
            target = os.path.expanduser(target)
        conn = sqlite3.connect(
            target,
            uri=uri,
            timeout=settings.busy_timeout.total_seconds(),
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=" + ("DELETE" if settings.disable_wal else "WAL"))
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        def create() -> None:
            for statement in self._sql.schema:
                conn.execute(statement)
            found = conn.execute(self._sql.read_meta, (self._sql.version_key,)).fetchall()
            self.check_schema_version(self._sql.table, int(found[0][0]) if found else 0)
            conn.execute(self._sql.write_meta, (self._sql.version_key, str(self.SCHEMA_VERSION)))

        self._in_transaction(conn, create)

    @staticmethod
    def _in_transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
        """``body`` in a ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on any error."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _select(
        self, conn: sqlite3.Connection, stored_keys: Sequence[str], now: float
    ) -> dict[str, StateItem]:
        items: dict[str, StateItem] = {}
        for start in range(0, len(stored_keys), _CHUNK):
            chunk = list(dict.fromkeys(stored_keys[start : start + _CHUNK]))
            sql = self._sql.select.format(marks=",".join("?" * len(chunk)))
            for key, value, is_binary, etag, expires_at in conn.execute(
                sql, (*chunk, now)
            ).fetchall():
                items[key] = StateItem(
                    self.key_prefix.strip(key),
                    decode_value(bytes(value), bool(is_binary)),
                    str(etag),
                    ttl_metadata(expires_at),
                )
        return items

    def _apply(
        self, conn: sqlite3.Connection, ops: Sequence[PreparedOperation], *, atomic: bool
    ) -> dict[str, Exception]:
        """Check and write each operation in order. A failed ETag check raises when
        ``atomic``; otherwise it is collected by key and its operation skipped."""
        now = time.time()
        etags = self._reserve_etags(conn, sum(op.value is not None for op in ops))
        errors: dict[str, Exception] = {}
        for op in ops:
            try:
                self._check(conn, op, now)
            except ETagError as exc:
                if atomic:
                    raise
                errors[op.key] = exc
                continue
            self._store(conn, op, etags, now)
        return errors

    def _reserve_etags(self, conn: sqlite3.Connection, count: int) -> Iterator[int]:
        if count == 0:
            return iter(())
        ((last,),) = conn.execute(self._sql.bump_etag, (count, _ETAG_KEY)).fetchall()
        return iter(range(int(last) - count + 1, int(last) + 1))

    def _check(self, conn: sqlite3.Connection, op: PreparedOperation, now: float) -> None:
        if op.etag is None and not (op.first_write and op.value is not None):
            return
        found = conn.execute(self._sql.current_etag, (op.stored_key, now)).fetchall()
        stored_etag = found[0][0] if found else None
        if op.etag is not None and op.etag != stored_etag:
            raise self.etag_mismatch(op.key)
        if op.etag is None and stored_etag is not None:
            raise self.etag_mismatch(op.key, first_write=True)

    def _store(
        self, conn: sqlite3.Connection, op: PreparedOperation, etags: Iterator[int], now: float
    ) -> None:
        if op.value is None:
            conn.execute(self._sql.delete, (op.stored_key,))
            return
        value = op.value
        conn.execute(
            self._sql.upsert,
            (op.stored_key, value.data, int(value.is_binary), next(etags), value.expires_at, now),
        )

    async def _purge_expired(self) -> int:
        """Expired rows deleted in batches; requests queued on the database thread run
        between them."""

        def delete(conn: sqlite3.Connection, batch: int) -> int:
            purge = self._sql.purge
            return self._in_transaction(
                conn, lambda: conn.execute(purge, (time.time(), batch)).rowcount
            )

        return await self.purge_in_batches(
            lambda batch: self._run(lambda conn: delete(conn, batch), "delete expired rows")
        )


_ETAG_KEY = "etag-sequence"
_CHUNK = 500
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


class _Statements:
    """Every SQL statement, for one state table and one metadata table (validated names)."""

    def __init__(self, table: str, metadata_table: str) -> None:
        self.table = table
        self.version_key = f"schema-version:{table}"
        t, m = f'"{table}"', f'"{metadata_table}"'
        live = "(expires_at IS NULL OR expires_at > ?)"
        self.schema = (
            f"CREATE TABLE IF NOT EXISTS {m} (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {t} ("
            "key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL, is_binary INTEGER NOT NULL, "
            "etag INTEGER NOT NULL, expires_at REAL, updated_at REAL NOT NULL)",
            f'CREATE INDEX IF NOT EXISTS "{table}_expires_at" ON {t} (expires_at) '
            "WHERE expires_at IS NOT NULL",
            f"INSERT OR IGNORE INTO {m} (key, value) VALUES ('{_ETAG_KEY}', '0')",
        )
        self.read_meta = f"SELECT value FROM {m} WHERE key = ?"
        self.write_meta = f"INSERT OR REPLACE INTO {m} (key, value) VALUES (?, ?)"
        self.bump_etag = (
            f"UPDATE {m} SET value = CAST(value AS INTEGER) + ? WHERE key = ? RETURNING value"
        )
        self.select = (
            f"SELECT key, value, is_binary, etag, expires_at FROM {t} "
            f"WHERE key IN ({{marks}}) AND {live}"
        )
        self.current_etag = f"SELECT etag FROM {t} WHERE key = ? AND {live}"
        self.upsert = (
            f"INSERT INTO {t} (key, value, is_binary, etag, expires_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "is_binary = excluded.is_binary, etag = excluded.etag, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at"
        )
        self.delete = f"DELETE FROM {t} WHERE key = ?"
        expired = "expires_at IS NOT NULL AND expires_at <= ?1"
        self.purge = (
            f"DELETE FROM {t} WHERE rowid IN "
            f"(SELECT rowid FROM {t} WHERE {expired} LIMIT ?2) AND {expired}"
        )
