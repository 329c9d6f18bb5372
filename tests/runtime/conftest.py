"""Helpers for runtime tests: YAML resources written into a fresh folder."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest

import mechakit
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.runtime.http_api import create_app
from mechakit.runtime.in_process import Runtime

WriteFiles = Callable[..., Path]


@pytest.fixture
def resources(tmp_path: Path) -> WriteFiles:
    """``resources(a="yaml text", ...)`` writes ``a.yaml`` etc. into one folder and returns it."""
    folder = tmp_path / "components"
    folder.mkdir()

    def write(**files: str) -> Path:
        for name, text in files.items():
            filename = name if "." in name else f"{name}.yaml"
            (folder / filename).write_text(textwrap.dedent(text).lstrip())
        return folder

    return write


def _component(name: str, type_: str, *metadata: tuple[str, str], extra: str = "") -> str:
    """A Component document with plain metadata values; ``extra`` is appended verbatim.

    ``extra="  initTimeout: 1s\n"`` adds a spec field, ``extra="scopes: [a]\n"`` a top-level one.
    """
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: Component",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  type: {type_}",
        "  version: v1",
    ]
    if metadata:
        lines.append("  metadata:")
        for key, value in metadata:
            lines += [f"    - name: {key}", f"      value: {value!r}"]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def component() -> Callable[..., str]:
    """``component("statestore", "state.sqlite", ("connectionString", "x.db"), extra="...")``."""
    return _component


PrivateRuntime = tuple[asyncio.AbstractEventLoop, Runtime, httpx.AsyncClient]


@contextmanager
def _runtime_on_private_loop(folder: Path) -> Iterator[PrivateRuntime]:
    """A started runtime and an HTTP client on its API, on a loop of their own, so that a
    synchronous driver (hypothesis) can run many requests against one runtime."""
    loop = asyncio.new_event_loop()
    runtime = loop.run_until_complete(mechakit.open(folder, app_id="fuzz").start())
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(runtime)), base_url="http://dapr"
    )
    try:
        yield loop, runtime, client
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(runtime.close())
        loop.close()


@pytest.fixture
def private_runtime() -> Callable[[Path], AbstractContextManager[PrivateRuntime]]:
    """``with private_runtime(folder) as (loop, runtime, client):`` (see above)."""
    return _runtime_on_private_loop


@pytest.fixture(scope="module")
def redis_server() -> Iterator[BackendInfo]:
    """A redis-server of the module's own (the conformance "redis" backend), or a skip."""
    try:
        info = provision("redis")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest.fixture(scope="module")
def pausable_redis(redis_server: BackendInfo) -> BackendInfo:
    """``redis_server``, which fault tests can stall (SIGSTOP); a skip when it is not ours."""
    if redis_server.freeze is None:
        pytest.skip("the redis backend was not started by this test run, so it cannot stall")
    return redis_server
