"""A real HTTP app for delivery tests: Starlette under uvicorn, in the test's event loop,
recording every call and answering from per-path scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mechakit.conformance.backends import free_port

WAIT = 10.0


class ServedApp(Protocol):
    port: int

    async def handle(self, request: Request) -> Response: ...


AppT = TypeVar("AppT", bound=ServedApp)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class RecordingApp:
    """An app that records every call and answers from per-path scripts (then 200, empty)."""

    subscriptions: list[dict[str, Any]] | None = None
    """The ``GET /dapr/subscribe`` answer; None answers 404."""
    answers: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    always: dict[str, tuple[int, Any]] = field(default_factory=dict)
    computed: dict[str, Callable[[Received], tuple[int, Any]]] = field(default_factory=dict)
    """Per-path answers computed from the call (after ``answers`` is used up)."""
    not_listening: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if request.method == "GET" and path == "/dapr/subscribe":
            if self.subscriptions is None:
                return Response(status_code=404)
            return JSONResponse(self.subscriptions)
        if request.method == "OPTIONS":
            return Response(status_code=404 if path in self.not_listening else 200)
        self.received.append(
            Received(request.method, path, dict(request.headers), await request.body())
        )
        self._changed.set()
        script = self.answers.get(path)
        if script:
            status, body = script.pop(0)
        elif path in self.computed:
            status, body = self.computed[path](self.received[-1])
        else:
            status, body = self.always.get(path, (200, None))
        if body is None:
            return Response(status_code=status)
        return JSONResponse(body, status_code=status)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, count: int = 1) -> list[Received]:
        """The calls to ``path`` once there are ``count`` of them (bounded wait)."""

        async def until() -> None:
            while len(self.at(path)) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), WAIT)
        return self.at(path)


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: AppT) -> AsyncIterator[AppT]:
    """Serves ``app.handle`` for every path on a free port (set as ``app.port``)."""
    app.port = free_port()
    routes = [Route("/{path:path}", app.handle, methods=["GET", "POST", "OPTIONS"])]
    config = uvicorn.Config(
        Starlette(routes=routes),
        host="127.0.0.1",
        port=app.port,
        log_config=None,
        lifespan="off",
        access_log=False,
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        yield app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)
