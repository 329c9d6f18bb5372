"""nameresolution.sqlite: a registry in one SQLite file that every sidecar on a host shares.

Each sidecar inserts a row (registration id, address, app id, namespace, last update) and
renews it every ``updateInterval``; a row not renewed for three intervals counts as gone,
so a sidecar that died is no longer picked once that time has passed. Resolving picks a
random live row of the app id. Stale rows are deleted every ``cleanupInterval``; closing
deletes the sidecar's own row. The default file is ``$MECHAKIT_HOME/nr.db`` (else
``~/.mechakit/nr.db``), the same for every sidecar of the user, so two ``mechakit run``
find each other with nothing configured.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from pydantic import field_validator

from mechakit.core.errors import ConnectionFailedError, NotFoundError
from mechakit.core.metadata import Bool, Duration, Settings, setting, timeout_setting
from mechakit.core.nameresolution import NameRegistry, Registration, ResolveRequest

T = TypeVar("T")

STALE_AFTER_INTERVALS = 3
"""A row not renewed for this many update intervals belongs to a sidecar that is gone."""


def default_file() -> str:
    """``nr.db`` in mechakit's home folder, shared by every sidecar of this user."""
    from mechakit.runtime.defaults import mechakit_home

    return str(mechakit_home() / "nr.db")


class SQLiteResolverSettings(Settings):
    connection_string: str = setting(
        "",
        aliases=("url",),
        description="The registry file shared by the sidecars; empty for $MECHAKIT_HOME/nr.db.",
        example="/var/run/mechakit/nr.db",
    )
    table_name: str = setting(
        "hosts", description="Table of the registrations; created when missing.", example="hosts"
    )
    timeout: Duration = timeout_setting(
        timedelta(seconds=1), description="How long one registry query may take."
    )
    busy_timeout: Duration = setting(
        timedelta(milliseconds=800),
        description="How long a write waits for another sidecar's write lock.",
        example="800ms",
    )
    disable_wal: Bool = setting(
        False,
        name="disableWAL",
        description="Use the rollback journal instead of write-ahead logging (network file systems).",
        example="false",
    )
    update_interval: Duration = setting(
        timedelta(seconds=5),
        description="How often a sidecar renews its row; three intervals without one expire it.",
        example="5s",
    )
    cleanup_interval: Duration = setting(
        timedelta(hours=1),
        description="How often expired rows are deleted; 0 never.",
        example="1h",
    )

    @field_validator("table_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or value[0].isdigit():
            raise ValueError(f"must be letters, digits and '_', got {value!r}")
        return value

    @field_validator("update_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"must be more than 0, got {value}")
        return value


class SQLiteNameResolver(NameRegistry[SQLiteResolverSettings]):
    """Sidecars of one host found through a shared SQLite file."""

    def __init__(self) -> None:
        super().__init__()
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._registration: tuple[str, Registration] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._last_cleanup = 0.0

    @property
    def file(self) -> str:
        return self.settings.connection_string or default_file()

    @property
    def ttl(self) -> float:
        """Seconds after which a row that was not renewed counts as gone."""
        return self.settings.update_interval.total_seconds() * STALE_AFTER_INTERVALS

    async def open(self) -> None:
        self._conn = await self._call(self._connect, "open the registry")

    async def shut(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._registration is not None:
                await self._delete_own(conn)
        finally:
            await asyncio.to_thread(conn.close)

    def _connect(self) -> sqlite3.Connection:
        settings = self.settings
        file = self.file
        if file != ":memory:" and not file.startswith("file:"):
            Path(file).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            file,
            timeout=settings.busy_timeout.total_seconds(),
            check_same_thread=False,
            isolation_level=None,
            uri=file.startswith("file:"),
        )
        if not settings.disable_wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {settings.table_name} ("
            "registration_id TEXT PRIMARY KEY, address TEXT NOT NULL, app_id TEXT NOT NULL, "
            "namespace TEXT NOT NULL, last_update REAL NOT NULL)"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {settings.table_name}_app "
            f"ON {settings.table_name} (app_id, namespace)"
        )
        return conn

    async def _call(self, work: Callable[[], T], action: str) -> T:
        """``work`` on a thread, one at a time, within ``timeout``; failures name the file."""
        limit = self.settings.timeout.total_seconds() or None
        async with self._lock:
            try:
                return await asyncio.wait_for(asyncio.to_thread(work), limit)
            except (sqlite3.Error, OSError, TimeoutError) as exc:
                raise ConnectionFailedError(
                    f"cannot {action} in {self.file!r}: {exc or 'timed out'}",
                    component=self.label,
                    field="connectionString",
                ) from exc

    async def resolve(self, request: ResolveRequest) -> str:
        conn = self.opened(self._conn)
        table = self.settings.table_name

        def live() -> list[str]:
            rows = conn.execute(
                f"SELECT address FROM {table} WHERE app_id = ? AND namespace = ? "
                "AND last_update >= ?",
                (request.app_id, request.namespace, time.time() - self.ttl),
            ).fetchall()
            return [str(row[0]) for row in rows]

        found = await self._call(live, f"look up app id {request.app_id!r}")
        found = [address for address in found if address not in request.exclude]
        if not found:
            raise NotFoundError(
                f"no live sidecar of app id {request.app_id!r} in namespace "
                f"{request.namespace!r} is registered in {self.file!r}",
                component=self.label,
                key=request.app_id,
            )
        return random.choice(found)

    async def register(self, registration: Registration) -> None:
        self.opened(self._conn)
        if self._registration is not None:
            await self.unregister()
        self._registration = (uuid.uuid4().hex, registration)
        await self._renew()
        self._renewing = self.start_task(self._keep_renewing(), name="renew registration")

    async def unregister(self) -> None:
        task, self._renewing = self._renewing, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._registration is not None:
            await self._delete_own(self.opened(self._conn))
            self._registration = None

    async def _delete_own(self, conn: sqlite3.Connection) -> None:
        assert self._registration is not None
        own = self._registration[0]
        table = self.settings.table_name
        await self._call(
            lambda: conn.execute(f"DELETE FROM {table} WHERE registration_id = ?", (own,)),
            "delete this sidecar's registration",
        )

    async def _keep_renewing(self) -> None:
        interval = self.settings.update_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew()
            except ConnectionFailedError as exc:
                self.log.warning("%s (retrying in %gs)", exc, interval)

    async def _renew(self) -> None:
        """Write this sidecar's row with the current time (again, should another sidecar's
        cleanup have removed it), and delete expired rows when a cleanup is due."""
        conn = self.opened(self._conn)
        assert self._registration is not None
        own, registration = self._registration
        table = self.settings.table_name
        cleanup = self.settings.cleanup_interval.total_seconds()
        now = time.time()
        due = cleanup > 0 and now - self._last_cleanup >= cleanup

        def write() -> None:
            conn.execute(
                f"INSERT INTO {table} (registration_id, address, app_id, namespace, last_update) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (registration_id) "
                "DO UPDATE SET last_update = excluded.last_update",
                (own, registration.address, registration.app_id, registration.namespace, now),
            )
            if due:
                conn.execute(f"DELETE FROM {table} WHERE last_update < ?", (now - self.ttl,))

        await self._call(write, f"renew the registration of {registration.app_id!r}")
        if due:
            self._last_cleanup = now


__all__ = ["SQLiteNameResolver", "SQLiteResolverSettings", "default_file"]
