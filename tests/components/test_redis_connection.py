"""The shared Redis settings and client factory: validation, credentials, Sentinel."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from redis_server import assert_a_burst_waits_for_connections

from mechakit.components._shared.redis import (
    RedisSettings,
    RedisType,
    parse_addresses,
    same_slot_key,
)
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, LocalProcess, free_port
from mechakit.core.configuration import (
    ConfigurationUpdate,
    GetConfigurationRequest,
    SubscribeConfigurationRequest,
)
from mechakit.core.errors import ConnectionFailedError, MetadataError
from mechakit.core.lock import TryLockRequest, UnlockRequest, UnlockStatus

if TYPE_CHECKING:
    from redis_server import RedisDriver

pytest_plugins = ["redis_server"]  # fixtures redis_server, redis_driver, raw_redis

LABEL = "state.redis 'store'"


def test_settings_decode_dapr_names_with_documented_defaults() -> None:
    settings = RedisSettings.from_metadata(
        {"redisHost": "cache:6380", "redisPassword": "s3cret", "redisType": "Cluster"},
        component=LABEL,
    )
    assert settings.addresses == [("cache", 6380)]
    assert settings.redis_type is RedisType.CLUSTER
    assert (settings.max_retries, settings.redis_db, settings.socket_timeout) == (3, 0, 3.0)
    assert settings.redacted()["redisPassword"] == "******"
    assert "s3cret" not in repr(settings)


def test_addresses_take_lists_ipv6_and_a_default_port() -> None:
    assert parse_addresses("a:1, b ,[::1]:26379") == [("a", 1), ("b", 6379), ("::1", 26379)]


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({}, "redisHost"),
        ({"redisHost": "cache:port"}, "redisHost"),
        ({"redisHost": "cache:6379", "redisType": "sharded"}, "redisType"),
        ({"redisHost": "cache:6379", "poolSize": "0"}, "poolSize"),
        ({"redisHost": "cache:6379", "enableTLS": "maybe"}, "enableTLS"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(MetadataError) as caught:
        RedisSettings.from_metadata(metadata, component=LABEL)
    assert caught.value.field == field
    assert str(caught.value).startswith(LABEL)


async def test_a_call_that_finds_every_connection_busy_waits_pool_timeout_then_fails_retriably(
    redis_driver: RedisDriver,
) -> None:
    """A subscription holds the only pooled connection: a get waits poolTimeout, not forever."""
    store = await redis_driver("configuration.redis", poolSize="1", poolTimeout="200ms")

    async def ignore(update: ConfigurationUpdate) -> None:
        pass

    subscription = await store.subscribe(SubscribeConfigurationRequest(keys=["k"]), ignore)
    with pytest.raises(ConnectionFailedError, match="poolSize or poolTimeout") as caught:
        await store.get(GetConfigurationRequest(keys=["k"]))
    assert caught.value.retriable
    await store.unsubscribe(subscription)
    assert await store.get(GetConfigurationRequest(keys=["k"])) == {}


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"failover": "true"}, "sentinelMasterName"),
        ({"failover": "true", "sentinelMasterName": "m", "redisType": "cluster"}, "failover"),
        ({"enableTLS": "true", "clientCert": "/etc/cert.pem"}, "clientCert"),
        ({"caCert": "/etc/ca.pem"}, "enableTLS"),
    ],
)
async def test_inconsistent_settings_fail_init_before_connecting(
    redis_driver: RedisDriver, metadata: dict[str, str], field: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        await redis_driver("state.redis", redisHost="127.0.0.1:1", **metadata)
    assert caught.value.field == field


async def test_refused_credentials_fail_init_naming_the_password_setting(
    redis_driver: RedisDriver, raw_redis: Any
) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    await raw_redis.acl_setuser(
        user, enabled=True, passwords=["+right"], keys="*", commands=["+@all"]
    )
    with pytest.raises(MetadataError) as caught:
        await redis_driver("state.redis", redisUsername=user, redisPassword="wrong")
    assert caught.value.field == "redisPassword"
    assert "wrong" not in str(caught.value)
    store = await redis_driver("state.redis", redisUsername=user, redisPassword="right")
    await store.ping()


async def test_tls_against_a_plain_server_fails_as_a_connection_error(
    redis_driver: RedisDriver,
) -> None:
    with pytest.raises(ConnectionFailedError):
        await redis_driver(
            "lock.redis",
            enableTLS="true",
            insecureSkipVerify="true",
            maxRetries="0",
            dialTimeout="300ms",
        )


@pytest.fixture
def sentinel(redis_server: BackendInfo, tmp_path: Path) -> Iterator[str]:
    """A sentinel watching the test server as master 'mymaster'; yields its address."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found on PATH")
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\n"
        f"sentinel monitor mymaster {redis_server.values['host']} {redis_server.values['port']} 1\n"
    )
    process = LocalProcess([binary, str(config), "--sentinel"], port, tmp_path, "sentinel")
    try:
        process.start()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield f"127.0.0.1:{port}"
    process.stop()


async def test_failover_mode_finds_the_master_through_sentinel(
    redis_driver: RedisDriver, sentinel: str
) -> None:
    locks = await redis_driver(
        "lock.redis", redisHost=sentinel, failover="true", sentinelMasterName="mymaster"
    )
    resource = f"sentinel-{uuid.uuid4().hex[:8]}"
    assert await locks.try_lock(TryLockRequest(resource, "owner", 10))
    assert await locks.unlock(UnlockRequest(resource, "owner")) is UnlockStatus.SUCCESS


async def test_a_burst_larger_than_the_pool_waits_for_connections_through_sentinel(
    redis_driver: RedisDriver, sentinel: str
) -> None:
    store = await redis_driver(
        "state.redis",
        redisHost=sentinel,
        failover="true",
        sentinelMasterName="mymaster",
        poolSize="4",
    )
    await assert_a_burst_waits_for_connections(store)


async def test_unknown_sentinel_master_fails_init_as_a_connection_error(
    redis_driver: RedisDriver, sentinel: str
) -> None:
    with pytest.raises(ConnectionFailedError) as caught:
        await redis_driver(
            "lock.redis",
            redisHost=sentinel,
            failover="true",
            sentinelMasterName="nosuchmaster",
            maxRetries="0",
        )
    assert sentinel in str(caught.value)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS-only redis-server that demands client certificates; yields (address, cert dir)."""
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("redis-server and openssl are needed for the TLS tests")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    steps = [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=test-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt "
        "-days 1 -extfile san.cnf",
        "req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=client",
        "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 1",
    ]
    for step in steps:
        subprocess.run([openssl, *step.split()], cwd=folder, check=True, capture_output=True)
    port = free_port()
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--tls-cert-file", "server.crt", "--tls-key-file", "server.key"]
    argv += ["--tls-ca-cert-file", "ca.crt"]
    process = LocalProcess(argv, port, folder, "redis-tls")
    try:
        process.start()
    except BackendUnavailable as exc:
        pytest.skip(f"redis-server without TLS support? {exc}")
    yield f"127.0.0.1:{port}", folder
    process.stop()


@pytest.mark.parametrize("form", ["pem", "path"])
async def test_mutual_tls_accepts_certificates_as_pem_text_or_file_paths(
    redis_driver: RedisDriver, tls_server: tuple[str, Path], form: str
) -> None:
    address, folder = tls_server
    material = {
        name: (folder / file).read_text() if form == "pem" else str(folder / file)
        for name, file in (
            ("caCert", "ca.crt"),
            ("clientCert", "client.crt"),
            ("clientKey", "client.key"),
        )
    }
    locks = await redis_driver("lock.redis", redisHost=address, enableTLS="true", **material)
    assert await locks.try_lock(TryLockRequest(f"tls-{form}-{uuid.uuid4().hex[:6]}", "me", 5))


async def test_tls_without_the_client_certificate_the_server_demands_fails_init(
    redis_driver: RedisDriver, tls_server: tuple[str, Path]
) -> None:
    address, folder = tls_server
    with pytest.raises(ConnectionFailedError):
        await redis_driver(
            "lock.redis",
            redisHost=address,
            enableTLS="true",
            caCert=str(folder / "ca.crt"),
            maxRetries="0",
        )


@pytest.mark.parametrize(
    "key", ["plain", "app||order-7", "{order-7}:a", "a{tag}b{other}", "open{only"]
)
def test_a_write_marker_lives_in_the_hash_slot_of_its_key(key: str) -> None:
    from redis.crc import key_slot

    marker = same_slot_key(key, "mechakit-applied:abc")
    assert marker is not None and "mechakit-applied:abc" in marker
    assert key_slot(marker.encode()) == key_slot(key.encode())


@pytest.mark.parametrize("key", ["a}b", "{}x", "x{}y{z}"])
def test_no_marker_key_can_share_the_slot_of_a_key_hashed_whole_with_a_closing_brace(
    key: str,
) -> None:
    assert same_slot_key(key, "m") is None
