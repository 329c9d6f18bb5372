"""An HTTP app for the streaming invocation tests, served by
``python invocation_stream_app.py PORT http``:

- ``POST /upload`` reads its body as it comes (``GET /progress`` tells how much has come so
  far) and answers its length and SHA-256; with ``?fail=N`` the first N uploads, read whole,
  answer 503;
- ``GET /download?chunks=K&size=S`` writes K chunks of S bytes, each after the first only
  once ``POST /ack?n=i`` says that the caller has the first i (within 30 s, else it stops);
  ``GET /progress`` tells whether a download was stopped by its reader going away;
- ``GET /gzip`` answers a gzip-compressed text with ``content-encoding: gzip``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import sys
from collections.abc import AsyncIterator
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

GZIP_TEXT = "compressed by the app, " * 100
ACK_WAIT = 30.0

state = {"received": 0, "uploads": 0, "acked": 0, "downloads_stopped": 0}
acked = asyncio.Condition()


def chunk_of(index: int, size: int) -> bytes:
    """Chunk ``index`` of a download: its bytes say which chunk they are."""
    return bytes([index % 251]) * size


def _acked(index: int) -> bool:
    return state["acked"] >= index


async def upload(request: Request) -> Response:
    state["received"] = 0
    state["uploads"] += 1
    digest = hashlib.sha256()
    async for chunk in request.stream():
        state["received"] += len(chunk)
        digest.update(chunk)
    if state["uploads"] <= int(request.query_params.get("fail", "0")):
        return PlainTextResponse("try again", 503)
    return JSONResponse({"bytes": state["received"], "sha256": digest.hexdigest()})


async def download(request: Request) -> Response:
    chunks = int(request.query_params["chunks"])
    size = int(request.query_params["size"])
    state["acked"] = 0

    async def body() -> AsyncIterator[bytes]:
        try:
            for index in range(chunks):
                async with acked:
                    await asyncio.wait_for(acked.wait_for(partial(_acked, index)), ACK_WAIT)
                yield chunk_of(index, size)
        except (asyncio.CancelledError, GeneratorExit):
            state["downloads_stopped"] += 1
            raise

    return StreamingResponse(body(), media_type="application/octet-stream")


async def ack(request: Request) -> Response:
    async with acked:
        state["acked"] = int(request.query_params["n"])
        acked.notify_all()
    return PlainTextResponse("ok")


async def progress(request: Request) -> Response:
    return JSONResponse(state)


async def compressed(request: Request) -> Response:
    return Response(
        gzip.compress(GZIP_TEXT.encode()),
        media_type="text/plain",
        headers={"content-encoding": "gzip"},
    )


app = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST"]),
        Route("/download", download),
        Route("/ack", ack, methods=["POST"]),
        Route("/progress", progress),
        Route("/gzip", compressed),
        Route("/ready", progress),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
