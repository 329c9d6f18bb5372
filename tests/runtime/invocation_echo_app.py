"""An HTTP app for the invocation tests: answers every verb on every path with what it got
(``/status/<code>`` answers that code), served by ``python invocation_echo_app.py PORT [grpc]``."""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    path = request.url.path
    if path.startswith("/status/"):
        return Response(b"unavailable", int(path.rsplit("/", 1)[1]), media_type="text/plain")
    return JSONResponse(
        {
            "method": request.method,
            "path": path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
        },
        headers={"x-echo": "yes"},
    )


VERBS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
app = Starlette(routes=[Route("/{path:path}", echo, methods=VERBS)])


def grpc_app() -> Any:
    """The same over gRPC: ``dapr.ext.grpc.App`` answering method ``echo``; ``boom`` fails
    (UNKNOWN, the SDK's status for a raising method) and ``booms`` counts its calls."""
    from dapr.ext.grpc import App, InvokeMethodRequest, InvokeMethodResponse

    served = App()
    booms = [0]

    @served.method("boom")  # type: ignore[untyped-decorator]
    def boom(request: InvokeMethodRequest) -> InvokeMethodResponse:
        booms[0] += 1
        raise RuntimeError("boom")

    @served.method("booms")  # type: ignore[untyped-decorator]
    def count(request: InvokeMethodRequest) -> InvokeMethodResponse:
        return InvokeMethodResponse(str(booms[0]).encode(), "text/plain")

    @served.method("echo")  # type: ignore[untyped-decorator]
    def echo_method(request: InvokeMethodRequest) -> InvokeMethodResponse:
        seen = {
            "body": request.text(),
            "content_type": request.content_type,
            "metadata": {k: list(v) for k, v in request.metadata.items()},
        }
        return InvokeMethodResponse(json.dumps(seen).encode(), "application/json")

    return served


if __name__ == "__main__":
    if sys.argv[2:3] == ["grpc"]:
        grpc_app().run(int(sys.argv[1]))
    else:
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
