"""mechakit's own drivers, announced through the same entry point a third-party package uses."""

from __future__ import annotations

from mechakit.core.registry import ComponentSpec, hookimpl

_PKG = "mechakit.components"


@hookimpl
def mechakit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            "state.in-memory",
            f"{_PKG}.state.in_memory:InMemoryStateStore",
            description="State in process memory: ETags, TTL, transactions. Lost on exit.",
        ),
        ComponentSpec(
            "state.sqlite",
            f"{_PKG}.state.sqlite:SQLiteStateStore",
            description="State in a SQLite file, safe for several processes on one file.",
        ),
        ComponentSpec(
            "state.redis",
            f"{_PKG}.state.redis:RedisStateStore",
            extra="redis",
            requires=("redis",),
            description="State in Redis hashes: atomic ETag checks, TTL, all-or-nothing transactions.",
        ),
        ComponentSpec(
            "pubsub.in-memory",
            f"{_PKG}.pubsub.in_memory:InMemoryPubSub",
            description="Pub/sub within one process: at-least-once, dead letters.",
        ),
        ComponentSpec(
            "pubsub.redis",
            f"{_PKG}.pubsub.redis:RedisPubSub",
            extra="redis",
            requires=("redis",),
            description="Pub/sub on Redis Streams: consumer groups, ack after success, dead letters.",
        ),
        ComponentSpec(
            "lock.in-memory",
            f"{_PKG}.lock.in_memory:InMemoryLockStore",
            description="Locks within one process, with expiry.",
        ),
        ComponentSpec(
            "lock.redis",
            f"{_PKG}.lock.redis:RedisLockStore",
            extra="redis",
            requires=("redis",),
            description="Locks in Redis (SET NX PX), standalone or Sentinel.",
        ),
        ComponentSpec(
            "configuration.in-memory",
            f"{_PKG}.configuration.in_memory:InMemoryConfigurationStore",
            status="alpha",
            description="Configuration items held in process memory, with subscriptions.",
        ),
        ComponentSpec(
            "configuration.redis",
            f"{_PKG}.configuration.redis:RedisConfigurationStore",
            extra="redis",
            requires=("redis",),
            description="Configuration items as 'value||version' strings, watched by keyspace events.",
        ),
        ComponentSpec(
            "secretstores.local.file",
            f"{_PKG}.secretstores.local_file:LocalFileSecretStore",
            description="Secrets from a JSON file (development use).",
        ),
        ComponentSpec(
            "secretstores.local.env",
            f"{_PKG}.secretstores.local_env:LocalEnvSecretStore",
            description="Secrets from environment variables (development use).",
        ),
        ComponentSpec(
            "bindings.localstorage",
            f"{_PKG}.bindings.localstorage:LocalStorageBinding",
            description="Files under a root folder: create, get, delete, list.",
        ),
        ComponentSpec(
            "bindings.redis",
            f"{_PKG}.bindings.redis:RedisBinding",
            extra="redis",
            requires=("redis",),
            description="An output binding for Redis keys: create, get, delete, increment.",
        ),
        ComponentSpec(
            "bindings.cron",
            f"{_PKG}.bindings.cron:CronBinding",
            description="An input binding that fires on a cron schedule or @every interval.",
        ),
        ComponentSpec(
            "bindings.http",
            f"{_PKG}.bindings.http:HTTPBinding",
            description="An output binding that sends HTTP requests.",
        ),
    ]
