"""What an invocation carries, and how it travels between sidecars.

A body is whole (``bytes``) or a stream of chunks that is passed on as it comes, never
buffered whole: an upload reaches the callee's app while the caller still sends it, a
download reaches the caller while the app still writes it. Between sidecars the internal
method is a bidirectional stream of raw messages: the first of each side is a frame (a
4-byte length, a JSON header, the body or nothing), the next ones the body's chunks, the end
of the stream the end of the body. The header's ``streamed`` says whether chunks follow.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

Body = bytes | AsyncIterator[bytes]
"""A body whole, or its chunks as they come."""

WHOLE_BODY = 64 * 1024
"""A body whose announced length is at most this is read whole (one message between the
sidecars); a longer or unannounced one is streamed."""
END_WAIT = 0.01
"""How long a message waits for the next one (or its end) before its sender counts as
waiting: a short body's end comes with it."""
MAX_CHUNK = 1024 * 1024
"""The largest chunk sent in one gRPC message (gRPC's default limit is 4 MiB)."""


@dataclass(frozen=True)
class Invocation:
    """One call of an app's method, as the caller's app sent it."""

    method: str
    verb: str = "POST"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: Body = b""
    caller: str = ""


@dataclass(frozen=True)
class Reply:
    """The callee app's answer, passed back unchanged."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: Body = b""
    grpc_code: int | None = None
    """A gRPC app's error: its status code (``status`` is that code's HTTP status), which
    the caller's InvokeService answers and ``matching.gRPCStatusCodes`` matches."""

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "content-type"), "")

    async def whole(self) -> Reply:
        """This reply with its body read whole (and its stream closed)."""
        return replace(self, body=await read_body(self.body))


def streams(content_length: str | bytes | None, chunked: bool) -> bool:
    """Whether an HTTP request body is streamed: longer than ``WHOLE_BODY``, or chunked."""
    if content_length is None:
        return chunked
    return not content_length.isdigit() or int(content_length) > WHOLE_BODY


async def read_body(body: Body) -> bytes:
    """``body`` whole: a stream is read to its end and closed."""
    if isinstance(body, bytes):
        return body
    try:
        return b"".join([chunk async for chunk in body])
    finally:
        await close_body(body)


async def close_body(body: Body) -> None:
    """Stops a streamed ``body`` that will not be read to its end (its call is ended)."""
    closing = getattr(body, "aclose", None)
    if closing is not None:
        await closing()


def pieces(chunk: bytes) -> Iterator[bytes]:
    """``chunk`` in pieces of at most ``MAX_CHUNK`` bytes."""
    for start in range(0, len(chunk), MAX_CHUNK):
        yield chunk[start : start + MAX_CHUNK]


def frame(header: Mapping[str, Any], body: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + body


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack(">I", data[:4])
    header: dict[str, Any] = json.loads(data[4 : 4 + size])
    return header, data[4 + size :]


def error_frame(message: str) -> bytes:
    """A 500 answer of Dapr's shape, for a call that never reached the app."""
    body = json.dumps({"errorCode": "ERR_DIRECT_INVOKE", "message": message}).encode()
    return frame({"status": 500, "headers": [("content-type", "application/json")]}, body)


__all__ = [
    "END_WAIT",
    "MAX_CHUNK",
    "WHOLE_BODY",
    "Body",
    "Invocation",
    "Reply",
    "close_body",
    "error_frame",
    "frame",
    "pieces",
    "read_body",
    "streams",
    "unframe",
]
