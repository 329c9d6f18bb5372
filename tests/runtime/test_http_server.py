"""Slow clients and big requests over real sockets: header and body read deadlines, the bulk
cap, and a big bulk read that does not stop other calls from being answered.

The sidecar is served in-process with the same ``listen``/``create_server`` that
``mechakit run`` uses; one test runs ``mechakit run`` itself to check its flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2

import mechakit
from mechakit.conformance.backends import free_port
from mechakit.core.state import SetRequest
from mechakit.runtime.grpc_server import start_server
from mechakit.runtime.http_api import create_app
from mechakit.runtime.http_server import create_server, listen
from mechakit.runtime.in_process import Runtime

WriteFiles = Callable[..., Path]
Serve = Callable[..., contextlib.AbstractAsyncContextManager[str]]
CLOSE_WITHIN = 15.0
"""A generous bound for the server to close a connection after a 1 s deadline."""


@pytest.fixture
def folder(resources: WriteFiles, component: Callable[..., str], tmp_path: Path) -> Path:
    return resources(
        state=component("statestore", "state.sqlite", ("connectionString", str(tmp_path / "s.db"))),
        pubsub=component("pubsub", "pubsub.in-memory"),
    )


@pytest.fixture
async def rt(folder: Path) -> AsyncIterator[Runtime]:
    async with mechakit.open(folder, app_id="slow") as runtime:
        yield runtime


@pytest.fixture
def serve(rt: Runtime) -> Serve:
    """``async with serve(read_header_timeout=1, **create_app_options) as base_url``."""

    @contextlib.asynccontextmanager
    async def serving(read_header_timeout: float = 10.0, **options: Any) -> AsyncIterator[str]:
        listener = listen("127.0.0.1", 0)
        server = create_server(create_app(rt, **options), read_header_timeout=read_header_timeout)
        task = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task
            listener.close()

    return serving


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (b"" if nothing)."""
    received = b""
    while chunk := await reader.read(65536):
        received += chunk
    return received


# --- read deadlines -----------------------------------------------------------------------


async def test_half_sent_requests_are_closed_at_the_header_deadline_while_healthz_answers(
    serve: Serve,
) -> None:
    async with serve(read_header_timeout=1) as base:
        port = port_of(base)
        partial = [
            b"",  # connected, sent nothing
            b"GET /v1.0/heal",  # half a request line
            b"POST /v1.0/state/statestore HTTP/1.1\r\nHost: x\r\nContent-Le",  # half the headers
        ]
        connections = []
        for i in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(partial[i % len(partial)])
            connections.append((reader, writer))
        # A kept-alive connection whose second request stalls halfway is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
        writer.write(b"GET /v1.0/healthz HTTP/1.1\r\nHo")
        connections.append((reader, writer))

        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/v1.0/healthz")).status_code == 204
        async with asyncio.timeout(CLOSE_WITHIN):
            received = await asyncio.gather(*(read_until_closed(r) for r, _ in connections))
        assert received == [b""] * len(connections)
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/v1.0/healthz")).status_code == 204
        for _, writer in connections:
            writer.close()


async def test_a_head_that_grows_past_the_bound_without_ending_is_431_and_closed(
    serve: Serve,
) -> None:
    async with serve() as base:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n")
        answer = asyncio.create_task(read_until_closed(reader))
        for n in range(40):  # up to 40 KiB of headers, never ended: over the 16 KiB bound
            if answer.done():
                break
            writer.write(b"x-filler-%d: %s\r\n" % (n, b"y" * 1000))
            await writer.drain()
            await asyncio.sleep(0.02)  # read as sent: nothing unread when the server closes
        async with asyncio.timeout(CLOSE_WITHIN):
            received = await answer
        writer.close()
        assert received.startswith(b"HTTP/1.1 431"), received[:80]
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/v1.0/healthz")).status_code == 204


async def test_a_body_that_stops_arriving_is_408_and_the_connection_is_closed(
    serve: Serve,
) -> None:
    async with serve(body_timeout=1) as base:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(
            b"POST /v1.0/state/statestore HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'[{"key": "k", '
        )
        async with asyncio.timeout(CLOSE_WITHIN):
            answer = await read_until_closed(reader)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        error = json.loads(body)
        assert error["errorCode"] == "ERR_BODY_READ"
        assert "within 1s" in error["message"] and "--http-read-body-timeout" in error["message"]
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/v1.0/state/statestore/k")).status_code == 204


# --- the bulk cap -------------------------------------------------------------------------

OVER_THE_CAP = [
    ("/v1.0/state/statestore/bulk", {"keys": [f"k{i}" for i in range(101)]}, "101 keys"),
    ("/v1.0/state/statestore", [{"key": f"k{i}", "value": i} for i in range(101)], "101 state"),
    (
        "/v1.0/state/statestore/transaction",
        {"operations": [{"operation": "delete", "request": {"key": "k"}}] * 101},
        "101 operations",
    ),
    (
        "/v1.0-alpha1/publish/bulk/pubsub/orders",
        [{"entryId": str(i), "event": "x", "contentType": "text/plain"} for i in range(101)],
        "101 entries",
    ),
]


@pytest.mark.parametrize(("path", "body", "what"), OVER_THE_CAP)
async def test_a_bulk_request_over_the_cap_is_400_naming_the_limit_and_the_flag(
    serve: Serve, path: str, body: Any, what: str
) -> None:
    async with serve(max_bulk_keys=100) as base, httpx.AsyncClient(base_url=base) as http:
        refused = await http.post(path, json=body)
        assert refused.status_code == 400
        error = refused.json()
        assert error["errorCode"] == "ERR_BULK_TOO_LARGE"
        assert what in error["message"] and "limit of 100" in error["message"]
        assert "--max-bulk-keys" in error["message"]
        got = await http.post("/v1.0/state/statestore/bulk", json={"keys": ["k1"]})
        assert got.json() == [{"key": "k1"}]  # nothing of the refused save was written


async def test_a_bulk_request_at_the_cap_is_served(serve: Serve) -> None:
    items = [{"key": f"k{i}", "value": i} for i in range(100)]
    async with serve(max_bulk_keys=100) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.post("/v1.0/state/statestore", json=items)).status_code == 204
        got = await http.post(
            "/v1.0/state/statestore/bulk", json={"keys": [i["key"] for i in items]}
        )
        assert [entry["data"] for entry in got.json()] == list(range(100))


async def test_a_grpc_bulk_get_over_the_cap_is_invalid_argument(rt: Runtime) -> None:
    server = await start_server(rt, "127.0.0.1", 0, max_bulk_keys=100)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
            request = state_pb2.GetBulkStateRequest(
                store_name="statestore", keys=[f"k{i}" for i in range(101)]
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetBulkState(request)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "101 keys" in str(refused.value.details())
            assert "--max-bulk-keys" in str(refused.value.details())
            request = state_pb2.GetBulkStateRequest(store_name="statestore", keys=["a", "b"])
            assert [item.key for item in (await stub.GetBulkState(request)).items] == ["a", "b"]
    finally:
        await server.stop(0)


# --- big but allowed ----------------------------------------------------------------------


async def test_a_big_bulk_get_is_answered_in_full_while_health_checks_keep_answering(
    rt: Runtime, serve: Serve
) -> None:
    count = 30_000
    keys = [f"big-{i}" for i in range(count)]
    store = rt.state("statestore").component
    await store.bulk_set([SetRequest(k, {"n": i}) for i, k in enumerate(keys)])
    async with (
        serve(max_bulk_keys=count) as base,
        httpx.AsyncClient(base_url=base, timeout=120) as http,
    ):
        bulk = asyncio.create_task(http.post("/v1.0/state/statestore/bulk", json={"keys": keys}))
        health: list[int] = []
        answered_meanwhile = 0
        while not bulk.done():
            health.append((await http.get("/v1.0/healthz")).status_code)
            answered_meanwhile += not bulk.done()
        got = await bulk
        assert got.status_code == 200
        entries = got.json()
        assert [e["key"] for e in entries] == keys
        assert [e["data"] for e in entries] == [{"n": i} for i in range(count)]
        assert all(e["etag"] for e in entries)
        assert health and set(health) == {204}
        assert answered_meanwhile > 0


# --- the flags of mechakit run ------------------------------------------------------------


def test_mechakit_run_takes_the_header_deadline_and_the_bulk_cap_from_its_flags(
    folder: Path, tmp_path: Path
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mechakit.runtime.cli", "run",
            "--app-id", "flags", "--resources-path", str(folder),
            "--dapr-http-port", str(port), "--dapr-grpc-port", "0",
            "--http-read-header-timeout", "1", "--max-bulk-keys", "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "mechakit run did not become healthy"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/v1.0/healthz", timeout=1).status_code == 204:
                    break
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port)) as half_sent:
            half_sent.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nHost")
            half_sent.settimeout(CLOSE_WITHIN)
            assert half_sent.recv(1024) == b""
        refused = httpx.post(f"{base}/v1.0/state/statestore/bulk", json={"keys": list("abcdef")})
        assert refused.status_code == 400 and "limit of 5" in refused.json()["message"]
    finally:
        process.terminate()
        process.communicate(timeout=20)
