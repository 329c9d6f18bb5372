"""``mechakit run`` takes every ``dapr run`` flag: real processes on free ports, a real app.

The app is an HTTP server in a thread of the test (:class:`App`): it answers
``/dapr/subscribe``, its health path and the events of topic ``orders``, and records them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from mechakit.conformance.backends import free_port
from mechakit.runtime.cli import build_parser
from mechakit.runtime.cli.dapr_flags import NOTICES, generate_app_id, notices

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sockets")

STARTUP = 30.0
"""Generous bound for startup and for events to arrive; polled, not a speed test."""
NOTICE = "is accepted for dapr run compatibility and ignored"


class App:
    """The app mechakit delivers to: records events, answers health as told."""

    def __init__(self, *, delay: float = 0.0, healthy: bool = True) -> None:
        self.delay = delay
        self.healthy = healthy
        self.events: list[dict[str, Any]] = []
        self.started: list[str] = []
        self.health_probes = 0
        self.concurrent = 0
        self.most_concurrent = 0
        self._lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/dapr/subscribe":
                    self._answer(
                        200, [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]
                    )
                elif self.path == "/healthz":
                    app.health_probes += 1
                    self._answer(200 if app.healthy else 503)
                else:
                    self._answer(404)

            def do_OPTIONS(self) -> None:
                self._answer(404)

            def do_POST(self) -> None:
                event = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with app._lock:
                    app.started.append(event["id"])
                    app.concurrent += 1
                    app.most_concurrent = max(app.most_concurrent, app.concurrent)
                time.sleep(app.delay)
                with app._lock:
                    app.concurrent -= 1
                    app.events.append(event)
                self._answer(200, {"status": "SUCCESS"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> App:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sidecar:
    """A ``mechakit run`` process; its stderr is collected as it runs."""

    def __init__(self, *args: str, home: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mechakit.runtime.cli", "run", *args],
            env={**os.environ, "MECHAKIT_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            assert self.process.poll() is None, self.log
            time.sleep(0.05)
        pytest.fail(f"no log line matching {pattern!r}:\n{self.log}")

    def wait_healthy(self, client: httpx.Client) -> None:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log
            try:
                if client.get("/v1.0/healthz", timeout=1).status_code == 204:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail(f"mechakit run did not become healthy in time:\n{self.log}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=STARTUP)
        self._reader.join(timeout=STARTUP)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STARTUP)
        self._reader.join(timeout=STARTUP)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.kill()


def tcp_sidecar(sidecars: list[Sidecar], home: Path, *args: str) -> tuple[Sidecar, httpx.Client]:
    port = free_port()
    sidecar = Sidecar(
        "--dapr-http-port", str(port), "-G", "0", "-I", "0", "-M", "0", *args, home=home
    )
    sidecars.append(sidecar)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False)
    sidecar.wait_healthy(client)
    return sidecar, client


def wait_until(condition: Any, what: str, sidecar: Sidecar) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen in time:\n{sidecar.log}")


def publish(client: httpx.Client, *ids: str) -> None:
    for event_id in ids:
        event = {
            "specversion": "1.0",
            "id": event_id,
            "source": "test",
            "type": "order",
            "datacontenttype": "application/json",
            "data": {"n": event_id},
        }
        answer = client.post(
            "/v1.0/publish/pubsub/orders",
            json=event,
            headers={"content-type": "application/cloudevents+json"},
        )
        assert answer.status_code == 204, answer.text


# Flags that mean nothing here, as given in the every-flag command line.
IGNORED = [
    "--enable-profiling",
    "--profile-port=7777",
    "--placement-host-address=localhost:50005",
    "--scheduler-host-address=localhost:50006",
    "--image=daprio/daprd:edge",
    "--runtime-path=/opt/dapr",
    "-k",
]


def test_every_dapr_run_flag_is_taken_and_those_without_meaning_each_get_one_notice(
    sidecars: list[Sidecar], home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "sock"
    folder.mkdir()
    internal, metrics = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: appconfig}\nspec: {}\n"
    )
    with App() as app:
        sidecar = Sidecar(
            "-a", "every-flag",
            "-p", str(app.port),
            "-P", "http",
            "--app-ssl=false",  # true: https (tests/runtime/test_app_protocols.py)
            "--app-channel-address", "127.0.0.1",
            "--app-max-concurrency", "4",
            "-c", str(config),
            "-H", str(free_port()),
            "-G", str(free_port()),
            "-I", str(internal),
            "-M", str(metrics),
            "--dapr-listen-addresses", "127.0.0.1",
            "-u", str(folder),
            "--log-level", "info",
            "--log-as-json=false",
            "--enable-api-logging",
            "--max-body-size", "4Mi",
            "--read-buffer-size", "4Ki",
            "--dapr-http-max-request-size", "4",
            "--dapr-http-read-buffer-size", "4",
            "--enable-app-health-check",
            "--app-health-check-path", "/healthz",
            "--app-health-probe-interval", "1",
            "--app-health-probe-timeout", "500",
            "--app-health-threshold", "3",
            "--dapr-graceful-shutdown-seconds", "5",
            "--enable-metrics",
            *IGNORED,
            home=home,
        )  # fmt: skip
        sidecars.append(sidecar)
        uds = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(folder / "dapr-every-flag-http.socket")),
            base_url="http://localhost",
        )
        sidecar.wait_healthy(uds)
        assert uds.get("/v1.0/metadata").json()["id"] == "every-flag"
        with socket.create_connection(("127.0.0.1", internal), timeout=5):
            pass
        assert (
            "dapr_http_server_request_count"
            in httpx.get(f"http://127.0.0.1:{metrics}/metrics", trust_env=False).text
        )
        wait_until(lambda: app.health_probes > 0, "a health probe", sidecar)
        assert sidecar.stop() == 0
    notice_lines = [line for line in sidecar.lines if NOTICE in line]
    assert len(notice_lines) == len(IGNORED), sidecar.log
    for flag in ("--enable-profiling", "--profile-port", "--placement-host-address",
                 "--scheduler-host-address", "--image", "--runtime-path", "--kubernetes"):  # fmt: skip
        assert sum(line.count(f"{flag} {NOTICE}") for line in notice_lines) == 1, flag
    assert "usage:" not in sidecar.log
    assert not (folder / "dapr-every-flag-http.socket").exists()


def test_every_flag_parses_with_dapr_defaults_and_short_forms() -> None:
    parser = build_parser()
    defaults = parser.parse_args(["run"])
    assert defaults.app_id is None
    assert defaults.dapr_http_port == 3500
    assert defaults.max_body_size == 4 << 20
    assert defaults.read_buffer_size == 4 << 10
    assert defaults.app_health_check_path == "/healthz"
    assert defaults.app_health_probe_interval == 5
    assert defaults.app_health_probe_timeout == 500
    assert defaults.app_health_threshold == 3
    assert defaults.app_max_concurrency == -1
    assert defaults.dapr_graceful_shutdown_seconds == 5
    assert defaults.enable_metrics is True
    assert defaults.enable_api_logging is False
    assert defaults.app_channel_address == "127.0.0.1"
    assert notices(defaults) == []
    short = parser.parse_args(
        ["run", "-a", "x", "-p", "8000", "-P", "GRPC", "-H", "-1", "-G", "1", "-I", "2",
         "-M", "3", "-c", "c.yaml", "-d", "a,b", "-d", "c", "-u", "/tmp", "-k"]
    )  # fmt: skip
    assert (short.app_id, short.app_port, short.app_protocol) == ("x", 8000, "grpc")
    assert (short.dapr_http_port, short.dapr_grpc_port) == (0, 1)
    assert (short.dapr_internal_grpc_port, short.metrics_port) == (2, 3)
    assert short.resources_paths == ["a", "b", "c"]
    assert (short.config, short.unix_domain_socket, short.kubernetes) == ("c.yaml", "/tmp", True)
    assert parser.parse_args(["run", "-p", "-1"]).app_port is None
    assert parser.parse_args(["run", "--enable-metrics=false"]).enable_metrics is False
    assert parser.parse_args(["run", "--components-path", "x"]).resources_paths == ["x"]
    sizes = parser.parse_args(["run", "--dapr-http-max-request-size", "2",
                               "--dapr-http-read-buffer-size", "16"])  # fmt: skip
    assert (sizes.max_body_size, sizes.read_buffer_size) == (2 << 20, 16 << 10)
    quantities = parser.parse_args(["run", "--max-body-size", "512Ki", "--read-buffer-size", "-1"])
    assert (quantities.max_body_size, quantities.read_buffer_size) == (512 << 10, 0)
    everything = parser.parse_args(["run", *IGNORED, "-P", "grpcs"])
    assert len(notices(everything)) == len(IGNORED)
    assert set(NOTICES) <= set(vars(everything))


def test_a_generated_app_id_is_two_words_and_shows_in_the_metadata(
    sidecars: list[Sidecar], home: Path
) -> None:
    assert re.fullmatch(r"[a-z]+-[a-z]+", generate_app_id())
    sidecar, client = tcp_sidecar(sidecars, home)
    app_id = client.get("/v1.0/metadata").json()["id"]
    assert re.fullmatch(r"[a-z]+-[a-z]+", app_id)
    assert f"no --app-id given: the app id is '{app_id}'" in sidecar.log
    assert sidecar.stop() == 0


def test_the_internal_grpc_port_is_bound_and_answers_unimplemented(
    sidecars: list[Sidecar], home: Path
) -> None:
    port = free_port()
    sidecar, _ = tcp_sidecar(sidecars, home, "-a", "a", "--dapr-internal-grpc-port", str(port))
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/dapr.proto.internals.v1.ServiceInvocation/CallLocal"
        )
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=5)
    error: Any = info.value
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    assert sidecar.stop() == 0


@pytest.mark.parametrize(
    ("flags", "limit"),
    [
        (["--max-body-size", "1Ki"], 1024),
        (["--dapr-http-max-request-size", "1"], 1 << 20),
    ],
)
def test_the_body_size_limit_answers_413_over_it(
    sidecars: list[Sidecar], home: Path, flags: list[str], limit: int
) -> None:
    sidecar, client = tcp_sidecar(sidecars, home, "-a", "a", *flags)
    value = "x" * (limit - 64)
    assert (
        client.post("/v1.0/state/statestore", json=[{"key": "k", "value": value}]).status_code
        == 204
    )
    too_big = client.post("/v1.0/state/statestore", json=[{"key": "k", "value": "x" * limit}])
    assert too_big.status_code == 413
    assert sidecar.stop() == 0


def test_headers_over_the_read_buffer_size_answer_431(sidecars: list[Sidecar], home: Path) -> None:
    sidecar, client = tcp_sidecar(sidecars, home, "-a", "a", "--read-buffer-size", "1Ki")
    assert client.get("/v1.0/healthz", headers={"x-big": "y" * 3000}).status_code == 204
    assert client.get("/v1.0/healthz", headers={"x-big": "y" * 6000}).status_code == 431
    assert sidecar.stop() == 0


def test_api_logging_writes_one_line_per_call_with_method_and_path(
    sidecars: list[Sidecar], home: Path
) -> None:
    sidecar, client = tcp_sidecar(sidecars, home, "-a", "a", "--enable-api-logging")
    client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}])
    client.get("/v1.0/state/statestore/k")
    assert sidecar.stop() == 0
    calls = [line for line in sidecar.lines if "HTTP API Called" in line]
    assert sum('method="POST /v1.0/state/statestore"' in line for line in calls) == 1
    [get] = [line for line in calls if 'method="GET /v1.0/state/statestore/k"' in line]
    assert "code=200" in get


def test_without_api_logging_no_call_is_logged_and_metrics_can_be_turned_off(
    sidecars: list[Sidecar], home: Path
) -> None:
    sidecar, client = tcp_sidecar(sidecars, home, "-a", "a", "--enable-metrics=false")
    client.get("/v1.0/metadata")
    assert sidecar.stop() == 0
    assert "HTTP API Called" not in sidecar.log
    assert "metrics served" not in sidecar.log


def test_app_max_concurrency_limits_deliveries_in_flight(
    sidecars: list[Sidecar], home: Path
) -> None:
    with App(delay=0.3) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "a", "-p", str(app.port), "--app-max-concurrency", "2"
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, *(f"e{i}" for i in range(6)))
        wait_until(lambda: len(app.events) == 6, "six deliveries", sidecar)
        assert app.most_concurrent == 2
        metrics = httpx.get(_metrics_url(sidecar), trust_env=False).text
        assert re.search(
            r'dapr_component_pubsub_ingress_count\{app_id="a",component="pubsub",'
            r'namespace="",process_status="success",topic="orders"\} 6',
            metrics,
        ), metrics
        assert sidecar.stop() == 0


def _metrics_url(sidecar: Sidecar) -> str:
    return sidecar.wait_for_line(r"metrics served on (\S+)").group(1)


def test_app_health_checks_hold_deliveries_until_the_app_is_healthy(
    sidecars: list[Sidecar], home: Path
) -> None:
    with App(healthy=False) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "a", "-p", str(app.port), "--enable-app-health-check",
            "--app-health-probe-interval", "0.2", "--app-health-threshold", "1",
        )  # fmt: skip
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "held")
        wait_until(lambda: app.health_probes >= 3, "three health probes", sidecar)
        assert app.started == []
        sidecar.wait_for_line("app is not healthy yet")
        app.healthy = True
        wait_until(lambda: len(app.events) == 1, "the held delivery", sidecar)
        sidecar.wait_for_line("app is healthy: delivering to it")
        app.healthy = False
        sidecar.wait_for_line("app is unhealthy after 1 failed probe")
        publish(client, "paused")
        time.sleep(0.6)
        assert app.started == ["held"]
        app.healthy = True
        wait_until(lambda: len(app.events) == 2, "the paused delivery", sidecar)
        assert sidecar.stop() == 0


def test_the_apis_are_served_on_unix_sockets_named_as_daprd_names_them(
    sidecars: list[Sidecar], home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    http_socket = folder / "dapr-uds-http.socket"
    with socket.socket(socket.AF_UNIX) as stale:  # left by an earlier run: replaced
        stale.bind(str(http_socket))
    sidecar = Sidecar("-a", "uds", "-u", str(folder), "-I", "0", "-M", "0", home=home)
    sidecars.append(sidecar)
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(http_socket)), base_url="http://dapr"
    )
    sidecar.wait_healthy(client)
    assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 7}]).status_code == 204
    assert client.get("/v1.0/state/statestore/k").json() == 7
    assert (folder / "dapr-uds-grpc.socket").exists()
    with grpc.insecure_channel(f"unix:{folder / 'dapr-uds-grpc.socket'}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    assert not re.search(r"Dapr HTTP API listening on http://", sidecar.log)
    assert sidecar.stop() == 0
    assert not http_socket.exists()


def test_sigterm_waits_for_the_deliveries_in_flight(sidecars: list[Sidecar], home: Path) -> None:
    with App(delay=2.0) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "a", "-p", str(app.port), "--dapr-graceful-shutdown-seconds", "20"
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "slow")
        wait_until(lambda: app.started == ["slow"], "the delivery", sidecar)
        assert sidecar.stop(signal.SIGTERM) == 0
        assert [e["id"] for e in app.events] == ["slow"]
    assert "waiting up to" in sidecar.log
    assert "abandoned" not in sidecar.log


def test_the_graceful_period_bounds_the_wait(sidecars: list[Sidecar], home: Path) -> None:
    with App(delay=8.0) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "a", "-p", str(app.port), "--dapr-graceful-shutdown-seconds", "1"
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "too-slow")
        wait_until(lambda: app.started == ["too-slow"], "the delivery", sidecar)
        began = time.monotonic()
        assert sidecar.stop(signal.SIGTERM) == 0
        assert time.monotonic() - began < 6.0
        assert app.events == []
    assert "1 delivery(ies) still in flight" in sidecar.log


def test_a_run_file_that_does_not_exist_is_refused_with_a_message_not_a_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mechakit.runtime.cli import main

    assert main(["run", "-f", str(home / "dapr.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{home / 'dapr.yaml'}: no such file or folder" in err
    assert "usage:" not in err


ENV_APP = """
import json, os
names = ("APP_ID", "APP_PORT", "APP_PROTOCOL", "APP_CHANNEL_ADDRESS", "DAPR_HTTP_PORT",
         "DAPR_GRPC_PORT", "DAPR_METRICS_PORT")
print(json.dumps({name: os.environ.get(name) for name in names}))
"""


def test_the_app_gets_the_variables_dapr_run_sets_and_json_logs_are_json(home: Path) -> None:
    http, grpc_port, metrics, app_port = free_port(), free_port(), free_port(), free_port()
    result = subprocess.run(
        [sys.executable, "-m", "mechakit.runtime.cli", "run", "-a", "env", "-H", str(http),
         "-G", str(grpc_port), "-M", str(metrics), "-I", "0", "-p", str(app_port), "-P", "grpc",
         "--log-as-json", "--", sys.executable, "-c", ENV_APP],
        env={**os.environ, "MECHAKIT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "APP_ID": "env",
        "APP_PORT": str(app_port),
        "APP_PROTOCOL": "grpc",
        "APP_CHANNEL_ADDRESS": "127.0.0.1",
        "DAPR_HTTP_PORT": str(http),
        "DAPR_GRPC_PORT": str(grpc_port),
        "DAPR_METRICS_PORT": str(metrics),
    }
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"time", "level", "scope", "msg"} <= set(entries[0])
    assert any(e["msg"].startswith("app exited with code 0") for e in entries)


async def test_the_grpc_health_probe_calls_the_apps_health_check() -> None:
    import grpc.aio
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc
    from google.protobuf import empty_pb2

    from mechakit.runtime.app_channels import app_channel
    from mechakit.runtime.cli._app_gate import AppHealthProbe, gate

    answers = {"healthy": True, "calls": 0}

    class Health(appcallback_pb2_grpc.AppCallbackHealthCheckServicer):
        async def HealthCheck(self, request: Any, context: Any) -> Any:
            answers["calls"] += 1
            if not answers["healthy"]:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
            return empty_pb2.Empty()

    server = grpc.aio.server()
    appcallback_pb2_grpc.add_AppCallbackHealthCheckServicer_to_server(Health(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = gate(app_channel(port, "grpc"), health_checked=True)
    probe = AppHealthProbe(
        target, protocol="grpc", host="127.0.0.1", port=port, path="/healthz",
        interval=0.05, timeout=2.0, threshold=2,
    )  # fmt: skip
    try:
        assert target.protocol == "grpc" and not target.healthy
        probe.start()
        await _eventually(lambda: target.healthy)
        answers["healthy"] = False
        await _eventually(lambda: not target.healthy)
        assert answers["calls"] >= 3
    finally:
        await probe.stop()
        await target.close()
        await server.stop(0)


async def _eventually(condition: Any) -> None:
    import asyncio

    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the probe's effect, polled
            await asyncio.sleep(0.02)
