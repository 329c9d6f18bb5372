"""bindings.postgresql (upstream ``bindings.postgres``): run SQL on PostgreSQL, as Dapr's.

The statement is the request metadata ``sql``; its parameters are ``params``, a JSON array
bound to the placeholders ``$1``, ``$2``, … by the server. Parameters are never formatted
into the SQL text, so a value can never become SQL. JSON objects are bound as ``jsonb``,
arrays as PostgreSQL arrays, ``null`` as NULL.

- ``exec``: run the statement; response metadata ``rows-affected``.
- ``query``: run the statement; the response data is a JSON array with one array of
  column values per row (Dapr's shape). Timestamps become RFC 3339 text, ``numeric``
  a JSON number, ``bytea`` base64 text, ``uuid`` text.
- ``close``: release the connection pool; later requests fail until the component is
  initialised again (as upstream).

Every response carries ``operation``, ``sql``, ``start-time``, ``end-time`` and
``duration`` metadata. SQL the server rejects, or parameters that do not fit it, are an
``InvalidRequestError`` naming the request field. A statement is never re-run (no retries
here or in psycopg), so one whose answer is lost is a retriable error saying it may or may
not have been applied, not a second execution.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mechakit.components._shared.postgresql import (
    PostgreSQLDriver,
    PostgreSQLSettings,
    first_line,
)
from mechakit.core.bindings import InvokeRequest, InvokeResponse, OutputBinding
from mechakit.core.errors import InvalidRequestError, MechakitError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

EXEC = "exec"
QUERY = "query"
CLOSE = "close"
SQL = "sql"
PARAMS = "params"
ROWS_AFFECTED = "rows-affected"


class PostgreSQLBindingSettings(PostgreSQLSettings):
    """The common PostgreSQL settings."""


class PostgreSQLBinding(
    PostgreSQLDriver[PostgreSQLBindingSettings], OutputBinding[PostgreSQLBindingSettings]
):
    """An output binding that runs parameterised SQL."""

    def operations(self) -> Sequence[str]:
        return (EXEC, QUERY, CLOSE)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        operation = self.check_operation(request)
        started = dt.datetime.now(dt.UTC)
        if operation == CLOSE:
            await self.close()
            return InvokeResponse(metadata=_timing(operation, "", started))
        sql = (request.metadata.get(SQL) or "").strip()
        if not sql:
            raise InvalidRequestError(
                f"operation {operation!r} needs the statement in request metadata 'sql'",
                component=self.label,
                field=SQL,
            )
        params = self._params(request)
        highest = highest_placeholder(sql)
        if highest != len(params):
            raise InvalidRequestError(
                f"the statement in request metadata 'sql' uses {highest} parameter(s) "
                f"($1..${highest}) but request metadata 'params' has {len(params)}",
                component=self.label,
                field=PARAMS,
            )
        if operation == EXEC:
            affected = await self._pool.run(
                lambda conn: _execute(conn, sql, params),
                operation,
                write=True,
                map_error=self._request_error,
            )
            metadata = {**_timing(operation, sql, started), ROWS_AFFECTED: str(affected)}
            return InvokeResponse(metadata=metadata)
        rows = await self._pool.run(
            lambda conn: _fetch(conn, sql, params),
            operation,
            write=True,  # user SQL: a query may write too (INSERT … RETURNING)
            map_error=self._request_error,
        )
        data = json.dumps(rows, default=_json_value, ensure_ascii=False).encode()
        return InvokeResponse(
            data=data,
            metadata=_timing(operation, sql, started),
            content_type="application/json",
        )

    def _params(self, request: InvokeRequest) -> list[Any]:
        raw = request.metadata.get(PARAMS)
        if raw is None or not raw.strip():
            return []
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"request metadata 'params' is not JSON: {exc}", component=self.label, field=PARAMS
            ) from None
        if not isinstance(values, list):
            raise InvalidRequestError(
                "request metadata 'params' must be a JSON array, e.g. [1, \"two\"]",
                component=self.label,
                field=PARAMS,
            )
        from psycopg.types.json import Jsonb

        return [Jsonb(v) if isinstance(v, dict) else v for v in values]

    def _request_error(self, exc: Exception) -> MechakitError | None:
        """SQL or parameters the server rejects are the request's fault, not the connection's."""
        sqlstate = getattr(exc, "sqlstate", None) or ""
        reason = first_line(exc)
        if sqlstate == "08P01" or "placeholder" in reason or "parameters" in reason:
            return InvalidRequestError(
                f"the parameters in request metadata 'params' do not fit the statement: {reason}",
                component=self.label,
                field=PARAMS,
            )
        if sqlstate in _VALUE_REFUSED:
            return InvalidRequestError(
                f"a value was refused (a parameter in request metadata 'params' or a literal "
                f"in 'sql'): {reason}",
                component=self.label,
                field=PARAMS,
            )
        if sqlstate.startswith(("42", "0A", "22", "23", "21", "2B", "2F", "3F", "P0")):
            return InvalidRequestError(
                f"the statement in request metadata 'sql' failed: {reason}",
                component=self.label,
                field=SQL,
            )
        if sqlstate == "":
            import psycopg

            if isinstance(exc, psycopg.ProgrammingError | psycopg.DataError):
                return InvalidRequestError(
                    f"the parameters in request metadata 'params' cannot be sent: {reason}",
                    component=self.label,
                    field=PARAMS,
                )
        return None


def highest_placeholder(sql: str) -> int:
    """The highest ``$n`` in ``sql`` outside strings, quoted names and comments (0: none)."""
    highest, i, n = 0, 0, len(sql)
    while i < n:
        char = sql[i]
        after_word = i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")
        if char == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and not (i > 1 and _word_char(sql[i - 2]))
            i = _skip_quoted(sql, i, "'", escapes)
        elif char == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif char == "$" and not after_word:
            number = _PLACEHOLDER.match(sql, i)
            tag = _DOLLAR_TAG.match(sql, i)
            if number is not None:
                highest = max(highest, int(number.group(1)))
                i = number.end()
            elif tag is not None:
                end = sql.find(tag.group(0), tag.end())
                i = n if end < 0 else end + len(tag.group(0))
            else:
                i += 1
        else:
            i += 1
    return highest


def _word_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _skip_quoted(sql: str, start: int, quote: str, escapes: bool) -> int:
    i = start + 1
    while i < len(sql):
        if escapes and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if sql.startswith(quote * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)


def _skip_block_comment(sql: str, start: int) -> int:
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


async def _execute(conn: AsyncConnection[Any], sql: str, params: list[Any]) -> int:
    from psycopg import AsyncRawCursor

    async with AsyncRawCursor(conn) as cursor:
        await cursor.execute(sql, params or None)
        return max(cursor.rowcount, 0)


async def _fetch(conn: AsyncConnection[Any], sql: str, params: list[Any]) -> list[list[Any]]:
    from psycopg import AsyncRawCursor

    async with AsyncRawCursor(conn) as cursor:
        await cursor.execute(sql, params or None)
        if cursor.description is None:
            return []
        return [list(row) for row in await cursor.fetchall()]


def _timing(operation: str, sql: str, started: dt.datetime) -> dict[str, str]:
    ended = dt.datetime.now(dt.UTC)
    metadata = {
        "operation": operation,
        "start-time": started.isoformat(),
        "end-time": ended.isoformat(),
        "duration": f"{(ended - started).total_seconds():.6f}s",
    }
    if sql:
        metadata[SQL] = sql
    return metadata


_PLACEHOLDER = re.compile(r"\$([0-9]+)")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
# Invalid text for a type, out of range, bad date/time, too long, bad encoding.
_VALUE_REFUSED = frozenset({"22P02", "22003", "22007", "22008", "22001", "22021", "22P05"})

_CONVERSIONS: dict[type, Callable[[Any], Any]] = {
    dt.datetime: lambda v: v.isoformat(),
    dt.date: lambda v: v.isoformat(),
    dt.time: lambda v: v.isoformat(),
    dt.timedelta: lambda v: v.total_seconds(),
    uuid.UUID: str,
    bytes: lambda v: base64.b64encode(v).decode(),
    memoryview: lambda v: base64.b64encode(bytes(v)).decode(),
    bytearray: lambda v: base64.b64encode(bytes(v)).decode(),
    Decimal: lambda v: (
        str(v) if not v.is_finite() else int(v) if v == v.to_integral_value() else float(v)
    ),
    set: list,
    tuple: list,
}


def _json_value(value: Any) -> Any:
    """Column values json cannot encode itself; anything else becomes its text."""
    for kind, convert in _CONVERSIONS.items():
        if isinstance(value, kind):
            return convert(value)
    return str(value)


__all__ = ["PostgreSQLBinding", "PostgreSQLBindingSettings"]
