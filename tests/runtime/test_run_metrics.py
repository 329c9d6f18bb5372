"""``mechakit run`` serves daprd's gRPC server metrics: real gRPC calls, then ``/metrics``."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2

from mechakit.conformance.backends import free_port

from .test_run_dapr_flags import Sidecar, home, sidecars, tcp_sidecar

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sockets")
__all__ = ["home", "sidecars"]  # the fixtures, imported for this module's tests

GET_STATE = "/dapr.proto.runtime.v1.Dapr/GetState"


def series(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``; None when absent."""
    for line in text.splitlines():
        sample = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if sample and all(f'{key}="{value}"' in sample.group(1) for key, value in labels.items()):
            return float(sample.group(2))
    return None


def test_grpc_calls_are_counted_and_timed_by_method_and_status(
    sidecars: list[Sidecar], home: Path
) -> None:
    port = free_port()
    sidecar, _ = tcp_sidecar(sidecars, home, "-a", "metered", "-G", str(port))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(2):
            stub.GetState(state_pb2.GetStateRequest(store_name="statestore", key="k"))
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetState(state_pb2.GetStateRequest(store_name="nope", key="k"))
    status = "".join(part.capitalize() for part in failed.value.code().name.split("_"))
    url = sidecar.wait_for_line(r"metrics served on (\S+)").group(1)
    text = httpx.get(url, trust_env=False).text
    ok = {"app_id": "metered", "grpc_server_method": GET_STATE, "grpc_server_status": "OK"}
    assert series(text, "dapr_grpc_io_server_completed_rpcs", **ok) == 2
    assert series(text, "dapr_grpc_io_server_server_latency_count", **ok) == 2
    assert series(text, "dapr_grpc_io_server_server_latency_bucket", **ok, le="+Inf") == 2
    bad = {**ok, "grpc_server_status": status}
    assert status != "OK" and series(text, "dapr_grpc_io_server_completed_rpcs", **bad) == 1
    assert "# TYPE dapr_grpc_io_server_server_latency histogram" in text


def test_a_stream_is_counted_when_it_ends(sidecars: list[Sidecar], home: Path) -> None:
    """As daprd counts them: a streaming call is one completed RPC, with its final status."""
    import queue

    from dapr.proto.runtime.v1 import pubsub_pb2

    port = free_port()
    sidecar, _ = tcp_sidecar(sidecars, home, "-a", "streamed", "-G", str(port))
    outgoing: queue.Queue[pubsub_pb2.SubscribeTopicEventsRequestAlpha1 | None] = queue.Queue()
    outgoing.put(
        pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
            initial_request=pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(
                pubsub_name="pubsub", topic="metered"
            )
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        call = stub.SubscribeTopicEventsAlpha1(iter(outgoing.get, None), timeout=30)
        assert next(call).HasField("initial_response")
        outgoing.put(None)  # the app closes its side: the stream ends
        assert list(call) == []
    method = "/dapr.proto.runtime.v1.Dapr/SubscribeTopicEventsAlpha1"
    url = sidecar.wait_for_line(r"metrics served on (\S+)").group(1)
    labels = {"app_id": "streamed", "grpc_server_method": method, "grpc_server_status": "OK"}
    for _ in range(50):  # the count is taken as the handler returns, just after the caller
        text = httpx.get(url, trust_env=False).text
        if series(text, "dapr_grpc_io_server_completed_rpcs", **labels) == 1:
            break
        time.sleep(0.1)
    assert series(text, "dapr_grpc_io_server_completed_rpcs", **labels) == 1, text
