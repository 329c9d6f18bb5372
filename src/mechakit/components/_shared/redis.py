"""Connection settings, client factory and error mapping shared by every Redis driver.

Drivers subclass :class:`RedisSettings` for their settings model and :class:`RedisDriver`
(which builds their client with :func:`connect` in ``open`` and closes it in ``shut``),
and wrap every Redis call in :func:`redis_errors`, so that all Redis components agree on
metadata names, TLS handling and which failures are retriable. ``redis`` (redis-py) is
imported only inside :func:`connect` and the error mapping, never when this module is
imported.

TLS material (``caCert``, ``clientCert``, ``clientKey``) may be given as a file path or as
inline PEM text (Dapr passes PEM content). Inline client certificates and keys are written
once to a private temp folder (mode 0700) because Python's ``ssl`` loads them only from
files; the folder is removed when the client is garbage collected or the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BeforeValidator, field_validator

from mechakit.core.component import Component
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MechakitError,
    MetadataError,
    OperationTimeoutError,
)
from mechakit.core.metadata import (
    Bool,
    Duration,
    NonNegativeInt,
    PositiveInt,
    Sensitive,
    Settings,
    setting,
)

if TYPE_CHECKING:
    from mechakit.components._shared.redis_autopipe import AutoPipeline


class RedisType(enum.StrEnum):
    NODE = "node"
    CLUSTER = "cluster"


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class RedisSettings(Settings):
    """Dapr's common Redis metadata (``redisHost``, TLS, Sentinel, timeouts, pool)."""

    ignored_metadata = frozenset(
        {
            # go-redis pool tuning that redis-py has no equivalent for.
            "maxconnage",
            "minidleconns",
            "idlecheckfrequency",
            "idletimeout",
            "redisminretryinterval",
        }
    )

    redis_host: str = setting(
        description=(
            "host:port of the Redis server; for a cluster or Sentinel (failover) a "
            "comma-separated list of seed or sentinel addresses."
        ),
        example="localhost:6379",
    )
    redis_username: str = setting("", description="ACL user name (Redis 6 or later).")
    redis_password: Sensitive = setting(Sensitive(""), description="Password of the Redis user.")
    redis_db: NonNegativeInt = setting(
        0, name="redisDB", description="Database number (node type only)."
    )
    redis_type: Annotated[RedisType, BeforeValidator(_lower)] = setting(
        RedisType.NODE,
        description="'node' for a single server or Sentinel-managed master, 'cluster' for Redis Cluster.",
        example="node",
    )
    enable_tls: Bool = setting(False, name="enableTLS", description="Connect over TLS.")
    ca_cert: str = setting(
        "",
        description="CA certificate to verify the server: a file path or PEM text (TLS only).",
    )
    client_cert: str = setting(
        "",
        description="Client certificate for mutual TLS: a file path or PEM text; needs clientKey.",
    )
    client_key: Sensitive = setting(
        Sensitive(""),
        description="Private key of clientCert: a file path or PEM text.",
    )
    insecure_skip_verify: Bool = setting(
        False,
        description="Accept any server certificate (testing only).",
    )
    failover: Bool = setting(
        False,
        description="Use Redis Sentinel: redisHost lists sentinels, sentinelMasterName the master.",
    )
    sentinel_master_name: str = setting(
        "", description="Name of the master watched by the sentinels."
    )
    sentinel_username: str = setting("", description="ACL user name for the sentinels.")
    sentinel_password: Sensitive = setting(Sensitive(""), description="Password for the sentinels.")
    dial_timeout: Duration = setting(
        timedelta(seconds=5), description="Timeout for opening a connection."
    )
    read_timeout: Duration = setting(timedelta(seconds=3), description="Timeout for a reply.")
    write_timeout: Duration | None = setting(
        None,
        description=(
            "Timeout for sending a command (default: readTimeout). redis-py has one socket "
            "timeout, so the larger of the two applies."
        ),
    )
    max_retries: NonNegativeInt = setting(
        3,
        aliases=("redisMaxRetries",),
        description="Retries of a command after a connection error or timeout; 0 disables.",
    )
    max_retry_backoff: Duration = setting(
        timedelta(seconds=2),
        aliases=("redisMaxRetryInterval",),
        description="Upper bound of the exponential backoff between retries; -1 disables backoff.",
    )
    pool_size: PositiveInt | None = setting(
        None,
        description="Most connections held open (default: 10 per CPU, as go-redis).",
    )
    pool_timeout: Duration = setting(
        timedelta(seconds=5),
        description=(
            "How long a call waits for a free connection when all poolSize are busy, "
            "before failing with a retriable error."
        ),
        example="5s",
    )

    @field_validator("redis_host")
    @classmethod
    def _check_hosts(cls, value: str) -> str:
        parse_addresses(value)
        return value.strip()

    def check_combinations(self, *, component: str) -> None:
        """Rules across fields; ``connect`` calls it so every Redis driver fails at init."""
        problem: tuple[str, str] | None = None
        if self.failover and not self.sentinel_master_name:
            problem = ("sentinelMasterName", "is required when 'failover' is true")
        elif self.failover and self.redis_type is RedisType.CLUSTER:
            problem = ("failover", "cannot be combined with redisType 'cluster'")
        elif bool(self.client_cert) != bool(self.client_key.get_secret_value()):
            problem = ("clientCert", "and 'clientKey' must be given together")
        elif not self.enable_tls and (self.ca_cert or self.client_cert):
            problem = ("enableTLS", "must be true when 'caCert' or 'clientCert' is set")
        if problem is not None:
            raise MetadataError(
                f"metadata {problem[0]!r} {problem[1]}", component=component, field=problem[0]
            )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return parse_addresses(self.redis_host)

    @property
    def socket_timeout(self) -> float:
        write = self.write_timeout or self.read_timeout
        return max(self.read_timeout, write).total_seconds()


def parse_addresses(value: str) -> list[tuple[str, int]]:
    """``host:port[,host:port…]``; a missing port means 6379; IPv6 hosts in brackets."""
    addresses = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        host, sep, port_text = part.rpartition(":")
        if not sep or "]" in port_text:
            host, port_text = part, "6379"
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"not a host:port address: {part!r} (e.g. localhost:6379)")
        addresses.append((host, int(port_text)))
    if not addresses:
        raise ValueError("no address given (e.g. localhost:6379)")
    return addresses


async def connect(settings: RedisSettings, *, component: str) -> Any:
    """A ready ``redis.asyncio`` client (standalone, Sentinel master or cluster), pinged.

    Raises ``ConnectionFailedError`` naming the component and host when nothing answers,
    ``MetadataError`` when the credentials or TLS material are refused.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

    from mechakit.components._shared.redis_pool import (
        WaitingConnectionPool,
        WaitingRedisCluster,
        WaitingSentinelConnectionPool,
    )

    settings.check_combinations(component=component)
    backoff_cap = settings.max_retry_backoff.total_seconds()
    retry = Retry(
        NoBackoff() if backoff_cap <= 0 else ExponentialWithJitterBackoff(cap=backoff_cap),
        settings.max_retries,
    )
    tls, tls_dir = await asyncio.to_thread(_tls_options, settings, component=component)
    common: dict[str, Any] = {
        "username": settings.redis_username or None,
        "password": settings.redis_password.get_secret_value() or None,
        "socket_connect_timeout": settings.dial_timeout.total_seconds(),
        "socket_timeout": settings.socket_timeout,
        "retry": retry,
        "max_connections": settings.pool_size or 10 * (os.cpu_count() or 1),
        **tls,
    }
    addresses = settings.addresses
    client: Any
    if settings.redis_type is RedisType.CLUSTER:
        client = WaitingRedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in addresses],
            pool_timeout=settings.pool_timeout.total_seconds(),
            **common,
        )
    elif settings.failover:
        sentinel_kwargs: dict[str, Any] = {
            "username": settings.sentinel_username or None,
            "password": settings.sentinel_password.get_secret_value() or None,
            "socket_connect_timeout": common["socket_connect_timeout"],
            "socket_timeout": common["socket_timeout"],
            **tls,
        }
        untyped: Any = Sentinel  # typed from redis-py 8, untyped before
        sentinel = untyped(
            addresses, sentinel_kwargs=sentinel_kwargs, db=settings.redis_db, **common
        )
        client = sentinel.master_for(
            settings.sentinel_master_name,
            connection_pool_class=WaitingSentinelConnectionPool,
            pool_timeout=settings.pool_timeout.total_seconds(),
        )
    else:
        # A burst of calls waits for a connection instead of failing at once with
        # "Too many connections" (redis-py's default pool).
        host, port = addresses[0]
        connection_options = {k: v for k, v in common.items() if k != "ssl"}
        pool = WaitingConnectionPool(
            connection_class=aioredis.SSLConnection if tls else aioredis.Connection,
            pool_timeout=settings.pool_timeout.total_seconds(),
            host=host,
            port=port,
            db=settings.redis_db,
            **connection_options,
        )
        client = aioredis.Redis(connection_pool=pool, retry=retry)
        client.auto_close_connection_pool = True
    if tls_dir is not None:
        weakref.finalize(client, shutil.rmtree, tls_dir, ignore_errors=True)
    try:
        with redis_errors(component, action=f"connect to {settings.redis_host}"):
            await client.ping()
    except BaseException as exc:
        await close_client(client)
        if _is_auth_error(exc.__cause__ if isinstance(exc, MechakitError) else exc):
            raise MetadataError(
                f"Redis at {settings.redis_host} refused the credentials "
                "(check redisUsername / redisPassword)",
                component=component,
                field="redisPassword",
            ) from exc
        raise
    return client


async def close_client(client: Any) -> None:
    """Close a client from :func:`connect`; ignores errors (the server may be gone)."""
    if client is None:
        return
    with contextlib.suppress(Exception):
        await client.aclose()
    # A Sentinel-managed client leaves the connections to the sentinels themselves open.
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        with contextlib.suppress(Exception):
            await sentinel.aclose()


RedisSettingsT = TypeVar("RedisSettingsT", bound=RedisSettings)


class RedisDriver(Component[RedisSettingsT]):
    """Base of a driver over one redis-py client: ``open`` connects it, ``shut`` closes it,
    ``ping`` pings it and ``_redis`` hands it out while the component is open; ``_calls``
    sends through the same client with auto-pipelining (``_shared.redis_autopipe``), for
    the calls that many callers make at once.

    A driver that checks its settings first (or connects more) overrides ``open`` and
    calls ``super().open()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None
        self._auto: AutoPipeline | None = None

    async def open(self) -> None:
        from mechakit.components._shared.redis_autopipe import AutoPipeline

        self._client = await connect(self.settings, component=self.label)
        self._auto = AutoPipeline(self._client)

    async def shut(self) -> None:
        client, self._client = self._client, None
        auto, self._auto = self._auto, None
        if auto is not None:
            await auto.drain()
        await close_client(client)

    async def ping(self) -> None:
        with redis_errors(self.label, action="ping"):
            await self._redis.ping()

    @property
    def _redis(self) -> Any:
        """The client ``open`` made; ``ComponentNotOpenError`` when the component is not open."""
        return self.opened(self._client)

    @property
    def _calls(self) -> AutoPipeline:
        """The auto-pipeline over ``_redis``; ``ComponentNotOpenError`` when not open."""
        return self.opened(self._auto)


class redis_errors:  # lower case: used like a function, ``with redis_errors(...)``
    """Turn redis-py and socket errors raised inside the block into core errors.

    A class rather than ``@contextmanager``: it wraps every Redis call, and entering a
    generator-based context manager costs several times more.
    """

    __slots__ = ("action", "component", "key", "write")

    def __init__(
        self, component: str, *, key: str | None = None, action: str = "", write: bool = False
    ) -> None:
        self.component, self.key, self.action, self.write = component, key, action, write

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, MechakitError):
            raise map_error(
                exc, component=self.component, key=self.key, action=self.action, write=self.write
            ) from exc


def map_error(
    exc: BaseException,
    *,
    component: str,
    key: str | None = None,
    action: str = "",
    write: bool = False,
) -> MechakitError:
    """The core error for a Redis failure: connection problems are retriable, replies are not.

    With ``write``, a lost connection or timeout says the outcome is unknown: the command
    may have reached the server before its answer was lost.
    """
    from redis import exceptions as rexc

    what = f"{action} failed" if action else "Redis call failed"
    detail = f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"
    unknown = f"{detail} (the write may or may not have been applied)" if write else detail
    if isinstance(exc, rexc.TimeoutError | TimeoutError):
        return OperationTimeoutError(unknown, component=component, key=key)
    if _is_auth_error(exc):
        return ComponentError(detail, component=component, key=key)
    if is_cross_slot(exc):
        return InvalidRequestError(
            f"{what}: on a Redis cluster the keys of one call must share a hash slot; give "
            "them a common {hashtag}, e.g. '{order-7}:a' and '{order-7}:b' "
            f"(Redis said: {exc})",
            component=component,
            key=key,
        )
    if isinstance(exc, rexc.DataError):
        return InvalidRequestError(detail, component=component, key=key)
    if isinstance(
        exc,
        rexc.ConnectionError
        | rexc.ReadOnlyError
        | rexc.ClusterDownError
        | rexc.TryAgainError
        | OSError,
    ):
        return ConnectionFailedError(unknown, component=component, key=key)
    return ComponentError(detail, component=component, key=key)


def _is_auth_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from redis import exceptions as rexc

    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(("WRONGPASS", "NOAUTH"))


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (from :func:`connect`) talks to a Redis Cluster."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def same_slot_key(key: str, name: str) -> str | None:
    """A key made of ``name`` that a cluster keeps in ``key``'s hash slot; None if none can be.

    Redis hashes only the text between the first ``{`` and the next ``}`` when there is
    some, else the whole key; a key with a ``}`` and no such tag cannot be wrapped.
    """
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return "{" + key[start + 1 : end] + "}" + name
    if "}" in key:
        return None
    return "{" + key + "}" + name


def is_cross_slot(exc: BaseException) -> bool:
    """A cluster refused a call whose keys live in different hash slots."""
    return "same key slot" in str(exc) or str(exc).startswith("CROSSSLOT")


def is_noscript(exc: BaseException) -> bool:
    """Whether the server forgot a script (restart, SCRIPT FLUSH): reload and retry once."""
    from redis import exceptions as rexc

    return isinstance(exc, rexc.NoScriptError)


class RedisScript:
    """A Lua script run by EVALSHA: one round trip; loaded again only after NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not is_noscript(exc):
                raise
        await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)


ScriptCall = tuple[RedisScript, Sequence[str], Sequence[Any]]


async def run_pipelined(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run script calls in one pipeline; each result is a reply or the exception it raised.

    A NOSCRIPT reply means the call did not run, so those calls are sent again after loading.
    A failure of the whole pipeline (connection lost) is raised. On a Redis Cluster, where
    redis-py refuses scripts in a pipeline, the calls run concurrently instead, each on the
    node of its key (the client bounds how many are under way at once).
    """
    if is_cluster(client):
        replies = await asyncio.gather(
            *(script(client, keys, args) for script, keys, args in calls), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, Exception):
                raise reply  # cancelled
        return list(replies)
    results = await _pipeline(client, calls)
    missing = [i for i, result in enumerate(results) if is_noscript(result)]
    if missing:
        for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
            await client.script_load(script.source)
        retried = await _pipeline(client, [calls[i] for i in missing])
        for index, result in zip(missing, retried, strict=True):
            results[index] = result
    return results


async def _pipeline(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(await pipe.execute(raise_on_error=False))


def _tls_options(settings: RedisSettings, *, component: str) -> tuple[dict[str, Any], Path | None]:
    """redis-py's ``ssl_*`` arguments; touches files, so it runs off the event loop."""
    if not settings.enable_tls:
        return {}, None
    options: dict[str, Any] = {"ssl": True}
    if settings.insecure_skip_verify:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    if _is_pem(settings.ca_cert):
        options["ssl_ca_data"] = settings.ca_cert
    elif settings.ca_cert:
        options["ssl_ca_certs"] = _existing_file(settings.ca_cert, "caCert", component)
    tls_dir: Path | None = None
    if settings.client_cert:
        cert, key = settings.client_cert, settings.client_key.get_secret_value()
        if _is_pem(cert) or _is_pem(key):
            tls_dir = Path(tempfile.mkdtemp(prefix="mechakit-redis-tls-"))
            if _is_pem(cert):
                cert = str(_write_private(tls_dir / "client.crt", cert))
            if _is_pem(key):
                key = str(_write_private(tls_dir / "client.key", key))
        options["ssl_certfile"] = _existing_file(cert, "clientCert", component)
        options["ssl_keyfile"] = _existing_file(key, "clientKey", component)
    return options, tls_dir


def _is_pem(value: str) -> bool:
    return "-----BEGIN" in value


def _existing_file(path: str, field: str, component: str) -> str:
    if not os.path.isfile(path):
        raise MetadataError(
            f"metadata {field!r} is neither PEM text nor an existing file",
            component=component,
            field=field,
        )
    return path


def _write_private(path: Path, content: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content if content.endswith("\n") else content + "\n")
    return path


__all__ = [
    "RedisDriver",
    "RedisScript",
    "RedisSettings",
    "RedisType",
    "close_client",
    "connect",
    "is_cluster",
    "is_cross_slot",
    "is_noscript",
    "map_error",
    "parse_addresses",
    "redis_errors",
    "run_pipelined",
    "same_slot_key",
]
