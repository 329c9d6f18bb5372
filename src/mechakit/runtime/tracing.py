"""W3C trace context through the sidecar, as daprd carries it.

Each call of the HTTP or gRPC API (but the health checks) is a span, the child of the
caller's ``traceparent``/``tracestate`` (gRPC: ``grpc-trace-bin`` first), or the root of a
new trace. The span's context goes to the callee's sidecar and app on invocation, into the
CloudEvent on publish (``traceparent``, ``tracestate`` and the legacy ``traceid``), and to
the subscriber with each delivery (a ``pubsub/<topic>`` span), and comes back as the
``traceparent`` response header of the HTTP API.

The Configuration's ``spec.tracing`` is daprd's: ``samplingRate`` (``"0"`` turns tracing
off: headers then pass through unchanged; no rate is 1 in 10,000; a sampled caller's trace
is always sampled), and spans of sampled traces are exported through OpenTelemetry's SDK to
``zipkin.endpointAddress`` and ``otel.endpointAddress`` (``protocol`` grpc or http,
``isSecure``), or logged with ``stdout: true``. The SDK is imported only when an exporter
is configured (``pip install 'mechakit[tracing]'``); the context itself is plain Python.
One sidecar per process: :func:`configure` sets the tracer every door uses.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from mechakit.core.errors import ConfigurationError

if TYPE_CHECKING:
    from .tracing_export import SpanExport

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
GRPC_TRACE_BIN = "grpc-trace-bin"
TRACEID_FIELD = "traceid"
"""The CloudEvent's legacy copy of ``traceparent``."""
DEFAULT_SAMPLING_RATE = 1e-4
"""daprd's rate when ``samplingRate`` is missing or not a number."""
MAX_TRACESTATE = 512
"""A longer ``tracestate`` is not passed on (daprd's ``MaxTracestateLen``)."""
MAX_VERSION = 254

T = TypeVar("T")

_HEX = re.compile(r"[0-9a-f]*")
_STATE_KEY = re.compile(
    r"[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
)
_STATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


class SpanKind(enum.Enum):
    """OpenTelemetry's span kinds, as daprd picks them: the API's spans are CLIENT, the
    internal invocation's SERVER, bulk publish entries PRODUCER."""

    INTERNAL = "INTERNAL"
    SERVER = "SERVER"
    CLIENT = "CLIENT"
    PRODUCER = "PRODUCER"
    CONSUMER = "CONSUMER"


@dataclass(frozen=True)
class TraceContext:
    """One span's W3C context: 32 and 16 lowercase hex digits, the flags (bit 0: sampled)
    and the vendors' ``tracestate``."""

    trace_id: str
    span_id: str
    flags: int = 1
    state: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def headers(self) -> list[tuple[str, str]]:
        """``traceparent``, and ``tracestate`` when there is one short enough to pass on."""
        out = [(TRACEPARENT, self.traceparent)]
        if self.state and len(self.state) <= MAX_TRACESTATE:
            out.append((TRACESTATE, self.state))
        return out

    def binary(self) -> bytes:
        """The ``grpc-trace-bin`` form (OpenCensus' binary format, 29 bytes)."""
        trace, span = bytes.fromhex(self.trace_id), bytes.fromhex(self.span_id)
        return b"\x00\x00" + trace + b"\x01" + span + b"\x02" + bytes([self.flags & 0xFF])

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
        """A ``traceparent`` read as daprd reads it (None when it is not valid): version
        00 has exactly four parts, a later version (up to fe) may have more; all-zero ids
        are invalid; a ``tracestate`` that is not valid is dropped, not the context."""
        parts = (traceparent or "").split("-")
        if len(parts) < 4 or len(parts[0]) != 2 or not _is_hex(parts[0]):
            return None
        version = int(parts[0], 16)
        if version > MAX_VERSION or (version == 0 and len(parts) != 4):
            return None
        trace_id, span_id, flags = parts[1].lower(), parts[2].lower(), parts[3]
        if len(trace_id) != 32 or len(span_id) != 16 or len(flags) < 2 or len(flags) % 2:
            return None
        if not (_is_hex(trace_id) and _is_hex(span_id) and _is_hex(flags)):
            return None
        if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
            return None
        return cls(trace_id, span_id, int(flags[:2], 16), parse_tracestate(tracestate))

    @classmethod
    def from_binary(cls, data: bytes) -> TraceContext | None:
        """A ``grpc-trace-bin`` value (None when it has no trace id or an unknown version)."""
        if len(data) < 19 or data[0] != 0 or data[1] != 0:
            return None
        trace_id, rest = data[2:18].hex(), data[18:]
        span_id, flags = "0" * 16, 0
        if len(rest) >= 9 and rest[0] == 1:
            span_id, rest = rest[1:9].hex(), rest[9:]
        if len(rest) >= 2 and rest[0] == 2:
            flags = rest[1]
        if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
            return None
        return cls(trace_id, span_id, flags)


def _is_hex(text: str) -> bool:
    return _HEX.fullmatch(text.lower()) is not None


def parse_tracestate(value: str | None) -> str:
    """``value`` as a valid ``tracestate`` (members ``key=value``, at most 32, no key
    twice), or empty when it is not one, as Go's OpenTelemetry parses it."""
    if not value:
        return ""
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or not _STATE_KEY.fullmatch(key) or not _STATE_VALUE.fullmatch(val):
            return ""
        if key in keys:
            return ""
        keys.add(key)
        members.append(f"{key}={val}")
    return ",".join(members) if len(members) <= 32 else ""


def incoming(pairs: Iterable[tuple[str, str | bytes]] | None) -> TraceContext | None:
    """The caller's context in HTTP headers or gRPC metadata: ``grpc-trace-bin`` when
    there is one, else ``traceparent`` with ``tracestate``."""
    found: dict[str, str | bytes] = {}
    for key, value in pairs or ():
        found.setdefault(key.lower(), value)
    binary = found.get(GRPC_TRACE_BIN)
    if isinstance(binary, bytes):
        return TraceContext.from_binary(binary)
    parent, state = found.get(TRACEPARENT), found.get(TRACESTATE)
    return TraceContext.parse(
        parent if isinstance(parent, str) else None, state if isinstance(state, str) else None
    )


def _setting(tracing: Mapping[str, Any], section: str, name: str) -> str:
    block = tracing.get(section) or {}
    if not isinstance(block, Mapping):
        raise ConfigurationError(f"Configuration spec.tracing.{section}: expected a mapping")
    value = block.get(name)
    return "" if value is None else str(value).strip()


@dataclass(frozen=True)
class TracingSettings:
    """The Configuration's ``spec.tracing``, read as daprd reads it."""

    sampling_rate: float = DEFAULT_SAMPLING_RATE
    zipkin_endpoint: str = ""
    otel_endpoint: str = ""
    otel_protocol: str = "grpc"
    otel_secure: bool = True
    otel_headers: tuple[tuple[str, str], ...] = ()
    stdout: bool = False

    @property
    def enabled(self) -> bool:
        return self.sampling_rate != 0

    @property
    def exports(self) -> bool:
        return bool(self.zipkin_endpoint or self.otel_endpoint or self.stdout)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> TracingSettings:
        """From a Configuration's ``spec``; a rate that is not a number is daprd's default,
        an unknown OTLP protocol or a header without ``=`` is an error naming the field."""
        tracing = spec.get("tracing") or {}
        if not isinstance(tracing, Mapping):
            raise ConfigurationError("Configuration spec.tracing: expected a mapping")
        try:
            rate = float(str(tracing.get("samplingRate", "")))
        except ValueError:
            rate = DEFAULT_SAMPLING_RATE
        if not math.isfinite(rate):
            rate = DEFAULT_SAMPLING_RATE
        protocol = (_setting(tracing, "otel", "protocol") or "grpc").lower()
        if protocol not in ("grpc", "http"):
            raise ConfigurationError(
                f"Configuration spec.tracing.otel.protocol: expected grpc or http, got {protocol!r}"
            )
        secure = _setting(tracing, "otel", "isSecure").lower() not in ("false", "0", "no")
        headers: list[tuple[str, str]] = []
        raw_headers = (tracing.get("otel") or {}).get("headers") or []
        for index, header in enumerate(raw_headers if isinstance(raw_headers, list) else []):
            name, eq, value = str(header).partition("=")
            if not eq or not name.strip():
                raise ConfigurationError(
                    f"Configuration spec.tracing.otel.headers[{index}]: expected "
                    f"name=value, got {header!r}"
                )
            headers.append((name.strip(), value.strip()))
        return cls(
            sampling_rate=rate,
            zipkin_endpoint=_setting(tracing, "zipkin", "endpointAddress"),
            otel_endpoint=_setting(tracing, "otel", "endpointAddress"),
            otel_protocol=protocol,
            otel_secure=secure,
            otel_headers=tuple(headers),
            stdout=str(tracing.get("stdout", "")).lower() == "true",
        )


@dataclass
class Span:
    """A span in progress; :meth:`end` hands it to the exporters when it is sampled."""

    name: str
    context: TraceContext
    parent: TraceContext | None
    kind: SpanKind
    tracer: Tracer
    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int = 0

    def fail(self, description: str) -> None:
        self.error = description

    def http_status(self, status: int) -> None:
        """An HTTP status of 400 or more marks the span failed (daprd's ``Code(404)``)."""
        if status >= 400:
            self.fail(f"Code({status})")

    def end(self) -> None:
        if not self.end_ns:
            self.end_ns = time.time_ns()
            self.tracer.finished(self)


class Tracer:
    """Starts spans: the trace and sampling decision of the parent (daprd's
    ``ParentBased(TraceIDRatioBased(rate))``), new span ids, and the exporters built from
    ``settings`` (none: spans only carry context)."""

    def __init__(self, settings: TracingSettings | None = None, app_id: str = "") -> None:
        self.settings = settings or TracingSettings()
        self.app_id = app_id
        self._export: SpanExport | None = None
        if self.settings.exports and self.settings.enabled:
            from .tracing_export import SpanExport

            self._export = SpanExport(self.settings, app_id)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def start(self, name: str, parent: TraceContext | None, kind: SpanKind) -> Span:
        trace_id = parent.trace_id if parent is not None else secrets.token_hex(16)
        sampled = parent.sampled if parent is not None else self._ratio_sampled(trace_id)
        state = parent.state if parent is not None else ""
        context = TraceContext(trace_id, secrets.token_hex(8), 1 if sampled else 0, state)
        return Span(name, context, parent, kind, self)

    def _ratio_sampled(self, trace_id: str) -> bool:
        """OpenTelemetry's ratio rule: the trace id's last 8 bytes, halved, under rate·2⁶³."""
        rate = self.settings.sampling_rate
        if rate >= 1:
            return True
        return (int(trace_id[16:], 16) >> 1) < int(max(rate, 0.0) * (1 << 63))

    def finished(self, span: Span) -> None:
        if span.context.sampled and self._export is not None:
            self._export.add(span)

    async def shutdown(self) -> None:
        """Sends what is still queued (at the sidecar's stop)."""
        if self._export is not None:
            import asyncio

            await asyncio.to_thread(self._export.shutdown)


_tracer = Tracer()
_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "mechakit_span", default=None
)


def configure(spec: Mapping[str, Any], app_id: str) -> Tracer:
    """The tracer of the Configuration's ``spec.tracing``, used from now on by every door."""
    global _tracer
    _tracer = Tracer(TracingSettings.from_spec(spec), app_id)
    return _tracer


def tracer() -> Tracer:
    return _tracer


def current() -> Span | None:
    """The span of the call being served, if tracing is on."""
    return _current.get()


@contextlib.contextmanager
def span(name: str, parent: TraceContext | None, kind: SpanKind) -> Iterator[Span | None]:
    """A span for the ``with`` block, current inside it (None when tracing is off); an
    exception leaving the block marks it failed."""
    if not _tracer.enabled:
        yield None
        return
    active = _tracer.start(name, parent, kind)
    token = _current.set(active)
    try:
        yield active
    except BaseException as exc:
        active.fail(str(exc) or type(exc).__name__)
        raise
    finally:
        _current.reset(token)
        active.end()


async def within(name: str, parent: TraceContext | None, kind: SpanKind, call: Awaitable[T]) -> T:
    """``await call`` inside :func:`span`."""
    with span(name, parent, kind):
        return await call


def trace_headers() -> list[tuple[str, str]]:
    """HTTP headers carrying the current span (none when there is none)."""
    active = _current.get()
    return active.context.headers() if active is not None else []


def trace_metadata() -> list[tuple[str, str | bytes]]:
    """gRPC metadata carrying the current span: ``traceparent`` (and ``tracestate``), and
    ``grpc-trace-bin`` as daprd sends it."""
    active = _current.get()
    if active is None:
        return []
    return [*active.context.headers(), (GRPC_TRACE_BIN, active.context.binary())]


def with_trace(
    pairs: Iterable[tuple[str, T]], carry: Callable[[], list[tuple[str, T]]]
) -> list[tuple[str, T]]:
    """``pairs`` with their trace keys replaced by the current span's (``carry``: one of
    :func:`trace_headers`, :func:`trace_metadata`); unchanged when there is no span, so an
    incoming ``traceparent`` passes through when tracing is off."""
    added = carry()
    if not added:
        return list(pairs)
    keys = {TRACEPARENT, TRACESTATE, GRPC_TRACE_BIN}
    return [(k, v) for k, v in pairs if k.lower() not in keys] + added


def cloudevent_fields(metadata: Mapping[str, str]) -> dict[str, str]:
    """``traceid``, ``traceparent`` and ``tracestate`` for a new CloudEvent: the current
    span's, overridden by metadata ``cloudevent.traceid``/``.traceparent``/``.tracestate``
    (``traceparent`` wins over ``traceid``); empty when there is neither."""
    overrides = {k.lower(): v for k, v in metadata.items() if k.lower().startswith("cloudevent.")}
    active = _current.get()
    traceid = active.context.traceparent if active is not None else ""
    state = active.context.state if active is not None else ""
    traceid = (
        overrides.get("cloudevent.traceparent") or overrides.get("cloudevent.traceid") or traceid
    )
    state = overrides.get("cloudevent.tracestate", state)
    if not traceid and not state:
        return {}
    return {TRACEID_FIELD: traceid, TRACEPARENT: traceid, TRACESTATE: state}


async def delivery(event: Mapping[str, Any], topic: str, call: Awaitable[T]) -> T:
    """``await call`` (sending ``event`` to the app) in a ``pubsub/<topic>`` span, the
    child of the event's ``traceparent`` (or ``traceid``), as daprd delivers; an event
    without either is sent without a span."""
    carried = event.get(TRACEPARENT, event.get(TRACEID_FIELD))
    if not isinstance(carried, str):
        return await call
    parent = TraceContext.parse(carried, str(event.get(TRACESTATE) or ""))
    with span(f"pubsub/{topic}", parent, SpanKind.CLIENT) as active:
        if active is not None:
            active.attributes.update(
                {"messaging.system": "pubsub", "messaging.destination.name": topic}
            )
        return await call


__all__ = [
    "DEFAULT_SAMPLING_RATE",
    "Span",
    "SpanKind",
    "TraceContext",
    "Tracer",
    "TracingSettings",
    "cloudevent_fields",
    "configure",
    "current",
    "delivery",
    "incoming",
    "parse_tracestate",
    "span",
    "trace_headers",
    "trace_metadata",
    "tracer",
    "with_trace",
    "within",
]
