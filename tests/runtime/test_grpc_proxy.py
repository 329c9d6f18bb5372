"""gRPC proxying through real ``mechakit run`` sidecars: an app's own stub (``echo.v1.Echo``,
``grpc_proxy_app.py``) pointed at its sidecar's gRPC port with ``dapr-app-id`` metadata
reaches the other app's gRPC server, as with daprd."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from mechakit.runtime.grpc_proxy import MISSING_APP_ID

from .grpc_proxy_app import FAILURE_REASON, EchoStub
from .test_invocation import STARTUP, Cluster

APP = Path(__file__).with_name("grpc_proxy_app.py")
CALLEE_CONFIGURATION = """\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: callee
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: svc-a
      defaultAction: allow
      trustDomain: public
      namespace: default
    - appId: svc-c
      defaultAction: deny
      trustDomain: public
      namespace: default
      operations:
      - name: /echo.v1.Echo/Count
        action: allow
"""
TO_B = (("dapr-app-id", "svc-b"),)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _until_served(grpc_port: int, target: str) -> None:
    """Wait until ``target``'s app answers through the sidecar at ``grpc_port``."""
    deadline = time.monotonic() + STARTUP
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/echo.v1.Echo/Cancelled"
        )
        while True:
            try:
                call(b"", metadata=(("dapr-app-id", target),), timeout=5)
                return
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"{target} never answered through the proxy: {exc}")
                time.sleep(0.1)


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Callee ``svc-b`` (whose access control lets ``svc-a`` call anything and ``svc-c``
    only ``Count``) and callers ``svc-a`` and ``svc-c``: each a plain gRPC app behind its
    own sidecar."""
    folder = tmp_path_factory.mktemp("grpc-proxy")
    config = folder / "callee.yaml"
    config.write_text(CALLEE_CONFIGURATION)
    cluster = Cluster(folder)
    try:
        cluster.start("svc-b", "grpc", "--config", str(config), script=APP)
        cluster.start("svc-a", "grpc", script=APP)
        cluster.start("svc-c", "grpc", script=APP)
        _until_served(cluster["svc-a"].grpc_port, "svc-b")
        yield cluster
    finally:
        for app_id in cluster:
            cluster.stop(app_id)


@pytest.fixture
async def stub_of_a(apps: Cluster) -> AsyncIterator[EchoStub]:
    """``svc-a``'s own stub, pointed at its sidecar."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{apps['svc-a'].grpc_port}") as channel:
        yield EchoStub(channel)


async def test_a_unary_call_carries_metadata_both_ways(stub_of_a: EchoStub) -> None:
    call = stub_of_a.Hello(
        StringValue(value="ada"),
        metadata=(
            *TO_B,
            ("x-order", "7"),
            ("x-blob-bin", b"\x00\xff"),
            ("traceparent", TRACEPARENT),
            ("dapr-api-token", "not-for-the-app"),
        ),
        timeout=30,
    )
    answer = await call
    seen = json.loads(answer.value)
    assert seen["value"] == "ada"
    assert (seen["metadata"]["x-order"], seen["metadata"]["x-blob-bin"]) == ("7", "00ff")
    assert seen["metadata"]["traceparent"] == TRACEPARENT
    assert seen["metadata"]["dapr-caller-app-id"] == "svc-a"
    assert seen["metadata"]["dapr-callee-app-id"] == "svc-b"
    assert seen["metadata"]["dapr-api-token"] == "app-secret"  # the callee's APP_API_TOKEN
    assert "dapr-app-id" not in seen["metadata"]
    assert not [key for key in seen["metadata"] if key.startswith("mechakit-")]
    assert 0 < seen["deadline"] <= 31  # the caller's deadline reached the app (rounded up per hop)
    assert ("x-answer-header", "from-app") in tuple(await call.initial_metadata())
    assert ("x-answer-trailer", "done") in tuple(await call.trailing_metadata())
    assert await call.code() is grpc.StatusCode.OK


async def test_a_namespaced_app_id_is_resolved_in_that_namespace(stub_of_a: EchoStub) -> None:
    answer = await stub_of_a.Hello(
        StringValue(value="x"), metadata=(("dapr-app-id", "svc-b.default"),), timeout=30
    )
    assert json.loads(answer.value)["metadata"]["dapr-callee-app-id"] == "svc-b"


async def test_a_server_streaming_call_passes_every_message(stub_of_a: EchoStub) -> None:
    answers = stub_of_a.Count(StringValue(value="5"), metadata=TO_B, timeout=30)
    assert [answer.value async for answer in answers] == ["1", "2", "3", "4", "5"]


async def test_a_client_streaming_call_passes_every_message(stub_of_a: EchoStub) -> None:
    async def parts() -> AsyncIterator[StringValue]:
        for part in ("a", "b", "c"):
            yield StringValue(value=part)

    answer = await stub_of_a.Join(parts(), metadata=TO_B, timeout=30)
    assert answer.value == "a+b+c"


async def test_a_bidirectional_call_answers_each_message_before_the_next(
    stub_of_a: EchoStub,
) -> None:
    chat = stub_of_a.Chat(metadata=TO_B, timeout=30)
    for word in ("hello", "world"):
        await chat.write(StringValue(value=word))
        assert (await chat.read()).value == word.upper()
    await chat.done_writing()
    assert await chat.read() is grpc.aio.EOF
    assert await chat.code() is grpc.StatusCode.OK


async def test_the_apps_error_comes_back_with_its_details_and_trailers(
    stub_of_a: EchoStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub_of_a.Fail(StringValue(value="7"), metadata=TO_B, timeout=30)
    error = failed.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "no order 7"
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["x-failure"] == "order"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert (status.code, status.message) == (grpc.StatusCode.NOT_FOUND.value[0], "no order 7")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        FAILURE_REASON,
        "echo.example",
        {"order": "7"},
    )


async def _hang_counts(stub: EchoStub) -> dict[str, int]:
    answer = await stub.Cancelled(StringValue(), metadata=TO_B, timeout=30)
    counts: dict[str, int] = json.loads(answer.value)
    return counts


async def _until_counted(stub: EchoStub, what: str, above: int) -> None:
    for _ in range(int(STARTUP * 10)):
        if (await _hang_counts(stub))[what] > above:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"the other app's {what} count never went above {above}")


async def test_a_cancelled_call_is_cancelled_in_the_other_app(stub_of_a: EchoStub) -> None:
    """No deadline anywhere: only the caller's cancellation can end the app's call."""
    before = await _hang_counts(stub_of_a)
    call = stub_of_a.Hang(StringValue(value="wait"), metadata=TO_B)
    await _until_counted(stub_of_a, "hanging", before["hanging"])
    call.cancel()
    await _until_counted(stub_of_a, "cancelled", before["cancelled"])


async def test_a_passed_deadline_comes_back_as_deadline_exceeded(stub_of_a: EchoStub) -> None:
    before = await _hang_counts(stub_of_a)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub_of_a.Hang(StringValue(value="wait"), metadata=TO_B, timeout=1)
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await _until_counted(stub_of_a, "cancelled", before["cancelled"])


async def test_a_call_without_dapr_app_id_is_refused_as_daprd_refuses_it(
    stub_of_a: EchoStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub_of_a.Hello(StringValue(value="x"), metadata=(("x-order", "1"),), timeout=30)
    assert refused.value.code() is grpc.StatusCode.UNKNOWN
    assert refused.value.details() == MISSING_APP_ID


async def test_an_unknown_app_id_is_refused_with_the_resolvers_error(stub_of_a: EchoStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub_of_a.Hello(
            StringValue(value="x"), metadata=(("dapr-app-id", "svc-nobody"),), timeout=30
        )
    assert refused.value.code() is grpc.StatusCode.UNKNOWN
    details = refused.value.details() or ""
    assert details.startswith("failed to proxy request: ")
    assert "'svc-nobody'" in details


async def test_the_callees_access_control_checks_the_full_method(apps: Cluster) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{apps['svc-c'].grpc_port}") as channel:
        stub_of_c = EchoStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub_of_c.Hello(StringValue(value="x"), metadata=TO_B, timeout=30)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details() == (
            "access control policy has denied access to id: spiffe://public/ns/default/svc-c "
            "operation: /echo.v1.Echo/Hello verb: NONE"
        )
        allowed = stub_of_c.Count(StringValue(value="2"), metadata=TO_B, timeout=30)
        assert [answer.value async for answer in allowed] == ["1", "2"]


async def test_daprs_own_api_keeps_priority_over_proxying(apps: Cluster) -> None:
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2

    async with grpc.aio.insecure_channel(f"127.0.0.1:{apps['svc-a'].grpc_port}") as channel:
        dapr = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        answer = await dapr.GetMetadata(
            metadata_pb2.GetMetadataRequest(), metadata=TO_B, timeout=30
        )
    assert answer.id == "svc-a"


async def test_a_killed_instance_still_registered_is_skipped_for_a_live_one(
    apps: Cluster, stub_of_a: EchoStub
) -> None:
    """Its row stays in the registry until it expires; each call still reaches a live one."""
    second = Cluster(apps.folder)  # the same registry: a second instance of svc-b
    second.start("svc-b", "grpc", script=APP)
    for process in reversed(second["svc-b"].processes):
        process.kill()
        process.wait()
    for _ in range(12):
        answers = stub_of_a.Count(StringValue(value="1"), metadata=TO_B, timeout=30)
        assert [answer.value async for answer in answers] == ["1"]
