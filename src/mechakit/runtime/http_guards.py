"""ASGI middleware that reads each request body under limits and stops work for callers gone.

:class:`RequestGuard` runs before every route of the HTTP API:

- it reads the whole body first: over ``max_request_size`` bytes is 413, a body that has
  not fully arrived ``body_timeout`` seconds after the headers is 408 (both close the
  connection), so a slow sender cannot hold a handler open;
- then, while the route runs, it watches for the client going away (uvicorn reports a
  closed or half-closed connection as ``http.disconnect``) and cancels the route, as daprd
  cancels a request's context. A save whose caller has gone and that still waits (for a
  pooled connection, a lock, a stalled backend) is then never written.

The route receives the body it read in one ``http.request`` message. An invocation whose
body is long or of unannounced length (chunked) is the exception: it is streamed to the
callee as it comes, so the guard passes its chunks on, counting them against
``max_request_size`` (413 when over, the call to the callee cancelled), with no body
deadline (daprd has none), and watches for a disconnect once the body is in.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("mechakit.http")

DEFAULT_READ_BODY_TIMEOUT = 60.0
"""Seconds from the end of the headers until the whole body must have arrived. daprd sets
no such limit (its Go server has only a ReadHeaderTimeout); 60 s lets a 4 MB body through
a link of about 0.5 Mbit/s."""

BODY_READ = "ERR_BODY_READ"


class _Rejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"errorCode": self.code, "message": self.message}, self.status)
        if self.status in (408, 413):
            # The rest of the body may still be on its way: do not read it as a next request.
            response.headers["connection"] = "close"
        await response(scope, receive, send)


class RequestGuard:
    """Read the body under ``max_request_size`` and ``body_timeout``; cancel the route when
    the client disconnects. ``body_timeout`` None or 0: no deadline."""

    def __init__(self, app: ASGIApp, *, max_request_size: int, body_timeout: float | None) -> None:
        self.app = app
        self.max_request_size = max_request_size
        self.body_timeout = body_timeout or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except _Rejected as exc:
            await exc.answer(scope, receive, send)
            return
        except _Streamed:
            await self._serve(scope, None, receive, send)
            return
        if body is None:
            log.debug(
                "%s %s: the client went away before its request was read; nothing was done",
                scope["method"],
                scope["path"],
            )
            return
        await self._serve(scope, body, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self.max_request_size
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            raise _Rejected(400, "ERR_MALFORMED_REQUEST", "invalid Content-Length")
        if declared is not None and int(declared) > limit:
            raise _too_large(limit)
        if _streamed_invocation(scope, declared):
            raise _Streamed
        chunks: list[bytes] = []
        received = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk: bytes = message.get("body", b"")
                    received += len(chunk)
                    if received > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise _Rejected(
                408,
                BODY_READ,
                f"failed to read request body: it did not arrive within {self.body_timeout:g}s "
                "of the headers (mechakit run --http-read-body-timeout)",
            ) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _serve(self, scope: Scope, body: bytes | None, receive: Receive, send: Send) -> None:
        """Run the route in this task with ``body`` (None: the body's chunks as they come);
        a disconnect before the response is done cancels it."""
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        responded = False
        cancelled = False
        rejected: _Rejected | None = None
        started = False

        async def watch() -> None:
            nonlocal cancelled
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # a server whose receive fails: nothing to watch
                return
            gone.set()
            if not responded:
                cancelled = True
                task.cancel()

        watcher: asyncio.Task[None] | None = None
        received = 0

        async def replay() -> Message:
            nonlocal body, received, rejected, watcher
            if watcher is None and body is None:  # streamed: pass the chunks on
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_request_size:
                    rejected = _too_large(self.max_request_size)
                    return {"type": "http.disconnect"}
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    watcher = asyncio.create_task(watch(), name="mechakit http disconnect watch")
                return message
            if body is not None:
                message = {"type": "http.request", "body": body, "more_body": False}
                body = None
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked(message: Message) -> None:
            nonlocal responded, started
            if rejected is not None:
                return  # the route's answer to a body cut off is replaced by the 413
            started = True
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        if body is not None:
            watcher = asyncio.create_task(watch(), name="mechakit http disconnect watch")
        try:
            await self.app(scope, replay, tracked)
        except asyncio.CancelledError:
            if not cancelled or task.uncancel() > 0:
                raise
            log.debug(
                "%s %s: the client went away; its request was cancelled",
                scope["method"],
                scope["path"],
            )
        except Exception:
            if rejected is None or started:
                raise
        else:
            if cancelled:  # the route swallowed the cancellation: do not leave it pending
                task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()  # not awaited: that could swallow a cancellation of this task
        if rejected is not None and not started:
            await rejected.answer(scope, receive, send)


class _Streamed(Exception):
    """The body is not read here: the route streams it."""


def _streamed_invocation(scope: Scope, declared: bytes | None) -> bool:
    """Whether the request is an invocation whose body is streamed to the callee: longer
    than ``WHOLE_BODY`` or of unannounced length."""
    from .service.invocation_messages import streams

    chunked = any(key == b"transfer-encoding" for key, _ in scope["headers"])
    return str(scope["path"]).startswith("/v1.0/invoke/") and streams(declared, chunked)


def _too_large(limit: int) -> _Rejected:
    return _Rejected(
        413,
        BODY_READ,
        f"failed to read request body: the body is larger than the {limit} byte limit "
        "(--dapr-http-max-request-size)",
    )


__all__ = ["DEFAULT_READ_BODY_TIMEOUT", "RequestGuard"]
