"""AWS drivers when AWS applied a request but its answer was lost, against moto's server.

botocore retries a request whose answer timed out. A botocore hook on the driver's own
client sends the first attempt to the real (moto) server, so it is applied, and then
raises the read timeout botocore would see. The retry of a conditional DynamoDB write
then fails its condition on the driver's own write: the caller must get the true outcome
(success) or a retriable error saying the outcome is unknown, never an ``ETagError``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.backends_aws import boto3_client, create_table
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ConnectionFailedError, ETagError, OperationTimeoutError
from mechakit.core.pubsub import PublishRequest
from mechakit.core.registry import default_registry
from mechakit.core.state import (
    Concurrency,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateOptions,
)

pytest.importorskip("boto3")
pytest_plugins = ["moto_server"]  # fixture moto

Driver = Callable[..., Awaitable[Any]]
FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)


def new_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def table(moto: BackendInfo) -> str:
    name = new_name("lost")
    create_table(moto.values, name, "key", "expiresAt")
    return name


@pytest.fixture(scope="module")
def dynamodb(moto: BackendInfo) -> Any:
    """A plain boto3 client of the same server, to write behind the driver's back."""
    return boto3_client(moto.values, "dynamodb")


@pytest_asyncio.fixture
async def driver(moto: BackendInfo, table: str) -> AsyncIterator[Driver]:
    """``await driver(type)``: an initialised component on the moto server, closed after."""
    made: list[Any] = []

    async def make(type_: str = "state.aws.dynamodb", **metadata: str) -> Any:
        component = default_registry().create(type_)
        v = moto.values
        properties = {
            "endpoint": v["endpoint"],
            "region": v["region"],
            "accessKey": v["accessKey"],
            "secretKey": v["secretKey"],
            **({"table": table, "ttlAttributeName": "expiresAt"} if "dynamodb" in type_ else {}),
            **metadata,
        }
        await component.init(
            ComponentMetadata(name="lost", type=type_, properties=properties, app_id="test-app")
        )
        made.append(component)
        return component

    yield make
    for component in reversed(made):
        await component.close()


class Fault:
    """Attempts of one operation on a client, as sent; the first ``lose`` ones are applied
    by the server but their answers lost; ``throttle`` ones are refused without sending."""

    def __init__(
        self,
        client: Any,
        operation: str,
        *,
        lose: int = 1,
        throttle: int = 0,
        between: Callable[[], None] | None = None,
    ) -> None:
        from botocore.httpsession import URLLib3Session

        self.bodies: list[bytes] = []
        self._lose, self._throttle, self._between = lose, throttle, between
        self._http = URLLib3Session()
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service}.{operation}", self._send)

    def _send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import ReadTimeoutError

        body = request.body
        self.bodies.append(body.encode() if isinstance(body, str) else bytes(body or b""))
        attempt = len(self.bodies)
        if attempt <= self._throttle:
            reply = b'{"__type":"ThrottlingException","message":"slow down"}'
            return AWSResponse(request.url, 400, {"x-amzn-requestid": "t"}, _Raw(reply))
        if attempt <= self._throttle + self._lose:
            self._http.send(request)  # applied by the server; its answer is lost
            if self._between is not None:
                self._between()
            raise ReadTimeoutError(endpoint_url=request.url)
        return None


class _Raw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def stored_etag(dynamodb: Any, table: str, key: str) -> str:
    item = dynamodb.get_item(TableName=table, Key={"key": {"S": f"test-app||{key}"}})["Item"]
    return str(item["etag"]["S"])


# --- state.aws.dynamodb -------------------------------------------------------------------


async def test_an_etag_set_whose_answer_was_lost_succeeds_on_the_retry(driver: Driver) -> None:
    store = await driver()
    key = new_name("etag")
    await store.set(SetRequest(key, "v1"))
    etag = (await store.get(GetRequest(key))).etag
    fault = Fault(store._client, "PutItem")
    await store.set(SetRequest(key, "v2", etag=etag))
    assert len(fault.bodies) == 2, "botocore did not retry"
    stored = await store.get(GetRequest(key))
    assert stored.value == "v2"
    assert stored.etag != etag


async def test_a_first_write_whose_answer_was_lost_succeeds_on_the_retry(driver: Driver) -> None:
    store = await driver()
    key = new_name("first")
    fault = Fault(store._client, "PutItem")
    await store.set(SetRequest(key, "mine", options=FIRST_WRITE, metadata={"ttlInSeconds": "60"}))
    assert len(fault.bodies) == 2
    assert (await store.get(GetRequest(key))).value == "mine"


async def test_a_lost_answer_then_a_write_by_another_is_outcome_unknown(
    driver: Driver, dynamodb: Any, table: str
) -> None:
    """The retry finds someone else's item: the first attempt may or may not be why."""
    store = await driver()
    key = new_name("raced")
    await store.set(SetRequest(key, "v1"))
    etag = (await store.get(GetRequest(key))).etag
    other = {"key": {"S": f"test-app||{key}"}, "value": {"S": '"other"'}}
    other["etag"] = {"S": uuid.uuid4().hex}
    Fault(store._client, "PutItem", between=lambda: dynamodb.put_item(TableName=table, Item=other))
    with pytest.raises(OperationTimeoutError) as caught:
        await store.set(SetRequest(key, "v2", etag=etag))
    assert caught.value.retriable
    assert "may or may not" in str(caught.value)
    assert (await store.get(GetRequest(key))).value == "other"


async def test_a_real_conflict_after_a_throttled_attempt_is_still_an_etag_error(
    driver: Driver,
) -> None:
    """A refused (throttled) attempt was not applied, so the retry's answer is the truth."""
    store = await driver()
    key = new_name("throttled")
    await store.set(SetRequest(key, "v1"))
    stale = (await store.get(GetRequest(key))).etag
    await store.set(SetRequest(key, "v2"))
    fault = Fault(store._client, "PutItem", lose=0, throttle=1)
    with pytest.raises(ETagError):
        await store.set(SetRequest(key, "v3", etag=stale))
    assert len(fault.bodies) == 2
    assert (await store.get(GetRequest(key))).value == "v2"


async def test_an_etag_delete_whose_answer_was_lost_is_outcome_unknown_and_deleted(
    driver: Driver,
) -> None:
    """A delete leaves nothing to recognise it by, so the outcome cannot be told."""
    store = await driver()
    key = new_name("delete")
    await store.set(SetRequest(key, "v1"))
    etag = (await store.get(GetRequest(key))).etag
    Fault(store._client, "DeleteItem")
    with pytest.raises(OperationTimeoutError) as caught:
        await store.delete(DeleteRequest(key, etag=etag))
    assert caught.value.retriable
    assert "may or may not" in str(caught.value)
    assert await store.get(GetRequest(key)) is None


async def test_a_plain_delete_whose_answer_was_lost_succeeds(driver: Driver) -> None:
    store = await driver()
    key = new_name("plain-delete")
    await store.set(SetRequest(key, "v1"))
    Fault(store._client, "DeleteItem")
    await store.delete(DeleteRequest(key))
    assert await store.get(GetRequest(key)) is None


async def test_a_transaction_whose_answer_was_lost_succeeds_and_reuses_its_token(
    driver: Driver,
) -> None:
    """Real DynamoDB answers the retry from the ClientRequestToken; moto ignores the token
    and cancels the retry, which the driver recognises as its own write."""
    store = await driver()
    old, new = new_name("tx-old"), new_name("tx-new")
    await store.set(SetRequest(old, "v1"))
    etag = (await store.get(GetRequest(old))).etag
    fault = Fault(store._client, "TransactWriteItems")
    await store.transact(
        [SetRequest(old, "v2", etag=etag), SetRequest(new, "n", options=FIRST_WRITE)]
    )
    tokens = [json.loads(body)["ClientRequestToken"] for body in fault.bodies]
    assert len(tokens) == 2
    assert tokens[0] == tokens[1]
    assert (await store.get(GetRequest(old))).value == "v2"
    assert (await store.get(GetRequest(new))).value == "n"


async def test_a_delete_only_transaction_whose_answer_was_lost_is_outcome_unknown(
    driver: Driver,
) -> None:
    store = await driver()
    key = new_name("tx-delete")
    await store.set(SetRequest(key, "v1"))
    etag = (await store.get(GetRequest(key))).etag
    Fault(store._client, "TransactWriteItems")
    with pytest.raises(OperationTimeoutError) as caught:
        await store.transact([DeleteRequest(key, etag=etag)])
    assert "may or may not" in str(caught.value)
    assert await store.get(GetRequest(key)) is None


async def test_a_bulk_set_with_lost_answers_reports_no_conflicts(driver: Driver) -> None:
    store = await driver()
    keys = [new_name("bulk") for _ in range(4)]
    fault = Fault(store._client, "PutItem", lose=4)
    await store.bulk_set([SetRequest(k, i, options=FIRST_WRITE) for i, k in enumerate(keys)])
    assert len(fault.bodies) == 8
    items = await store.bulk_get([GetRequest(k) for k in keys])
    assert [item.value for item in items] == [0, 1, 2, 3]


async def test_a_write_whose_every_answer_was_lost_is_outcome_unknown(driver: Driver) -> None:
    store = await driver()
    key = new_name("never")
    fault = Fault(store._client, "PutItem", lose=10)
    with pytest.raises(OperationTimeoutError) as caught:
        await store.set(SetRequest(key, "v", options=FIRST_WRITE))
    assert len(fault.bodies) > 1
    assert caught.value.retriable
    assert "may or may not" in str(caught.value)
    assert (await store.get(GetRequest(key))).value == "v"


# --- pubsub.aws.snssqs ----------------------------------------------------------------------


async def test_a_fifo_publish_retried_after_a_lost_answer_sends_the_same_message(
    driver: Driver,
) -> None:
    """SNS FIFO deduplicates by content, so the retry must carry the same body and group."""
    pubsub = await driver("pubsub.aws.snssqs", consumerID=new_name("c"), fifo="true")
    topic = new_name("fifo")
    await pubsub.publish(PublishRequest(topic=topic, data=b"warm-up"))  # creates the topic
    fault = Fault(pubsub._entities.sns, "Publish")
    await pubsub.publish(PublishRequest(topic=topic, data=b"once", metadata={"k": "v"}))
    assert len(fault.bodies) == 2
    assert fault.bodies[0] == fault.bodies[1]
    assert b"MessageGroupId" in fault.bodies[0]
    assert b"MessageDeduplicationId" not in fault.bodies[0]  # content-based: from the body


async def test_a_publish_whose_every_answer_was_lost_is_a_retriable_timeout(
    driver: Driver,
) -> None:
    pubsub = await driver("pubsub.aws.snssqs", consumerID=new_name("c"))
    topic = new_name("t")
    await pubsub.publish(PublishRequest(topic=topic, data=b"warm-up"))
    Fault(pubsub._entities.sns, "Publish", lose=10)
    with pytest.raises(OperationTimeoutError) as caught:
        await pubsub.publish(PublishRequest(topic=topic, data=b"lost"))
    assert caught.value.retriable
    assert "may or may not" in str(caught.value)


# --- the shared error mapping -------------------------------------------------------------


def test_errors_after_the_request_may_have_been_applied_say_so() -> None:
    from botocore import exceptions as boto

    from mechakit.components._shared.aws import map_error

    def mapped(exc: Exception) -> Exception:
        return map_error(exc, component="c", action="set", key="k")

    closed = mapped(boto.ConnectionClosedError(endpoint_url="http://x"))
    server = mapped(
        boto.ClientError(
            {"Error": {"Code": "InternalServerError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
            "PutItem",
        )
    )
    for error in (closed, server):
        assert isinstance(error, ConnectionFailedError)
        assert error.retriable
        assert "may or may not" in str(error)
    refused = mapped(boto.EndpointConnectionError(endpoint_url="http://x"))
    assert isinstance(refused, ConnectionFailedError)
    assert "may or may not" not in str(refused)  # never sent
    after_lost = boto.EndpointConnectionError(endpoint_url="http://x")
    after_lost.mechakit_lost_answer = True
    assert "may or may not" in str(mapped(after_lost))


async def test_throttling_after_a_lost_answer_is_outcome_unknown(driver: Driver) -> None:
    """The first attempt was applied but unanswered; the retries were throttled."""
    store = await driver()
    key = new_name("lost-then-throttled")

    class LostThenThrottled(Fault):
        def _send(self, request: Any, **kwargs: Any) -> Any:
            if not self.bodies:
                return super()._send(request, **kwargs)  # applied, answer lost
            self._throttle = len(self.bodies) + 1  # every later attempt is throttled
            return super()._send(request, **kwargs)

    LostThenThrottled(store._client, "PutItem")
    with pytest.raises(OperationTimeoutError) as caught:
        await store.set(SetRequest(key, "v"))
    assert "may or may not" in str(caught.value)
    assert (await store.get(GetRequest(key))).value == "v"
