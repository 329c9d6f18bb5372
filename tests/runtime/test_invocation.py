"""Service invocation through two real ``mechakit run`` sidecars that find each other in a
shared nameresolution.sqlite file (``$MECHAKIT_HOME/nr.db`` in a temp folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mechakit.conformance.backends import free_port

APP = Path(__file__).with_name("invocation_echo_app.py")
STARTUP = 20.0


@dataclass
class Sidecar:
    app_id: str
    http_port: int
    grpc_port: int
    log: Path
    processes: list[subprocess.Popen[bytes]]
    app_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _wait(check: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited early: {log.read_text()}")
        try:
            httpx.get(check, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail(f"{check} never answered: {log.read_text()}")


def _distinct_free_ports(count: int) -> list[int]:
    """``count`` free ports, no two the same (the kernel may hand one out twice in a row)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STARTUP)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Cluster(dict[str, Sidecar]):
    """The running sidecars by app id, all sharing one registry in ``folder/home``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
        self.environment["MECHAKIT_HOME"] = str(folder / "home")
        self.environment["APP_API_TOKEN"] = "app-secret"

    def start(
        self, app_id: str, protocol: str = "http", *flags: str, script: Path = APP
    ) -> Sidecar:
        """An echo app (HTTP or gRPC; ``script``: another taking the same arguments) and
        its sidecar for ``app_id`` (with ``flags`` of ``mechakit run``), both answering."""
        app_port, http_port, grpc_port, *ports = _distinct_free_ports(5)
        log = self.folder / f"{app_id}-{time.monotonic_ns()}.log"
        with log.open("wb") as sink:
            app = subprocess.Popen(
                [sys.executable, str(script), str(app_port), protocol],
                stderr=sink,
                env=self.environment,
            )
            self[app_id] = Sidecar(app_id, http_port, grpc_port, log, [app], app_port)
            if protocol == "http":
                _wait(f"http://127.0.0.1:{app_port}/ready", app, log)
            argv = [
                sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", app_id,
                "--app-port", str(app_port), "--dapr-http-port", str(http_port),
                "--dapr-grpc-port", str(grpc_port), "--dapr-internal-grpc-port", str(ports[0]),
                "--metrics-port", str(ports[1]), "--app-protocol", protocol, *flags,
            ]  # fmt: skip
            runner = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=sink, env=self.environment
            )
            self[app_id].processes.append(runner)
        _wait(f"http://127.0.0.1:{http_port}/v1.0/healthz", runner, log)
        return self[app_id]

    def stop(self, app_id: str) -> None:
        for process in reversed(self[app_id].processes):
            _stop(process)


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Cluster]:
    """``svc-a`` and ``svc-b``, each an echo app behind its own sidecar."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start("svc-a")
        cluster.start("svc-b")
        yield cluster
    finally:
        for app_id in cluster:
            cluster.stop(app_id)


def test_every_verb_with_query_headers_and_body_reaches_the_other_app(
    sidecars: Cluster,
) -> None:
    base = f"{sidecars['svc-a'].url}/v1.0/invoke/svc-b/method"
    for verb in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        body = b"" if verb == "GET" else b"hello"
        answer = httpx.request(
            verb, f"{base}/orders/7?x=1&y=2", content=body, headers={"x-trace": "abc"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-echo"] == "yes"
        assert answer.headers["content-type"] == "application/json"
        seen = answer.json()
        assert (seen["method"], seen["path"], seen["query"]) == (verb, "/orders/7", "x=1&y=2")
        assert seen["body"] == body.decode()
        assert seen["headers"]["x-trace"] == "abc"
        assert seen["headers"]["dapr-caller-app-id"] == "svc-a"
        assert seen["headers"]["dapr-api-token"] == "app-secret"


def test_the_apps_status_and_content_type_come_back_unchanged(
    sidecars: Cluster,
) -> None:
    answer = httpx.get(f"{sidecars['svc-a'].url}/v1.0/invoke/svc-b/method/status/503")
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.content == b"unavailable"


def test_the_dapr_app_id_header_form_and_a_namespaced_id(sidecars: Cluster) -> None:
    answer = httpx.post(
        f"{sidecars['svc-b'].url}/any/path", headers={"dapr-app-id": "svc-a"}, content=b"x"
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/any/path"
    assert answer.json()["headers"]["dapr-caller-app-id"] == "svc-b"
    namespaced = httpx.get(f"{sidecars['svc-a'].url}/v1.0/invoke/svc-b.default/method/n")
    assert namespaced.status_code == 200, namespaced.text


def test_a_plain_app_id_is_found_in_the_callers_own_namespace(tmp_path: Path) -> None:
    """As daprd: ``svc-b`` means ``svc-b`` in the caller's ``NAMESPACE``, not ``default``."""
    cluster = Cluster(tmp_path)
    cluster.environment["NAMESPACE"] = "shop"
    try:
        caller = cluster.start("svc-a").url
        cluster.start("svc-b")
        for target in ("svc-b", "svc-b.shop"):
            answer = httpx.get(f"{caller}/v1.0/invoke/{target}/method/n")
            assert answer.status_code == 200, (target, answer.text)
        elsewhere = httpx.get(f"{caller}/v1.0/invoke/svc-b.default/method/n")
        assert elsewhere.status_code == 500
        assert elsewhere.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    finally:
        for app_id in cluster:
            cluster.stop(app_id)


def test_an_unknown_app_id_answers_err_direct_invoke(sidecars: Cluster) -> None:
    answer = httpx.get(f"{sidecars['svc-a'].url}/v1.0/invoke/nobody/method/x")
    assert answer.status_code == 500
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "nobody" in answer.json()["message"]


def test_a_stopped_callee_is_a_clear_error_and_calls_resume_once_it_is_back(
    sidecars: Cluster,
) -> None:
    url = f"{sidecars['svc-a'].url}/v1.0/invoke/svc-b/method/x"
    sidecars.stop("svc-b")
    answer = httpx.get(url)
    assert answer.status_code == 500
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "svc-b" in answer.json()["message"]
    sidecars.start("svc-b")
    assert httpx.get(url).status_code == 200


def test_a_registered_sidecar_that_does_not_answer_is_skipped(sidecars: Cluster) -> None:
    """A callee killed without unregistering stays listed until its row expires: calls
    meanwhile go to an instance that answers."""
    import sqlite3

    dead = f"127.0.0.1:{free_port()}"
    with sqlite3.connect(sidecars.folder / "home" / "nr.db") as registry:
        registry.execute(
            "INSERT INTO " + _table(registry) + " (registration_id, address, app_id, "
            "namespace, last_update) VALUES ('killed', ?, 'svc-b', 'default', ?)",
            (dead, time.time() + 3600),  # fresh for the whole test
        )
    url = f"{sidecars['svc-a'].url}/v1.0/invoke/svc-b/method/x"
    assert [httpx.get(url).status_code for _ in range(12)] == [200] * 12


def _table(registry: Any) -> str:
    rows = registry.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    tables = [str(row[0]) for row in rows if "metadata" not in str(row[0])]
    assert len(tables) == 1, tables
    return tables[0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_sdks_invoke_method(
    sidecars: Cluster, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """``DaprClient().invoke_method`` over gRPC ``InvokeService`` and over HTTP."""
    import grpc
    from dapr.clients import DaprClient
    from dapr.clients.exceptions import DaprHttpError
    from dapr.conf import settings

    caller = sidecars["svc-a"]
    monkeypatch.setenv("DAPR_HTTP_PORT", str(caller.http_port))
    monkeypatch.setattr(settings, "DAPR_HTTP_PORT", caller.http_port)
    monkeypatch.setattr(settings, "DAPR_API_METHOD_INVOCATION_PROTOCOL", protocol)
    failure = grpc.RpcError if protocol == "grpc" else DaprHttpError
    with DaprClient(address=f"127.0.0.1:{caller.grpc_port}") as client:
        answer = client.invoke_method(
            "svc-b",
            "orders/9",
            data=b"payload",
            content_type="text/plain",
            http_verb="PUT",
            http_querystring=(("a", "1"),),
        )
        seen: dict[str, Any] = answer.json()
        assert (seen["method"], seen["path"], seen["query"]) == ("PUT", "/orders/9", "a=1")
        assert seen["body"] == "payload"
        assert seen["headers"]["content-type"] == "text/plain"
        assert seen["headers"]["dapr-caller-app-id"] == "svc-a"
        assert answer.content_type == "application/json"
        with pytest.raises(failure) as unavailable:
            client.invoke_method("svc-b", "status/503", data=b"", http_verb="GET")
        with pytest.raises(failure) as unknown:
            client.invoke_method("nobody", "x", data=b"")
    if isinstance(unavailable.value, DaprHttpError):
        assert "503" in str(unavailable.value)  # the app's own status, passed on
        assert isinstance(unknown.value, DaprHttpError)
        assert unknown.value.error_code == "ERR_DIRECT_INVOKE"
    else:
        assert isinstance(unavailable.value, grpc.Call) and isinstance(unknown.value, grpc.Call)
        assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
        assert unknown.value.code() is grpc.StatusCode.INTERNAL
        assert "id: nobody" in (unknown.value.details() or "")


async def test_the_configuration_chooses_the_resolver(tmp_path: Path) -> None:
    from mechakit.components.nameresolution.sqlite import SQLiteNameResolver
    from mechakit.core.errors import ComponentNotFoundError
    from mechakit.core.registry import Registry
    from mechakit.runtime.service.invocation import open_resolver

    file = str(tmp_path / "chosen.db")
    chosen = {"component": "sqlite", "configuration": {"connectionString": file}}
    resolver = await open_resolver({"nameResolution": chosen}, "svc-a", Registry())
    try:
        assert isinstance(resolver, SQLiteNameResolver) and resolver.file == file
    finally:
        await resolver.close()
    with pytest.raises(ComponentNotFoundError, match="nameresolution.consul"):
        await open_resolver({"nameResolution": {"component": "consul"}}, "svc-a", Registry())


def test_invocation_reaches_a_grpc_app_with_its_metadata(sidecars: Cluster) -> None:
    sidecars.start("svc-g", protocol="grpc")
    answer = httpx.put(
        f"{sidecars['svc-a'].url}/v1.0/invoke/svc-g/method/echo?k=v",
        content=b"hi",
        headers={"content-type": "text/plain", "x-trace": "abc"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    seen = answer.json()
    assert (seen["body"], seen["content_type"]) == ("hi", "text/plain")
    assert seen["metadata"]["x-trace"] == ["abc"]
    assert seen["metadata"]["dapr-caller-app-id"] == ["svc-a"]
    missing = httpx.get(f"{sidecars['svc-a'].url}/v1.0/invoke/svc-g/method/nope")
    assert missing.status_code >= 400
