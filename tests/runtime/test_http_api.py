"""The Dapr HTTP API over real embedded components, driven in-process through ASGI."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

import mechakit
from mechakit.runtime.clients import TopicEvent
from mechakit.runtime.http_api import DaprHttpApi, create_app
from mechakit.runtime.in_process import Runtime

WriteFiles = Callable[..., Path]
WAIT = 5.0
LIMIT = 64 * 1024


@pytest.fixture
def folder(resources: WriteFiles, component: Callable[..., str], tmp_path: Path) -> Path:
    (tmp_path / "secrets.json").write_text(
        json.dumps({"db-password": "pw", "api-key": "k", "root": "r"})
    )
    return resources(
        state=component("statestore", "state.sqlite", ("connectionString", str(tmp_path / "s.db"))),
        pubsub=component("pubsub", "pubsub.in-memory", ("redeliveryInterval", "10ms")),
        lock=component("lockstore", "lock.in-memory"),
        secrets=component(
            "secretstore",
            "secretstores.local.file",
            ("secretsFile", str(tmp_path / "secrets.json")),
        ),
        files=component("files", "bindings.localstorage", ("rootPath", str(tmp_path / "files"))),
        ticker=component("ticker", "bindings.cron", ("schedule", "@every 1h")),
        config=component("config", "configuration.in-memory", ("items", '{"greeting": "hello"}')),
        appconfig="""
        apiVersion: dapr.io/v1alpha1
        kind: Configuration
        metadata: {name: appconfig}
        spec:
          secrets:
            scopes:
              - storeName: secretstore
                defaultAccess: allow
                deniedSecrets: [root]
        """,
    )


@pytest.fixture
async def rt(folder: Path) -> AsyncIterator[Runtime]:
    async with mechakit.open(folder, app_id="myapp") as runtime:
        yield runtime


def client_for(runtime: Runtime, **options: Any) -> httpx.AsyncClient:
    app = create_app(runtime, max_request_size=LIMIT, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dapr")


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(rt) as client:
        yield client


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    code: str = body["errorCode"]
    return code


# --- state ------------------------------------------------------------------------------


async def test_saved_state_reads_back_with_its_etag_and_a_missing_key_is_204(
    http: httpx.AsyncClient,
) -> None:
    saved = await http.post(
        "/v1.0/state/statestore",
        json=[{"key": "planet", "value": {"name": "Tatooine"}}, {"key": "weapon", "value": "x"}],
    )
    assert saved.status_code == 204
    got = await http.get("/v1.0/state/statestore/planet")
    assert got.status_code == 200
    assert got.json() == {"name": "Tatooine"} and got.headers["etag"]
    assert (await http.get("/v1.0/state/statestore/weapon")).json() == "x"
    missing = await http.get("/v1.0/state/statestore/nothing-here")
    assert missing.status_code == 204 and missing.content == b""


async def test_a_stale_etag_is_409_and_the_value_stays(http: httpx.AsyncClient) -> None:
    await http.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}])
    first = (await http.get("/v1.0/state/statestore/k")).headers["etag"]
    ok = await http.post("/v1.0/state/statestore", json=[{"key": "k", "value": 2, "etag": first}])
    assert ok.status_code == 204
    stale = await http.post(
        "/v1.0/state/statestore", json=[{"key": "k", "value": 3, "etag": first}]
    )
    assert stale.status_code == 409 and error_code(stale) == "ERR_STATE_SAVE"
    assert (await http.get("/v1.0/state/statestore/k")).json() == 2


async def test_a_malformed_etag_is_400_not_a_conflict(http: httpx.AsyncClient) -> None:
    await http.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}])
    bad = await http.post(
        "/v1.0/state/statestore", json=[{"key": "k", "value": 2, "etag": "not-an-etag"}]
    )
    assert bad.status_code == 400 and error_code(bad) == "ERR_STATE_SAVE"


async def test_first_write_concurrency_refuses_to_overwrite(http: httpx.AsyncClient) -> None:
    item = {"key": "once", "value": "a", "options": {"concurrency": "first-write"}}
    assert (await http.post("/v1.0/state/statestore", json=[item])).status_code == 204
    again = await http.post("/v1.0/state/statestore", json=[{**item, "value": "b"}])
    assert again.status_code == 409
    assert (await http.get("/v1.0/state/statestore/once")).json() == "a"


async def test_ttl_from_query_metadata_comes_back_as_an_expire_time_header(
    http: httpx.AsyncClient,
) -> None:
    saved = await http.post(
        "/v1.0/state/statestore?metadata.ttlInSeconds=60", json=[{"key": "t", "value": 1}]
    )
    assert saved.status_code == 204
    got = await http.get("/v1.0/state/statestore/t")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got.headers["metadata.ttlExpireTime"])
    zero = await http.post(
        "/v1.0/state/statestore", json=[{"key": "t", "value": 1, "metadata": {"ttlInSeconds": "0"}}]
    )
    assert zero.status_code == 400 and error_code(zero) == "ERR_MALFORMED_REQUEST"


async def test_delete_checks_if_match(http: httpx.AsyncClient) -> None:
    await http.post("/v1.0/state/statestore", json=[{"key": "d", "value": 1}])
    etag = (await http.get("/v1.0/state/statestore/d")).headers["etag"]
    await http.post("/v1.0/state/statestore", json=[{"key": "d", "value": 2}])
    stale = await http.delete("/v1.0/state/statestore/d", headers={"If-Match": etag})
    assert stale.status_code == 409 and error_code(stale) == "ERR_STATE_DELETE"
    current = (await http.get("/v1.0/state/statestore/d")).headers["etag"]
    deleted = await http.delete("/v1.0/state/statestore/d", headers={"If-Match": current})
    assert deleted.status_code == 204
    assert (await http.get("/v1.0/state/statestore/d")).status_code == 204
    assert (await http.delete("/v1.0/state/statestore/never-there")).status_code == 204


async def test_bulk_get_returns_every_key_in_order_with_missing_ones_bare(
    http: httpx.AsyncClient,
) -> None:
    await http.post("/v1.0/state/statestore", json=[{"key": "a", "value": {"n": 1}}])
    got = await http.post("/v1.0/state/statestore/bulk", json={"keys": ["a", "zz"]})
    assert got.status_code == 200
    first, second = got.json()
    assert first["key"] == "a" and first["data"] == {"n": 1} and first["etag"]
    assert second == {"key": "zz"}


async def test_transaction_with_a_stale_etag_leaves_every_key_untouched(
    http: httpx.AsyncClient,
) -> None:
    await http.post(
        "/v1.0/state/statestore", json=[{"key": "x", "value": 1}, {"key": "y", "value": 1}]
    )
    stale = {
        "operations": [
            {"operation": "upsert", "request": {"key": "x", "value": 2}},
            {"operation": "delete", "request": {"key": "y", "etag": "999999"}},
        ]
    }
    failed = await http.post("/v1.0/state/statestore/transaction", json=stale)
    assert failed.status_code == 409 and error_code(failed) == "ERR_STATE_TRANSACTION"
    assert (await http.get("/v1.0/state/statestore/x")).json() == 1
    good = {
        "operations": [
            {"operation": "upsert", "request": {"key": "x", "value": 2}},
            {"operation": "delete", "request": {"key": "y"}},
        ]
    }
    assert (await http.post("/v1.0/state/statestore/transaction", json=good)).status_code == 204
    assert (await http.get("/v1.0/state/statestore/x")).json() == 2
    assert (await http.get("/v1.0/state/statestore/y")).status_code == 204
    unknown = {"operations": [{"operation": "merge", "request": {"key": "x"}}]}
    refused = await http.post("/v1.0/state/statestore/transaction", json=unknown)
    assert refused.status_code == 400
    assert error_code(refused) == "ERR_NOT_SUPPORTED_STATE_OPERATION"


async def test_keys_with_the_prefix_separator_are_rejected(http: httpx.AsyncClient) -> None:
    bad = await http.post("/v1.0/state/statestore", json=[{"key": "a||b", "value": 1}])
    assert bad.status_code == 400 and error_code(bad) == "ERR_MALFORMED_REQUEST"


async def test_an_unknown_state_store_is_400_naming_the_configured_ones(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.get("/v1.0/state/nope/k")
    assert missing.status_code == 400 and error_code(missing) == "ERR_STATE_STORE_NOT_FOUND"
    assert "statestore" in missing.json()["message"]
    not_a_store = await http.get("/v1.0/state/pubsub/k")
    assert not_a_store.status_code == 400


# --- pub/sub ----------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.events: asyncio.Queue[TopicEvent] = asyncio.Queue()

    async def __call__(self, event: TopicEvent) -> None:
        await self.events.put(event)

    async def next(self) -> TopicEvent:
        return await asyncio.wait_for(self.events.get(), WAIT)


@pytest.fixture
async def inbox(rt: Runtime) -> Inbox:
    received = Inbox()
    await rt.pubsub("pubsub").subscribe("orders", received)
    return received


async def test_published_json_arrives_in_a_cloud_event_from_the_app(
    http: httpx.AsyncClient, inbox: Inbox
) -> None:
    sent = await http.post("/v1.0/publish/pubsub/orders", json={"id": 1})
    assert sent.status_code == 204
    event = await inbox.next()
    assert event.data == {"id": 1}
    assert event.cloud_event is not None
    assert event.cloud_event["source"] == "myapp" and event.cloud_event["topic"] == "orders"
    assert event.cloud_event["pubsubname"] == "pubsub"


async def test_a_body_without_content_type_is_text_and_binary_stays_bytes(
    http: httpx.AsyncClient, inbox: Inbox
) -> None:
    await http.post("/v1.0/publish/pubsub/orders", content=b"hello")
    text = await inbox.next()
    assert text.data == "hello" and text.content_type == "text/plain"
    blob = bytes(range(256))
    await http.post(
        "/v1.0/publish/pubsub/orders",
        content=blob,
        headers={"content-type": "application/octet-stream"},
    )
    assert (await inbox.next()).data == blob


async def test_a_cloud_event_is_passed_through_and_raw_payload_skips_the_envelope(
    http: httpx.AsyncClient, inbox: Inbox
) -> None:
    own = {"specversion": "1.0", "id": "mine-1", "source": "elsewhere", "type": "t", "data": 5}
    own["datacontenttype"] = "application/json"
    sent = await http.post(
        "/v1.0/publish/pubsub/orders",
        content=json.dumps(own),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert sent.status_code == 204
    event = await inbox.next()
    assert event.id == "mine-1" and event.data == 5
    assert event.cloud_event is not None and event.cloud_event["source"] == "elsewhere"
    raw = await http.post("/v1.0/publish/pubsub/orders?metadata.rawPayload=true", content=b"plain")
    assert raw.status_code == 204
    plain = await inbox.next()
    assert plain.cloud_event is None and plain.raw == b"plain"


async def test_bad_publish_requests_are_client_errors(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/v1.0/publish/nope/orders", json={})
    assert unknown.status_code == 404 and error_code(unknown) == "ERR_PUBSUB_NOT_FOUND"
    bad_flag = await http.post("/v1.0/publish/pubsub/orders?metadata.rawPayload=maybe", json={})
    assert bad_flag.status_code == 400 and error_code(bad_flag) == "ERR_PUBSUB_REQUEST_METADATA"
    not_an_event = await http.post(
        "/v1.0/publish/pubsub/orders",
        content=b"[1]",
        headers={"content-type": "application/cloudevents+json"},
    )
    assert not_an_event.status_code == 400
    assert error_code(not_an_event) == "ERR_PUBSUB_CLOUD_EVENTS_SER"
    bad_ttl = await http.post("/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=soon", json={})
    assert bad_ttl.status_code == 400


async def test_bulk_publish_delivers_every_entry_and_checks_them_first(
    http: httpx.AsyncClient, inbox: Inbox
) -> None:
    entries = [
        {"entryId": "1", "event": "first", "contentType": "text/plain"},
        {"entryId": "2", "event": {"n": 2}, "contentType": "application/json"},
        {"entryId": "3", "event": base64.b64encode(b"\x00\x01").decode(),
         "contentType": "application/octet-stream"},
    ]  # fmt: skip
    sent = await http.post("/v1.0-alpha1/publish/bulk/pubsub/orders", json=entries)
    assert sent.status_code == 204
    received = [await inbox.next() for _ in entries]
    assert sorted(map(repr, (e.data for e in received))) == sorted(
        map(repr, ["first", {"n": 2}, b"\x00\x01"])
    )
    duplicate = await http.post(
        "/v1.0-alpha1/publish/bulk/pubsub/orders", json=[entries[0], entries[0]]
    )
    assert duplicate.status_code == 400 and error_code(duplicate) == "ERR_PUBSUB_EVENTS_SER"
    mismatch = [{"entryId": "x", "event": {"a": 1}, "contentType": "text/plain"}]
    refused = await http.post("/v1.0-alpha1/publish/bulk/pubsub/orders", json=mismatch)
    assert refused.status_code == 400
    assert inbox.events.empty()


# --- bindings, secrets, locks, configuration ---------------------------------------------


async def test_an_output_binding_is_invoked_with_its_operation_and_metadata(
    http: httpx.AsyncClient,
) -> None:
    created = await http.post(
        "/v1.0/bindings/files",
        json={"operation": "create", "data": "hello", "metadata": {"fileName": "a.txt"}},
    )
    assert created.status_code in (200, 204)
    got = await http.post(
        "/v1.0/bindings/files", json={"operation": "get", "metadata": {"fileName": "a.txt"}}
    )
    assert got.status_code == 200 and got.content == b"hello"
    unsupported = await http.post("/v1.0/bindings/files", json={"operation": "explode"})
    assert unsupported.status_code == 400 and error_code(unsupported) == "ERR_INVOKE_OUTPUT_BINDING"
    input_only = await http.post("/v1.0/bindings/ticker", json={"operation": "create"})
    assert input_only.status_code == 400
    unknown = await http.post("/v1.0/bindings/nope", json={"operation": "create"})
    assert unknown.status_code == 400


async def test_secrets_follow_the_configuration_scopes(http: httpx.AsyncClient) -> None:
    got = await http.get("/v1.0/secrets/secretstore/db-password")
    assert got.status_code == 200 and got.json() == {"db-password": "pw"}
    denied = await http.get("/v1.0/secrets/secretstore/root")
    assert denied.status_code == 403 and error_code(denied) == "ERR_PERMISSION_DENIED"
    missing = await http.get("/v1.0/secrets/secretstore/nothing")
    assert missing.status_code == 404 and error_code(missing) == "ERR_SECRET_GET"
    unknown = await http.get("/v1.0/secrets/nope/db-password")
    assert unknown.status_code == 401 and error_code(unknown) == "ERR_SECRET_STORE_NOT_FOUND"
    bulk = await http.get("/v1.0/secrets/secretstore/bulk")
    assert bulk.json() == {"db-password": {"db-password": "pw"}, "api-key": {"api-key": "k"}}


async def test_a_lock_has_one_owner_until_it_is_released(http: httpx.AsyncClient) -> None:
    lock = {"resourceId": "order-1", "lockOwner": "a", "expiryInSeconds": 10}
    assert (await http.post("/v1.0-alpha1/lock/lockstore", json=lock)).json() == {"success": True}
    other = {**lock, "lockOwner": "b"}
    assert (await http.post("/v1.0-alpha1/lock/lockstore", json=other)).json() == {"success": False}
    release = {"resourceId": "order-1", "lockOwner": "b"}
    assert (await http.post("/v1.0-alpha1/unlock/lockstore", json=release)).json() == {"status": 2}
    release["lockOwner"] = "a"
    assert (await http.post("/v1.0-alpha1/unlock/lockstore", json=release)).json() == {"status": 0}
    assert (await http.post("/v1.0-alpha1/unlock/lockstore", json=release)).json() == {"status": 1}
    zero = await http.post("/v1.0-alpha1/lock/lockstore", json={**lock, "expiryInSeconds": 0})
    assert zero.status_code == 400 and error_code(zero) == "ERR_MALFORMED_REQUEST"
    unknown = await http.post("/v1.0-alpha1/lock/nope", json=lock)
    assert unknown.status_code == 400 and error_code(unknown) == "ERR_LOCK_STORE_NOT_FOUND"


async def test_configuration_items_are_read_by_key(http: httpx.AsyncClient) -> None:
    got = await http.get("/v1.0/configuration/config?key=greeting&key=absent")
    assert got.status_code == 200
    assert got.json() == {"greeting": {"value": "hello", "version": "1", "metadata": {}}} or (
        got.json()["greeting"]["value"] == "hello" and list(got.json()) == ["greeting"]
    )
    assert (await http.get("/v1.0-alpha1/configuration/config")).status_code == 200
    assert (await http.get("/v1.0/configuration/config?key=absent")).status_code == 204
    unknown = await http.get("/v1.0/configuration/nope")
    assert unknown.status_code == 400 and error_code(unknown) == "ERR_CONFIGURATION_STORE_NOT_FOUND"


# --- metadata, health, token, limits ------------------------------------------------------


async def test_metadata_lists_components_without_their_metadata_values(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    got = await http.get("/v1.0/metadata")
    body = got.json()
    assert body["id"] == "myapp"
    state = next(c for c in body["components"] if c["name"] == "statestore")
    assert state == {
        "name": "statestore",
        "type": "state.sqlite",
        "version": "v1",
        "capabilities": ["ETAG", "TRANSACTIONAL", "TTL"],
    }
    assert str(tmp_path) not in got.text and "secrets.json" not in got.text
    put = await http.put("/v1.0/metadata/owner", content=b"team-a")
    assert put.status_code == 204
    assert (await http.get("/v1.0/metadata")).json()["extended"]["owner"] == "team-a"


async def test_health_checks_answer_204(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1.0/healthz")).status_code == 204
    assert (await http.get("/v1.0/healthz/outbound")).status_code == 204


async def test_an_api_token_is_required_everywhere_but_the_health_checks(rt: Runtime) -> None:
    async with client_for(rt, api_token="s3cret") as http:
        assert (await http.get("/v1.0/healthz")).status_code == 204
        assert (await http.get("/v1.0/healthz/outbound")).status_code == 204
        assert (await http.get("/v1.0/metadata")).status_code == 401
        wrong = await http.get("/v1.0/metadata", headers={"dapr-api-token": "nope"})
        assert wrong.status_code == 401
        right = await http.get("/v1.0/metadata", headers={"dapr-api-token": "s3cret"})
        assert right.status_code == 200


async def test_unknown_routes_and_methods_answer_json_errors(http: httpx.AsyncClient) -> None:
    unknown = await http.get("/v1.0/actors/x")
    assert unknown.status_code == 404 and error_code(unknown) == "ERR_API_UNIMPLEMENTED"
    wrong_method = await http.patch("/v1.0/state/statestore")
    assert wrong_method.status_code == 405 and error_code(wrong_method)


async def test_the_openapi_document_lists_exactly_the_served_routes(rt: Runtime) -> None:
    api = DaprHttpApi(rt)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://dapr"
    ) as http:
        document = (await http.get("/v1.0/openapi.json")).json()
    served = set()
    for route in api.app.routes:
        assert isinstance(route, Route) and route.methods
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        served |= {(m.lower(), path) for m in route.methods if m != "HEAD"}
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == served


# --- bad input on every endpoint -----------------------------------------------------------

BODY_ENDPOINTS = [
    ("POST", "/v1.0/state/{store}"),
    ("POST", "/v1.0/state/{store}/bulk"),
    ("POST", "/v1.0/state/{store}/transaction"),
    ("POST", "/v1.0-alpha1/state/{store}/query"),
    ("POST", "/v1.0-alpha1/publish/bulk/{pubsub}/orders"),
    ("POST", "/v1.0/bindings/{binding}"),
    ("POST", "/v1.0-alpha1/lock/{lock}"),
    ("POST", "/v1.0-alpha1/unlock/{lock}"),
]
KNOWN = {"store": "statestore", "pubsub": "pubsub", "binding": "files", "lock": "lockstore"}
UNKNOWN = {"store": "nope", "pubsub": "nope", "binding": "nope", "lock": "nope"}
BAD_BODIES = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe\x00",
    b"NaN",
    b"[" * 100_000,
    b"42",
    b'"text"',
    b"null",
    b"[1, 2]",
    b'{"keys": 5, "operations": "x", "operation": 7, "resourceId": 1, "expiryInSeconds": "x"}',
    b'[{"key": 5}]',
    b'[{"key": "k", "metadata": {"a": 1}}]',
    b'[{"key": "k", "options": {"concurrency": "sometimes"}}]',
    b'[{"entryId": "", "event": 1}]',
]


@pytest.mark.parametrize(("method", "template"), BODY_ENDPOINTS)
@pytest.mark.parametrize("body", BAD_BODIES, ids=lambda b: repr(b[:20]))
async def test_malformed_or_mistyped_bodies_are_4xx_with_an_error_code(
    http: httpx.AsyncClient, method: str, template: str, body: bytes
) -> None:
    response = await http.request(
        method,
        template.format(**KNOWN),
        content=body,
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert error_code(response).startswith("ERR_")


@pytest.mark.parametrize(
    ("method", "template"),
    [
        *BODY_ENDPOINTS,
        ("GET", "/v1.0/state/{store}/k"),
        ("DELETE", "/v1.0/state/{store}/k"),
        ("POST", "/v1.0/publish/{pubsub}/orders"),
        ("GET", "/v1.0/secrets/{store}/k"),
        ("GET", "/v1.0/secrets/{store}/bulk"),
        ("GET", "/v1.0/configuration/{store}"),
    ],
)
async def test_unknown_components_are_4xx_on_every_endpoint(
    http: httpx.AsyncClient, method: str, template: str
) -> None:
    response = await http.request(method, template.format(**UNKNOWN), content=b"{}")
    assert 400 <= response.status_code < 500, response.text
    assert error_code(response).endswith(("NOT_FOUND", "OUTPUT_BINDING"))


@pytest.mark.parametrize(
    ("method", "template"), [*BODY_ENDPOINTS, ("POST", "/v1.0/publish/{pubsub}/t")]
)
async def test_bodies_over_the_limit_are_413_whether_announced_or_streamed(
    http: httpx.AsyncClient, method: str, template: str
) -> None:
    big = b"[" + b" " * LIMIT + b"]"
    announced = await http.request(method, template.format(**KNOWN), content=big)
    assert announced.status_code == 413 and error_code(announced) == "ERR_BODY_READ"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    streamed = await http.request(method, template.format(**KNOWN), content=chunks())
    assert streamed.status_code == 413


# --- fuzz ------------------------------------------------------------------------------------


@pytest.fixture
def fuzz_client(folder: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    """One runtime on a private loop, so hypothesis (synchronous) can drive many requests."""
    loop = asyncio.new_event_loop()
    runtime = loop.run_until_complete(mechakit.open(folder, app_id="fuzz").start())
    app = create_app(runtime, max_request_size=LIMIT)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=True), base_url="http://dapr"
    )
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(runtime.close())
        loop.close()


TEMPLATES = [
    "/v1.0/state/{c}", "/v1.0/state/{c}/{x}", "/v1.0/state/{c}/bulk", "/v1.0/state/{c}/transaction",
    "/v1.0-alpha1/state/{c}/query", "/v1.0/publish/{c}/{x}", "/v1.0-alpha1/publish/bulk/{c}/{x}",
    "/v1.0/bindings/{c}", "/v1.0/secrets/{c}/{x}", "/v1.0/secrets/{c}/bulk", "/v1.0-alpha1/lock/{c}",
    "/v1.0-alpha1/unlock/{c}", "/v1.0/configuration/{c}", "/v1.0/metadata", "/v1.0/metadata/{x}",
    "/v1.0/healthz", "/{x}/{x}",
]  # fmt: skip
COMPONENTS = ["statestore", "pubsub", "lockstore", "secretstore", "files", "ticker", "config"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        name: json_values
        for name in ("key", "value", "etag", "metadata", "options", "keys", "operations",
                     "operation", "request", "data", "resourceId", "lockOwner", "expiryInSeconds",
                     "entryId", "event", "contentType")
    },
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(shaped, max_size=3).map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
)
segments = st.one_of(st.sampled_from(COMPONENTS), st.text(min_size=0, max_size=12))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    template=st.sampled_from(TEMPLATES),
    component=segments,
    other=segments,
    body=bodies,
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/cloudevents+json", "application/octet-stream", ""]
    ),
    query=st.sampled_from(
        ["", "?metadata.rawPayload=true", "?metadata.ttlInSeconds=x", "?consistency=weird", "?key=a"]
    ),
)  # fmt: skip
def test_no_request_makes_the_api_answer_500(
    fuzz_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient],
    method: str,
    template: str,
    component: str,
    other: str,
    body: bytes,
    content_type: str,
    query: str,
) -> None:
    loop, client = fuzz_client
    path = template.format(c=_segment(component), x=_segment(other)) + query
    headers = {"content-type": content_type} if content_type else {}
    response = loop.run_until_complete(client.request(method, path, content=body, headers=headers))
    assert response.status_code < 500, (path, body, response.text)


def _segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


async def test_errors_carry_daprs_richer_error_details(http: httpx.AsyncClient) -> None:
    illegal = await http.post("/v1.0/state/statestore", json=[{"key": "a||b", "value": 1}])
    assert illegal.status_code == 400 and error_code(illegal) == "ERR_MALFORMED_REQUEST"
    info, resource, bad_request = illegal.json()["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (info["reason"], info["domain"]) == ("DAPR_STATE_ILLEGAL_KEY", "dapr.io")
    assert (resource["resourceType"], resource["resourceName"]) == ("state", "statestore")
    assert bad_request["fieldViolations"][0]["field"] == "a||b"
    missing = await http.get("/v1.0/state/nope/k")
    assert error_code(missing) == "ERR_STATE_STORE_NOT_FOUND"
    assert missing.json()["details"][0]["reason"] == "DAPR_STATE_NOT_FOUND"
    unknown_bus = await http.post("/v1.0/publish/nope/orders", json={})
    assert unknown_bus.status_code == 404
    assert unknown_bus.json()["details"][0]["reason"] == "DAPR_PUBSUB_NOT_FOUND"
    saved = await http.post("/v1.0/state/statestore", json=[{"key": "fine", "value": 1}])
    assert saved.status_code == 204
