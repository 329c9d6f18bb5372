"""How ``mechakit run`` serves the HTTP API: the listening socket and the uvicorn server.

uvicorn has no limit on how long a client may take to send a request's headers, so a few
thousand half-sent requests stay open as long as their clients like. The protocol here
closes a connection whose request line and headers are not complete
``read_header_timeout`` seconds after it opened (or, on a kept-alive connection, after the
next request's first bytes arrived), as Go's ``http.Server.ReadHeaderTimeout`` does in
daprd. The body has its own deadline (:mod:`mechakit.runtime.http_guards`).

Requests are parsed by httptools (llhttp, in C) where it is installed, as the ``sidecar``
extra does: h11, in pure Python, was 15-30 % of the sidecar's CPU per HTTP call
(``benchmarks/README.md``, sidecar CPU per call). h11 stays the fallback.

Tests serve the API with the same :func:`listen` and :func:`create_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpTools
except ImportError:  # pragma: no cover - httptools comes with the sidecar extra
    _HttpTools = None  # type: ignore[assignment, misc]

log = logging.getLogger("mechakit.http")

DEFAULT_READ_HEADER_TIMEOUT = 10.0
"""daprd's ``ReadHeaderTimeout`` (``pkg/api/http/server.go``: ``10 * time.Second``)."""
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
"""h11's default bound on a request head still incomplete."""


class _HeaderDeadline:
    """Mixed into a uvicorn HTTP protocol: closes a connection whose headers take too long."""

    read_header_timeout: ClassVar[float | None] = DEFAULT_READ_HEADER_TIMEOUT

    _header_timer: asyncio.TimerHandle | None = None
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the first bytes of a next request
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # a request's headers are complete
            self._disarm_header_timer()

    def handle_websocket_upgrade(self, *event: Any) -> None:
        self._disarm_header_timer()  # the headers are complete; the connection is not ours now
        super().handle_websocket_upgrade(*event)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        timeout = self.read_header_timeout
        if timeout:
            self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug(
                "%s: no complete request headers within %gs: closing the connection",
                f"{self.client[0]}:{self.client[1]}" if self.client else "a client",
                self.read_header_timeout,
            )
            self.transport.close()


class HeaderTimeoutProtocol(_HeaderDeadline, H11Protocol):  # type: ignore[misc]
    """uvicorn's h11 protocol (pure Python), closing a connection whose headers take too long."""


if _HttpTools is not None:

    class FastHeaderTimeoutProtocol(_HeaderDeadline, _HttpTools):  # type: ignore[misc]
        """uvicorn's httptools protocol (llhttp, in C: far less CPU per request than h11),
        with the header deadline, and h11's bound on a head still incomplete
        (``h11_max_incomplete_event_size``), which llhttp does not have: past it the
        connection is answered 431 and closed."""

        _head_bytes = 0

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are complete
                self._head_bytes = 0
            elif self.cycle is None or self.cycle.response_complete:  # a head, still incomplete
                self._head_bytes += len(data)
                limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
                if self._head_bytes > limit and not self.transport.is_closing():
                    self._disarm_header_timer()
                    self.transport.write(_HEAD_TOO_LARGE)
                    self.transport.close()

    PROTOCOL: type[_HeaderDeadline] = FastHeaderTimeoutProtocol
else:  # pragma: no cover - httptools comes with the sidecar extra
    PROTOCOL = HeaderTimeoutProtocol

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 35\r\nconnection: close\r\n\r\n431 Request Header Fields Too Large"
)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``mechakit run`` handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ``OSError`` if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family)
    # Accepted connections inherit it; asyncio skips sockets made with proto 0 (create_server).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def create_server(
    app: Any,
    *,
    read_header_timeout: float | None = DEFAULT_READ_HEADER_TIMEOUT,
    access_log: bool = False,
) -> uvicorn.Server:
    """A uvicorn server for ``app``; serve it with ``await server.serve(sockets=[listener])``.

    ``read_header_timeout`` None or 0: headers may take forever.
    """
    protocol = type(
        PROTOCOL.__name__, (PROTOCOL,), {"read_header_timeout": read_header_timeout or None}
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        log_config=None,
        access_log=access_log,
        lifespan="off",
        server_header=False,
        proxy_headers=False,  # daprd takes no X-Forwarded-* either; one ASGI layer less
        timeout_graceful_shutdown=5,
    )
    return QuietServer(config)


__all__ = [
    "DEFAULT_READ_HEADER_TIMEOUT",
    "HeaderTimeoutProtocol",
    "QuietServer",
    "create_server",
    "listen",
]
