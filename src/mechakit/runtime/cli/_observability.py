"""What ``mechakit run`` adds around the Dapr HTTP API: the header limit, API logging, metrics.

:class:`ApiEdge` is an ASGI wrapper in front of the HTTP API. It answers 431 to a request
whose request line and headers are larger than ``--read-buffer-size`` allows (as daprd's Go
server does with ``MaxHeaderBytes``, which reads 4 KiB beyond it before giving up), logs each
call in one line with ``--enable-api-logging`` (daprd's "HTTP API Called": method and path,
status, duration, response size, user agent) and counts it for the metrics.

:class:`SidecarMetrics` keeps daprd's metric names, in the Prometheus text format served on
``--metrics-port`` at ``/metrics`` (:func:`metrics_app`): HTTP server requests, responses and
latency, pub/sub and input-binding deliveries to the app, loaded components and the process.
"""

from __future__ import annotations

import bisect
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("mechakit.run")

API_LOG = logging.getLogger("mechakit.api")
"""Where ``--enable-api-logging`` writes: at info, whatever ``--log-level`` says (as daprd)."""

GO_HEADER_SLACK = 4096
"""Go's ``net/http`` reads this many bytes beyond ``MaxHeaderBytes`` before answering 431."""
GO_DEFAULT_MAX_HEADER_BYTES = 1 << 20
"""Go's limit when ``MaxHeaderBytes`` is 0 or negative (daprd's ``--read-buffer-size -1``)."""

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

_PROCESS_STARTED = time.time()

_Key = tuple[str, tuple[tuple[str, str], ...]]
"""A series: the metric's name and its sorted labels."""


def header_limit(read_buffer_size: int) -> int:
    """The most request-line and header bytes taken for ``--read-buffer-size``."""
    base = read_buffer_size if read_buffer_size > 0 else GO_DEFAULT_MAX_HEADER_BYTES
    return base + GO_HEADER_SLACK


def request_head_size(scope: Scope) -> int:
    """The bytes of the request line and headers as the client sent them (HTTP/1.1)."""
    target = len(scope.get("raw_path") or scope["path"].encode())
    query: bytes = scope.get("query_string", b"")
    if query:
        target += 1 + len(query)
    size = len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
    for name, value in scope["headers"]:
        size += len(name) + 2 + len(value) + 2
    return size + 2


class ApiEdge:
    """The ASGI wrapper in front of the HTTP API: header limit, API log line, metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_head_bytes: int | None,
        api_logging: bool = False,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes
        self.api_logging = api_logging
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        size = 0

        async def sending(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            if self.max_head_bytes and request_head_size(scope) > self.max_head_bytes:
                await _too_large_headers(sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            if self.metrics is not None:
                self.metrics.http_request(scope["method"], status, elapsed_ms)
            if self.api_logging:
                _log_call(scope, status, elapsed_ms, size)


async def _too_large_headers(send: Send) -> None:
    body = b"431 Request Header Fields Too Large"
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _log_call(scope: Scope, status: int, elapsed_ms: float, size: int) -> None:
    agent = next((v for k, v in scope["headers"] if k == b"user-agent"), b"")
    API_LOG.info(
        'HTTP API Called: method="%s %s" code=%d duration=%dms size=%d%s',
        scope["method"],
        scope["path"],
        status,
        round(elapsed_ms),
        size,
        f' useragent="{agent.decode("latin-1")}"' if agent else "",
    )


def enable_api_log() -> None:
    """API calls are logged at info even when ``--log-level`` is higher, as in daprd."""
    API_LOG.setLevel(logging.INFO)


class SidecarMetrics:
    """Counters and histograms under daprd's metric names, rendered for Prometheus."""

    FAMILIES = {
        "dapr_http_server_request_count": ("counter", "HTTP requests started in the server"),
        "dapr_http_server_response_count": ("counter", "HTTP responses sent by the server"),
        "dapr_http_server_latency": ("histogram", "HTTP request end-to-end latency (ms)"),
        "dapr_grpc_io_server_completed_rpcs": (
            "counter",
            "gRPC calls completed by the server, by method and status",
        ),
        "dapr_grpc_io_server_server_latency": (
            "histogram",
            "gRPC call latency in the server, by method and status (ms)",
        ),
        "dapr_component_pubsub_ingress_count": (
            "counter",
            "Messages from pub/sub components handed to the app",
        ),
        "dapr_component_pubsub_ingress_latencies": (
            "histogram",
            "The app's event processing latency (ms)",
        ),
        "dapr_component_input_binding_count": (
            "counter",
            "Events from input bindings handed to the app",
        ),
        "dapr_component_input_binding_latencies": (
            "histogram",
            "The app's binding event processing latency (ms)",
        ),
    }

    def __init__(self, app_id: str, components: Callable[[], int] = lambda: 0) -> None:
        self.app_id = app_id
        self.components = components
        self._counters: dict[_Key, float] = {}
        self._histograms: dict[_Key, list[float]] = {}
        self._per_call: dict[tuple[str, int | str], tuple[_Key, ...]] = {}

    def http_request(self, method: str, status: int, elapsed_ms: float) -> None:
        keys = self._per_call.get((method, status))
        if keys is None:  # once per method and status: the calls after reuse the keys
            labels = {"method": method, "status": str(status)}
            keys = self._per_call[(method, status)] = (
                self._key("dapr_http_server_request_count", {"method": method}),
                self._key("dapr_http_server_response_count", labels),
                self._key("dapr_http_server_latency", labels),
            )
        self._add(keys, elapsed_ms)

    def grpc_call(self, method: str, status: str, elapsed_ms: float) -> None:
        """A completed gRPC API call (``status`` in Go's spelling: ``OK``, ``NotFound``)."""
        keys = self._per_call.get((method, status))
        if keys is None:
            labels = {"grpc_server_method": method, "grpc_server_status": status}
            keys = self._per_call[(method, status)] = (
                self._key("dapr_grpc_io_server_completed_rpcs", labels),
                self._key("dapr_grpc_io_server_server_latency", labels),
            )
        self._add(keys, elapsed_ms)

    def _add(self, keys: tuple[_Key, ...], elapsed_ms: float) -> None:
        """Count each counter of ``keys``, and put ``elapsed_ms`` in the last one's histogram."""
        counters = self._counters
        for key in keys[:-1]:
            counters[key] = counters.get(key, 0.0) + 1
        self._observe_key(keys[-1], elapsed_ms)

    def pubsub_ingress(self, component: str, topic: str, status: str, elapsed_ms: float) -> None:
        labels = {"component": component, "namespace": "", "topic": topic}
        self._count("dapr_component_pubsub_ingress_count", process_status=status, **labels)
        self._observe("dapr_component_pubsub_ingress_latencies", elapsed_ms, **labels)

    def input_binding(self, component: str, success: bool, elapsed_ms: float) -> None:
        labels = {"component": component, "namespace": "", "success": str(success).lower()}
        self._count("dapr_component_input_binding_count", **labels)
        self._observe("dapr_component_input_binding_latencies", elapsed_ms, **labels)

    def _key(self, name: str, labels: dict[str, str]) -> _Key:
        return name, (("app_id", self.app_id), *sorted(labels.items()))

    def _count(self, name: str, **labels: str) -> None:
        key = self._key(name, labels)
        self._counters[key] = self._counters.get(key, 0.0) + 1

    def _observe(self, name: str, value: float, **labels: str) -> None:
        self._observe_key(self._key(name, labels), value)

    def _observe_key(self, key: _Key, value: float) -> None:
        """``series[i]`` counts the values in bucket ``i`` alone; :meth:`render` sums them."""
        series = self._histograms.get(key)
        if series is None:
            series = self._histograms[key] = [0.0] * (len(LATENCY_BUCKETS_MS) + 2)
        bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, value)
        if bucket < len(LATENCY_BUCKETS_MS):
            series[bucket] += 1
        series[-2] += value
        series[-1] += 1

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        lines: list[str] = []
        for name, (kind, help_text) in self.FAMILIES.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                for (family, labels), value in self._counters.items():
                    if family == name:
                        lines.append(f"{name}{_labels(labels)} {_number(value)}")
                continue
            for (family, labels), series in self._histograms.items():
                if family != name:
                    continue
                cumulative = 0.0
                for bound, count in zip(LATENCY_BUCKETS_MS, series, strict=False):
                    cumulative += count
                    bucket = (*labels, ("le", str(bound)))
                    lines.append(f"{name}_bucket{_labels(bucket)} {_number(cumulative)}")
                everything = (*labels, ("le", "+Inf"))
                lines.append(f"{name}_bucket{_labels(everything)} {_number(series[-1])}")
                lines.append(f"{name}_sum{_labels(labels)} {series[-2]:.3f}")
                lines.append(f"{name}_count{_labels(labels)} {_number(series[-1])}")
        lines += [
            "# HELP dapr_runtime_component_loaded The number of successfully loaded components",
            "# TYPE dapr_runtime_component_loaded gauge",
            f"dapr_runtime_component_loaded{_labels((('app_id', self.app_id),))} "
            f"{self.components()}",
            *_process_lines(),
        ]
        return "\n".join(lines) + "\n"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _process_lines() -> list[str]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lines = [
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {_PROCESS_STARTED:.3f}",
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {usage.ru_utime + usage.ru_stime:.3f}",
    ]
    resident = _resident_bytes()
    if resident is not None:
        lines += [
            "# HELP process_resident_memory_bytes Resident memory size in bytes",
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes {resident}",
        ]
    return lines


def _resident_bytes() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def metrics_app(metrics: SidecarMetrics) -> ASGIApp:
    """An ASGI app answering ``GET /metrics`` (and ``/``) with the metrics; 404 otherwise."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in ("/metrics", "/") and scope["method"] in ("GET", "HEAD"):
            status, body = 200, metrics.render().encode()
            kind = b"text/plain; version=0.0.4; charset=utf-8"
        else:
            status, body, kind = 404, b"404 page not found\n", b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
            }
        )
        await send(
            {"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""}
        )

    return app


__all__ = [
    "API_LOG",
    "ApiEdge",
    "SidecarMetrics",
    "enable_api_log",
    "header_limit",
    "metrics_app",
    "request_head_size",
]
