"""bindings.aws.s3 beyond the conformance suite, against moto's server."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.backends_aws import boto3_client
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    InvalidRequestError,
    MetadataError,
    NotFoundError,
    NotSupportedError,
)
from mechakit.core.registry import default_registry

pytest.importorskip("boto3")
pytest_plugins = ["moto_server"]  # fixture moto

Driver = Callable[..., Awaitable[Any]]


def new_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def bucket(moto: BackendInfo) -> str:
    name = new_name("bucket")
    boto3_client(moto.values, "s3").create_bucket(Bucket=name)
    return name


@pytest_asyncio.fixture
async def driver(moto: BackendInfo, bucket: str) -> AsyncIterator[Driver]:
    """``await driver(**metadata)``: an initialised bindings.aws.s3, closed after the test."""
    made: list[Any] = []

    async def make(name: str = "test", **metadata: str) -> Any:
        binding = default_registry().create("bindings.aws.s3")
        v = moto.values
        properties = {
            "endpoint": v["endpoint"],
            "region": v["region"],
            "accessKey": v["accessKey"],
            "secretKey": v["secretKey"],
            "bucket": bucket,
            "forcePathStyle": "true",
            **metadata,
        }
        await binding.init(
            ComponentMetadata(name=name, type="bindings.aws.s3", properties=properties)
        )
        made.append(binding)
        return binding

    yield make
    for binding in reversed(made):
        await binding.close()


async def invoke(
    binding: Any, operation: str, data: bytes = b"", **metadata: str
) -> InvokeResponse:
    response: InvokeResponse = await binding.invoke(InvokeRequest(operation, data, metadata))
    return response


# --- create and get -------------------------------------------------------------------


async def test_create_without_a_key_makes_one_and_reports_where_the_object_is(
    driver: Driver, bucket: str, moto: BackendInfo
) -> None:
    s3 = await driver()
    created = await invoke(s3, "create", b"payload")
    key = created.metadata["key"]
    assert uuid.UUID(key)
    body = json.loads(created.data)
    assert body["location"] == f"{moto.values['endpoint']}/{bucket}/{key}"
    assert created.metadata["location"] == body["location"]
    assert (await invoke(s3, "get", key=key)).data == b"payload"


async def test_base64_settings_and_request_overrides_apply(driver: Driver) -> None:
    s3 = await driver(decodeBase64="true", encodeBase64="true")
    key, raw = new_name("b64"), b"\x00\x01binary\xff"
    await invoke(s3, "create", base64.b64encode(raw), key=key)
    assert (await invoke(s3, "get", key=key)).data == base64.b64encode(raw)
    assert (await invoke(s3, "get", key=key, encodeBase64="false")).data == raw
    plain = new_name("plain")
    await invoke(s3, "create", b"not base64!", key=plain, decodeBase64="false")
    assert (await invoke(s3, "get", key=plain, encodeBase64="no")).data == b"not base64!"
    with pytest.raises(InvalidRequestError) as caught:
        await invoke(s3, "create", b"not base64!", key=new_name("bad"))
    assert caught.value.field == "data"


async def test_get_of_a_missing_object_is_not_found_naming_the_key(driver: Driver) -> None:
    s3 = await driver()
    missing = new_name("missing")
    with pytest.raises(NotFoundError) as caught:
        await invoke(s3, "get", key=missing)
    assert caught.value.key == missing


async def test_operations_that_need_a_key_say_so(driver: Driver) -> None:
    s3 = await driver()
    for operation in ("get", "delete", "presign"):
        with pytest.raises(InvalidRequestError) as caught:
            await invoke(s3, operation, presignTTL="1m")
        assert caught.value.field == "key"


# --- list -----------------------------------------------------------------------------


async def test_list_pages_through_every_object_with_next_marker(driver: Driver) -> None:
    s3 = await driver()
    prefix = new_name("page") + "/"
    keys = [f"{prefix}{i:02d}" for i in range(7)]
    for key in keys:
        await invoke(s3, "create", b"x", key=key)
    await invoke(s3, "create", b"x", key=new_name("outside"))

    seen: list[str] = []
    marker = ""
    for _ in range(10):
        page = await invoke(s3, "list", prefix=prefix, maxResults="3", marker=marker)
        body = json.loads(page.data)
        seen += [item["Key"] for item in body["Contents"]]
        assert len(body["Contents"]) <= 3
        if page.metadata["isTruncated"] == "false":
            assert "nextMarker" not in page.metadata
            break
        marker = page.metadata["nextMarker"]
        assert body["NextMarker"] == marker
    assert seen == keys


async def test_list_options_may_come_as_json_data(driver: Driver) -> None:
    s3 = await driver()
    prefix = new_name("json") + "/"
    for i in range(3):
        await invoke(s3, "create", b"x", key=f"{prefix}{i}")
    request = json.dumps({"prefix": prefix, "maxResults": 2}).encode()
    body = json.loads((await invoke(s3, "list", request)).data)
    assert [item["Key"] for item in body["Contents"]] == [f"{prefix}0", f"{prefix}1"]
    assert body["IsTruncated"] is True
    with pytest.raises(InvalidRequestError):
        await invoke(s3, "list", b"[1, 2]")
    with pytest.raises(InvalidRequestError) as caught:
        await invoke(s3, "list", maxResults="0")
    assert caught.value.field == "maxResults"


# --- presign --------------------------------------------------------------------------


async def test_a_presigned_url_fetches_the_object_without_credentials(driver: Driver) -> None:
    s3 = await driver()
    key = new_name("shared")
    await invoke(s3, "create", b"presigned payload", key=key)
    presigned = await invoke(s3, "presign", key=key, presignTTL="5m")
    url = presigned.metadata["presignURL"]
    assert json.loads(presigned.data) == {"presignURL": url}
    assert "X-Amz-Expires=300" in url
    async with httpx.AsyncClient() as http:
        fetched = await asyncio.wait_for(http.get(url), 10)
    assert fetched.status_code == 200
    assert fetched.content == b"presigned payload"


async def test_create_with_presign_ttl_returns_a_working_url(driver: Driver) -> None:
    s3 = await driver()
    created = await invoke(s3, "create", b"made and shared", key=new_name("k"), presignTTL="60")
    url = created.metadata["presignURL"]
    assert json.loads(created.data)["presignURL"] == url
    async with httpx.AsyncClient() as http:
        fetched = await asyncio.wait_for(http.get(url), 10)
    assert fetched.content == b"made and shared"


@pytest.mark.parametrize("ttl", ["", "soon", "0s", "8d", "200h"])
async def test_presign_needs_a_ttl_between_one_second_and_seven_days(
    driver: Driver, ttl: str
) -> None:
    s3 = await driver()
    with pytest.raises(InvalidRequestError) as caught:
        await invoke(s3, "presign", key="k", presignTTL=ttl)
    assert caught.value.field == "presignTTL"


# --- configuration --------------------------------------------------------------------


async def test_a_missing_bucket_fails_init_naming_the_bucket(driver: Driver) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(bucket=new_name("nope"))
    assert caught.value.field == "bucket"
    assert "bindings.aws.s3 'test'" in str(caught.value)


async def test_an_unknown_operation_lists_the_supported_ones(driver: Driver) -> None:
    s3 = await driver()
    with pytest.raises(NotSupportedError, match="create, get, delete, list, presign"):
        await invoke(s3, "bulkget")


async def test_missing_credentials_fail_init_naming_component_and_field(
    moto: BackendInfo, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in AWS_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    binding = default_registry().create("bindings.aws.s3")
    properties = {"endpoint": moto.values["endpoint"], "region": "us-east-1", "bucket": bucket}
    with pytest.raises(MetadataError) as caught:
        await binding.init(ComponentMetadata("files", "bindings.aws.s3", properties))
    assert caught.value.field == "accessKey"
    assert "bindings.aws.s3 'files'" in str(caught.value)


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
