"""What ``mechakit run`` puts between the delivery and the app.

An :class:`AppGate` wraps the app channel that :class:`~mechakit.runtime.delivery.Delivery`
sends through, so that the ``dapr run`` flags about the app work without changing the
delivery itself:

* ``--app-max-concurrency``: at most that many events, binding events and configuration
  updates are in flight to the app; the others wait for a turn (the pub/sub component still
  holds them, unacknowledged).
* ``--enable-app-health-check``: :class:`AppHealthProbe` probes the app as daprd does (HTTP
  ``GET`` of the health path, 2xx is healthy; gRPC ``AppCallbackHealthCheck/HealthCheck``).
  Nothing is sent before the first successful probe, nor after ``--app-health-threshold``
  failures in a row until one succeeds again. Given the delivery, the probe also pauses it
  (:meth:`~mechakit.runtime.delivery.Delivery.pause`: the broker subscriptions and input
  binding reads are cancelled, as daprd stops them) and the sends waiting at the gate are
  refused with :class:`~mechakit.core.delivery.NotDelivered`, so the cancelling does not
  wait for them and the broker gets them back as never delivered (no delivery counted
  toward ``maxDeliveries``, no retry of the inbound resiliency policy used up); ``resume``
  once healthy again.
  Without it, deliveries wait at the gate, unacknowledged.
* ``--dapr-graceful-shutdown-seconds``: :meth:`AppGate.drain` stops handing new work to the
  app, waits for what is in flight until the deadline, then abandons the rest: an abandoned
  event is answered RETRY (not acknowledged, so the broker redelivers it), as are the events
  that were waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from mechakit.core.bindings import BindingEvent
from mechakit.core.delivery import NotDelivered
from mechakit.runtime.app_channels import AppAnswer, AppChannel, AppRetryError, AppStatus
from mechakit.runtime.bulk_subscribe import BulkEntry, BulkOutcome
from mechakit.runtime.routing import AppSubscription

if TYPE_CHECKING:
    from mechakit.runtime.delivery import Delivery

    from ._observability import SidecarMetrics

log = logging.getLogger("mechakit.run")

T = TypeVar("T")

STOPPING = "not sent: mechakit run is stopping"
UNHEALTHY = "not sent: the app is unhealthy, deliveries are paused"


class _Abandoned(Exception):
    """A send cut short by the end of the graceful shutdown."""


class AppGate(AppChannel):
    """An app channel that limits, pauses and drains what is sent through ``inner``."""

    protocol: ClassVar[str] = "http"

    def __init__(
        self,
        inner: AppChannel,
        *,
        max_concurrency: int | None = None,
        health_checked: bool = False,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        super().__init__(inner.port, host=inner.host, timeout=inner.timeout)
        self.inner = inner
        self.metrics = metrics
        self._slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._healthy = not health_checked
        self._refusing = False
        self._draining = False
        self._closed = False
        self._state = asyncio.Condition()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._scopes: set[asyncio.Timeout] = set()

    @property
    def in_flight(self) -> int:
        """Sends the app has been handed and not yet answered."""
        return self._in_flight

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def set_healthy(self, healthy: bool, *, refuse: bool = False) -> None:
        """Resume (or pause) sending; called by :class:`AppHealthProbe`. ``refuse``: while
        unhealthy, sends (waiting or new) raise ``NotDelivered`` instead of waiting."""
        async with self._state:
            self._healthy = healthy
            self._refusing = refuse and not healthy
            self._state.notify_all()

    def stop_taking_new(self) -> None:
        """From now on nothing new is handed to the app (what is in flight goes on). Those
        waiting for a turn keep waiting: closing the gate wakes nobody."""
        self._draining = True

    async def drain(self, deadline: float) -> int:
        """Stop taking new work, wait for the sends in flight until ``deadline`` (event-loop
        time), then abandon those left; returns how many were abandoned."""
        self.stop_taking_new()
        loop = asyncio.get_running_loop()
        if self._in_flight:
            log.info(
                "waiting up to %.1fs for %d delivery(ies) in flight to the app",
                max(deadline - loop.time(), 0.0),
                self._in_flight,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(deadline - loop.time(), 0.0))
        abandoned = self._in_flight
        if abandoned:
            log.warning(
                "%d delivery(ies) still in flight to the app at the end of the graceful "
                "shutdown: abandoned, not acknowledged (--dapr-graceful-shutdown-seconds)",
                abandoned,
            )
            now = loop.time()
            for scope in list(self._scopes):
                scope.reschedule(now)
        async with self._state:
            self._closed = True
            self._state.notify_all()
        if abandoned:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
        return abandoned

    async def _send(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` once the app may be sent something, counted in flight meanwhile."""
        await self._take_turn()
        try:
            self._in_flight += 1
            self._idle.clear()
            scope: asyncio.Timeout | None = None
            try:
                async with asyncio.timeout(None) as scope:
                    self._scopes.add(scope)
                    return await call()
            except TimeoutError:
                if scope is not None and scope.expired() and self._draining:
                    raise _Abandoned(STOPPING) from None
                raise
            finally:
                if scope is not None:
                    self._scopes.discard(scope)
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _take_turn(self) -> None:
        """Wait until the gate is open (healthy app, not draining) and a slot is free."""
        while True:
            async with self._state:
                await self._state.wait_for(self._may_send)
            if self._closed:
                raise _Abandoned(STOPPING)
            if self._refusing:
                raise NotDelivered(UNHEALTHY)
            if self._slots is None:
                return
            await self._slots.acquire()
            if self._may_send() and not self._closed and not self._refusing:
                return
            self._slots.release()

    def _may_send(self) -> bool:
        return self._closed or self._refusing or (self._healthy and not self._draining)

    async def wait_ready(self, limit: float) -> None:
        await self.inner.wait_ready(limit)

    async def subscriptions(self) -> list[AppSubscription]:
        return await self.inner.subscriptions()

    async def listens_to_binding(self, name: str, route: str) -> bool:
        return await self.inner.listens_to_binding(name, route)

    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        started = time.perf_counter()
        try:
            answer = await self._send(lambda: self.inner.send_event(event, path, subscription))
        except _Abandoned as exc:
            answer = AppAnswer(AppStatus.RETRY, str(exc))
        if self.metrics is not None:
            self.metrics.pubsub_ingress(
                subscription.pubsub_name,
                subscription.topic,
                answer.status.value.lower(),
                (time.perf_counter() - started) * 1000,
            )
        return answer

    async def send_bulk(
        self, entries: Sequence[BulkEntry], path: str, subscription: AppSubscription
    ) -> BulkOutcome:
        started = time.perf_counter()
        try:
            outcome = await self._send(lambda: self.inner.send_bulk(entries, path, subscription))
        except _Abandoned as exc:
            outcome = BulkOutcome(str(exc), whole="RETRY")
        if self.metrics is not None:
            elapsed = (time.perf_counter() - started) * 1000
            for entry in entries:
                status = outcome.status_of(entry.entry_id).lower()
                self.metrics.pubsub_ingress(
                    subscription.pubsub_name, subscription.topic, status, elapsed
                )
        return outcome

    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        started = time.perf_counter()
        success = False
        try:
            await self._send(lambda: self.inner.send_binding(name, route, event))
            success = True
        except _Abandoned as exc:
            raise AppRetryError(f"input binding {name!r}: event {exc}") from None
        finally:
            if self.metrics is not None:
                self.metrics.input_binding(name, success, (time.perf_counter() - started) * 1000)

    async def send_configuration(self, method: str, body: bytes) -> None:
        try:
            await self._send(lambda: self.inner.send_configuration(method, body))
        except (_Abandoned, NotDelivered) as exc:
            raise AppRetryError(f"configuration update {method}: {exc}") from None

    async def close(self) -> None:
        await self.inner.close()


class _GrpcAppGate(AppGate):
    protocol = "grpc"


def gate(
    inner: AppChannel,
    *,
    max_concurrency: int | None = None,
    health_checked: bool = False,
    metrics: SidecarMetrics | None = None,
) -> AppGate:
    """The gate for ``inner``, with its protocol."""
    kind = _GrpcAppGate if inner.protocol == "grpc" else AppGate
    return kind(
        inner, max_concurrency=max_concurrency, health_checked=health_checked, metrics=metrics
    )


class AppHealthProbe:
    """Probes the app every ``interval`` seconds, opens or closes the gate, and pauses or
    resumes ``delivery`` (given: nothing is subscribed before the first successful probe)."""

    def __init__(
        self,
        target: AppGate,
        *,
        protocol: str,
        host: str,
        port: int,
        path: str,
        interval: float,
        timeout: float,
        threshold: int,
        delivery: Delivery | None = None,
    ) -> None:
        from mechakit.runtime.app_transport import is_grpc

        self.target = target
        self.delivery = delivery
        self.app_protocol = protocol
        """The ``--app-protocol`` probed with (``http``, ``https``, ``h2c``, ``grpc``, ``grpcs``)."""
        self.protocol = "grpc" if is_grpc(protocol) else "http"
        self.host = host
        self.port = port
        self.path = path if path.startswith("/") else f"/{path}"
        self.interval = interval
        self.timeout = timeout
        self.threshold = max(threshold, 1)
        self._task: asyncio.Task[None] | None = None
        self._probe: Callable[[], Awaitable[str | None]] | None = None
        self._close: Callable[[], Awaitable[None]] | None = None

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.protocol == "grpc":
            return f"{host}:{self.port} (gRPC AppCallbackHealthCheck)"
        from mechakit.runtime.app_transport import http_base_url

        return f"{http_base_url(self.app_protocol, self.host, self.port)}{self.path}"

    def start(self) -> None:
        if self.delivery is not None:
            self.delivery.hold()
        self._probe, self._close = (
            self._grpc_probe() if self.protocol == "grpc" else self._http_probe()
        )
        self._task = asyncio.create_task(self._run(), name="mechakit app health")
        log.info(
            "app health checks: probing %s every %gs (timeout %gms, unhealthy after %d "
            "failure(s)); nothing is delivered until a probe succeeds",
            self.where,
            self.interval,
            self.timeout * 1000,
            self.threshold,
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._close is not None:
            await self._close()
            self._close = None

    async def _run(self) -> None:
        assert self._probe is not None
        failures = 0
        healthy: bool | None = None
        while True:
            problem = await self._probe()
            if problem is None:
                failures = 0
                if healthy is not True:
                    healthy = True
                    log.info("app is healthy: delivering to it")
                    await self.target.set_healthy(True)
                    if self.delivery is not None:
                        await self.delivery.resume()
            else:
                failures += 1
                log.debug("app health probe failed (%d in a row): %s", failures, problem)
                if failures >= self.threshold and healthy is not False:
                    was_healthy = healthy is True
                    healthy = False
                    await self.target.set_healthy(False, refuse=self.delivery is not None)
                    if self.delivery is not None:
                        await self.delivery.pause()
                    if was_healthy:
                        log.warning(
                            "app is unhealthy after %d failed probe(s) (%s): deliveries "
                            "paused until a probe succeeds",
                            failures,
                            problem,
                        )
                    else:
                        log.warning("app is not healthy yet (%s): nothing delivered", problem)
            await asyncio.sleep(self.interval)

    def _http_probe(
        self,
    ) -> tuple[Callable[[], Awaitable[str | None]], Callable[[], Awaitable[None]]]:
        import httpx

        from mechakit.runtime.app_transport import http_client

        client = http_client(
            self.app_protocol,
            self.host,
            self.port,
            timeout=self.timeout,
            headers={"user-agent": "mechakit"},
        )

        async def probe() -> str | None:
            try:
                response = await client.get(self.path)
            except httpx.HTTPError as exc:
                return f"GET {self.path}: {type(exc).__name__} {exc}".rstrip()
            if 200 <= response.status_code < 300:
                return None
            return f"GET {self.path}: HTTP {response.status_code}"

        return probe, client.aclose

    def _grpc_probe(
        self,
    ) -> tuple[Callable[[], Awaitable[str | None]], Callable[[], Awaitable[None]]]:
        import grpc
        import grpc.aio
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc
        from google.protobuf import empty_pb2

        from mechakit.runtime.app_transport import grpc_channel

        link = grpc_channel(self.app_protocol, self.host, self.port)
        stub = appcallback_pb2_grpc.AppCallbackHealthCheckStub(link.channel)  # type: ignore[no-untyped-call]

        async def probe() -> str | None:
            try:
                await stub.HealthCheck(empty_pb2.Empty(), timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                return f"HealthCheck: {exc.code().name} {exc.details() or ''}".rstrip()
            return None

        return probe, link.close


__all__ = ["AppGate", "AppHealthProbe", "gate"]
