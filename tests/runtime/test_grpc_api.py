"""The Dapr gRPC API: in-process over a grpc.aio channel (error mapping, streams), and the
``dapr`` SDK's ``DaprClient`` unchanged against a real ``mechakit run``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import httpx
import pytest
from dapr.clients import DaprClient
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import StateItem as SdkStateItem
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    actors_pb2,
    configuration_pb2,
    dapr_pb2_grpc,
    pubsub_pb2,
    secret_pb2,
    state_pb2,
)
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

import mechakit
from mechakit.components.configuration.in_memory import InMemoryConfigurationStore
from mechakit.conformance.backends import free_port
from mechakit.runtime.clients import TopicEvent
from mechakit.runtime.grpc_server import GrpcServer, start_server
from mechakit.runtime.in_process import Runtime

WriteFiles = Callable[..., Path]
WAIT = 5.0
STARTUP = 20.0
TOKEN = "s3cret"
Code = grpc.StatusCode


@pytest.fixture
def folder(resources: WriteFiles, component: Callable[..., str], tmp_path: Path) -> Path:
    (tmp_path / "secrets.json").write_text(json.dumps({"db-password": "pw", "root": "r"}))
    return resources(
        state=component("statestore", "state.sqlite", ("connectionString", str(tmp_path / "s.db"))),
        pubsub=component("pubsub", "pubsub.in-memory"),
        lock=component("lockstore", "lock.in-memory"),
        secrets=component(
            "secretstore",
            "secretstores.local.file",
            ("secretsFile", str(tmp_path / "secrets.json")),
        ),
        files=component("files", "bindings.localstorage", ("rootPath", str(tmp_path / "files"))),
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


# --- in-process: a grpc.aio channel against the servicer --------------------------------------


@pytest.fixture
async def rt(folder: Path) -> AsyncIterator[Runtime]:
    async with mechakit.open(folder, app_id="myapp") as runtime:
        yield runtime


@pytest.fixture
async def server(rt: Runtime) -> AsyncIterator[GrpcServer]:
    started = await start_server(rt, "127.0.0.1", 0, api_token=TOKEN)
    yield started
    await started.stop(0)


@pytest.fixture
async def stub(server: GrpcServer) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]


AUTH = (("dapr-api-token", TOKEN),)


def item(key: str, value: bytes, etag: str | None = None) -> common_pb2.StateItem:
    message = common_pb2.StateItem(key=key, value=value)
    if etag is not None:
        message.etag.value = etag
    return message


async def save(stub: Any, *items: common_pb2.StateItem) -> None:
    request = state_pb2.SaveStateRequest(store_name="statestore", states=items)
    await stub.SaveState(request, metadata=AUTH)


async def get(stub: Any, key: str) -> state_pb2.GetStateResponse:
    request = state_pb2.GetStateRequest(store_name="statestore", key=key)
    response: state_pb2.GetStateResponse = await stub.GetState(request, metadata=AUTH)
    return response


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason Dapr SDKs read as the error code."""
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.domain == "dapr.io"
    found: str = info.reason
    return found


async def test_state_reads_back_the_bytes_written_and_compact_json_is_a_json_value(
    stub: Any, rt: Runtime
) -> None:
    await save(
        stub, item("json", b'{"n":1}'), item("spaced", b'{"n": 1}'), item("raw", b"\x00\xff")
    )
    for key, written in (("json", b'{"n":1}'), ("spaced", b'{"n": 1}'), ("raw", b"\x00\xff")):
        got = await get(stub, key)
        assert got.data == written and got.etag
    assert (await rt.state("statestore").get("json")).value == {"n": 1}  # type: ignore[union-attr]
    missing = await get(stub, "missing")
    assert missing.data == b"" and missing.etag == ""


async def test_a_stale_etag_is_aborted_an_invalid_one_is_invalid_and_the_value_stays(
    stub: Any,
) -> None:
    await save(stub, item("k", b"1"))
    first = (await get(stub, "k")).etag
    await save(stub, item("k", b"2", first))
    stale = await failure(save(stub, item("k", b"3", first)))
    assert stale.code() is Code.ABORTED and reason(stale) == "ERR_STATE_SAVE"
    invalid = await failure(save(stub, item("k", b"3", "not-an-etag")))
    assert invalid.code() is Code.INVALID_ARGUMENT
    assert (await get(stub, "k")).data == b"2"
    delete = state_pb2.DeleteStateRequest(store_name="statestore", key="k")
    delete.etag.value = first
    assert (await failure(stub.DeleteState(delete, metadata=AUTH))).code() is Code.ABORTED


async def test_a_transaction_with_a_stale_etag_leaves_every_key_untouched(stub: Any) -> None:
    await save(stub, item("a", b"1"), item("b", b"1"))
    etag = (await get(stub, "a")).etag
    await save(stub, item("a", b"2"))
    request = state_pb2.ExecuteStateTransactionRequest(
        storeName="statestore",
        operations=[
            state_pb2.TransactionalStateOperation(operationType="delete", request=item("b", b"")),
            state_pb2.TransactionalStateOperation(
                operationType="upsert", request=item("a", b"3", etag)
            ),
        ],
    )
    error = await failure(stub.ExecuteStateTransaction(request, metadata=AUTH))
    assert error.code() is Code.ABORTED and reason(error) == "ERR_STATE_TRANSACTION"
    assert (await get(stub, "a")).data == b"2" and (await get(stub, "b")).data == b"1"
    bad = state_pb2.ExecuteStateTransactionRequest(
        storeName="statestore",
        operations=[state_pb2.TransactionalStateOperation(operationType="merge")],
    )
    assert (await failure(stub.ExecuteStateTransaction(bad, metadata=AUTH))).code() is (
        Code.INVALID_ARGUMENT
    )


async def test_unknown_components_are_invalid_argument_with_dapr_error_codes(stub: Any) -> None:
    # The ErrorInfo reason: Dapr's richer-model reason where it has one, else the legacy code.
    calls = {
        "DAPR_STATE_NOT_FOUND": stub.GetState(
            state_pb2.GetStateRequest(store_name="nope", key="k"), metadata=AUTH
        ),
        "DAPR_PUBSUB_NOT_FOUND": stub.PublishEvent(
            pubsub_pb2.PublishEventRequest(pubsub_name="nope", topic="t"), metadata=AUTH
        ),
        "ERR_SECRET_STORE_NOT_FOUND": stub.GetSecret(
            secret_pb2.GetSecretRequest(store_name="nope", key="k"), metadata=AUTH
        ),
        "ERR_CONFIGURATION_STORE_NOT_FOUND": stub.GetConfiguration(
            configuration_pb2.GetConfigurationRequest(store_name="nope"), metadata=AUTH
        ),
    }
    for code, call in calls.items():
        error = await failure(call)
        assert (error.code(), reason(error)) == (Code.INVALID_ARGUMENT, code)
        assert "nope" in (error.details() or "")


async def test_a_key_with_the_prefix_separator_is_rejected(stub: Any) -> None:
    error = await failure(save(stub, item("a||b", b"1")))
    assert error.code() is Code.INVALID_ARGUMENT and "||" in (error.details() or "")


async def test_query_on_a_store_without_the_query_api_is_unimplemented(stub: Any) -> None:
    request = state_pb2.QueryStateRequest(store_name="statestore", query="{}")
    error = await failure(stub.QueryStateAlpha1(request, metadata=AUTH))
    assert error.code() is Code.UNIMPLEMENTED
    assert reason(error) == "DAPR_STATE_QUERYING_NOT_SUPPORTED"


async def test_secrets_outside_the_scopes_are_denied_and_missing_ones_not_found(
    stub: Any,
) -> None:
    def secret(key: str) -> Any:
        request = secret_pb2.GetSecretRequest(store_name="secretstore", key=key)
        return stub.GetSecret(request, metadata=AUTH)

    assert dict((await secret("db-password")).data) == {"db-password": "pw"}
    denied = await failure(secret("root"))
    assert denied.code() is Code.PERMISSION_DENIED and reason(denied) == "ERR_PERMISSION_DENIED"
    assert (await failure(secret("absent"))).code() is Code.NOT_FOUND
    bulk = await stub.GetBulkSecret(
        secret_pb2.GetBulkSecretRequest(store_name="secretstore"), metadata=AUTH
    )
    assert {name: dict(v.secrets) for name, v in bulk.data.items()} == {
        "db-password": {"db-password": "pw"}
    }


async def test_published_events_carry_the_same_cloudevent_envelope_as_http(
    stub: Any, rt: Runtime
) -> None:
    received: asyncio.Queue[TopicEvent] = asyncio.Queue()

    async def handler(event: TopicEvent) -> None:
        await received.put(event)

    await rt.pubsub("pubsub").subscribe("orders", handler)
    await stub.PublishEvent(
        pubsub_pb2.PublishEventRequest(
            pubsub_name="pubsub",
            topic="orders",
            data=b'{"id":1}',
            data_content_type="application/json",
        ),
        metadata=AUTH,
    )
    event = await asyncio.wait_for(received.get(), WAIT)
    assert event.data == {"id": 1} and event.cloud_event is not None
    assert {k: event.cloud_event[k] for k in ("source", "topic", "pubsubname", "specversion")} == {
        "source": "myapp",
        "topic": "orders",
        "pubsubname": "pubsub",
        "specversion": "1.0",
    }
    bulk = pubsub_pb2.BulkPublishRequest(
        pubsub_name="pubsub",
        topic="orders",
        entries=[
            pubsub_pb2.BulkPublishRequestEntry(
                entry_id=str(i), event=b"hi", content_type="text/plain"
            )
            for i in range(2)
        ],
    )
    assert not (await stub.BulkPublishEvent(bulk, metadata=AUTH)).failedEntries
    texts = [(await asyncio.wait_for(received.get(), WAIT)).data for _ in range(2)]
    assert texts == ["hi", "hi"]
    bulk.entries[1].entry_id = "0"
    duplicate = await failure(stub.BulkPublishEventAlpha1(bulk, metadata=AUTH))
    assert duplicate.code() is Code.INVALID_ARGUMENT


async def test_configuration_changes_stream_until_unsubscribed(stub: Any, rt: Runtime) -> None:
    request = configuration_pb2.SubscribeConfigurationRequest(
        store_name="config", keys=["greeting"]
    )
    stream = stub.SubscribeConfiguration(request, metadata=AUTH)
    first = await asyncio.wait_for(stream.read(), WAIT)
    assert first.id and not first.items
    store = rt.configuration("config").component
    assert isinstance(store, InMemoryConfigurationStore)
    await store.set_items({"greeting": "hi"})
    update = await asyncio.wait_for(stream.read(), WAIT)
    assert update.id == first.id and update.items["greeting"].value == "hi"
    unsubscribe = configuration_pb2.UnsubscribeConfigurationRequest(
        store_name="config", id=first.id
    )
    assert (await stub.UnsubscribeConfiguration(unsubscribe, metadata=AUTH)).ok
    assert await asyncio.wait_for(stream.read(), WAIT) is grpc.aio.EOF
    again = await stub.UnsubscribeConfigurationAlpha1(unsubscribe, metadata=AUTH)
    assert not again.ok and first.id in again.message


async def test_an_unimplemented_rpc_names_itself(stub: Any) -> None:
    request = actors_pb2.GetActorStateRequest(actor_type="cart", actor_id="1", key="k")
    error = await failure(stub.GetActorState(request, metadata=AUTH))
    assert error.code() is Code.UNIMPLEMENTED
    assert "dapr.proto.runtime.v1.Dapr/GetActorState" in (error.details() or "")


async def test_every_call_needs_the_api_token_streams_included(stub: Any) -> None:
    request = state_pb2.GetStateRequest(store_name="statestore", key="k")
    for metadata in ((), (("dapr-api-token", "wrong"),)):
        error = await failure(stub.GetState(request, metadata=metadata))
        assert error.code() is Code.UNAUTHENTICATED
    stream = stub.SubscribeConfiguration(
        configuration_pb2.SubscribeConfigurationRequest(store_name="config"),
        metadata=(("dapr-api-token", "wrong"),),
    )
    assert (await failure(stream.read())).code() is Code.UNAUTHENTICATED


# --- the dapr SDK against `mechakit run` -------------------------------------------------------


def mechakit_run(folder: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "svc",
        "--resources-path", str(folder), "--config", str(folder / "appconfig.yaml"), *args,
    ]  # fmt: skip


def wait_healthy(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1.0/healthz", timeout=1).status_code == 204:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail("mechakit run did not become healthy in time")


Sidecar = Callable[..., dict[str, str]]


@pytest.fixture
def start_sidecar(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sidecar]:
    """``start_sidecar(token)`` runs ``mechakit run``; the SDK's environment points at it."""
    processes: list[subprocess.Popen[str]] = []

    def start(token: str | None = TOKEN) -> dict[str, str]:
        http_port, grpc_port = free_port(), free_port()
        ports = ("--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port))
        environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
        process = subprocess.Popen(
            mechakit_run(folder, *ports),
            env={**environment, **({"DAPR_API_TOKEN": token} if token else {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        wait_healthy(http_port, process)
        env = {
            "DAPR_HTTP_PORT": str(http_port),
            "DAPR_GRPC_PORT": str(grpc_port),
            "DAPR_HEALTH_TIMEOUT": "10",
        }
        if token:
            env["DAPR_API_TOKEN"] = token
        else:
            monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            process.communicate(timeout=STARTUP)


@pytest.fixture
def sidecar(start_sidecar: Sidecar) -> dict[str, str]:
    """``mechakit run`` with an API token."""
    return start_sidecar()


def test_sdk_error_accessors_read_daprs_reasons_resources_and_field_violations(
    sidecar: dict[str, str],
) -> None:
    from dapr.clients.exceptions import DaprGrpcError

    with DaprClient() as dapr:
        with pytest.raises(DaprGrpcError) as illegal:
            dapr.save_state("statestore", "a||b", "v")
        error: Any = illegal.value  # the SDK's accessors are untyped
        assert error.code() is Code.INVALID_ARGUMENT
        assert error.error_code() == "DAPR_STATE_ILLEGAL_KEY"
        details = error.status_details()
        assert details.resource_info["resource_type"] == "state"
        assert details.resource_info["resource_name"] == "statestore"
        assert details.bad_request["field_violations"][0]["field"] == "a||b"
        with pytest.raises(DaprGrpcError) as missing:
            dapr.get_state("nope", "k")
        assert cast(Any, missing.value).error_code() == "DAPR_STATE_NOT_FOUND"
        with pytest.raises(DaprGrpcError) as no_topic:
            dapr.publish_event("pubsub", " ", "{}")
        topic_error: Any = no_topic.value
        assert topic_error.error_code() == "DAPR_PUBSUB_TOPIC_NAME_EMPTY"
        assert topic_error.status_details().resource_info["resource_name"] == "pubsub"


def test_sdk_state_round_trip_with_etags_bulk_delete_and_transactions(
    sidecar: dict[str, str],
) -> None:
    with DaprClient() as dapr:
        dapr.save_state("statestore", "order", '{"id":1}')
        got = dapr.get_state("statestore", "order")
        assert got.data == b'{"id":1}' and got.etag
        dapr.save_state("statestore", "order", '{"id":2}', etag=got.etag)
        with pytest.raises(grpc.RpcError) as stale:
            dapr.save_state("statestore", "order", '{"id":3}', etag=got.etag)
        assert stale.value.code() is Code.ABORTED
        dapr.save_bulk_state(
            "statestore", [SdkStateItem("a", "1"), SdkStateItem("b", b"\x00binary")]
        )
        bulk = dapr.get_bulk_state("statestore", ["a", "b", "none"]).items
        assert [(i.key, i.data) for i in bulk] == [("a", b"1"), ("b", b"\x00binary"), ("none", b"")]
        etag_a = bulk[0].etag
        dapr.execute_state_transaction(
            "statestore",
            [
                TransactionalStateOperation("a", "2", etag=etag_a),
                TransactionalStateOperation(
                    "b", b"", operation_type=TransactionOperationType.delete
                ),
            ],
        )
        assert dapr.get_state("statestore", "a").data == b"2"
        assert dapr.get_state("statestore", "b").data == b""
        with pytest.raises(grpc.RpcError) as conflict:
            dapr.execute_state_transaction(
                "statestore", [TransactionalStateOperation("a", "3", etag=etag_a)]
            )
        assert conflict.value.code() is Code.ABORTED
        current = dapr.get_state("statestore", "a").etag
        with pytest.raises(grpc.RpcError):
            dapr.delete_state("statestore", "a", etag=etag_a)
        dapr.delete_state("statestore", "a", etag=current)
        assert dapr.get_state("statestore", "a").data == b""


def test_sdk_publish_binding_secrets_configuration_and_metadata(
    sidecar: dict[str, str], tmp_path: Path
) -> None:
    with DaprClient() as dapr:
        dapr.publish_event(
            "pubsub", "orders", json.dumps({"id": 1}), data_content_type="application/json"
        )
        with pytest.raises(grpc.RpcError) as unknown:
            dapr.publish_event("nope", "orders", "x")
        assert unknown.value.code() is Code.INVALID_ARGUMENT

        dapr.invoke_binding("files", "create", "hello", {"fileName": "a.txt"})
        assert (tmp_path / "files" / "a.txt").read_text() == "hello"
        assert dapr.invoke_binding("files", "get", binding_metadata={"fileName": "a.txt"}).data == (
            b"hello"
        )

        assert dapr.get_secret("secretstore", "db-password").secret == {"db-password": "pw"}
        with pytest.raises(grpc.RpcError) as denied:
            dapr.get_secret("secretstore", "root")
        assert denied.value.code() is Code.PERMISSION_DENIED
        assert dapr.get_bulk_secret("secretstore").secrets == {"db-password": {"db-password": "pw"}}

        config = dapr.get_configuration("config", ["greeting"])
        assert config.items["greeting"].value == "hello"
        metadata = dapr.get_metadata()
        assert metadata.application_id == "svc"
        assert {c.name for c in metadata.registered_components} == {
            "statestore", "pubsub", "lockstore", "secretstore", "files", "config",
        }  # fmt: skip

        with pytest.raises(grpc.RpcError) as unimplemented:
            dapr.shutdown()
        assert unimplemented.value.code() is Code.UNIMPLEMENTED
        assert "Dapr/Shutdown" in (unimplemented.value.details() or "")


def test_sdk_configuration_subscriptions_without_an_api_token(start_sidecar: Sidecar) -> None:
    """The SDK sends no token on server-streaming calls (Dapr would refuse them too)."""
    start_sidecar(token=None)
    with DaprClient() as dapr:
        subscription = dapr.subscribe_configuration("config", ["greeting"], lambda *_: None)
        assert subscription
        assert dapr.unsubscribe_configuration("config", subscription)
        assert not dapr.unsubscribe_configuration("config", subscription)


def test_sdk_with_a_wrong_token_is_unauthenticated(
    sidecar: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAPR_API_TOKEN", "wrong")
    with DaprClient() as dapr, pytest.raises(grpc.RpcError) as error:
        dapr.get_state("statestore", "k")
    assert error.value.code() is Code.UNAUTHENTICATED


LOCKER = """
import sys
from dapr.clients import DaprClient
owner, action = sys.argv[1], sys.argv[2]
with DaprClient() as dapr:
    if action == "lock":
        print("locked" if dapr.try_lock("lockstore", "res", owner, 60).success else "busy")
    else:
        print(dapr.unlock("lockstore", "res", owner).status.name)
"""


def test_sdk_locks_are_exclusive_between_two_client_processes(sidecar: dict[str, str]) -> None:
    def client(owner: str, action: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", LOCKER, owner, action],
            env={**os.environ, **sidecar},
            capture_output=True,
            text=True,
            timeout=STARTUP,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert client("worker-a", "lock") == "locked"
    assert client("worker-b", "lock") == "busy"
    assert client("worker-b", "unlock") == "lock_belongs_to_others"
    assert client("worker-a", "unlock") == "success"
    assert client("worker-b", "lock") == "locked"


COUNTER = """
from dapr.clients import DaprClient
with DaprClient() as dapr:
    item = dapr.get_state("statestore", "counter")
    count = int(item.data or b"0") + 1
    dapr.save_state("statestore", "counter", str(count), etag=item.etag or None)
    print("count", count)
"""


def test_a_counter_the_sdk_keeps_in_sqlite_survives_a_restart_of_the_sidecar(
    folder: Path,
) -> None:
    """``mechakit run -- python app.py`` gives the app DAPR_HTTP_PORT and DAPR_GRPC_PORT."""
    for expected in (1, 2):
        result = subprocess.run(
            [*mechakit_run(folder, "--dapr-http-port", "0", "--dapr-grpc-port", "0"),
             "--", sys.executable, "-c", COUNTER],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"count {expected}" in result.stdout
        assert "Dapr gRPC API listening on 127.0.0.1:" in result.stderr


def test_run_reports_a_taken_grpc_port(folder: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            mechakit_run(folder, "--dapr-http-port", "0", "--dapr-grpc-port", str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr


async def test_a_message_over_the_body_limit_is_resource_exhausted(rt: Runtime) -> None:
    server = await start_server(rt, "127.0.0.1", 0, max_message_size=1024)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: Any = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
            small = state_pb2.SaveStateRequest(store_name="statestore", states=[item("k", b"1")])
            await stub.SaveState(small)
            big = state_pb2.SaveStateRequest(
                store_name="statestore", states=[item("k", b"x" * 4096)]
            )
            error = await failure(stub.SaveState(big))
            assert error.code() is Code.RESOURCE_EXHAUSTED
            assert (await get(stub, "k")).data == b"1"
    finally:
        await server.stop(0)


async def test_api_logging_logs_each_call_with_its_code(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(rt, "127.0.0.1", 0, api_logging=True)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mechakit.api"]

    try:
        with caplog.at_level("INFO", logger="mechakit.api"):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub: Any = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
                await get(stub, "k")
                await failure(stub.GetState(state_pb2.GetStateRequest(store_name="nope", key="k")))
            # The line is written once the handler is done, which may be just after the
            # caller got its answer.
            for _ in range(100):
                if len(logged()) >= 2:
                    break
                await asyncio.sleep(0.02)
    finally:
        await server.stop(0)
    lines = logged()
    assert any('method="/dapr.proto.runtime.v1.Dapr/GetState" code=OK' in line for line in lines)
    assert any("code=INVALID_ARGUMENT" in line for line in lines), lines
