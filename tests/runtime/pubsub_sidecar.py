"""A real ``mechakit run`` with one pub/sub component, ``pubsub.in-memory`` or
``pubsub.redis`` (a redis-server of the test module's own), for the tests of streaming
subscriptions and of message metadata. Redelivery is quick on both (tens of ms)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mechakit.conformance.backends import BackendUnavailable, free_port, provision

BACKENDS = ("in-memory", "redis")
STARTUP = 20.0
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def redis_address() -> Iterator[str]:
    """A redis-server for the module (skipped where none can be had)."""
    try:
        info = provision("redis")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield info.values["address"]
    finally:
        info.stop()


@pytest.fixture(params=BACKENDS)
def pubsub_yaml(request: pytest.FixtureRequest) -> str:
    """The ``pubsub`` component on each backend."""
    if request.param == "redis":
        address = request.getfixturevalue("redis_address")
        settings = {
            "redisHost": address,
            "redeliverInterval": "50ms",
            "processingTimeout": "1s",
            "maxDeliveries": "5",
        }
        return component_yaml("pubsub.redis", settings)
    return component_yaml("pubsub.in-memory", {"redeliveryInterval": "20ms", "maxDeliveries": "5"})


def component_yaml(type_: str, settings: dict[str, str]) -> str:
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: Component",
        "metadata:",
        "  name: pubsub",
        "spec:",
        f"  type: {type_}",
        "  version: v1",
        "  metadata:",
    ]
    for name, value in settings.items():
        lines += [f"    - name: {name}", f"      value: {value!r}"]
    return "\n".join(lines) + "\n"


@dataclass
class Sidecar:
    http_port: int
    grpc_port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1.0"

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Until the sidecar's log has a line with ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            time.sleep(0.02)
        pytest.fail(f"the sidecar never logged {text!r}; its log:\n{self.log.read_text()}")


StartSidecar = Callable[..., Sidecar]


@pytest.fixture
def start_sidecar(
    tmp_path: Path, pubsub_yaml: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StartSidecar]:
    """``start_sidecar(*run_args, files={name: text}, token=...)``: ``mechakit run --app-id
    shop`` with the ``pubsub`` component, more resource files and an API token (None: none);
    the SDK's environment points at it."""
    started: list[Sidecar] = []

    def start(
        *args: str, files: dict[str, str] | None = None, token: str | None = TOKEN
    ) -> Sidecar:
        folder = tmp_path / f"resources-{len(started)}"
        folder.mkdir()
        (folder / "pubsub.yaml").write_text(pubsub_yaml)
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        http_port, grpc_port = free_port(), free_port()
        log = tmp_path / f"sidecar-{len(started)}.log"
        argv = [
            sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "shop",
            "--resources-path", str(folder), "--dapr-http-port", str(http_port),
            "--dapr-grpc-port", str(grpc_port), *args,
        ]  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
        environment["MECHAKIT_HOME"] = str(tmp_path / "home")
        if token:
            environment["DAPR_API_TOKEN"] = token
        with log.open("wb") as sink:
            process = subprocess.Popen(
                argv, env=environment, stdout=subprocess.DEVNULL, stderr=sink
            )
        sidecar = Sidecar(http_port, grpc_port, log, process)
        started.append(sidecar)
        wait_healthy(sidecar)
        monkeypatch.setenv("DAPR_HTTP_PORT", str(http_port))
        monkeypatch.setenv("DAPR_GRPC_PORT", str(grpc_port))
        monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "10")
        if token:
            monkeypatch.setenv("DAPR_API_TOKEN", token)
        else:
            monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in started:
            sidecar.process.terminate()
            try:
                sidecar.process.wait(STARTUP)
            except subprocess.TimeoutExpired:
                sidecar.process.kill()
                sidecar.process.wait()


def wait_healthy(sidecar: Sidecar) -> None:
    """Until ``mechakit run`` answers its health check (fails the test if it exits)."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if sidecar.process.poll() is not None:
            pytest.fail(f"mechakit run exited: {sidecar.log.read_text()}")
        try:
            if httpx.get(f"{sidecar.http}/healthz", timeout=1).status_code == 204:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail("mechakit run did not become healthy in time")


__all__ = [
    "BACKENDS",
    "TOKEN",
    "Sidecar",
    "StartSidecar",
    "component_yaml",
    "pubsub_yaml",
    "redis_address",
    "start_sidecar",
    "wait_healthy",
]
