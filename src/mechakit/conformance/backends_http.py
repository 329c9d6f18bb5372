"""The ``http-echo`` backend: a tiny HTTP server in a thread, for ``bindings.http``.

It answers every method (``HEAD`` without a body):

- ``/status/<code>``: that status, body ``status <code>``;
- ``/bytes/<n>``: ``n`` bytes of ``x``;
- ``/delay/<seconds>``: waits, then echoes like the default;
- ``/inspect...``: a JSON description ``{method, path, headers, body}`` of the request;
- anything else: echoes the request body, with headers ``X-Echo-Method`` and ``X-Echo-Path``.

``MECHAKIT_HTTP_ECHO_URL`` points the suite at another server that behaves the same.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .backends import Backend, BackendInfo


class EchoServer:
    """The echo server on a free loopback port, served from a daemon thread."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mechakit-http-echo", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the suite's output is about the component, not this server."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        status, extra = 200, {"X-Echo-Method": self.command, "X-Echo-Path": self.path}
        if parts[0] == "status" and len(parts) > 1 and parts[1].isdigit():
            status, body = int(parts[1]), f"status {parts[1]}".encode()
        elif parts[0] == "bytes" and len(parts) > 1 and parts[1].isdigit():
            body = b"x" * int(parts[1])
        elif parts[0] == "inspect":
            body = json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k: v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", errors="replace"),
                }
            ).encode()
            extra["Content-Type"] = "application/json"
        elif parts[0] == "delay" and len(parts) > 1:
            time.sleep(float(parts[1]))
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = _handle


class HTTPEchoBackend(Backend):
    name = "http-echo"
    env_var = "MECHAKIT_HTTP_ECHO_URL"

    def start_local(self, workdir: Path) -> BackendInfo:
        server = EchoServer().start()
        return BackendInfo({"url": server.url}, source="in-process echo server", stop=server.stop)
