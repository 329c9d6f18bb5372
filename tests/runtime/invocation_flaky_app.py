"""An HTTP app for the invocation resiliency tests, served by
``python invocation_flaky_app.py PORT http``:

- ``/slow/<seconds>`` answers after that long, unless its caller hangs up first; either way
  ``/outcomes`` then lists ``applied`` or ``abandoned``;
- ``/work`` answers 200, or the status set by ``POST /fail/<status>`` (``/fail/0``: 200
  again); ``/calls`` counts the calls of ``/work``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

outcomes: list[str] = []
state = {"failing": 0, "calls": 0}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """A raw ASGI app, so that a caller hanging up is seen (uvicorn's ``http.disconnect``)."""
    while (await receive()).get("more_body"):
        pass
    path: str = scope["path"]
    if path.startswith("/slow/"):
        hang_up = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({hang_up}, timeout=float(path.rsplit("/", 1)[1]))
        if done:
            outcomes.append("abandoned")
            return
        hang_up.cancel()
        outcomes.append("applied")
        await _answer(send, 200, "applied")
    elif path.startswith("/fail/"):
        state["failing"] = int(path.rsplit("/", 1)[1])
        await _answer(send, 200, "ok")
    elif path == "/work":
        state["calls"] += 1
        status = state["failing"] or 200
        await _answer(send, status, "failing" if state["failing"] else "worked")
    elif path == "/calls":
        await _answer(send, 200, json.dumps(state["calls"]))
    elif path == "/outcomes":
        await _answer(send, 200, json.dumps(outcomes))
    else:
        await _answer(send, 200, "ready")


async def _answer(send: Send, status: int, body: str) -> None:
    headers = [(b"content-type", b"text/plain"), (b"x-flaky", b"yes")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
