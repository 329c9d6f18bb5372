"""The sidecar ``mechakit run`` serves: components started, the Dapr HTTP and gRPC APIs, the
app run as a child that dies with it, subscriptions delivered to it.

The APIs listen on TCP (each of ``--dapr-listen-addresses``) or, with
``--unix-domain-socket DIR``, on ``DIR/dapr-<app-id>-http.socket`` and
``DIR/dapr-<app-id>-grpc.socket`` only, as daprd. Beside them: the internal gRPC port (service
invocation from other sidecars) and the metrics port. Deliveries to the app go through an
:class:`~._app_gate.AppGate` (concurrency limit, health pause, drain).

Stopping (a signal, or the app exiting) is graceful for ``--dapr-graceful-shutdown-seconds``
from that moment: nothing new is handed to the app, deliveries in flight are waited for, then
the gRPC and HTTP APIs finish the calls they are serving, within what is left of it.

Everything from the ``sidecar`` extra (starlette, uvicorn, grpcio, dapr, httpx) is imported
inside the functions, so importing this module (and ``mechakit --help``) needs none of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dapr_flags import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_THRESHOLD,
    DEFAULT_HEALTH_TIMEOUT_MS,
    DEFAULT_INTERNAL_GRPC_PORT,
    DEFAULT_METRICS_PORT,
    plain_protocol,
)

if TYPE_CHECKING:
    import grpc
    import grpc.aio
    import uvicorn

    from mechakit.runtime.app_process import AppProcess
    from mechakit.runtime.delivery import Delivery
    from mechakit.runtime.grpc_server import GrpcServer
    from mechakit.runtime.in_process import Runtime
    from mechakit.runtime.manifest import Manifests
    from mechakit.runtime.service.invocation import Invoker

    from ._app_gate import AppGate, AppHealthProbe
    from ._observability import ApiEdge, SidecarMetrics

__all__ = ["DEFAULT_GRPC_PORT", "serve", "socket_path"]


def socket_path(folder: str, app_id: str, api: str) -> str:
    """Where daprd puts an API's Unix socket: ``<folder>/dapr-<app-id>-<http|grpc>.socket``."""
    return os.path.join(folder, f"dapr-{app_id}-{api}.socket")


class Shutdown:
    """When stopping began, so every step gets what is left of the graceful period."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.began: float | None = None

    def begin(self) -> None:
        if self.began is None:
            self.began = asyncio.get_running_loop().time()

    @property
    def deadline(self) -> float:
        self.begin()
        assert self.began is not None
        return self.began + self.seconds

    def remaining(self) -> float:
        return max(self.deadline - asyncio.get_running_loop().time(), 0.0)


async def serve(namespace: argparse.Namespace, command: list[str]) -> int:
    from mechakit.core.errors import MechakitError
    from mechakit.runtime.in_process import Runtime

    log = logging.getLogger("mechakit.run")
    try:
        manifests, configuration = await asyncio.to_thread(_run_resources, namespace, log)
    except MechakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    runtime = Runtime(manifests, app_id=namespace.app_id, configuration=configuration)
    log.info("app id %r: starting %d component(s)", namespace.app_id, len(manifests.components))
    try:
        await runtime.start()
    except MechakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return await _serve_started(runtime, namespace, command, log)
    finally:
        await runtime.close()


def _run_resources(
    namespace: argparse.Namespace, log: logging.Logger
) -> tuple[Manifests, str | None]:
    """The manifests to run and the name of the Configuration to apply."""
    import tempfile

    from mechakit.core.errors import ConfigurationError
    from mechakit.runtime.defaults import components_dir, default_components, mechakit_home
    from mechakit.runtime.manifest import Manifests, load_manifests

    paths: list[str] | None = namespace.resources_paths
    if paths:
        manifests = load_manifests(paths)
    elif components_dir().is_dir():
        log.info("loading components from %s", components_dir())
        manifests = load_manifests(components_dir())
    else:
        home = mechakit_home()
        home.mkdir(parents=True, exist_ok=True)
        defaults = default_components(home)
        log.info(
            "no folder %s ('mechakit init' writes one): using the built-in components "
            "statestore (state.sqlite in %s), pubsub (pubsub.in-memory), lockstore "
            "(lock.in-memory)",
            components_dir(),
            home / "state.db",
        )
        with tempfile.TemporaryDirectory(prefix="mechakit-") as folder:
            for name, text in defaults.items():
                Path(folder, name).write_text(text, encoding="utf-8")
            manifests = load_manifests(folder)
    if not namespace.config:
        return manifests, None
    chosen = load_manifests(namespace.config).configurations
    if not chosen:
        raise ConfigurationError(f"{namespace.config}: no 'kind: Configuration' document found")
    names = {c.name for c in chosen}
    merged = Manifests(
        components=manifests.components,
        subscriptions=manifests.subscriptions,
        configurations=[*chosen, *(c for c in manifests.configurations if c.name not in names)],
        files=[*manifests.files, namespace.config],
    )
    return merged, chosen[0].name


async def _serve_started(
    runtime: Runtime, namespace: argparse.Namespace, command: list[str], log: logging.Logger
) -> int:
    """Serve the APIs (and run the app) until the app exits or a signal arrives."""
    shutdown = Shutdown(namespace.dapr_graceful_shutdown_seconds)
    async with contextlib.AsyncExitStack() as stack:
        try:
            http_sockets = _http_listeners(namespace, stack, log)
            metrics = await _start_servers(runtime, namespace, stack, shutdown, log)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        delivery, app_gate, health = _delivery(runtime, namespace, metrics)
        server = _http_server(_http_app(runtime, namespace, delivery, metrics), namespace)
        serving = asyncio.create_task(server.serve(sockets=http_sockets), name="mechakit http api")
        stack.push_async_callback(_stop_http, server, serving, shutdown)
        for listener in http_sockets:
            log.info("Dapr HTTP API listening on %s", _describe(listener, "http://", "/v1.0"))
        if delivery is not None and app_gate is not None:
            delivery.start_in_background()
            stack.push_async_callback(delivery.stop)
            stack.push_async_callback(_drain, app_gate, shutdown)
            if health is not None:
                health.start()
                stack.push_async_callback(health.stop)

        def stop_requested() -> None:
            shutdown.begin()
            if app_gate is not None:
                app_gate.stop_taking_new()

        try:
            return await _supervise(namespace, command, serving, stop_requested, log)
        finally:
            shutdown.begin()


async def _start_servers(
    runtime: Runtime,
    namespace: argparse.Namespace,
    stack: contextlib.AsyncExitStack,
    shutdown: Shutdown,
    log: logging.Logger,
) -> SidecarMetrics | None:
    """The metrics server, the internal gRPC port and the gRPC API, each stopped by
    ``stack``; an ``OSError`` when a port cannot be had. Returns the metrics (None: off)."""
    from mechakit.runtime import tracing

    host = runtime.host
    spec = host.configuration.spec if host.configuration is not None else {}
    stack.push_async_callback(tracing.configure(spec, namespace.app_id).shutdown)
    metrics = await _start_metrics(runtime, namespace, stack, log)
    runtime.invoker = invoker = await _start_invocation(runtime, namespace)
    stack.push_async_callback(invoker.close)
    from mechakit.runtime.grpc_proxy import InboundProxy

    internal = await _start_internal_grpc(namespace, log, invoker.handler(), InboundProxy(invoker))
    stack.push_async_callback(internal.stop, 0)
    await invoker.register(namespace.dapr_internal_grpc_port)
    grpc_server = await _start_grpc(runtime, namespace, log, metrics)
    if grpc_server is not None:
        stack.push_async_callback(_stop_grpc, grpc_server, shutdown)
    if namespace.unix_domain_socket:
        stack.callback(_unlink, socket_path(namespace.unix_domain_socket, namespace.app_id, "grpc"))
    return metrics


def _delivery(
    runtime: Runtime, namespace: argparse.Namespace, metrics: SidecarMetrics | None
) -> tuple[Delivery | None, AppGate | None, AppHealthProbe | None]:
    """The delivery to the app (through its gate), and the health probe, if an app port."""
    if namespace.app_port is None:
        return None, None, None
    from mechakit.runtime.app_channels import app_channel
    from mechakit.runtime.delivery import Delivery

    from ._app_gate import AppHealthProbe, gate

    protocol: str = namespace.app_protocol
    host: str = namespace.app_channel_address
    concurrency: int = namespace.app_max_concurrency
    app_gate = gate(
        app_channel(namespace.app_port, protocol, host=host),
        max_concurrency=concurrency if concurrency > 0 else None,
        health_checked=namespace.enable_app_health_check,
        metrics=metrics,
    )
    delivery = Delivery(runtime, app_gate)
    health = None
    if namespace.enable_app_health_check:
        health = AppHealthProbe(
            app_gate,
            protocol=protocol,
            host=host,
            port=namespace.app_port,
            path=namespace.app_health_check_path,
            interval=namespace.app_health_probe_interval or DEFAULT_HEALTH_INTERVAL,
            timeout=(namespace.app_health_probe_timeout or DEFAULT_HEALTH_TIMEOUT_MS) / 1000,
            threshold=namespace.app_health_threshold
            if namespace.app_health_threshold > 0
            else DEFAULT_HEALTH_THRESHOLD,
            delivery=delivery,
        )
    return delivery, app_gate, health


def _http_app(
    runtime: Runtime,
    namespace: argparse.Namespace,
    delivery: Delivery | None,
    metrics: SidecarMetrics | None,
) -> ApiEdge:
    from mechakit.runtime.http_api import create_app

    from ._observability import ApiEdge, enable_api_log, header_limit

    app = create_app(
        runtime,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
        max_request_size=namespace.max_body_size or sys.maxsize,
        app_port=namespace.app_port,
        app_protocol=namespace.app_protocol,
        delivery=delivery,
        body_timeout=namespace.http_read_body_timeout,
        max_bulk_keys=namespace.max_bulk_keys,
    )
    if namespace.enable_api_logging:
        enable_api_log()
    return ApiEdge(
        app,
        max_head_bytes=header_limit(namespace.read_buffer_size),
        api_logging=namespace.enable_api_logging,
        metrics=metrics,
    )


def _http_server(app: ApiEdge, namespace: argparse.Namespace) -> uvicorn.Server:
    from mechakit.runtime.http_server import create_server

    from ._observability import header_limit

    server = create_server(
        app,
        read_header_timeout=namespace.http_read_header_timeout,
        access_log=namespace.log_level == "debug",
    )
    # The protocol drops a head past this bound before the API can answer 431: above ours.
    server.config.h11_max_incomplete_event_size = max(
        16 * 1024, 2 * header_limit(namespace.read_buffer_size)
    )
    return server


def _http_listeners(
    namespace: argparse.Namespace, stack: contextlib.AsyncExitStack, log: logging.Logger
) -> list[socket.socket]:
    """The HTTP API's sockets: the Unix socket, or a TCP one per listen address."""
    if namespace.unix_domain_socket:
        path = socket_path(namespace.unix_domain_socket, namespace.app_id, "http")
        listener = _unix_listener(path)
        stack.callback(_unlink, path)
        stack.callback(listener.close)
        return [listener]
    listeners = _tcp_listeners(namespace.api_listen_addresses, namespace.dapr_http_port, log)
    stack.callback(_close_all, listeners)
    namespace.dapr_http_port = listeners[0].getsockname()[1]
    return listeners


def _tcp_listeners(
    hosts: list[str],
    port: int,
    log: logging.Logger,
    *,
    what: str = "Dapr HTTP API",
    default: bool = False,
) -> list[socket.socket]:
    """A socket listening on ``port`` at each host (port 0: the first picks a free one, the
    others take it). A host that fails is warned about; none bound is an ``OSError``.
    ``default``: the port was not chosen, so when it is taken a free one is used instead."""
    from mechakit.runtime.http_server import listen

    listeners: list[socket.socket] = []
    failures: list[str] = []
    for host in hosts:
        try:
            listener = listen(host, port)
        except OSError as exc:
            if not default or listeners:
                failures.append(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
                continue
            listener = listen(host, 0)  # the default port is taken: a free one
            log.info("%s: port %d is taken: using %d", what, port, listener.getsockname()[1])
        listeners.append(listener)
        port = listener.getsockname()[1]
    if not listeners:
        raise OSError("; ".join(failures) or "no address to listen on")
    for failure in failures:
        log.warning("%s: %s", what, failure)
    return listeners


def _unix_listener(path: str) -> socket.socket:
    _remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise OSError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return listener


def _remove_stale_socket(path: str) -> None:
    """A socket file left by an earlier run is removed, as the Dapr CLI does; anything else
    in the way is an error when binding."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _close_all(listeners: list[socket.socket]) -> None:
    for listener in listeners:
        listener.close()


def _describe(listener: socket.socket, scheme: str, suffix: str) -> str:
    if listener.family == socket.AF_UNIX:
        return f"unix:{listener.getsockname()}"
    host, port = listener.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}{host}:{port}{suffix}"


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _start_grpc(
    runtime: Runtime,
    namespace: argparse.Namespace,
    log: logging.Logger,
    metrics: SidecarMetrics | None = None,
) -> GrpcServer | None:
    """Serve the gRPC API; a taken default port only warns, a chosen one is an ``OSError``."""
    from mechakit.runtime.grpc_server import GrpcServer, create_server

    server, api = create_server(
        runtime,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
        app_port=namespace.app_port,
        app_protocol=namespace.app_protocol,
        max_bulk_keys=namespace.max_bulk_keys,
        max_message_size=namespace.max_body_size or None,
        api_logging=namespace.enable_api_logging,
        on_call=None if metrics is None else metrics.grpc_call,
    )
    if namespace.unix_domain_socket:
        path = socket_path(namespace.unix_domain_socket, namespace.app_id, "grpc")
        _remove_stale_socket(path)
        if not _add_port(server, f"unix:{path}"):
            raise OSError(f"cannot listen on {path} for the gRPC API")
        await server.start()
        log.info("Dapr gRPC API listening on unix:%s", path)
        return GrpcServer(server, api, 0)
    chosen: int | None = namespace.dapr_grpc_port
    port, bound = _bind_each(
        server, namespace.api_listen_addresses, DEFAULT_GRPC_PORT if chosen is None else chosen
    )
    if not bound:
        address = _grpc_address(namespace.api_listen_addresses[0], port)
        if chosen is not None:
            raise OSError(f"cannot listen on {address} for the gRPC API (is the port taken?)")
        log.warning(
            "the Dapr gRPC API is not served: cannot listen on %s (choose --dapr-grpc-port)",
            address,
        )
        return None
    await server.start()
    namespace.dapr_grpc_port = port
    for host in bound:
        log.info("Dapr gRPC API listening on %s", _grpc_address(host, port))
    return GrpcServer(server, api, port)


def _add_port(server: grpc.aio.Server, address: str) -> int:
    """The port bound at ``address`` (1 for a Unix socket), 0 when it cannot be bound."""
    try:
        return server.add_insecure_port(address)
    except RuntimeError:
        return 0


def _bind_each(server: grpc.aio.Server, hosts: list[str], port: int) -> tuple[int, list[str]]:
    """Bind ``port`` on every host (port 0: the first picks one, the others take it)."""
    bound: list[str] = []
    for host in hosts:
        got = _add_port(server, _grpc_address(host, port))
        if got:
            port = got
            bound.append(host)
    return port, bound


async def _start_invocation(runtime: Runtime, namespace: argparse.Namespace) -> Invoker:
    """The name resolver of the Configuration (sqlite by default), its access control and
    the app it calls."""
    from mechakit.runtime.service.access_control import access_control_of
    from mechakit.runtime.service.invocation import GrpcApp, HttpApp, Invoker, open_resolver

    host = runtime.host
    spec = host.configuration.spec if host.configuration is not None else {}
    grpc_app = plain_protocol(namespace.app_protocol) == "grpc"
    access = access_control_of(host.configuration, http_app=not grpc_app)
    resolver = await open_resolver(spec, namespace.app_id, host.registry)
    app: HttpApp | GrpcApp | None = None
    if namespace.app_port is not None:
        app = (GrpcApp if grpc_app else HttpApp)(
            namespace.app_port, namespace.app_channel_address, namespace.app_protocol
        )
    own_namespace = os.environ.get("NAMESPACE") or "default"
    return Invoker(
        resolver, namespace.app_id, own_namespace, app, access, resiliency=runtime.resiliency
    )


async def _start_internal_grpc(
    namespace: argparse.Namespace, log: logging.Logger, *handlers: grpc.GenericRpcHandler
) -> grpc.aio.Server:
    """Serve daprd's internal gRPC port (sidecar to sidecar): ``handlers``, the invocation
    of this sidecar's app (then gRPC proxying). The default port, when taken, becomes a
    free one."""
    import grpc.aio

    chosen: int | None = namespace.dapr_internal_grpc_port
    hosts: list[str] = namespace.api_listen_addresses
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(handlers)
    port, bound = _bind_each(
        server, hosts, DEFAULT_INTERNAL_GRPC_PORT if chosen is None else chosen
    )
    if not bound and chosen is None:
        port, bound = _bind_each(server, hosts, 0)
        log.info(
            "internal gRPC port %d is taken: using %d (choose --dapr-internal-grpc-port)",
            DEFAULT_INTERNAL_GRPC_PORT,
            port,
        )
    if not bound:
        raise OSError(
            f"cannot listen on {_grpc_address(hosts[0], port)} for the internal gRPC API "
            "(is the port taken?)"
        )
    await server.start()
    namespace.dapr_internal_grpc_port = port
    log.info(
        "internal gRPC API (service invocation) listening on %s",
        ", ".join(_grpc_address(host, port) for host in bound),
    )
    return server


async def _start_metrics(
    runtime: Runtime,
    namespace: argparse.Namespace,
    stack: contextlib.AsyncExitStack,
    log: logging.Logger,
) -> SidecarMetrics | None:
    """Serve the metrics on ``--metrics-port``; None when ``--enable-metrics=false``."""
    if not namespace.enable_metrics:
        namespace.metrics_port = None
        return None
    from mechakit.runtime.http_server import create_server

    from ._observability import SidecarMetrics, metrics_app

    chosen: int | None = namespace.metrics_port
    try:
        listeners = _tcp_listeners(
            namespace.api_listen_addresses,
            DEFAULT_METRICS_PORT if chosen is None else chosen,
            log,
            what="metrics",
            default=chosen is None,
        )
    except OSError as exc:
        raise OSError(f"metrics: {exc}") from None
    stack.callback(_close_all, listeners)
    metrics = SidecarMetrics(namespace.app_id, lambda: len(runtime.host.components))
    server = create_server(metrics_app(metrics), read_header_timeout=10.0)
    serving = asyncio.create_task(server.serve(sockets=listeners), name="mechakit metrics")
    stack.push_async_callback(_stop_http, server, serving, None)
    namespace.metrics_port = listeners[0].getsockname()[1]
    for listener in listeners:
        log.info("metrics served on %s", _describe(listener, "http://", "/metrics"))
    return metrics


async def _drain(app_gate: AppGate, shutdown: Shutdown) -> None:
    await app_gate.drain(shutdown.deadline)


async def _stop_grpc(grpc_server: GrpcServer, shutdown: Shutdown) -> None:
    await grpc_server.stop(grace=shutdown.remaining())


async def _stop_http(
    server: uvicorn.Server, serving: asyncio.Task[None], shutdown: Shutdown | None
) -> None:
    """Stop serving; calls in flight get what is left of the graceful period."""
    if shutdown is not None:
        server.config.timeout_graceful_shutdown = max(int(shutdown.remaining() + 0.999), 1)
    server.should_exit = True
    with contextlib.suppress(Exception):
        await serving


def _app_environment(namespace: argparse.Namespace) -> dict[str, str]:
    """What dapr run gives the app: ports, app id, protocol, channel address."""
    env = {
        **os.environ,
        "APP_ID": namespace.app_id,
        "APP_PROTOCOL": namespace.app_protocol,
        "APP_CHANNEL_ADDRESS": namespace.app_channel_address,
    }
    if namespace.unix_domain_socket:
        env.pop("DAPR_HTTP_PORT", None)  # nothing listens on a port: the APIs are on sockets
        env.pop("DAPR_GRPC_PORT", None)
    else:
        env["DAPR_HTTP_PORT"] = str(namespace.dapr_http_port)
        env["DAPR_GRPC_PORT"] = str(namespace.dapr_grpc_port or DEFAULT_GRPC_PORT)
    if namespace.app_port is not None:
        env["APP_PORT"] = str(namespace.app_port)
    if namespace.metrics_port is not None:
        env["DAPR_METRICS_PORT"] = str(namespace.metrics_port)
    else:
        env.pop("DAPR_METRICS_PORT", None)
    return env


async def _supervise(
    namespace: argparse.Namespace,
    command: list[str],
    serving: asyncio.Task[None],
    stop_requested: Callable[[], None],
    log: logging.Logger,
) -> int:
    """Run the app (if any) until it exits, a signal arrives or the HTTP API fails.

    The app is started by :mod:`mechakit.runtime.app_process` so that it dies with mechakit
    even when mechakit is killed; on every way out it is stopped along with what it started.
    """
    from mechakit.runtime.app_process import start_app

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    child: AppProcess | None = None
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        stop_requested()
        if child is None or child.returncode is not None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            stopping.set()
        elif signals_seen.count(signum) > 1:
            log.warning("%s again: killing the app", signal.Signals(signum).name)
            child.kill()
        else:
            log.info("%s received: passing it on to the app", signal.Signals(signum).name)
            child.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if command:
            env = _app_environment(namespace)
            try:
                child = await start_app(command, env, log)
            except OSError as exc:
                print(f"error: cannot start {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
                return 127
            log.info("app started (pid %d): %s", child.pid, subprocess.list2cmdline(command))
        waits: set[asyncio.Future[Any]] = {serving, asyncio.ensure_future(stopping.wait())}
        if child is not None:
            waits.add(asyncio.ensure_future(child.process.wait()))
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            if waiter is not serving:
                waiter.cancel()
        if serving in done:
            error = serving.exception() if not serving.cancelled() else None
            log.error("the HTTP API stopped unexpectedly: %s", error)
            return 1
        if child is not None and child.returncode is not None:
            code = child.returncode if child.returncode >= 0 else 128 - child.returncode
            log.info("app exited with code %d", code)
            return code
        return 0
    finally:
        try:
            await _stop_child(child, log)  # with the handlers on, so a second signal kills
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)


async def _stop_child(child: AppProcess | None, log: logging.Logger) -> None:
    """Stop the app, whatever it left running in its process group, and its watchdog."""
    if child is not None:
        await child.close(log)
