"""``mechakit run --app-protocol https|grpcs|h2c`` calls the app as daprd does: real sidecars,
real apps in threads of the test. ``https`` and ``grpcs`` apps serve TLS with a self-signed
certificate made here (which the sidecar takes without checking, like daprd); the ``h2c``
app (hypercorn) records that each request came over HTTP/2."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from mechakit.conformance.backends import free_port

from .test_run_dapr_flags import Sidecar, home, publish, sidecars, tcp_sidecar, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sockets")
__all__ = ["home", "sidecars"]  # the fixtures, imported for this module's tests

HEALTH = [
    "--enable-app-health-check",
    "--app-health-probe-interval", "1",
    "--app-health-threshold", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for a name that is not the app's address (127.0.0.1):
    the sidecar checks neither issuer nor name, as daprd."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("app.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "app.crt", folder / "app.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class AsgiApp:
    """An HTTP app served by hypercorn (TLS when given a certificate, else cleartext that
    also takes HTTP/2 with prior knowledge): subscribes to ``orders``, records each request's
    HTTP version and scheme, answers ``/healthz`` and echoes ``POST /echo``."""

    def __init__(self, certificate: tuple[Path, Path] | None = None) -> None:
        from hypercorn.config import Config

        self.port = free_port()
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.loglevel = "WARNING"
        if certificate is not None:
            self.config.certfile, self.config.keyfile = map(str, certificate)
        self.requests: list[tuple[str, str, str, str]] = []
        """(method, path, HTTP version, scheme) of every request."""
        self.events: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from hypercorn.asyncio import serve

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(
            serve(self._app, self.config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path, scope["http_version"], scope["scheme"]))
        status, answer = 404, ""
        if (method, path) == ("GET", "/dapr/subscribe"):
            status = 200
            answer = json.dumps([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}])
        elif (method, path) == ("GET", "/healthz"):
            status = 200
        elif (method, path) == ("POST", "/orders"):
            self.events.append(json.loads(body))
            status, answer = 200, json.dumps({"status": "SUCCESS"})
        elif (method, path) == ("POST", "/echo"):
            status, answer = 200, json.dumps({"echo": body.decode(), "over": scope["scheme"]})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.encode()})

    def versions(self, path: str) -> set[tuple[str, str]]:
        return {(version, scheme) for _, seen, version, scheme in self.requests if seen == path}

    def __enter__(self) -> AsgiApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def invoke_echo(client: httpx.Client, body: str) -> httpx.Response:
    return client.post("/v1.0/invoke/shop/method/echo", content=body.encode())


@pytest.mark.parametrize("tls", [["-P", "https"], ["--app-ssl"]], ids=["https", "app-ssl"])
def test_an_https_app_gets_deliveries_invocations_and_probes_over_tls(
    sidecars: list[Sidecar], home: Path, certificate: tuple[Path, Path], tls: list[str]
) -> None:
    """``--app-ssl`` (deprecated in Dapr) is ``--app-protocol https`` for an HTTP app."""
    with AsgiApp(certificate) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "shop", "-p", str(app.port), *tls, *HEALTH
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "tls-1")
        wait_until(lambda: [e["id"] for e in app.events] == ["tls-1"], "the delivery", sidecar)
        answer = invoke_echo(client, "hello")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"echo": "hello", "over": "https"}
        wait_until(lambda: app.versions("/healthz"), "a health probe", sidecar)
    for path in ("/dapr/subscribe", "/orders", "/echo", "/healthz"):
        assert app.versions(path) == {("1.1", "https")}, path
    assert "--app-protocol" not in sidecar.log, sidecar.log  # no notice


def test_an_h2c_app_is_called_over_http2_without_tls(sidecars: list[Sidecar], home: Path) -> None:
    with AsgiApp() as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "shop", "-p", str(app.port), "-P", "h2c", *HEALTH
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "h2-1")
        wait_until(lambda: len(app.events) == 1, "the delivery", sidecar)
        answer = invoke_echo(client, "over two")
        assert answer.json() == {"echo": "over two", "over": "http"}
        wait_until(lambda: app.versions("/healthz"), "a health probe", sidecar)
    for path in ("/dapr/subscribe", "/orders", "/echo", "/healthz"):
        assert app.versions(path) == {("2", "http")}, path


class GrpcsApp:
    """A gRPC app on TLS: Dapr's ``AppCallback`` (subscribes to ``orders``, records events,
    echoes ``OnInvoke``), ``AppCallbackHealthCheck``, and a service of its own
    (``echo.v1.Echo/Hello``, raw bytes) for gRPC proxying."""

    def __init__(self, certificate: tuple[Path, Path]) -> None:
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc

        self.events: list[str] = []
        self.health_checks = 0
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        appcallback_pb2_grpc.add_AppCallbackServicer_to_server(self._callback(), self.server)  # type: ignore[no-untyped-call]
        appcallback_pb2_grpc.add_AppCallbackHealthCheckServicer_to_server(  # type: ignore[no-untyped-call]
            self._health(), self.server
        )
        echo: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            lambda request, context: b"proxied:" + request
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("echo.v1.Echo", {"Hello": echo}),)
        )
        cert, key = (path.read_bytes() for path in certificate)
        credentials = grpc.ssl_server_credentials([(key, cert)])
        assert self.server.add_secure_port(f"127.0.0.1:{self.port}", credentials)

    def _callback(self) -> Any:
        from dapr.proto.common.v1 import common_pb2
        from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
        from google.protobuf import any_pb2

        app = self

        class Callback(appcallback_pb2_grpc.AppCallbackServicer):
            def ListTopicSubscriptions(self, request: Any, context: Any) -> Any:
                subscription = appcallback_pb2.TopicSubscription(
                    pubsub_name="pubsub", topic="orders"
                )
                return appcallback_pb2.ListTopicSubscriptionsResponse(subscriptions=[subscription])

            def OnTopicEvent(self, request: Any, context: Any) -> Any:
                app.events.append(request.id)
                return appcallback_pb2.TopicEventResponse()

            def OnInvoke(self, request: Any, context: Any) -> Any:
                data = b"echo:" + request.data.value
                return common_pb2.InvokeResponse(
                    data=any_pb2.Any(value=data), content_type="text/plain"
                )

        return Callback()

    def _health(self) -> Any:
        from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

        app = self

        class Health(appcallback_pb2_grpc.AppCallbackHealthCheckServicer):
            def HealthCheck(self, request: Any, context: Any) -> Any:
                app.health_checks += 1
                return appcallback_pb2.HealthCheckResponse()

        return Health()

    def __enter__(self) -> GrpcsApp:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


def test_a_grpcs_app_gets_deliveries_invocations_and_probes_over_tls(
    sidecars: list[Sidecar], home: Path, certificate: tuple[Path, Path]
) -> None:
    with GrpcsApp(certificate) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "shop", "-p", str(app.port), "-P", "grpcs", *HEALTH
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "grpcs-1")
        wait_until(lambda: app.events == ["grpcs-1"], "the delivery", sidecar)
        answer = invoke_echo(client, "hello")
        assert (answer.status_code, answer.text) == (200, "echo:hello")
        wait_until(lambda: app.health_checks > 0, "a health probe", sidecar)
        metadata = client.get("/v1.0/metadata").json()
        assert metadata["appConnectionProperties"]["protocol"] == "grpcs"
        grpc_port = sidecar.wait_for_line(r"Dapr gRPC API listening on 127\.0\.0\.1:(\d+)")[1]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            hello: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/echo.v1.Echo/Hello"
            )
            assert hello(b"hi", metadata=(("dapr-app-id", "shop"),), timeout=30) == b"proxied:hi"


def test_a_grpcs_sidecar_fails_calls_to_an_app_without_tls(
    sidecars: list[Sidecar], home: Path
) -> None:
    """The TLS is real: a cleartext gRPC app on the port answers nothing."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _, client = tcp_sidecar(sidecars, home, "-a", "shop", "-p", str(port), "-P", "grpcs")
        answer = invoke_echo(client, "hello")
        assert answer.status_code == 500, answer.text
        assert "echo:" not in answer.text
    finally:
        server.stop(grace=None)
