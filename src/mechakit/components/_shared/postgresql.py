"""Connection settings, pool and error mapping shared by every PostgreSQL driver.

Drivers subclass :class:`PostgreSQLSettings` and :class:`PostgreSQLDriver`, whose ``open``
calls :func:`open_pool` (one connection is made first, so a bad address, login or database
fails ``init`` with an error that says which), and run every statement through
:meth:`PostgreSQLPool.run`, which applies the timeout and turns psycopg errors into core
errors. No statement is ever sent twice
(psycopg and psycopg_pool do not retry, nor does this module): a write whose answer is
lost is a retriable error saying it may or may not have been applied, never a false
conflict from a re-run. ``psycopg`` is imported only when a
pool or connection is opened, never when this module is imported. Messages name the
server as ``host:port/dbname`` and never repeat the connection string, which can hold a
password.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from mechakit.core.component import Component
from mechakit.core.errors import (
    ComponentError,
    ComponentNotOpenError,
    ConfigurationError,
    ConnectionFailedError,
    InvalidRequestError,
    MechakitError,
    MetadataError,
    MissingDependencyError,
    OperationTimeoutError,
)
from mechakit.core.metadata import (
    Duration,
    PositiveInt,
    Sensitive,
    Settings,
    setting,
    timeout_setting,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")


@dataclass(frozen=True)
class Preparation:
    """A step run on the first connection, before the pool opens (creating or checking a
    driver's table), with what its failure is about: the setting to name and the thing
    (``table 'state'``)."""

    run: Callable[[AsyncConnection[Any]], Awaitable[None]]
    field: str
    what: str


class PostgreSQLSettings(Settings):
    """Dapr's common PostgreSQL metadata: the connection string, timeout and pool size."""

    connection_string: Sensitive = setting(
        description="libpq connection string: key=value pairs or a postgresql:// URL.",
        example="host=localhost port=5432 user=postgres password=example dbname=dapr",
    )
    timeout: Duration = timeout_setting(
        timedelta(seconds=20),
        description="How long one operation (and connecting) may take; 0 for no limit.",
    )
    max_conns: PositiveInt | None = setting(
        None,
        description="Most connections in the pool; default the larger of 4 and the CPU count.",
        example="8",
    )
    connection_max_idle_time: Duration = setting(
        timedelta(minutes=10),
        description="Idle pooled connections beyond one are closed after this long.",
        example="5m",
    )

    @property
    def timeout_seconds(self) -> float | None:
        """The timeout in seconds, None for no limit."""
        seconds = self.timeout.total_seconds()
        return seconds if seconds > 0 else None


QUALIFIED_NAME = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]{0,47}\.)?[A-Za-z_][A-Za-z0-9_]{0,47}", re.ASCII
)
QUALIFIED_NAME_RULE = (
    "must be a table name, optionally schema-qualified (schema.table): letters, "
    "digits and '_', not first a digit, at most 48 characters per part"
)


def qualified_name(value: str) -> str:
    """A validated table name folded to lower case like unquoted SQL (for field validators)."""
    if not QUALIFIED_NAME.fullmatch(value):
        raise ValueError(QUALIFIED_NAME_RULE)
    return value.lower()


def quote_name(name: str) -> str:
    """A validated (``schema.``)``table`` name, quoted part by part."""
    return ".".join(f'"{part}"' for part in name.split("."))


def load_psycopg(component: str) -> Any:
    """The psycopg module, or an error saying which extra installs it."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"needs {exc.name}: pip install 'mechakit[postgresql]'", component=component
        ) from None
    return psycopg


def checked_conninfo(settings: PostgreSQLSettings, component: str) -> str:
    """The connection string, after checking it parses (without echoing it)."""
    psycopg = load_psycopg(component)
    raw = settings.connection_string.get_secret_value()
    if not raw.strip():
        raise MetadataError(
            "metadata 'connectionString' is required "
            "(e.g. host=localhost user=postgres dbname=dapr)",
            component=component,
            field="connectionString",
        )
    try:
        psycopg.conninfo.conninfo_to_dict(raw)
    except psycopg.ProgrammingError:
        # psycopg's message may quote parts of the string, which can hold a password.
        raise MetadataError(
            "metadata 'connectionString' is not a valid libpq connection string "
            "(key=value pairs or a postgresql:// URL)",
            component=component,
            field="connectionString",
        ) from None
    return raw


def describe_target(conninfo: str) -> str:
    """host:port/dbname of a connection string, never its password."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(conninfo)
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"PostgreSQL at {host}:{parts.get('port') or 5432}/{parts.get('dbname') or '(default)'}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect_error(
    exc: Exception, conninfo: str, *, component: str, prepare: Preparation | None = None
) -> MechakitError:
    """A failure while connecting (or preparing the schema) as a core error.

    A refused login or missing database is a configuration error naming
    ``connectionString``; an unreachable server is retriable; anything else happened while
    preparing (what ``prepare`` says, naming its field).
    """
    import psycopg

    target = describe_target(conninfo)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    reason = first_line(exc)
    if sqlstate.startswith("28") or sqlstate == "3D000" or _LOGIN_REFUSED.search(str(exc)):
        return MetadataError(
            f"metadata 'connectionString': {target} refused the login: {reason}",
            component=component,
            field="connectionString",
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return ConnectionFailedError(
            f"cannot connect to {target}: {reason}",
            component=component,
            field="connectionString",
        )
    return ConfigurationError(
        f"cannot prepare {prepare.what if prepare else 'the database'} on {target}: {reason}",
        component=component,
        field=prepare.field if prepare else None,
    )


def operation_error(
    exc: Exception, what: str, *, component: str, key: str | None = None, write: bool = False
) -> MechakitError:
    """A failed statement as a core error: a lost connection is retriable, bad data is not.

    ``write``: when the connection was lost (no error from the server), the statement may
    have been applied and committed before its answer got lost, and the message says so.
    """
    import psycopg

    reason = str(exc).strip() or type(exc).__name__
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        if write and connection_lost(exc):
            return ConnectionFailedError(
                f"{what}: the connection was lost before PostgreSQL answered, so it may or "
                f"may not have been applied; read before retrying: {first_line(exc)}",
                component=component,
                key=key,
            )
        return ConnectionFailedError(f"{what} failed: {reason}", component=component, key=key)
    if isinstance(exc, psycopg.DataError):
        return InvalidRequestError(f"{what} failed: {reason}", component=component, key=key)
    return ComponentError(f"{what} failed: {reason}", component=component, key=key)


def connection_lost(exc: Exception) -> bool:
    """True unless the server itself reported the statement's failure (then nothing of it
    was applied): no SQLSTATE is libpq's own error, class 08 a connection failure, 57P0x
    the server shutting down."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return not sqlstate or sqlstate.startswith("08") or sqlstate.startswith("57P0")


async def connect(
    settings: PostgreSQLSettings, *, component: str, prepare: Preparation | None = None
) -> AsyncConnection[Any]:
    """One autocommit connection (e.g. for LISTEN), after ``prepare`` ran on it."""
    psycopg = load_psycopg(component)
    conninfo = checked_conninfo(settings, component)
    timeout = settings.timeout_seconds
    connection: list[AsyncConnection[Any]] = []

    async def open_and_prepare() -> None:
        connection.append(await psycopg.AsyncConnection.connect(conninfo, autocommit=True))
        if prepare is not None:
            await prepare.run(connection[0])

    try:
        await asyncio.wait_for(open_and_prepare(), timeout)
    except BaseException as exc:
        for conn in connection:
            with contextlib.suppress(Exception):
                await conn.close()
        if isinstance(exc, MechakitError):
            raise
        if isinstance(exc, TimeoutError):
            raise ConnectionFailedError(
                f"no answer from {describe_target(conninfo)} within {timeout:g}s",
                component=component,
                field="connectionString",
            ) from None
        if isinstance(exc, psycopg.Error):
            raise connect_error(exc, conninfo, component=component, prepare=prepare) from None
        raise
    return connection[0]


async def open_pool(
    settings: PostgreSQLSettings, *, component: str, prepare: Preparation | None = None
) -> PostgreSQLPool:
    """A connection pool, opened after one connection succeeded and ran ``prepare``.

    ``prepare`` (e.g. a schema migration) failing with a database error becomes a
    :class:`ConfigurationError` about what it prepares, naming its field.
    """
    from psycopg_pool import AsyncConnectionPool

    conn = await connect(settings, component=component, prepare=prepare)
    await conn.close()
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        checked_conninfo(settings, component),
        min_size=1,
        max_size=settings.max_conns or max(4, os.cpu_count() or 1),
        kwargs={"autocommit": True},
        timeout=settings.timeout_seconds or 30.0,
        max_idle=max(settings.connection_max_idle_time.total_seconds(), 1.0),
        name=component,
        open=False,
    )
    await pool.open(wait=False)
    return PostgreSQLPool(pool, settings.timeout_seconds, component)


class PostgreSQLPool:
    """A psycopg pool plus the timeout and error mapping every statement goes through."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        timeout: float | None,
        component: str,
    ) -> None:
        self.pool: AsyncConnectionPool[AsyncConnection[Any]] | None = pool
        self.timeout = timeout
        self.component = component
        self._check: asyncio.Task[None] | None = None

    async def run(
        self,
        body: Callable[[AsyncConnection[Any]], Awaitable[T]],
        what: str,
        key: str | None = None,
        *,
        write: bool = False,
        map_error: Callable[[Exception], MechakitError | None] | None = None,
    ) -> T:
        """``body`` on a pooled connection within the timeout; driver errors become core errors.

        Nothing here (nor in psycopg or its pool) runs ``body`` again: once a statement is
        sent, a lost answer or a timeout leaves its outcome unknown, and ``write`` makes the
        error say so instead of hiding a possibly applied write behind a retry.
        ``map_error`` may claim a psycopg error first (e.g. a syntax error in user SQL).
        """
        import psycopg

        pool = self.pool
        if pool is None:  # closed while a caller still held it
            raise ComponentNotOpenError(component=self.component)

        try:
            # asyncio.timeout, unlike wait_for, runs the body in this task: no task per statement.
            async with asyncio.timeout(self.timeout), pool.connection() as conn:
                return await body(conn)
        except MechakitError:
            raise
        except TimeoutError:
            applied = "been applied; read before retrying" if write else "happened"
            raise OperationTimeoutError(
                f"{what} did not finish within {self.timeout:g}s; it may or may not have {applied}",
                component=self.component,
                key=key,
            ) from None
        except psycopg.Error as exc:
            error = map_error(exc) if map_error is not None else None
            if error is None:
                error = operation_error(exc, what, component=self.component, key=key, write=write)
            if isinstance(error, ConnectionFailedError):
                self._check_soon()
            raise error from exc

    async def close(self) -> None:
        """Release every connection; safe to call twice."""
        check, self._check = self._check, None
        if check is not None:
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await check
        pool, self.pool = self.pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close(timeout=5.0)

    def _check_soon(self) -> None:
        """After a lost connection, drop the pool's other dead connections in the background."""
        pool = self.pool
        if pool is None or (self._check is not None and not self._check.done()):
            return

        async def check() -> None:
            with contextlib.suppress(Exception):
                await pool.check()

        self._check = asyncio.create_task(check(), name=f"{self.component} pool check")


PostgreSQLSettingsT = TypeVar("PostgreSQLSettingsT", bound=PostgreSQLSettings)


class PostgreSQLDriver(Component[PostgreSQLSettingsT]):
    """Base of a driver over one :class:`PostgreSQLPool`: ``open`` opens it (after the
    driver's :meth:`preparation`, if any), ``shut`` closes it, ``ping`` runs ``SELECT 1``
    and ``_pool`` hands it out while the component is open."""

    def __init__(self) -> None:
        super().__init__()
        self._db: PostgreSQLPool | None = None

    def preparation(self) -> Preparation | None:
        """What to prepare on the first connection (the driver's table); None: nothing."""
        return None

    async def open(self) -> None:
        self._db = await open_pool(self.settings, component=self.label, prepare=self.preparation())

    async def shut(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def ping(self) -> None:
        await self._pool.run(lambda conn: conn.execute("SELECT 1"), "ping")

    @property
    def _pool(self) -> PostgreSQLPool:
        """The pool ``open`` made; ``ComponentNotOpenError`` when the component is not open."""
        return self.opened(self._db)


# libpq reports a refused login without a SQLSTATE; the server's English text is all there is.
_LOGIN_REFUSED = re.compile(
    r"FATAL:\s+(database \S+ does not exist|role \S+ does not exist|"
    r"password authentication failed|no pg_hba\.conf entry)"
)

__all__ = [
    "QUALIFIED_NAME",
    "PostgreSQLDriver",
    "PostgreSQLPool",
    "PostgreSQLSettings",
    "Preparation",
    "checked_conninfo",
    "connect",
    "connect_error",
    "connection_lost",
    "describe_target",
    "load_psycopg",
    "open_pool",
    "operation_error",
    "qualified_name",
    "quote_name",
]
