"""secretstores.aws.secretsmanager and secretstores.aws.parameterstore, against moto's server.

Each test seeds the secrets and parameters it reads with plain boto3, under unique names.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.backends_aws import boto3_client
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import MetadataError, SecretNotFoundError
from mechakit.core.registry import default_registry
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest

pytest.importorskip("boto3")
pytest_plugins = ["moto_server"]  # fixture moto

Driver = Callable[..., Awaitable[Any]]
SECRETS_MANAGER = "secretstores.aws.secretsmanager"
PARAMETER_STORE = "secretstores.aws.parameterstore"


def new_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def secretsmanager(moto: BackendInfo) -> Any:
    return boto3_client(moto.values, "secretsmanager")


@pytest.fixture(scope="module")
def ssm(moto: BackendInfo) -> Any:
    return boto3_client(moto.values, "ssm")


@pytest_asyncio.fixture
async def driver(moto: BackendInfo) -> AsyncIterator[Driver]:
    """``await driver(type, **metadata)``: an initialised store, closed after the test."""
    made: list[Any] = []

    async def make(component_type: str, name: str = "test", **metadata: str) -> Any:
        store = default_registry().create(component_type)
        v = moto.values
        properties = {
            "endpoint": v["endpoint"],
            "region": v["region"],
            "accessKey": v["accessKey"],
            "secretKey": v["secretKey"],
            **metadata,
        }
        await store.init(ComponentMetadata(name=name, type=component_type, properties=properties))
        made.append(store)
        return store

    yield make
    for store in reversed(made):
        await store.close()


# --- Secrets Manager ------------------------------------------------------------------


async def test_a_json_secret_is_returned_whole_under_its_name(
    driver: Driver, secretsmanager: Any
) -> None:
    name, text = new_name("json"), '{"user": "app", "password": "pw"}'
    await asyncio.to_thread(secretsmanager.create_secret, Name=name, SecretString=text)
    store = await driver(SECRETS_MANAGER)
    assert await store.get_secret(GetSecretRequest(name)) == {name: text}


async def test_version_stage_and_version_id_select_a_version(
    driver: Driver, secretsmanager: Any
) -> None:
    name = new_name("rotated")
    first = await asyncio.to_thread(secretsmanager.create_secret, Name=name, SecretString="v1")
    await asyncio.to_thread(secretsmanager.put_secret_value, SecretId=name, SecretString="v2")
    store = await driver(SECRETS_MANAGER)
    assert await store.get_secret(GetSecretRequest(name)) == {name: "v2"}
    previous = GetSecretRequest(name, {"version_stage": "AWSPREVIOUS"})
    assert await store.get_secret(previous) == {name: "v1"}
    by_id = GetSecretRequest(name, {"version_id": first["VersionId"]})
    assert await store.get_secret(by_id) == {name: "v1"}


async def test_a_missing_secret_or_version_is_secret_not_found_naming_it(
    driver: Driver, secretsmanager: Any
) -> None:
    store = await driver(SECRETS_MANAGER)
    missing = new_name("missing")
    with pytest.raises(SecretNotFoundError, match=missing):
        await store.get_secret(GetSecretRequest(missing))
    name = new_name("versioned")
    await asyncio.to_thread(secretsmanager.create_secret, Name=name, SecretString="v")
    with pytest.raises(SecretNotFoundError, match=name):
        await store.get_secret(GetSecretRequest(name, {"version_id": str(uuid.uuid4())}))


async def test_a_secret_scheduled_for_deletion_is_not_found_and_left_out_of_bulk(
    driver: Driver, secretsmanager: Any
) -> None:
    name = new_name("deleted")
    await asyncio.to_thread(secretsmanager.create_secret, Name=name, SecretString="v")
    await asyncio.to_thread(secretsmanager.delete_secret, SecretId=name, RecoveryWindowInDays=7)
    store = await driver(SECRETS_MANAGER)
    with pytest.raises(SecretNotFoundError):
        await store.get_secret(GetSecretRequest(name))
    assert name not in await store.bulk_get_secret(BulkGetSecretRequest())


async def test_a_binary_secret_is_returned_base64_encoded(
    driver: Driver, secretsmanager: Any
) -> None:
    name, blob = new_name("binary"), b"\x00\xffkey"
    await asyncio.to_thread(secretsmanager.create_secret, Name=name, SecretBinary=blob)
    store = await driver(SECRETS_MANAGER)
    assert await store.get_secret(GetSecretRequest(name)) == {name: base64.b64encode(blob).decode()}


async def test_bulk_get_reads_every_secret_across_list_pages(
    driver: Driver, secretsmanager: Any
) -> None:
    names = [new_name(f"bulk{i}") for i in range(105)]
    for i, name in enumerate(names):
        await asyncio.to_thread(secretsmanager.create_secret, Name=name, SecretString=str(i))
    store = await driver(SECRETS_MANAGER)
    everything = await store.bulk_get_secret(BulkGetSecretRequest())
    assert {n: everything.get(n) for n in names} == {n: {n: str(i)} for i, n in enumerate(names)}


# --- Parameter Store ------------------------------------------------------------------


async def test_prefix_is_added_on_get_and_removed_in_bulk(driver: Driver, ssm: Any) -> None:
    prefix = f"/{new_name('app')}/"
    other = f"/{new_name('other')}/"
    params = {f"{prefix}db": "secret-db", f"{prefix}nested/api": "secret-api", f"{other}db": "x"}
    for name, value in params.items():
        await asyncio.to_thread(ssm.put_parameter, Name=name, Value=value, Type="SecureString")
    store = await driver(PARAMETER_STORE, prefix=prefix)
    assert await store.get_secret(GetSecretRequest("db")) == {"db": "secret-db"}
    assert await store.bulk_get_secret(BulkGetSecretRequest()) == {
        "db": {"db": "secret-db"},
        "nested/api": {"nested/api": "secret-api"},
    }


async def test_bulk_get_pages_through_many_parameters(driver: Driver, ssm: Any) -> None:
    prefix = f"/{new_name('many')}/"
    for i in range(25):
        await asyncio.to_thread(
            ssm.put_parameter, Name=f"{prefix}p{i}", Value=str(i), Type="String"
        )
    store = await driver(PARAMETER_STORE, prefix=prefix)
    everything = await store.bulk_get_secret(BulkGetSecretRequest())
    assert everything == {f"p{i}": {f"p{i}": str(i)} for i in range(25)}


async def test_secure_strings_are_decrypted_and_string_lists_kept_as_stored(
    driver: Driver, ssm: Any
) -> None:
    secure, listed = new_name("secure"), new_name("listed")
    await asyncio.to_thread(ssm.put_parameter, Name=secure, Value="pw", Type="SecureString")
    await asyncio.to_thread(ssm.put_parameter, Name=listed, Value="a,b", Type="StringList")
    store = await driver(PARAMETER_STORE)
    assert await store.get_secret(GetSecretRequest(secure)) == {secure: "pw"}
    assert await store.get_secret(GetSecretRequest(listed)) == {listed: "a,b"}


async def test_version_id_selects_a_parameter_version(driver: Driver, ssm: Any) -> None:
    name = new_name("versioned")
    await asyncio.to_thread(ssm.put_parameter, Name=name, Value="v1", Type="String")
    await asyncio.to_thread(ssm.put_parameter, Name=name, Value="v2", Type="String", Overwrite=True)
    store = await driver(PARAMETER_STORE)
    assert await store.get_secret(GetSecretRequest(name)) == {name: "v2"}
    assert await store.get_secret(GetSecretRequest(name, {"version_id": "1"})) == {name: "v1"}
    with pytest.raises(SecretNotFoundError, match=name):
        await store.get_secret(GetSecretRequest(name, {"version_id": "9"}))


async def test_a_missing_parameter_is_secret_not_found_naming_the_parameter(
    driver: Driver,
) -> None:
    store = await driver(PARAMETER_STORE, prefix="/nothing/")
    with pytest.raises(SecretNotFoundError) as caught:
        await store.get_secret(GetSecretRequest("db"))
    assert caught.value.key == "db"
    assert "'/nothing/db'" in str(caught.value)


# --- credentials ------------------------------------------------------------------------


@pytest.mark.parametrize("component_type", [SECRETS_MANAGER, PARAMETER_STORE])
async def test_missing_credentials_fail_init_naming_component_and_field(
    moto: BackendInfo, component_type: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in AWS_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = default_registry().create(component_type)
    properties = {"endpoint": moto.values["endpoint"], "region": "us-east-1"}
    with pytest.raises(MetadataError) as caught:
        await store.init(ComponentMetadata("vault", component_type, properties))
    assert caught.value.field == "accessKey"
    assert f"{component_type} 'vault'" in str(caught.value)


async def test_a_session_token_without_keys_names_the_access_key(driver: Driver) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(SECRETS_MANAGER, accessKey="", secretKey="", sessionToken="token")
    assert caught.value.field == "accessKey"
    assert "token" not in str(caught.value).replace("sessionToken", "")


AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)
