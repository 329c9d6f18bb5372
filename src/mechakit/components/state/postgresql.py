"""``state.postgresql``: state in one PostgreSQL table, through a psycopg 3 connection pool.

Table ``tableName``: ``key text`` primary key; ``value jsonb`` for JSON values or
``value_bytes bytea`` for binary ones (exactly one is set, so JSON values stay queryable);
``etag bigint``; ``expires_at timestamptz`` (NULL: no expiry); ``updated_at``. ETags are
decimal strings of numbers drawn from one sequence per table, so an ETag is never reused,
not even after a key is deleted and written again. Times come from the server's clock.

Every single write is one statement that checks and writes: an ETag write is
``UPDATE … WHERE key = $1 AND etag = $2``, first-write is ``INSERT … ON CONFLICT`` that
replaces only an expired row; no row back means the check failed (``ETagError``, nothing
changed). Nothing re-sends a statement (no retries in psycopg, its pool or here), so a
write never finds itself: one whose answer is lost (connection dropped mid-COMMIT,
``timeout``) is a retriable ``ConnectionFailedError`` / ``OperationTimeoutError`` saying it
may or may not have been applied. A transaction runs its statements in order in one database transaction and rolls
back all of them on the first failed check. Bulk set/delete send all statements in one
pipelined round trip in one transaction: an item whose check fails is named in the
``BulkError``; every other item is committed. A write without ``ttlInSeconds`` stores the
value without expiry (like ``-1``). Expired rows are invisible at once and deleted every
``cleanupInterval`` by whichever process gets there first.

Query (``QUERY_API``): filters on dotted fields of JSON values become ``jsonb`` path
expressions with every value bound as a parameter; ordering comparisons only match values
of the same JSON type; ``NEQ`` also matches values without the field; the page token is an
offset. The schema is created and migrated under an advisory lock with its version in
``metadataTableName``, so processes starting together agree. Table names are folded to
lower case like unquoted SQL names, and then quoted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import field_validator

from mechakit.components._shared.postgresql import (
    PostgreSQLDriver,
    PostgreSQLSettings,
    Preparation,
    qualified_name,
    quote_name,
)
from mechakit.components.state._sql import SQLStateStore
from mechakit.core.errors import (
    ConfigurationError,
    InvalidRequestError,
)
from mechakit.core.metadata import Duration, setting
from mechakit.core.state import (
    Filter,
    KeyPrefix,
    Query,
    QueryableStore,
    QueryItem,
    QueryResponse,
    StateFeature,
    StateItem,
    StateSettings,
    TransactionOperation,
    cleanup_interval_setting,
    decode_value,
    ttl_metadata,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection

T = TypeVar("T")


class PostgreSQLStateSettings(PostgreSQLSettings, StateSettings):
    table_name: str = setting(
        "state",
        description="Table holding the state, optionally schema-qualified; created when missing.",
        example="state",
    )
    metadata_table_name: str = setting(
        "dapr_metadata",
        description="Table holding schema versions and cleanup times, optionally schema-qualified.",
        example="dapr_metadata",
    )
    cleanup_interval: Duration = cleanup_interval_setting(timedelta(hours=1), example="1h")

    @field_validator("table_name", "metadata_table_name")
    @classmethod
    def _qualified_identifier(cls, value: str) -> str:
        return qualified_name(value)


class PostgreSQLStateStore(
    PostgreSQLDriver[PostgreSQLStateSettings],
    SQLStateStore[PostgreSQLStateSettings, "_Operation"],
    QueryableStore[PostgreSQLStateSettings],
):
    """Key/value state in PostgreSQL: atomic ETag checks, TTL, transactions and queries."""

    FEATURES = frozenset({StateFeature.ETAG, StateFeature.TTL})

    def __init__(self) -> None:
        super().__init__()
        self._sql = _Statements("state", "dapr_metadata")

    async def open(self) -> None:
        settings = self.settings
        self._sql = _Statements(settings.table_name, settings.metadata_table_name)
        await super().open()
        self.clean_expired_every(settings.cleanup_interval, self._purge_expired)

    def preparation(self) -> Preparation:
        return Preparation(self._migrate, "tableName", f"table {self.settings.table_name!r}")

    async def query(self, query: Query) -> QueryResponse:
        """JSON values of this component's keys matching ``query``, one page at a time."""
        statement, params = self._query_sql(query)
        rows = await self._pool.run(lambda conn: _fetch_all(conn, statement, params), "query")
        results = [
            QueryItem(self.key_prefix.strip(key), decode_value(text.encode(), False), str(etag))
            for key, text, etag in rows
        ]
        token = None
        if query.limit and len(results) == query.limit:
            token = str(self._offset(query) + len(results))
        return QueryResponse(results, token)

    # --- preparing requests -----------------------------------------------------------

    def _prepare_write(self, request: TransactionOperation) -> _Operation:
        """Validate everything that does not depend on stored data, before anything is sent."""
        op = self.prepare(request)
        if op.value is None:
            if op.etag is None:
                return _Operation(op.key, self._sql.delete, {"key": op.stored_key}, False)
            params = {"key": op.stored_key, "etag": op.etag}
            return _Operation(op.key, self._sql.delete_if, params, True)
        value = op.value
        text = None if value.is_binary else value.data.decode()
        if text is not None and not _storable_as_jsonb(text):
            raise InvalidRequestError(
                "the value holds NaN, Infinity or a NUL character, which PostgreSQL's jsonb "
                "cannot store; send it as bytes instead",
                component=self.label,
                key=op.key,
            )
        params = {
            "key": op.stored_key,
            "value": text,
            "value_bytes": value.data if value.is_binary else None,
            "ttl": value.ttl if value.ttl is not None and value.ttl > 0 else None,
            "etag": op.etag,
        }
        if op.etag is not None:
            return _Operation(op.key, self._sql.update_if, params, True)
        if op.first_write:
            return _Operation(op.key, self._sql.insert_new, params, True, first_write=True)
        return _Operation(op.key, self._sql.upsert, params, False)

    async def _read(
        self, stored_keys: Sequence[str], what: str, key: str | None = None
    ) -> dict[str, StateItem]:
        one = len(stored_keys) == 1
        keys = stored_keys[0] if one else list(stored_keys)
        return await self._pool.run(lambda conn: self._select(conn, keys, one=one), what, key)

    async def _write(
        self, ops: Sequence[_Operation], what: str, key: str | None = None, *, atomic: bool
    ) -> dict[str, Exception]:
        matched = await self._pool.run(
            lambda conn: self._execute(conn, ops, atomic=atomic), what, key, write=True
        )
        return {
            op.key: self.etag_mismatch(op.key, first_write=op.first_write)
            for op, ok in zip(ops, matched, strict=True)
            if not ok
        }

    def _query_sql(self, query: Query) -> tuple[str, list[Any]]:
        params: list[Any] = [_like_prefix(self.key_prefix)]
        where = ["key LIKE %s", "value IS NOT NULL", _LIVE]
        if query.filter is not None:
            where.append(self._condition(query.filter, params))
        order = []
        for sorting in query.sort:
            order.append(f"value #> %s {'DESC' if sorting.descending else 'ASC'}")
            params.append(self._path(sorting.key))
        order.append("key")
        statement = (
            f"SELECT key, value::text, etag FROM {self._sql.table} "
            f"WHERE {' AND '.join(where)} ORDER BY {', '.join(order)}"
        )
        if query.limit:
            statement += " LIMIT %s"
            params.append(query.limit)
        offset = self._offset(query)
        if offset:
            statement += " OFFSET %s"
            params.append(offset)
        return statement, params

    def _condition(self, node: Filter, params: list[Any]) -> str:
        if node.op in ("AND", "OR"):
            if not node.children:
                raise InvalidRequestError(
                    f"query {node.op} needs at least one filter", component=self.label
                )
            return (
                "(" + f" {node.op} ".join(self._condition(c, params) for c in node.children) + ")"
            )
        path = self._path(node.key)
        if node.op == "IN":
            if not isinstance(node.value, list | tuple):
                raise InvalidRequestError(
                    f"query IN on {node.key!r} needs a list of values", component=self.label
                )
            params.extend([path, [self._json(node.key, v) for v in node.value]])
            return "value #> %s = ANY(%s::jsonb[])"
        sql = _COMPARISONS.get(node.op)
        if sql is None:
            raise InvalidRequestError(
                f"unknown query operator {node.op!r} "
                f"(supported: {', '.join([*_COMPARISONS, 'IN', 'AND', 'OR'])})",
                component=self.label,
            )
        params.extend([path, self._json(node.key, node.value)] * (sql.count("%s") // 2))
        return sql

    def _path(self, field: str) -> list[str]:
        parts = field.split(".")
        if parts and parts[0] == "value" and len(parts) > 1:
            parts = parts[1:]
        if not field or any(p == "" for p in parts):
            raise InvalidRequestError(
                f"query field {field!r} must be a dotted path like 'person.org'",
                component=self.label,
            )
        return parts

    def _json(self, field: str, value: Any) -> str:
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"query value for {field!r} is not JSON: {exc}", component=self.label
            ) from None

    def _offset(self, query: Query) -> int:
        if query.token is None:
            return 0
        if not _OFFSET.fullmatch(query.token):
            raise InvalidRequestError(
                f"query page token {query.token!r} is not one this store returned",
                component=self.label,
            )
        return int(query.token)

    # --- running statements -------------------------------------------------------------

    async def _execute(
        self, conn: AsyncConnection[Any], ops: Sequence[_Operation], *, atomic: bool
    ) -> list[bool]:
        """Run the statements in order in one transaction and one round trip; True where the
        check passed. ``atomic``: the first failed check raises and rolls everything back."""
        if len(ops) == 1:  # one statement is atomic on its own
            cursor = await conn.execute(ops[0].statement, ops[0].params)
            matched = [not ops[0].checked or cursor.rowcount > 0]
        else:
            async with conn.pipeline() as pipeline, conn.transaction():
                cursors = [await conn.execute(op.statement, op.params) for op in ops]
                await pipeline.sync()
                matched = [
                    not op.checked or cursor.rowcount > 0
                    for op, cursor in zip(ops, cursors, strict=True)
                ]
                if atomic:
                    self._raise_first_failure(ops, matched)
        if atomic:
            self._raise_first_failure(ops, matched)
        return matched

    def _raise_first_failure(self, ops: Sequence[_Operation], matched: Sequence[bool]) -> None:
        failed = next((op for op, ok in zip(ops, matched, strict=True) if not ok), None)
        if failed is not None:
            raise self.etag_mismatch(failed.key, first_write=failed.first_write)

    async def _select(
        self, conn: AsyncConnection[Any], keys: list[str] | str, *, one: bool = False
    ) -> dict[str, StateItem]:
        """Live items by stored key; ``one`` uses the single-key statement (an index lookup
        the planner handles faster than ``= ANY`` of one element)."""
        cursor = await conn.execute(self._sql.select_one if one else self._sql.select, (keys,))
        items = {}
        for key, text, value_bytes, etag, expires_at in await cursor.fetchall():
            if value_bytes is not None:
                value = decode_value(bytes(value_bytes), True)
            else:
                value = decode_value(text.encode(), False)
            items[key] = StateItem(
                self.key_prefix.strip(key), value, str(etag), ttl_metadata(expires_at)
            )
        return items

    async def _migrate(self, conn: AsyncConnection[Any]) -> None:
        """Create or upgrade the tables; the advisory lock serialises concurrent starters."""
        async with conn.transaction():
            await conn.execute(self._sql.lock_migrations, (_MIGRATION_LOCK,))
            await conn.execute(self._sql.create_metadata)
            cursor = await conn.execute(self._sql.read_meta, (self._sql.version_key,))
            found = await cursor.fetchone()
            version = int(found[0]) if found else 0
            self.check_schema_version(self._sql.table_name, version)
            if version == self.SCHEMA_VERSION:
                return
            cursor = await conn.execute(self._sql.columns, (self._sql.table,))
            existing = {name for (name,) in await cursor.fetchall()}
            if existing and not _COLUMNS.issubset(existing):
                raise ConfigurationError(
                    f"table {self._sql.table_name!r} exists but was not created by "
                    f"state.postgresql (columns {', '.join(sorted(existing))}); "
                    "choose another tableName",
                    component=self.label,
                    field="tableName",
                )
            for statement in self._sql.schema:
                await conn.execute(statement)
            await conn.execute(
                self._sql.write_meta, (self._sql.version_key, str(self.SCHEMA_VERSION))
            )

    async def _purge_expired(self) -> None:
        """Delete expired rows in batches (``purge_in_batches``), unless another process
        claimed the cleanup within ``cleanupInterval``."""
        interval = self.settings.cleanup_interval.total_seconds()

        async def claim(conn: AsyncConnection[Any]) -> bool:
            cursor = await conn.execute(self._sql.claim_cleanup, (self._sql.cleanup_key, interval))
            return cursor.rowcount > 0

        async def delete(conn: AsyncConnection[Any], batch: int) -> int:
            return (await conn.execute(self._sql.purge, (batch,))).rowcount

        if await self._pool.run(claim, "claim the cleanup", write=True):
            await self.purge_in_batches(
                lambda batch: self._pool.run(
                    lambda conn: delete(conn, batch), "delete expired rows", write=True
                )
            )


_MIGRATION_LOCK = "mechakit state.postgresql schema"
_COLUMNS = frozenset({"key", "value", "value_bytes", "etag", "expires_at", "updated_at"})
_OFFSET = re.compile(r"[0-9]{1,18}", re.ASCII)
_LIVE = "(expires_at IS NULL OR expires_at > now())"
_SAME_TYPE = "jsonb_typeof(value #> %s) = jsonb_typeof(%s::jsonb)"
_COMPARISONS = {
    "EQ": "value #> %s = %s::jsonb",
    "NEQ": "value #> %s IS DISTINCT FROM %s::jsonb",
    "GT": f"({_SAME_TYPE} AND value #> %s > %s::jsonb)",
    "GTE": f"({_SAME_TYPE} AND value #> %s >= %s::jsonb)",
    "LT": f"({_SAME_TYPE} AND value #> %s < %s::jsonb)",
    "LTE": f"({_SAME_TYPE} AND value #> %s <= %s::jsonb)",
}


@dataclass(frozen=True)
class _Operation:
    """A validated write: its statement and parameters; ``checked`` if no row means failure."""

    key: str
    statement: str
    params: Mapping[str, Any]
    checked: bool
    first_write: bool = False


class _Statements:
    """Every fixed SQL statement for one state table and one metadata table (validated names)."""

    def __init__(self, table: str, metadata_table: str) -> None:
        self.table_name = table
        self.version_key = f"schema-version:{table}"
        self.cleanup_key = f"last-cleanup:{table}"
        self.table = t = quote_name(table)
        m = quote_name(metadata_table)
        bare = table.rsplit(".", 1)[-1]
        sequence = quote_name(f"{table}_etag")
        next_etag = f"nextval('{sequence}')"
        expiry = "now() + make_interval(secs => %(ttl)s::float8)"
        columns = "key, value, value_bytes, etag, expires_at, updated_at"
        values = f"%(key)s, %(value)s::jsonb, %(value_bytes)s, {next_etag}, {expiry}, now()"
        replace = (
            "value = excluded.value, value_bytes = excluded.value_bytes, etag = excluded.etag, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at"
        )
        self.lock_migrations = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
        self.create_metadata = (
            f"CREATE TABLE IF NOT EXISTS {m} (key text NOT NULL PRIMARY KEY, value text NOT NULL)"
        )
        self.read_meta = f"SELECT value FROM {m} WHERE key = %s"
        self.write_meta = (
            f"INSERT INTO {m} (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        self.columns = (
            "SELECT attname FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
        )
        self.schema = (
            f"CREATE SEQUENCE IF NOT EXISTS {sequence} AS bigint",
            f"CREATE TABLE IF NOT EXISTS {t} (key text NOT NULL PRIMARY KEY, value jsonb, "
            "value_bytes bytea, etag bigint NOT NULL, expires_at timestamptz, "
            "updated_at timestamptz NOT NULL DEFAULT now(), "
            "CHECK ((value IS NULL) <> (value_bytes IS NULL)))",
            f'CREATE INDEX IF NOT EXISTS "{bare}_expires_at" ON {t} (expires_at) '
            "WHERE expires_at IS NOT NULL",
        )
        self.select = (
            f"SELECT key, value::text, value_bytes, etag, expires_at FROM {t} "
            f"WHERE key = ANY(%s) AND {_LIVE}"
        )
        self.select_one = (
            f"SELECT key, value::text, value_bytes, etag, expires_at FROM {t} "
            f"WHERE key = %s AND {_LIVE}"
        )
        self.upsert = (
            f"INSERT INTO {t} AS s ({columns}) VALUES ({values}) "
            f"ON CONFLICT (key) DO UPDATE SET {replace}"
        )
        self.insert_new = (
            f"INSERT INTO {t} AS s ({columns}) VALUES ({values}) "
            f"ON CONFLICT (key) DO UPDATE SET {replace} "
            "WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()"
        )
        self.update_if = (
            f"UPDATE {t} SET value = %(value)s::jsonb, value_bytes = %(value_bytes)s, "
            f"etag = {next_etag}, expires_at = {expiry}, updated_at = now() "
            f"WHERE key = %(key)s AND etag = %(etag)s AND {_LIVE}"
        )
        self.delete = f"DELETE FROM {t} WHERE key = %(key)s"
        self.delete_if = f"DELETE FROM {t} WHERE key = %(key)s AND etag = %(etag)s AND {_LIVE}"
        self.claim_cleanup = (
            f"INSERT INTO {m} AS m (key, value) VALUES (%s, now()::text) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
            "WHERE m.value::timestamptz <= now() - make_interval(secs => %s::float8)"
        )
        expired = "expires_at IS NOT NULL AND expires_at <= now()"
        # By ctid: "key IN (…)" plans a hash join over every expired row, once per batch.
        # SKIP LOCKED: a row a writer holds is left for the next batch, nobody waits.
        self.purge = (
            f"DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {expired} "
            f"LIMIT %s FOR UPDATE SKIP LOCKED)) AND {expired}"
        )


def _storable_as_jsonb(text: str) -> bool:
    """False for JSON that jsonb rejects: NaN/Infinity, or a NUL character in a string."""
    if "NaN" not in text and "Infinity" not in text and "\\u0000" not in text:
        return True

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return not _has_nul(value)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _like_prefix(prefix: KeyPrefix) -> str:
    head = prefix.apply("")
    escaped = head.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def _fetch_all(
    conn: AsyncConnection[Any], statement: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(statement, params)
    return list(await cursor.fetchall())


__all__ = ["PostgreSQLStateSettings", "PostgreSQLStateStore"]
