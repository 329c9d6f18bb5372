"""How ``mechakit run`` serves the HTTP API: the listening socket and the uvicorn server.

uvicorn has no limit on how long a client may take to send a request's headers, so a few
thousand half-sent requests stay open as long as their clients like. The protocol here
closes a connection whose request line and headers are not complete
``read_header_timeout`` seconds after it opened (or, on a kept-alive connection, after the
next request's first bytes arrived), as Go's ``http.Server.ReadHeaderTimeout`` does in
daprd. The body has its own deadline (:mod:`mechakit.runtime.http_guards`).

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

log = logging.getLogger("mechakit.http")

DEFAULT_READ_HEADER_TIMEOUT = 10.0
"""daprd's ``ReadHeaderTimeout`` (``pkg/api/http/server.go``: ``10 * time.Second``)."""


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose headers take too long."""

    read_header_timeout: ClassVar[float | None] = DEFAULT_READ_HEADER_TIMEOUT

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the first bytes of a next request
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # a request's headers are complete
            self._disarm_header_timer()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm_header_timer()  # the headers are complete; the connection is not ours now
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

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
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"read_header_timeout": read_header_timeout or None},
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        log_config=None,
        access_log=access_log,
        lifespan="off",
        server_header=False,
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
