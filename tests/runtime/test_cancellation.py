"""A caller that has gone is not served: its save, still waiting for the backend, is dropped.

Against real backends: a private redis-server stalled with SIGSTOP while the one pooled
connection (``poolSize: 1``) is busy, and a SQLite file locked by another connection while
the store's one database thread is busy. A save arrives, its caller goes away (FIN, RST,
a gRPC deadline or cancel), the backend resumes: that save must not have been written,
while one made afterwards is.

The server's debug log says when it dropped a request; the tests wait for that line
before resuming the backend, so the order of events does not depend on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2

import mechakit
from mechakit.conformance.backends import BackendInfo
from mechakit.core.state import SetRequest
from mechakit.runtime.grpc_server import start_server
from mechakit.runtime.http_api import create_app
from mechakit.runtime.http_server import create_server, listen
from mechakit.runtime.in_process import Runtime

WriteFiles = Callable[..., Path]
NOTICE_WITHIN = 10.0
"""A generous bound for the server to notice that a caller went away."""


@contextlib.contextmanager
def frozen(server: BackendInfo) -> Iterator[None]:
    assert server.freeze is not None
    server.freeze(True)
    try:
        yield
    finally:
        server.freeze(False)


@contextlib.asynccontextmanager
async def sidecar(runtime: Runtime) -> AsyncIterator[tuple[str, int]]:
    """The HTTP API (as ``mechakit run`` serves it) and the gRPC API: (HTTP URL, gRPC port)."""
    listener = listen("127.0.0.1", 0)
    server = create_server(create_app(runtime))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    grpc_server = await start_server(runtime, "127.0.0.1", 0)
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not serving.done(), serving.exception()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", grpc_server.port
    finally:
        await grpc_server.stop(0)
        server.should_exit = True
        await serving
        listener.close()


def save_request(key: str, value: Any) -> bytes:
    body = f'[{{"key": "{key}", "value": {value!r}}}]'.encode()
    return (
        b"POST /v1.0/state/statestore HTTP/1.1\r\nHost: dapr\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def send_and_go(port: int, request: bytes, how: str) -> None:
    """Send the whole request, then half-close (FIN) or reset (RST) without reading."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(request)
    if how == "rst":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        conn.shutdown(socket.SHUT_WR)
    conn.close()


async def dropped(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> None:
    """Wait until the server logs that it dropped a request."""
    async with asyncio.timeout(NOTICE_WITHIN):
        while True:
            if any(r.name == logger and text in r.getMessage() for r in caplog.records):
                return
            await asyncio.sleep(0.02)


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def occupy(call: Any) -> asyncio.Task[Any]:
    """Start ``call`` (which takes the store's only connection or thread) and let it block."""
    task: asyncio.Task[Any] = asyncio.ensure_future(call)
    for _ in range(20):  # it takes the slot on its first steps; then it waits for the backend
        await asyncio.sleep(0.01)
    assert not task.done(), task
    return task


# --- Redis ----------------------------------------------------------------------------------


@pytest.fixture
async def redis_rt(
    pausable_redis: BackendInfo, resources: WriteFiles, component: Callable[..., str]
) -> AsyncIterator[Runtime]:
    folder = resources(
        state=component(
            "statestore",
            "state.redis",
            ("redisHost", pausable_redis.values["address"]),
            ("poolSize", "1"),
            ("poolTimeout", "30s"),
            ("readTimeout", "30s"),
        )
    )
    async with mechakit.open(folder, app_id="gone") as runtime:
        yield runtime


async def read(http: httpx.AsyncClient, key: str) -> Any:
    got = await http.get(f"/v1.0/state/statestore/{key}")
    return None if got.status_code == 204 else got.json()


@pytest.mark.fault
@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_an_http_save_whose_client_left_while_redis_stalled_is_not_written(
    redis_rt: Runtime, pausable_redis: BackendInfo, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="mechakit.http")
    store = redis_rt.state("statestore").component
    busy, abandoned, after = new_key("busy"), new_key("abandoned"), new_key("after")
    async with sidecar(redis_rt) as (base, _), httpx.AsyncClient(base_url=base) as http:
        assert await read(http, busy) is None  # the one connection is open
        with frozen(pausable_redis):
            occupier = await occupy(store.set(SetRequest(busy, "first")))
            send_and_go(int(base.rsplit(":", 1)[1]), save_request(abandoned, 1), how)
            await dropped(caplog, "mechakit.http", "the client went away")
        await occupier
        saved = await http.post("/v1.0/state/statestore", json=[{"key": after, "value": 2}])
        assert saved.status_code == 204
        assert await read(http, busy) == "first"
        assert await read(http, after) == 2
        assert await read(http, abandoned) is None


@pytest.mark.fault
@pytest.mark.parametrize("how", ["deadline", "cancel"])
async def test_a_grpc_save_past_its_deadline_or_cancelled_while_redis_stalled_is_not_written(
    redis_rt: Runtime, pausable_redis: BackendInfo, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="mechakit.grpc")
    store = redis_rt.state("statestore").component
    busy, abandoned, after = new_key("busy"), new_key("abandoned"), new_key("after")

    def save(key: str, value: bytes) -> state_pb2.SaveStateRequest:
        return state_pb2.SaveStateRequest(
            store_name="statestore", states=[common_pb2.StateItem(key=key, value=value)]
        )

    async with (
        sidecar(redis_rt) as (base, grpc_port),
        httpx.AsyncClient(base_url=base) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        assert await read(http, busy) is None
        with frozen(pausable_redis):
            occupier = await occupy(store.set(SetRequest(busy, "first")))
            if how == "deadline":
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await stub.SaveState(save(abandoned, b"1"), timeout=0.5)
                assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                call = stub.SaveState(save(abandoned, b"1"))
                await asyncio.sleep(0.3)
                call.cancel()
            await dropped(caplog, "mechakit.grpc", "SaveState: the caller cancelled")
        await occupier
        await stub.SaveState(save(after, b"2"))
        assert await read(http, busy) == "first"
        assert await read(http, after) == 2
        assert await read(http, abandoned) is None


# --- SQLite ---------------------------------------------------------------------------------


async def test_an_http_save_whose_client_half_closed_right_after_sending_is_not_written(
    resources: WriteFiles,
    component: Callable[..., str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client sends the whole save, then FIN. The save waits behind a write that waits
    for a lock another connection holds, so it cannot have finished before the FIN."""
    caplog.set_level(logging.DEBUG, logger="mechakit.http")
    database = tmp_path / "state.db"
    folder = resources(
        state=component(
            "statestore",
            "state.sqlite",
            ("connectionString", str(database)),
            ("busyTimeout", "30s"),
            ("timeout", "60s"),
        )
    )
    busy, abandoned, after = new_key("busy"), new_key("abandoned"), new_key("after")
    async with (
        mechakit.open(folder, app_id="gone") as runtime,
        sidecar(runtime) as (base, _),
        httpx.AsyncClient(base_url=base) as http,
    ):
        store = runtime.state("statestore").component
        holder = sqlite3.connect(database, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            occupier = await occupy(store.set(SetRequest(busy, "first")))
            send_and_go(int(base.rsplit(":", 1)[1]), save_request(abandoned, 1), "fin")
            await dropped(caplog, "mechakit.http", "the client went away")
        finally:
            holder.execute("COMMIT")
            holder.close()
        await occupier
        saved = await http.post("/v1.0/state/statestore", json=[{"key": after, "value": 2}])
        assert saved.status_code == 204
        assert await read(http, busy) == "first"
        assert await read(http, after) == 2
        assert await read(http, abandoned) is None
