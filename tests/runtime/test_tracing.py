"""W3C trace context as daprd carries it: the context rules, then real ``mechakit run``
sidecars: invocation HTTP→HTTP and gRPC→gRPC, publish→subscriber, and spans exported to a
Zipkin endpoint the test serves (``POST /api/v2/spans``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from mechakit.conformance.backends import free_port
from mechakit.core import cloudevents
from mechakit.core.errors import ConfigurationError
from mechakit.runtime import tracing
from mechakit.runtime.tracing import SpanKind, TraceContext, Tracer, TracingSettings

from .test_invocation import APP, Sidecar, _stop

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
WAIT = 20.0
STARTUP = 90.0
"""Four sidecars and two apps start at once: generous, for a busy machine."""

# --- the context rules --------------------------------------------------------------------


def test_a_valid_traceparent_is_read_and_written_back_unchanged() -> None:
    context = TraceContext.parse(PARENT, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert context is not None
    assert (context.trace_id, context.span_id, context.sampled) == (
        TRACE_ID,
        "00f067aa0ba902b7",
        True,
    )
    assert context.headers() == [
        ("traceparent", PARENT),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # version 255 is forbidden
        f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four parts
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01",  # short trace id
        f"00-{TRACE_ID}-00f067aa0ba902bz-01",  # not hex
        f"0-{TRACE_ID}-00f067aa0ba902b7-01",  # one-digit version
    ],
)
def test_an_invalid_traceparent_is_no_context(value: str) -> None:
    assert TraceContext.parse(value) is None


def test_a_later_version_may_carry_more_fields() -> None:
    context = TraceContext.parse(f"01-{TRACE_ID}-00f067aa0ba902b7-00-more")
    assert context is not None and not context.sampled


def test_an_invalid_tracestate_is_dropped_but_the_context_is_kept() -> None:
    context = TraceContext.parse(PARENT, "not a tracestate")
    assert context is not None and context.state == ""
    assert TraceContext.parse(PARENT, "a=1,a=2") == TraceContext.parse(PARENT)


def test_grpc_trace_bin_round_trips_and_wins_over_traceparent() -> None:
    context = TraceContext.parse(PARENT)
    assert context is not None
    assert len(context.binary()) == 29
    assert TraceContext.from_binary(context.binary()) == context
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    found = tracing.incoming([("traceparent", other), ("grpc-trace-bin", context.binary())])
    assert found == context
    assert tracing.incoming([("traceparent", other)]) == TraceContext.parse(other)
    assert TraceContext.from_binary(b"\x01" + context.binary()[1:]) is None


def test_a_child_span_keeps_the_trace_and_state_with_a_new_span_id() -> None:
    parent = TraceContext.parse(PARENT, "congo=t61rcWkgMzE")
    assert parent is not None
    child = Tracer(TracingSettings(sampling_rate=1)).start("x", parent, SpanKind.CLIENT).context
    assert (child.trace_id, child.state, child.sampled) == (TRACE_ID, "congo=t61rcWkgMzE", True)
    assert child.span_id != parent.span_id and len(child.span_id) == 16


def test_the_parents_sampling_decision_is_followed_whatever_the_rate() -> None:
    unsampled = TraceContext.parse(f"00-{TRACE_ID}-00f067aa0ba902b7-00")
    sampled = TraceContext.parse(PARENT)
    always, rarely = Tracer(TracingSettings(sampling_rate=1)), Tracer(TracingSettings(1e-9))
    assert not always.start("x", unsampled, SpanKind.CLIENT).context.sampled
    assert rarely.start("x", sampled, SpanKind.CLIENT).context.sampled
    assert always.start("x", None, SpanKind.CLIENT).context.sampled
    roots = [rarely.start("x", None, SpanKind.CLIENT).context for _ in range(200)]
    assert not any(root.sampled for root in roots)
    assert len({root.trace_id for root in roots}) == 200


def test_tracing_settings_read_as_daprd_reads_them() -> None:
    spec = {
        "tracing": {
            "samplingRate": "0.5",
            "zipkin": {"endpointAddress": "http://zipkin:9411/api/v2/spans"},
            "otel": {"endpointAddress": "collector:4318", "protocol": "http", "isSecure": False},
        }
    }
    settings = TracingSettings.from_spec(spec)
    assert settings.sampling_rate == 0.5 and settings.zipkin_endpoint.endswith("/spans")
    assert (settings.otel_protocol, settings.otel_secure) == ("http", False)
    assert TracingSettings.from_spec({}).sampling_rate == tracing.DEFAULT_SAMPLING_RATE
    for unreadable in ("x", "nan", "inf"):
        rate = TracingSettings.from_spec({"tracing": {"samplingRate": unreadable}}).sampling_rate
        assert rate == tracing.DEFAULT_SAMPLING_RATE
    assert not TracingSettings.from_spec({"tracing": {"samplingRate": "0"}}).enabled
    with pytest.raises(ConfigurationError, match=r"spec\.tracing\.otel\.protocol.*'udp'"):
        TracingSettings.from_spec({"tracing": {"otel": {"protocol": "udp"}}})


def test_a_cloudevent_gets_the_spans_traceparent_unless_metadata_overrides_it() -> None:
    parent = TraceContext.parse(PARENT)
    with tracing.span("publish", parent, SpanKind.CLIENT) as active:
        assert active is not None
        fields = tracing.cloudevent_fields({})
        overridden = tracing.cloudevent_fields({"cloudevent.traceparent": "custom"})
    assert fields["traceid"] == fields["traceparent"] == active.context.traceparent
    assert overridden["traceid"] == overridden["traceparent"] == "custom"
    assert tracing.cloudevent_fields({}) == {}  # no span, no fields
    new = json.loads(
        cloudevents.envelope(b"{}", None, topic="t", pubsub_name="p", source="s", trace=fields)
    )
    assert new["traceparent"] == new["traceid"] == active.context.traceparent
    own = json.dumps({"id": "1", "source": "s", "specversion": "1.0", "type": "x", "traceid": "t"})
    kept = json.loads(
        cloudevents.envelope(
            own.encode(),
            cloudevents.CONTENT_TYPE,
            topic="t",
            pubsub_name="p",
            source="s",
            trace=fields,
        )
    )
    assert kept["traceid"] == "t" and "traceparent" not in kept


# --- real sidecars -----------------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A threaded HTTP server recording every call: the subscriber app (any POST 200, no
    programmatic subscriptions) and the Zipkin collector (``POST /api/v2/spans``)."""

    calls: list[Call] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(size) if size else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.calls.append(Call(self.command, self.path, headers, body))
                listing = self.command == "GET" and self.path == "/dapr/subscribe"
                status = 200 if self.command == "POST" or listing else 404
                reply = b"[]" if listing else b""
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_OPTIONS = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[Call]:
        return [c for c in list(self.calls) if c.path == path]

    def wait_for(self, path: str) -> list[Call]:
        deadline = time.monotonic() + WAIT
        while not self.at(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.at(path), f"nothing reached {path}"
        return self.at(path)

    def spans(self) -> list[dict[str, Any]]:
        return [s for call in self.at("/api/v2/spans") for s in json.loads(call.body)]

    def wait_for_spans(self, *names: str, count: int = 1) -> list[dict[str, Any]]:
        """The spans of trace ``TRACE_ID`` once each name in ``names`` has ``count`` spans
        (the sidecars of a call export theirs each on its own)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            ours = [s for s in self.spans() if s["traceId"] == TRACE_ID]
            if all(sum(s["name"] == name for s in ours) >= count for name in names):
                return ours
            time.sleep(0.05)
        pytest.fail(f"spans {names} never exported; got {[s['name'] for s in self.spans()]}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


RESOURCES = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.in-memory, version: v1}
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: orders}
spec: {pubsubname: pubsub, topic: orders, routes: {default: /orders}}
"""


def configuration(rate: str, zipkin_port: int) -> str:
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: tracing}\n"
        f"spec:\n  tracing:\n    samplingRate: '{rate}'\n    zipkin:\n"
        f"      endpointAddress: http://127.0.0.1:{zipkin_port}/api/v2/spans\n"
    )


@dataclass
class Cluster:
    folder: Path
    environment: dict[str, str]
    sidecars: dict[str, Sidecar] = field(default_factory=dict)

    def start(self, app_id: str, config: Path, *, app: str = "http", app_port: int = 0) -> None:
        """``app_id``'s sidecar (not waited for) with the pub/sub, the subscription and
        ``config``; its app is the echo app (``http``/``grpc``) or one on ``app_port``."""
        log = self.folder / f"{app_id}.log"
        processes: list[subprocess.Popen[bytes]] = []
        with log.open("wb") as sink:
            if not app_port:
                app_port = free_port()
                echo = [sys.executable, str(APP), str(app_port), app]
                processes.append(subprocess.Popen(echo, stderr=sink, env=self.environment))
            http_port, grpc_port = free_port(), free_port()
            argv = [
                sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", app_id,
                "--app-port", str(app_port), "--dapr-http-port", str(http_port),
                "--dapr-grpc-port", str(grpc_port), "--dapr-internal-grpc-port",
                str(free_port()), "--metrics-port", str(free_port()), "--app-protocol",
                "grpc" if app == "grpc" else "http", "--resources-path",
                str(self.folder / "resources"), "--config", str(config),
            ]  # fmt: skip
            processes.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink, env=self.environment)
            )
        self.sidecars[app_id] = Sidecar(app_id, http_port, grpc_port, log, processes)

    def ready(self) -> None:
        """Until every sidecar answers its health check (fails if one exits)."""
        deadline = time.monotonic() + STARTUP
        for sidecar in self.sidecars.values():
            while True:
                if sidecar.processes[-1].poll() is not None:
                    pytest.fail(f"{sidecar.app_id} exited: {sidecar.log.read_text()}")
                try:
                    if httpx.get(f"{sidecar.url}/v1.0/healthz", timeout=1).status_code == 204:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{sidecar.app_id} never got healthy: {sidecar.log.read_text()}")
                time.sleep(0.05)

    def stop(self, app_id: str) -> None:
        for process in reversed(self.sidecars[app_id].processes):
            _stop(process)

    def __getitem__(self, app_id: str) -> Sidecar:
        return self.sidecars[app_id]


@dataclass
class Traced:
    cluster: Cluster
    zipkin: Recorder
    silent_zipkin: Recorder
    subscriber: Recorder
    unsampled_app: Recorder


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """Sidecars with samplingRate "1" (``svc-a``: the subscriber app; ``svc-b``: HTTP echo;
    ``svc-g``: gRPC echo) and one with "0" (``svc-z``), each Zipkin collector our own."""
    import os

    folder = tmp_path_factory.mktemp("tracing")
    (folder / "resources").mkdir()
    (folder / "resources" / "pubsub.yaml").write_text(RESOURCES)
    zipkin, silent, subscriber, unsampled_app = Recorder(), Recorder(), Recorder(), Recorder()
    sampled_config, off_config = folder / "sampled.yaml", folder / "off.yaml"
    sampled_config.write_text(configuration("1", zipkin.port))
    off_config.write_text(configuration("0", silent.port))
    environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
    environment["MECHAKIT_HOME"] = str(folder / "home")
    cluster = Cluster(folder, environment)
    try:
        cluster.start("svc-a", sampled_config, app_port=subscriber.port)
        cluster.start("svc-b", sampled_config)
        cluster.start("svc-g", sampled_config, app="grpc")
        cluster.start("svc-z", off_config, app_port=unsampled_app.port)
        cluster.ready()
        yield Traced(cluster, zipkin, silent, subscriber, unsampled_app)
    finally:
        for app_id in cluster.sidecars:
            cluster.stop(app_id)
        for recorder in (zipkin, silent, subscriber, unsampled_app):
            recorder.close()


def _trace_of(value: str) -> TraceContext:
    context = TraceContext.parse(value)
    assert context is not None, value
    return context


def test_http_invocation_carries_the_trace_to_the_callee_app(traced: Traced) -> None:
    answer = httpx.post(
        f"{traced.cluster['svc-a'].url}/v1.0/invoke/svc-b/method/orders/7",
        content=b"hi",
        headers={"traceparent": PARENT, "tracestate": "congo=t61rcWkgMzE"},
    )
    assert answer.status_code == 200, answer.text
    seen = _trace_of(answer.json()["headers"]["traceparent"])
    assert seen.trace_id == TRACE_ID and seen.span_id != _trace_of(PARENT).span_id
    assert answer.json()["headers"]["tracestate"] == "congo=t61rcWkgMzE"
    assert _trace_of(answer.headers["traceparent"]).trace_id == TRACE_ID

    spans = traced.zipkin.wait_for_spans("CallLocal/svc-b/orders/7", count=2)
    by_service = {s["localEndpoint"]["serviceName"]: s for s in spans}
    caller, callee = by_service["svc-a"], by_service["svc-b"]
    assert (caller["kind"], callee["kind"]) == ("CLIENT", "SERVER")
    assert caller["parentId"] == _trace_of(PARENT).span_id
    assert callee["parentId"] == caller["id"] and callee["id"] == seen.span_id


def test_grpc_invocation_carries_the_trace_to_the_callee_app(traced: Traced) -> None:
    import grpc
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import dapr_pb2_grpc, invoke_pb2
    from google.protobuf import any_pb2

    with grpc.insecure_channel(f"127.0.0.1:{traced.cluster['svc-a'].grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        request = invoke_pb2.InvokeServiceRequest(
            id="svc-g",
            message=common_pb2.InvokeRequest(
                method="echo", data=any_pb2.Any(value=b"hi"), content_type="text/plain"
            ),
        )
        answer = stub.InvokeService(request, metadata=[("traceparent", PARENT)], timeout=WAIT)
    seen = json.loads(answer.data.value)["metadata"]
    assert _trace_of(seen["traceparent"][0]).trace_id == TRACE_ID
    assert _trace_of(seen["traceparent"][0]).span_id != _trace_of(PARENT).span_id
    spans = traced.zipkin.wait_for_spans("CallLocal/svc-g/echo", count=2)
    assert {s["localEndpoint"]["serviceName"] for s in spans if "svc-g" in s["name"]} == {
        "svc-a",
        "svc-g",
    }


def test_a_published_event_carries_the_trace_to_the_subscriber(traced: Traced) -> None:
    answer = httpx.post(
        f"{traced.cluster['svc-a'].url}/v1.0/publish/pubsub/orders",
        json={"order": 1},
        headers={"traceparent": PARENT},
    )
    assert answer.status_code == 204, answer.text
    delivered = traced.subscriber.wait_for("/orders")[0]
    event = json.loads(delivered.body)
    assert event["traceid"] == event["traceparent"]
    assert _trace_of(event["traceparent"]).trace_id == TRACE_ID
    header = _trace_of(delivered.headers["traceparent"])
    assert header.trace_id == TRACE_ID and header.span_id != _trace_of(event["traceparent"]).span_id

    spans = traced.zipkin.wait_for_spans("/v1.0/publish/pubsub/orders", "pubsub/orders")
    names = {s["name"]: s for s in spans}
    assert names["pubsub/orders"]["id"] == header.span_id
    assert names["pubsub/orders"]["parentId"] == names["/v1.0/publish/pubsub/orders"]["id"]


def test_with_sampling_rate_zero_the_traceparent_passes_unchanged_and_nothing_is_exported(
    traced: Traced,
) -> None:
    url = traced.cluster["svc-z"].url
    answer = httpx.post(
        f"{url}/v1.0/invoke/svc-z/method/hello", content=b"x", headers={"traceparent": PARENT}
    )
    assert answer.status_code == 200, answer.text
    assert "traceparent" not in answer.headers
    assert traced.unsampled_app.wait_for("/hello")[0].headers["traceparent"] == PARENT
    published = httpx.post(
        f"{url}/v1.0/publish/pubsub/orders", json={"n": 1}, headers={"traceparent": PARENT}
    )
    assert published.status_code == 204
    delivered = traced.unsampled_app.wait_for("/orders")[0]
    assert "traceparent" not in delivered.headers
    assert "traceparent" not in json.loads(delivered.body)
    traced.cluster.stop("svc-z")  # a stopped sidecar has sent whatever it had queued
    assert traced.silent_zipkin.at("/api/v2/spans") == []


async def test_spans_go_to_an_otlp_http_endpoint_as_protobuf() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    collector = Recorder()
    try:
        address = f"127.0.0.1:{collector.port}"
        otel = {"endpointAddress": address, "protocol": "http", "isSecure": "false"}
        spec = {"tracing": {"samplingRate": "1", "otel": otel}}
        exporting = Tracer(TracingSettings.from_spec(spec), "svc-o")
        exporting.start("CallLocal/svc-x/m", TraceContext.parse(PARENT), SpanKind.CLIENT).end()
        await exporting.shutdown()  # sends what is queued
        (call,) = collector.at("/v1/traces")
        sent = ExportTraceServiceRequest.FromString(call.body)
        (span,) = sent.resource_spans[0].scope_spans[0].spans
        assert (span.trace_id.hex(), span.name) == (TRACE_ID, "CallLocal/svc-x/m")
        assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    finally:
        collector.close()


def test_an_otlp_grpc_exporter_is_built_from_spec_tracing() -> None:
    spec = {"tracing": {"otel": {"endpointAddress": "127.0.0.1:4317", "isSecure": False}}}
    settings = TracingSettings.from_spec(spec)
    assert (settings.otel_protocol, settings.otel_secure) == ("grpc", False)
    from mechakit.runtime.tracing_export import SpanExport

    SpanExport(settings, "svc-o").shutdown()


def test_an_unsampled_caller_stays_unsampled_with_a_new_span_id(traced: Traced) -> None:
    unsampled = f"00-{'5' * 32}-00f067aa0ba902b7-00"
    answer = httpx.get(
        f"{traced.cluster['svc-a'].url}/v1.0/invoke/svc-b/method/x",
        headers={"traceparent": unsampled},
    )
    assert answer.status_code == 200, answer.text
    seen = _trace_of(answer.json()["headers"]["traceparent"])
    assert (seen.trace_id, seen.sampled) == ("5" * 32, False)
    assert seen.span_id != "00f067aa0ba902b7"
