"""How the sidecar talks to the app for each ``--app-protocol``, decided in one place.

As daprd: ``http`` and ``grpc`` are cleartext; ``https`` and ``grpcs`` are TLS (1.2 or
later) without verifying the app's certificate (daprd's ``InsecureSkipVerify``), since the
app is local and usually self-signed; ``h2c`` is HTTP/2 over cleartext with prior knowledge.

gRPC Python cannot skip certificate verification, so a ``grpcs`` channel is a cleartext
channel to a loopback :class:`TlsRelay` of the sidecar's own, which carries each connection
to the app over TLS (ALPN ``h2``) without checking the certificate: any certificate the app
presents works, self-signed, expired, or renewed while running.

httpx, grpcio and the ``h2`` package (for ``h2c``) are imported inside the functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc.aio
    import httpx

log = logging.getLogger("mechakit.delivery")

APP_PROTOCOLS = ("http", "grpc", "https", "grpcs", "h2c")
"""The values of ``--app-protocol``, as daprd takes them."""
_RELAY_CONNECT_TIMEOUT = 10.0
_CHUNK = 64 * 1024


def is_grpc(protocol: str) -> bool:
    """Whether the app is called over gRPC (``grpc``, ``grpcs``) rather than HTTP."""
    return protocol.startswith("grpc")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def http_base_url(protocol: str, host: str, port: int) -> str:
    """``https://host:port`` for ``https``, ``http://host:port`` for ``http`` and ``h2c``."""
    scheme = "https" if protocol == "https" else "http"
    return f"{scheme}://{_bracketed(host)}:{port}"


def unverified_tls(alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A client context as daprd's app channel: TLS 1.2 or later, no certificate check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def http_client(
    protocol: str,
    host: str,
    port: int,
    *,
    timeout: float | httpx.Timeout,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """The client for an HTTP app (``http``, ``https``, ``h2c``), based at its address."""
    import httpx

    if protocol not in ("http", "https", "h2c"):
        raise ValueError(f"--app-protocol {protocol!r} is not an HTTP protocol (http, https, h2c)")
    if protocol == "h2c":
        try:
            import h2  # noqa: F401
        except ImportError:
            raise ValueError(
                "--app-protocol h2c needs the 'h2' package: pip install 'mechakit[sidecar]'"
            ) from None
    return httpx.AsyncClient(
        base_url=http_base_url(protocol, host, port),
        timeout=timeout,
        headers=headers,
        verify=unverified_tls() if protocol == "https" else True,
        http1=protocol != "h2c",
        http2=protocol == "h2c",
        trust_env=False,
    )


@dataclass
class AppGrpcChannel:
    """A gRPC channel to the app and, for ``grpcs``, the relay it goes through."""

    channel: grpc.aio.Channel
    relay: TlsRelay | None = None

    async def close(self) -> None:
        await self.channel.close()
        if self.relay is not None:
            await self.relay.close()


def grpc_channel(protocol: str, host: str, port: int) -> AppGrpcChannel:
    """The channel to a gRPC app (``grpc``, ``grpcs``); needs a running event loop for
    ``grpcs`` (the relay is served on it)."""
    import grpc.aio

    address = f"{_bracketed(host)}:{port}"
    if protocol == "grpc":
        return AppGrpcChannel(grpc.aio.insecure_channel(address))
    if protocol != "grpcs":
        raise ValueError(f"--app-protocol {protocol!r} is not a gRPC protocol (grpc, grpcs)")
    relay = TlsRelay(host, port)
    channel = grpc.aio.insecure_channel(
        relay.address, options=[("grpc.default_authority", address)]
    )
    return AppGrpcChannel(channel, relay)


class TlsRelay:
    """A loopback port whose every connection is carried to ``host:port`` over TLS with
    ALPN ``h2``, the app's certificate unchecked: how a ``grpcs`` channel skips verification."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._tls = unverified_tls(alpn=("h2",))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._connections: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self._listener)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._carry(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target
        try:
            app_reader, app_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=self._tls, server_hostname=host),
                _RELAY_CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.debug("grpcs: cannot reach the app at %s:%d over TLS: %s", host, port, exc)
            await _shut(writer)
            return
        pumps = [
            asyncio.create_task(_pump(reader, app_writer)),
            asyncio.create_task(_pump(app_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await _shut(app_writer)
            await _shut(writer)

    async def close(self) -> None:
        self._starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._starting
        if self._server is not None:
            self._server.close()
        self._listener.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream (or a broken connection, which ends the pair)."""
    with contextlib.suppress(OSError):
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()


async def _shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), _RELAY_CONNECT_TIMEOUT)


__all__ = [
    "APP_PROTOCOLS",
    "AppGrpcChannel",
    "TlsRelay",
    "grpc_channel",
    "http_base_url",
    "http_client",
    "is_grpc",
    "unverified_tls",
]
