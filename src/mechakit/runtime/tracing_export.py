"""Exporting finished spans through OpenTelemetry's SDK: Zipkin (JSON v2), OTLP over gRPC or
HTTP, as the Configuration's ``spec.tracing`` asks, each behind the SDK's batching processor
(a queue and a worker thread, so ending a span never blocks the event loop).

Imported only when an exporter is configured: the SDK and exporters are the ``tracing``
extra. ``stdout: true`` logs each span in daprd's line and needs no SDK.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mechakit.core.errors import ConfigurationError

if TYPE_CHECKING:
    from .tracing import Span, TracingSettings

log = logging.getLogger("mechakit.tracing")

EXPORT_DELAY_MS = 500
"""How long finished spans wait to be sent in one batch."""
INSTALL_HINT = "pip install 'mechakit[tracing]'"


class SpanExport:
    """The exporters of ``settings``, fed with sampled spans of service ``app_id``."""

    def __init__(self, settings: TracingSettings, app_id: str) -> None:
        self._stdout = settings.stdout
        self._processors: list[Any] = []
        if not (settings.zipkin_endpoint or settings.otel_endpoint):
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise ConfigurationError(
                f"Configuration spec.tracing: exporting spans needs OpenTelemetry's SDK "
                f"({exc.name} is missing): {INSTALL_HINT}"
            ) from None
        self._resource = Resource.create({"service.name": app_id or "mechakit"})
        for exporter in _exporters(settings):
            self._processors.append(
                BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS)
            )

    def add(self, span: Span) -> None:
        if self._stdout:
            parent = span.parent.span_id if span.parent is not None else "0" * 16
            log.info(
                "[%s] Trace: %s Span: %s/%s Time: [%d -> %d]",
                span.name,
                span.context.trace_id,
                parent,
                span.context.span_id,
                span.start_ns,
                span.end_ns,
            )
        if self._processors:
            readable = self._readable(span)
            for processor in self._processors:
                processor.on_end(readable)

    def _readable(self, span: Span) -> Any:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        def otel_context(context: Any, *, remote: bool) -> trace.SpanContext:
            return trace.SpanContext(
                int(context.trace_id, 16),
                int(context.span_id, 16),
                is_remote=remote,
                trace_flags=trace.TraceFlags(context.flags & 0xFF),
                trace_state=trace.TraceState.from_header([context.state] if context.state else []),
            )

        status = (
            trace.Status(trace.StatusCode.ERROR, span.error)
            if span.error is not None
            else trace.Status(trace.StatusCode.UNSET)
        )
        return ReadableSpan(
            span.name,
            context=otel_context(span.context, remote=False),
            parent=None if span.parent is None else otel_context(span.parent, remote=True),
            resource=self._resource,
            attributes=dict(span.attributes),
            kind=trace.SpanKind[span.kind.value],
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=InstrumentationScope("dapr-diagnostics"),
        )

    def shutdown(self) -> None:
        """Sends what is queued and stops the workers (blocking; run off the loop)."""
        for processor in self._processors:
            processor.shutdown()
        self._processors.clear()


def _exporters(settings: TracingSettings) -> list[Any]:
    exporters: list[Any] = []
    try:
        if settings.zipkin_endpoint:
            from opentelemetry.exporter.zipkin.json import ZipkinExporter

            exporters.append(ZipkinExporter(endpoint=settings.zipkin_endpoint))
        if settings.otel_endpoint:
            exporters.append(_otlp(settings))
    except ImportError as exc:
        raise ConfigurationError(
            f"Configuration spec.tracing: the exporter's package {exc.name} is missing: "
            f"{INSTALL_HINT}"
        ) from None
    return exporters


def _otlp(settings: TracingSettings) -> Any:
    """OTLP as daprd dials it: ``endpointAddress`` is ``host:port``, TLS unless
    ``isSecure: false``; over HTTP the traces path is ``/v1/traces``."""
    address = settings.otel_endpoint
    headers = dict(settings.otel_headers)
    if settings.otel_protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if "://" not in address:
            scheme = "https" if settings.otel_secure else "http"
            address = f"{scheme}://{address.rstrip('/')}/v1/traces"
        return OTLPSpanExporter(endpoint=address, headers=headers or None)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    return GrpcSpanExporter(
        endpoint=address, insecure=not settings.otel_secure, headers=headers or None
    )


__all__ = ["EXPORT_DELAY_MS", "SpanExport"]
