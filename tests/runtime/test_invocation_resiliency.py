"""``spec.targets.apps`` of ``kind: Resiliency`` on service invocation, through real
``mechakit run`` sidecars: the caller ``svc-a`` carries the Resiliency file, each test starts
the callee its policy names."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from mechakit.core.errors import ManifestError
from mechakit.runtime.manifest import load_manifests
from mechakit.runtime.resiliency import Resiliency

from .test_invocation import Cluster, Sidecar

FLAKY = Path(__file__).with_name("invocation_flaky_app.py")
STREAMER = Path(__file__).with_name("invocation_stream_app.py")
RESILIENCY = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: invocation
scopes: [svc-a]
spec:
  policies:
    timeouts:
      quick: 1s
    retries:
      patient: {policy: constant, duration: 200ms, maxRetries: 150}
      twice: {policy: constant, duration: 20ms, maxRetries: 2}
      only503: {policy: constant, duration: 20ms, maxRetries: 2, matching: {httpStatusCodes: "503"}}
      grpcOnly14: {policy: constant, duration: 20ms, maxRetries: 2, matching: {gRPCStatusCodes: "14"}}
      grpc2: {policy: constant, duration: 20ms, maxRetries: 2,
              matching: {httpStatusCodes: "503", gRPCStatusCodes: "1-4"}}
    circuitBreakers:
      fuse: {maxRequests: 1, timeout: 2s, trip: consecutiveFailures >= 3}
  targets:
    apps:
      slow: {timeout: quick}
      restarted: {retry: patient}
      flaky: {retry: twice}
      replayed: {retry: twice}
      picky: {retry: only503}
      grpc-picky: {retry: grpcOnly14}
      grpc-unknown: {retry: grpc2}
      fused: {circuitBreaker: fuse}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``svc-a`` with the Resiliency file above; the callees are started by each test."""
    folder = tmp_path_factory.mktemp("resiliency")
    resources = folder / "resources"
    resources.mkdir()
    (resources / "resiliency.yaml").write_text(RESILIENCY)
    running = Cluster(folder)
    try:
        running.start("svc-a", "http", "--resources-path", str(resources))
        yield running
    finally:
        with ThreadPoolExecutor(len(running) or 1) as pool:  # stopping takes a while each
            list(pool.map(running.stop, list(running)))


def _invoke(cluster: Cluster, app_id: str, method: str) -> httpx.Response:
    url = f"{cluster['svc-a'].url}/v1.0/invoke/{app_id}/method/{method}"
    return httpx.post(url, content=b"payload", timeout=60)


def _app(callee: Sidecar, path: str) -> Any:
    """What the callee's app itself says at ``path`` (not through any sidecar)."""
    answer = httpx.post(f"http://127.0.0.1:{callee.app_port}{path}", timeout=10)
    answer.raise_for_status()
    return answer.json() if path in ("/calls", "/outcomes") else answer.text


def test_a_slow_app_gets_daprds_timeout_error_and_its_call_is_cancelled(
    cluster: Cluster,
) -> None:
    callee = cluster.start("slow", script=FLAKY)
    answer = _invoke(cluster, "slow", "slow/8")
    assert answer.status_code == 500
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert answer.json()["message"].startswith("failed to invoke, id: slow, err: ")
    assert "timeout" in answer.json()["message"]
    assert "applied" not in _app(callee, "/outcomes")  # the timeout answered first
    deadline = time.monotonic() + 20
    while not _app(callee, "/outcomes") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _app(callee, "/outcomes") == ["abandoned"]  # the app's call was cancelled too


def test_a_callee_back_within_the_retry_window_answers_the_waiting_call(
    cluster: Cluster,
) -> None:
    cluster.start("restarted")
    assert _invoke(cluster, "restarted", "x").status_code == 200
    cluster.stop("restarted")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_invoke, cluster, "restarted", "orders/7")
        time.sleep(0.5)
        assert not waiting.done(), waiting.result().text  # still retrying
        cluster.start("restarted")
        answer = waiting.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/orders/7"
    assert answer.json()["body"] == "payload"
    assert answer.json()["headers"]["dapr-caller-app-id"] == "svc-a"


def test_an_apps_error_status_is_retried_then_passed_on_unchanged(cluster: Cluster) -> None:
    flaky = cluster.start("flaky", script=FLAKY)
    _app(flaky, "/fail/500")
    answer = _invoke(cluster, "flaky", "work")
    assert (answer.status_code, answer.text, answer.headers["x-flaky"]) == (500, "failing", "yes")
    assert _app(flaky, "/calls") == 3  # the first try and two retries
    picky = cluster.start("picky", script=FLAKY)
    _app(picky, "/fail/500")
    assert _invoke(cluster, "picky", "work").status_code == 500
    assert _app(picky, "/calls") == 1  # matching.httpStatusCodes "503": 500 is not retried
    _app(picky, "/fail/503")
    assert _invoke(cluster, "picky", "work").status_code == 503
    assert _app(picky, "/calls") == 4


def test_a_grpc_apps_error_is_retried_by_its_code_and_reaches_invoke_service_unchanged(
    cluster: Cluster,
) -> None:
    """``matching.gRPCStatusCodes`` matches a gRPC app's own code (UNKNOWN here), not the
    HTTP status it maps to; gRPC ``InvokeService`` answers that code."""
    import grpc
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, invoke_pb2

    for app_id, calls in (("grpc-picky", 1), ("grpc-unknown", 3)):
        cluster.start(app_id, "grpc")
        assert _invoke(cluster, app_id, "boom").status_code == 500
        assert _invoke(cluster, app_id, "booms").text == str(calls), app_id
    with grpc.insecure_channel(f"127.0.0.1:{cluster['svc-a'].grpc_port}") as channel:
        request = invoke_pb2.InvokeServiceRequest(
            id="grpc-picky", message=common_pb2.InvokeRequest(method="boom")
        )
        with pytest.raises(grpc.RpcError) as failure:
            dapr_pb2_grpc.DaprStub(channel).InvokeService(request, timeout=30)  # type: ignore[no-untyped-call]
    assert isinstance(failure.value, grpc.Call)
    assert failure.value.code() is grpc.StatusCode.UNKNOWN


def test_a_streamed_body_is_sent_again_whole_on_each_retry(cluster: Cluster) -> None:
    callee = cluster.start("replayed", script=STREAMER)
    chunks = [bytes([index]) * 100_000 for index in range(3)]  # chunked: streamed
    url = f"{cluster['svc-a'].url}/v1.0/invoke/replayed/method/upload?fail=1"
    answer = httpx.post(url, content=iter(chunks), timeout=60)
    assert answer.status_code == 200, answer.text
    whole = b"".join(chunks)
    assert answer.json() == {"bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    progress = httpx.get(f"http://127.0.0.1:{callee.app_port}/progress", timeout=10).json()
    assert progress["uploads"] == 2  # the first answered 503, the retry got the same body


def test_a_circuit_breaker_opens_refuses_without_calling_then_half_opens(
    cluster: Cluster,
) -> None:
    fused = cluster.start("fused", script=FLAKY)
    _app(fused, "/fail/500")
    assert [_invoke(cluster, "fused", "work").status_code for _ in range(3)] == [500] * 3
    refused = _invoke(cluster, "fused", "work")
    assert refused.status_code == 500
    assert refused.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "circuit breaker" in refused.json()["message"]
    assert _app(fused, "/calls") == 3  # the open breaker made no call
    assert _invoke(cluster, "fused", "calls").status_code == 200  # one breaker per method
    _app(fused, "/fail/0")
    time.sleep(2.2)  # the breaker's timeout: it half-opens
    assert _invoke(cluster, "fused", "work").text == "worked"  # the trial call closes it
    assert _invoke(cluster, "fused", "work").text == "worked"
    assert _app(fused, "/calls") == 5


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("svc-b: {retry: missing}", "spec.targets.apps.svc-b.retry"),
        ("svc-b: {retries: twice}", "spec.targets.apps.svc-b.retries"),
        ("svc-b: twice", "spec.targets.apps.svc-b"),
        ("svc-b: {retry: bad}", "spec.policies.retries.bad.matching.httpStatusCodes"),
        ("svc-b: {retry: worse}", "spec.policies.retries.worse.matching.gRPCStatusCodes"),
    ],
)
def test_an_app_target_names_the_file_and_field_it_gets_wrong(
    tmp_path: Path, target: str, field: str
) -> None:
    file = tmp_path / "resiliency.yaml"
    policies = (
        "retries: {twice: {maxRetries: 2}, bad: {matching: {httpStatusCodes: 700}},"
        " worse: {matching: {gRPCStatusCodes: 17}}}"
    )
    spec = f"spec:\n  policies: {{{policies}}}\n  targets:\n    apps:\n      {target}\n"
    file.write_text(
        f"apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {{name: r}}\n{spec}"
    )
    with pytest.raises(ManifestError) as failure:
        Resiliency.of(load_manifests([tmp_path]).resiliencies, "svc-a")
    assert field in str(failure.value)
    assert "resiliency.yaml" in str(failure.value)
