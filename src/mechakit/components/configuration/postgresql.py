"""configuration.postgresql: items are rows of one table, watched through LISTEN/NOTIFY.

The table (``table``, required as upstream) has the columns ``key``, ``value``,
``version`` (text) and ``metadata`` (``jsonb``, optional); it is created when missing, and
an existing table must have at least the first three. Values and versions are whatever the
writer stores: the driver never writes items.

Subscribing needs a trigger that sends every change to a notification channel. On the
first subscription the driver creates the trigger function ``mechakit_configuration_notify``
and the trigger ``mechakit_configuration_notify`` on the table (under an advisory lock, only
when missing), notifying the channel ``pgNotifyChannel`` (default ``config_<table>``).
Without the privilege to do so, subscribe fails with the SQL for the table's owner to
run (see :func:`trigger_sql`). A subscription whose request metadata names another
``pgNotifyChannel`` listens there instead and relies on a trigger the user made, as
upstream; Dapr's documented trigger payload (``{"table", "action", "data"}``) is
understood. A change whose row does not fit a notification (8000 bytes) is sent as its
key alone and read back from the table. A deleted key is delivered as an empty item.

All subscriptions share one dedicated LISTEN connection. When it is lost it reconnects
with backoff, listens again and re-reads the keys that subscriptions name, delivering
those that changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from mechakit.components._shared.postgresql import (
    PostgreSQLDriver,
    PostgreSQLSettings,
    Preparation,
    connect,
    first_line,
    qualified_name,
    quote_name,
)
from mechakit.components.configuration._subscriptions import SubscribingStore
from mechakit.core.configuration import (
    ConfigurationHandler,
    ConfigurationItem,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import (
    ConfigurationError,
    ConnectionFailedError,
    InvalidRequestError,
    MechakitError,
)
from mechakit.core.metadata import setting

if TYPE_CHECKING:
    from psycopg import AsyncConnection, Notify

NOTIFY_CHANNEL = "pgNotifyChannel"
TRIGGER = "mechakit_configuration_notify"
_POLL = 0.5
_MAX_BACKOFF = 5.0


class PostgreSQLConfigurationSettings(PostgreSQLSettings):
    table: str = setting(
        description="Table holding the items (key, value, version, metadata); created when missing.",
        example="configuration",
    )
    notify_channel: str = setting(
        "",
        name=NOTIFY_CHANNEL,
        description=(
            "Channel the driver's trigger notifies and subscriptions listen on; "
            "default 'config_<table>'."
        ),
        example="config",
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        return qualified_name(value)

    @field_validator("notify_channel")
    @classmethod
    def _channel_name(cls, value: str) -> str:
        if value and not _CHANNEL.fullmatch(value):
            raise ValueError(_CHANNEL_RULE)
        return value


class PostgreSQLConfigurationStore(
    PostgreSQLDriver[PostgreSQLConfigurationSettings],
    SubscribingStore[PostgreSQLConfigurationSettings, "_Watch"],
):
    """Configuration items in a PostgreSQL table, with subscriptions through LISTEN/NOTIFY."""

    def __init__(self) -> None:
        super().__init__()
        self._table = ""
        self._channel = ""
        self._trigger_ready = False
        self._has_metadata = True
        self._listener: AsyncConnection[Any] | None = None
        self._listening: set[str] = set()
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._listen_task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()

    async def open(self) -> None:
        settings = self.settings
        self._table = settings.table
        self._channel = settings.notify_channel or default_channel(settings.table)
        await super().open()

    def preparation(self) -> Preparation:
        return Preparation(self._prepare_table, "table", f"table {self.settings.table!r}")

    async def shut(self) -> None:
        """The listener task is stopped already (the base stops the tasks it started)."""
        self._watches.clear()
        self._listen_task = None
        await self._drop_listener()
        for _, waiter in self._pending:
            waiter.cancel()
        self._pending.clear()
        await super().shut()

    async def get(self, request: GetConfigurationRequest) -> dict[str, ConfigurationItem]:
        keys = list(dict.fromkeys(request.keys))
        rows = await self._pool.run(lambda conn: self._select(conn, keys), "get configuration")
        return {key: item for key, item in rows}

    async def subscribe(
        self, request: SubscribeConfigurationRequest, handler: ConfigurationHandler
    ) -> str:
        self.require_open()
        channel = request.metadata.get(NOTIFY_CHANNEL) or self._channel
        if not _CHANNEL.fullmatch(channel):
            raise InvalidRequestError(
                f"request metadata {NOTIFY_CHANNEL!r} {_CHANNEL_RULE}",
                component=self.label,
                field=NOTIFY_CHANNEL,
            )
        if channel == self._channel and not self._trigger_ready:
            await self._pool.run(self._ensure_trigger, "create the notify trigger")
            self._trigger_ready = True
        await self._listen(channel)
        subscription_id = self.new_subscription_id()
        self._watches[subscription_id] = _Watch(
            keys=frozenset(request.keys), handler=handler, channel=channel
        )
        return subscription_id

    # --- the table ----------------------------------------------------------------------

    async def _prepare_table(self, conn: AsyncConnection[Any]) -> None:
        cursor = await conn.execute(_COLUMNS, (self._table,))
        columns = {name for (name,) in await cursor.fetchall()}
        if not columns:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quote_name(self._table)} (key text NOT NULL "
                "PRIMARY KEY, value text NOT NULL, version text NOT NULL, metadata jsonb)"
            )
        elif not {"key", "value", "version"} <= columns:
            raise ConfigurationError(
                f"table {self._table!r} has the columns {', '.join(sorted(columns))}; "
                "configuration items need at least key, value and version",
                component=self.label,
                field="table",
            )
        else:
            self._has_metadata = "metadata" in columns

    async def _select(
        self, conn: AsyncConnection[Any], keys: Sequence[str]
    ) -> list[tuple[str, ConfigurationItem]]:
        metadata = "metadata::text" if self._has_metadata else "NULL"
        statement = (
            f"SELECT key::text, value::text, version::text, {metadata} "
            f"FROM {quote_name(self._table)}"
        )
        if keys:
            cursor = await conn.execute(statement + " WHERE key = ANY(%s)", (list(keys),))
        else:
            cursor = await conn.execute(statement)
        return [
            (key, _item(value, version, json.loads(meta) if meta else None))
            for key, value, version, meta in await cursor.fetchall()
        ]

    async def _ensure_trigger(self, conn: AsyncConnection[Any]) -> None:
        """Create the notify trigger unless it exists with our channel; say how when refused."""
        import psycopg

        cursor = await conn.execute(_TRIGGER_ARGS, (self._table, TRIGGER))
        found = await cursor.fetchone()
        if found is not None and bytes(found[0]).split(b"\x00")[0] == self._channel.encode():
            return
        try:
            async with conn.transaction():
                await conn.execute(_LOCK, (f"{TRIGGER} {self._table}",))
                for statement in trigger_sql(self._table, self._channel):
                    await conn.execute(statement)
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) not in ("42501", "42P01", "2BP01"):
                raise
            raise ConfigurationError(
                f"subscribe needs a trigger on table {self._table!r} that notifies channel "
                f"{self._channel!r}, and creating it was refused ({first_line(exc)}); have "
                "the table's owner run: " + "; ".join(trigger_sql(self._table, self._channel)),
                component=self.label,
                field="table",
            ) from None

    # --- listening ----------------------------------------------------------------------

    async def _listen(self, channel: str) -> None:
        """Make sure the LISTEN connection exists and listens on ``channel``."""
        async with self._start_lock:
            if self._listen_task is None or self._listen_task.done():
                self._listener = await self._open_listener({channel})
                self._listen_task = self.start_task(self._run(), name="configuration listener")
                return
            if channel in self._listening:
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.append((channel, waiter))
        try:
            await asyncio.wait_for(waiter, self._pool.timeout or 30.0)
        except TimeoutError:
            raise ConnectionFailedError(
                f"could not LISTEN on channel {channel!r} in time", component=self.label
            ) from None

    async def _open_listener(self, channels: set[str]) -> AsyncConnection[Any]:
        settings = self.settings
        conn = await connect(settings, component=self.label)
        try:
            for channel in sorted(channels):
                await conn.execute(f'LISTEN "{channel}"')
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self._listening = set(channels)
        return conn

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._listener is None:
                    wanted = self._listening | {w.channel for w in self._watches.values()}
                    self._listener = await self._open_listener(wanted)
                    await self._resync()
                await self._listen_pending(self._listener)
                async for notify in self._listener.notifies(timeout=_POLL):
                    await self._dispatch(notify)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning(
                    "%s: the configuration LISTEN connection failed (%s); reconnecting",
                    self.label,
                    exc,
                )
                await self._drop_listener()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _listen_pending(self, conn: AsyncConnection[Any]) -> None:
        pending, self._pending = self._pending, []
        for channel, waiter in pending:
            try:
                await conn.execute(f'LISTEN "{channel}"')
            except Exception as exc:
                if not waiter.done():
                    waiter.set_exception(exc)
                raise
            self._listening.add(channel)
            if not waiter.done():
                waiter.set_result(None)

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _dispatch(self, notify: Notify) -> None:
        try:
            payload = json.loads(notify.payload)
            data = payload.get("data") or {}
            key = data.get("key", data.get("KEY"))
        except (ValueError, AttributeError):
            self.log.warning(
                "%s: ignored a notification on %r that is not a configuration change",
                self.label,
                notify.channel,
            )
            return
        if not isinstance(key, str) or not self._is_our_table(payload):
            return
        watches = [
            (subscription_id, watch)
            for subscription_id, watch in self._watches.items()
            if watch.channel == notify.channel and (not watch.keys or key in watch.keys)
        ]
        if not watches:
            return
        if str(payload.get("action", "")).upper() == "DELETE":
            item: ConfigurationItem | None = None
        elif payload.get("truncated"):
            item = await self._read(key)
        else:
            lowered = {str(k).lower(): v for k, v in data.items()}
            item = _item(lowered.get("value"), lowered.get("version"), lowered.get("metadata"))
        for subscription_id, watch in watches:
            await self._deliver(subscription_id, watch, key, item)

    async def _read(self, key: str) -> ConfigurationItem | None:
        try:
            rows = await self._pool.run(lambda conn: self._select(conn, [key]), "read item", key)
        except MechakitError as exc:
            self.log.warning("%s: %s", self.label, exc)
            return None
        return rows[-1][1] if rows else None

    async def _read_many(self, keys: list[str]) -> list[tuple[str, ConfigurationItem]]:
        return await self._pool.run(lambda conn: self._select(conn, keys), "re-read items")

    async def _resync(self) -> None:
        """After a reconnect, deliver the named keys that may have changed while not listening.

        A key never delivered is sent when it exists (it may have been written meanwhile).
        """
        for subscription_id, watch in list(self._watches.items()):
            if not watch.keys:
                continue
            try:
                rows = dict(await self._read_many(sorted(watch.keys)))
            except MechakitError as exc:
                self.log.warning("%s: %s", self.label, exc)
                continue
            for key in sorted(watch.keys):
                item = rows.get(key)
                changed = (
                    watch.last[key] != _marker(item) if key in watch.last else item is not None
                )
                if changed:
                    await self._deliver(subscription_id, watch, key, item)

    async def _deliver(
        self, subscription_id: str, watch: _Watch, key: str, item: ConfigurationItem | None
    ) -> None:
        if self._watches.get(subscription_id) is not watch:
            return  # unsubscribed meanwhile
        watch.last[key] = _marker(item)
        await self._hand_over(
            watch.handler, subscription_id, {key: item or ConfigurationItem(value="")}
        )

    def _is_our_table(self, payload: dict[str, Any]) -> bool:
        schema, _, table = self._table.rpartition(".")
        named = payload.get("table")
        if named is not None and str(named).lower() != table:
            return False
        named_schema = payload.get("schema")
        return not (schema and named_schema is not None and str(named_schema).lower() != schema)


def default_channel(table: str) -> str:
    """``config_<table>`` ('.' as '_'), shortened with a hash to PostgreSQL's 63 characters."""
    name = "config_" + table.replace(".", "_")
    if len(name) <= 63:
        return name
    return name[:50] + "_" + hashlib.sha256(table.encode()).hexdigest()[:12]


def trigger_sql(table: str, channel: str) -> list[str]:
    """The statements that make ``table`` notify ``channel`` of every change.

    The function lives in the table's schema. A row too large for one notification is
    sent as its key alone, marked ``truncated``.
    """
    schema, _, _ = table.rpartition(".")
    function = f'{quote_name(schema)}."{TRIGGER}"' if schema else f'"{TRIGGER}"'
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
        "DECLARE\n"
        "    row_data jsonb;\n"
        "    payload text;\n"
        "BEGIN\n"
        "    IF TG_OP = 'DELETE' THEN row_data := to_jsonb(OLD); "
        "ELSE row_data := to_jsonb(NEW); END IF;\n"
        "    payload := jsonb_build_object('table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,"
        " 'action', TG_OP, 'data', row_data)::text;\n"
        "    IF octet_length(payload) > 7900 THEN\n"
        "        payload := jsonb_build_object('table', TG_TABLE_NAME, 'schema', "
        "TG_TABLE_SCHEMA, 'action', TG_OP, 'truncated', true, "
        "'data', jsonb_build_object('key', row_data->'key'))::text;\n"
        "    END IF;\n"
        "    PERFORM pg_notify(TG_ARGV[0], payload);\n"
        "    RETURN NULL;\n"
        "END $body$",
        f'DROP TRIGGER IF EXISTS "{TRIGGER}" ON {quote_name(table)}',
        f'CREATE TRIGGER "{TRIGGER}" AFTER INSERT OR UPDATE OR DELETE ON {quote_name(table)} '
        f"FOR EACH ROW EXECUTE FUNCTION {function}('{channel}')",
    ]


_CHANNEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}", re.ASCII)
_CHANNEL_RULE = "must be a channel name: letters, digits and '_', not first a digit, at most 63"
_COLUMNS = (
    "SELECT attname FROM pg_attribute "
    "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
)
_TRIGGER_ARGS = "SELECT tgargs FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s"
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


@dataclass
class _Watch:
    keys: frozenset[str]
    handler: ConfigurationHandler
    channel: str
    last: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    """The item last delivered per key (None: deleted), to resync after a reconnect."""


def _item(value: Any, version: Any, metadata: Any) -> ConfigurationItem:
    meta: dict[str, str] = {}
    if isinstance(metadata, dict):
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return ConfigurationItem(
        value="" if value is None else str(value),
        version="" if version is None else str(version),
        metadata=meta,
    )


def _marker(item: ConfigurationItem | None) -> tuple[str, str] | None:
    return None if item is None else (item.value, item.version)


__all__ = [
    "PostgreSQLConfigurationSettings",
    "PostgreSQLConfigurationStore",
    "default_channel",
    "trigger_sql",
]
