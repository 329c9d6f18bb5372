"""state.aws.dynamodb beyond the conformance suite, against moto's server.

Each test makes the tables it needs with plain boto3 (the driver never creates tables),
and looks behind the driver with the same client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo, free_port
from mechakit.conformance.backends_aws import boto3_client, create_table
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ConnectionFailedError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    MetadataError,
    NotSupportedError,
)
from mechakit.core.registry import default_registry
from mechakit.core.state import (
    TTL_EXPIRE_TIME,
    Concurrency,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateOptions,
    TransactionOperation,
)

pytest.importorskip("boto3")
pytest_plugins = ["moto_server"]  # fixture moto

Driver = Callable[..., Awaitable[Any]]
FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)
TTL_ATTRIBUTE = "expiresAt"


def new_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def table(moto: BackendInfo) -> str:
    name = new_name("state")
    create_table(moto.values, name, "key", TTL_ATTRIBUTE)
    return name


@pytest.fixture(scope="module")
def dynamodb(moto: BackendInfo) -> Any:
    """A plain boto3 client of the same server, to look behind the driver."""
    return boto3_client(moto.values, "dynamodb")


def aws_metadata(moto: BackendInfo) -> dict[str, str]:
    v = moto.values
    return {
        "endpoint": v["endpoint"],
        "region": v["region"],
        "accessKey": v["accessKey"],
        "secretKey": v["secretKey"],
    }


@pytest_asyncio.fixture
async def driver(moto: BackendInfo, table: str) -> AsyncIterator[Driver]:
    """``await driver(**metadata)``: an initialised state.aws.dynamodb, closed after the test."""
    made: list[Any] = []

    async def make(name: str = "test", **metadata: str) -> Any:
        store = default_registry().create("state.aws.dynamodb")
        properties = {
            **aws_metadata(moto),
            "table": table,
            "ttlAttributeName": TTL_ATTRIBUTE,
            **metadata,
        }
        await store.init(
            ComponentMetadata(
                name=name, type="state.aws.dynamodb", properties=properties, app_id="test-app"
            )
        )
        made.append(store)
        return store

    yield make
    for store in reversed(made):
        await store.close()


def raw_item(dynamodb: Any, table: str, stored_key: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = dynamodb.get_item(
        TableName=table, Key={"key": {"S": stored_key}}
    ).get("Item")
    return item


# --- storage --------------------------------------------------------------------------


async def test_items_hold_the_prefixed_key_json_or_binary_value_etag_and_expiry(
    driver: Driver, dynamodb: Any, table: str
) -> None:
    store = await driver()
    text, blob = new_name("text"), new_name("blob")
    await store.set(SetRequest(text, {"n": 1}, metadata={"ttlInSeconds": "60"}))
    await store.set(SetRequest(blob, b"\x00\xff"))

    stored = await asyncio.to_thread(raw_item, dynamodb, table, f"test-app||{text}")
    assert stored is not None
    assert stored["value"] == {"S": '{"n":1}'}
    assert stored["etag"]["S"] == (await store.get(GetRequest(text))).etag
    assert int(stored[TTL_ATTRIBUTE]["N"]) - time.time() == pytest.approx(60, abs=2)
    binary = await asyncio.to_thread(raw_item, dynamodb, table, f"test-app||{blob}")
    assert binary is not None
    assert binary["value"] == {"B": b"\x00\xff"}
    assert TTL_ATTRIBUTE not in binary


async def test_a_custom_partition_key_attribute_is_used(
    moto: BackendInfo, driver: Driver, dynamodb: Any
) -> None:
    other = new_name("by-id")
    await asyncio.to_thread(create_table, moto.values, other, "id")
    store = await driver(table=other, partitionKey="id", keyPrefix="none")
    key = new_name("k")
    await store.set(SetRequest(key, "v"))
    reply = await asyncio.to_thread(dynamodb.get_item, TableName=other, Key={"id": {"S": key}})
    assert reply["Item"]["value"] == {"S": '"v"'}


# --- ETags ----------------------------------------------------------------------------


async def test_a_write_by_another_instance_makes_an_etag_stale(driver: Driver) -> None:
    first, second = await driver(keyPrefix="shared"), await driver(keyPrefix="shared")
    key = new_name("k")
    await first.set(SetRequest(key, "v1"))
    etag = (await first.get(GetRequest(key))).etag
    await second.set(SetRequest(key, "v2"))
    with pytest.raises(ETagError) as caught:
        await first.set(SetRequest(key, "v3", etag=etag))
    assert caught.value.kind is ETagErrorKind.MISMATCH
    assert caught.value.key == key
    assert (await second.get(GetRequest(key))).value == "v2"


async def test_an_etag_from_before_a_delete_never_matches_the_key_written_again(
    driver: Driver,
) -> None:
    store = await driver()
    key = new_name("k")
    await store.set(SetRequest(key, "old"))
    old_etag = (await store.get(GetRequest(key))).etag
    await store.delete(DeleteRequest(key))
    await store.set(SetRequest(key, "new"))
    with pytest.raises(ETagError) as caught:
        await store.set(SetRequest(key, "lost", etag=old_etag))
    assert caught.value.kind is ETagErrorKind.MISMATCH
    assert (await store.get(GetRequest(key))).value == "new"


async def test_etags_written_by_dapr_with_dashes_are_accepted(
    driver: Driver, dynamodb: Any, table: str
) -> None:
    store = await driver()
    key, etag = new_name("k"), str(uuid.uuid4())
    item = {"key": {"S": f"test-app||{key}"}, "value": {"S": '"dapr"'}, "etag": {"S": etag}}
    await asyncio.to_thread(dynamodb.put_item, TableName=table, Item=item)
    await store.set(SetRequest(key, "mechakit", etag=etag))
    assert (await store.get(GetRequest(key))).value == "mechakit"


# --- transactions ---------------------------------------------------------------------


async def test_failed_transaction_writes_nothing_across_many_keys(driver: Driver) -> None:
    store = await driver()
    keys = [new_name(f"k{i}") for i in range(20)]
    await store.bulk_set([SetRequest(k, "old") for k in keys])
    stale = (await store.get(GetRequest(keys[-1]))).etag
    await store.set(SetRequest(keys[-1], "changed"))
    operations: list[TransactionOperation] = [SetRequest(k, "new") for k in keys[:-1]]
    operations += [DeleteRequest(new_name("gone")), SetRequest(keys[-1], "new", etag=stale)]
    with pytest.raises(ETagError) as caught:
        await store.transact(operations)
    assert caught.value.key == keys[-1]
    values = [i.value for i in await store.bulk_get([GetRequest(k) for k in keys])]
    assert values == ["old"] * 19 + ["changed"]


async def test_a_later_check_in_a_transaction_sees_the_earlier_operations(
    driver: Driver,
) -> None:
    store = await driver()
    key = new_name("k")
    await store.set(SetRequest(key, "stored"))
    etag = (await store.get(GetRequest(key))).etag
    with pytest.raises(ETagError) as caught:
        await store.transact([SetRequest(key, "first"), SetRequest(key, "second", etag=etag)])
    assert caught.value.kind is ETagErrorKind.MISMATCH
    assert (await store.get(GetRequest(key))).value == "stored"

    await store.transact(
        [DeleteRequest(key, etag=etag), SetRequest(key, "reborn", options=FIRST_WRITE)]
    )
    assert (await store.get(GetRequest(key))).value == "reborn"


async def test_a_first_write_after_a_set_in_one_transaction_fails_and_writes_nothing(
    driver: Driver,
) -> None:
    store = await driver()
    key = new_name("k")
    with pytest.raises(ETagError):
        await store.transact([SetRequest(key, 1), SetRequest(key, 2, options=FIRST_WRITE)])
    assert await store.get(GetRequest(key)) is None


async def test_a_transaction_over_100_keys_is_refused_before_anything_is_sent(
    driver: Driver,
) -> None:
    store = await driver()
    keys = [new_name(f"k{i}") for i in range(101)]
    with pytest.raises(InvalidRequestError, match="at most 100 keys"):
        await store.transact([SetRequest(k, i) for i, k in enumerate(keys)])
    assert await store.get(GetRequest(keys[0])) is None


# --- TTL ------------------------------------------------------------------------------


async def test_expired_items_are_invisible_before_dynamodb_deletes_them(
    driver: Driver, dynamodb: Any, table: str
) -> None:
    store = await driver()
    key = new_name("k")
    await store.set(SetRequest(key, "v", metadata={"ttlInSeconds": "3600"}))
    etag = (await store.get(GetRequest(key))).etag
    past = {"N": str(int(time.time()) - 5)}
    stored_key = {"key": {"S": f"test-app||{key}"}}
    await asyncio.to_thread(
        dynamodb.update_item,
        TableName=table,
        Key=stored_key,
        UpdateExpression="SET #t = :t",
        ExpressionAttributeNames={"#t": TTL_ATTRIBUTE},
        ExpressionAttributeValues={":t": past},
    )

    assert await asyncio.to_thread(raw_item, dynamodb, table, f"test-app||{key}") is not None
    assert await store.get(GetRequest(key)) is None
    [entry] = await store.bulk_get([GetRequest(key)])
    assert entry.found is False
    with pytest.raises(ETagError):
        await store.set(SetRequest(key, "v2", etag=etag))
    with pytest.raises(ETagError):
        await store.delete(DeleteRequest(key, etag=etag))
    await store.set(SetRequest(key, "reborn", options=FIRST_WRITE))
    item = await store.get(GetRequest(key))
    assert item.value == "reborn"
    assert TTL_EXPIRE_TIME not in item.metadata


async def test_without_ttl_attribute_name_a_ttl_is_refused_naming_the_setting(
    driver: Driver,
) -> None:
    store = await driver(ttlAttributeName="")
    assert "TTL" not in {str(f) for f in store.features()}
    key = new_name("k")
    with pytest.raises(NotSupportedError) as caught:
        await store.set(SetRequest(key, "v", metadata={"ttlInSeconds": "60"}))
    assert caught.value.field == "ttlAttributeName"
    assert await store.get(GetRequest(key)) is None
    await store.set(SetRequest(key, "v", metadata={"ttlInSeconds": "-1"}))


# --- limits and bulk ------------------------------------------------------------------


async def test_an_item_over_dynamodbs_size_limit_is_an_invalid_request(driver: Driver) -> None:
    store = await driver()
    with pytest.raises(InvalidRequestError):
        await store.set(SetRequest(new_name("big"), "x" * 500_000))


async def test_bulk_get_of_more_than_100_keys_with_repeats_answers_each_in_order(
    driver: Driver,
) -> None:
    store = await driver()
    keys = [new_name(f"k{i}") for i in range(120)]
    await store.bulk_set([SetRequest(k, i) for i, k in enumerate(keys)])
    asked = [*keys, keys[0], new_name("missing"), ""]
    items = await store.bulk_get([GetRequest(k) for k in asked])
    assert [i.key for i in items] == asked
    assert [i.value for i in items[:121]] == [*range(120), 0]
    assert items[121].found is False
    assert items[121].error is None
    assert items[122].error is not None


# --- configuration and connection errors ----------------------------------------------


async def test_a_missing_table_fails_init_naming_the_table(driver: Driver) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(table=new_name("nope"))
    assert caught.value.field == "table"
    assert "state.aws.dynamodb 'test'" in str(caught.value)


async def test_a_table_keyed_by_another_attribute_fails_init_naming_partition_key(
    driver: Driver,
) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(partitionKey="id")
    assert caught.value.field == "partitionKey"


async def test_missing_credentials_fail_init_naming_component_and_field(
    moto: BackendInfo, table: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in AWS_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = default_registry().create("state.aws.dynamodb")
    properties = {"endpoint": moto.values["endpoint"], "region": "us-east-1", "table": table}
    with pytest.raises(MetadataError) as caught:
        await store.init(ComponentMetadata("creds", "state.aws.dynamodb", properties))
    assert caught.value.field == "accessKey"
    assert "state.aws.dynamodb 'creds'" in str(caught.value)
    assert "no AWS credentials" in str(caught.value)


async def test_an_access_key_without_a_secret_key_names_the_secret_key(driver: Driver) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(secretKey="")
    assert caught.value.field == "secretKey"


async def test_an_unreachable_endpoint_is_a_retriable_connection_failure(driver: Driver) -> None:
    with pytest.raises(ConnectionFailedError) as caught:
        await driver(endpoint=f"http://127.0.0.1:{free_port()}")
    assert caught.value.retriable


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
