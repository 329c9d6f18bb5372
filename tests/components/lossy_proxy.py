"""A TCP proxy in front of a real server that loses the answer to one request.

The request reaches the server, which applies it; its answer never reaches the client.
That is the fault behind false conflicts: a client that then sends the write again finds
its own write. ``lose_reply()`` arms the proxy: the next request (a client-to-server
chunk, optionally only one containing ``marker``) is forwarded, and everything the server
sends back on that connection is dropped. ``"close"`` then closes the client's side (a
connection that dies before the answer); ``"stall"`` keeps it open, silent, until the
client gives up (a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

Mode = Literal["close", "stall"]


@dataclass
class _Armed:
    mode: Mode
    marker: bytes


class LossyProxy:
    """``async with LossyProxy(host, port) as proxy``: clients connect to ``proxy.port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.upstream_port = host, port
        self.port = 0
        self.lost = 0
        """How many answers were lost so far."""
        self.chunks = 0
        """How many client-to-server reads carried data (about one per round trip)."""
        self._armed: _Armed | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def lose_reply(self, mode: Mode = "close", marker: bytes = b"") -> None:
        """Lose the answer to the next request (containing ``marker``, if given)."""
        self._armed = _Armed(mode, marker)

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # asyncio logs a handler that ends cancelled (at __aexit__) as an error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump(client_r, client_w)

    async def _pump(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        lose: list[Mode] = []  # set once this connection's answers are to be lost
        counted: list[bool] = []

        async def upstream() -> None:
            while chunk := await client_r.read(65536):
                self.chunks += 1
                armed = self._armed
                if armed is not None and not lose and armed.marker in chunk:
                    self._armed = None
                    lose.append(armed.mode)
                server_w.write(chunk)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while chunk := await server_r.read(65536):
                if not lose:
                    client_w.write(chunk)
                    await client_w.drain()
                elif not counted:
                    counted.append(True)
                    self.lost += 1
                    if lose[0] == "close":
                        client_w.transport.abort()
            client_w.close()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.transport.abort()
                self._writers.discard(writer)
            self._tasks.difference_update(tasks)
