"""The sidecar ``mechakit run`` serves: components started, the Dapr HTTP and gRPC APIs, the
app run as a child that dies with it, subscriptions delivered to it.

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
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechakit.runtime.app_process import AppProcess
    from mechakit.runtime.grpc_server import GrpcServer
    from mechakit.runtime.in_process import Runtime
    from mechakit.runtime.manifest import Manifests

DEFAULT_GRPC_PORT = 50001


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
    """Serve the HTTP API (and run the app) until the app exits or a signal arrives."""
    from mechakit.runtime.http_api import create_app
    from mechakit.runtime.http_server import create_server, listen

    host: str = namespace.api_listen_address
    try:
        listener = listen(host, namespace.dapr_http_port)
    except OSError as exc:
        print(
            f"error: cannot listen on {host}:{namespace.dapr_http_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    port: int = listener.getsockname()[1]
    try:
        grpc_server = await _start_grpc(runtime, namespace, host, log)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        listener.close()
        return 1
    delivery = None
    if namespace.app_port is not None:
        from mechakit.runtime.app_channels import app_channel
        from mechakit.runtime.delivery import Delivery

        delivery = Delivery(runtime, app_channel(namespace.app_port, namespace.app_protocol))
    app = create_app(
        runtime,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
        max_request_size=namespace.dapr_http_max_request_size * 1024 * 1024,
        app_port=namespace.app_port,
        app_protocol=namespace.app_protocol,
        delivery=delivery,
        body_timeout=namespace.http_read_body_timeout,
        max_bulk_keys=namespace.max_bulk_keys,
    )
    server = create_server(
        app,
        read_header_timeout=namespace.http_read_header_timeout,
        access_log=namespace.log_level == "debug",
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]), name="mechakit http api")
    log.info("Dapr HTTP API listening on http://%s:%d/v1.0", host, port)
    if delivery is not None:
        delivery.start_in_background()
    try:
        return await _supervise(namespace, command, port, serving, log)
    finally:
        if grpc_server is not None:
            await grpc_server.stop()
        if delivery is not None:
            await delivery.stop()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        listener.close()


async def _start_grpc(
    runtime: Runtime, namespace: argparse.Namespace, host: str, log: logging.Logger
) -> GrpcServer | None:
    """Serve the gRPC API; a taken default port only warns, a chosen one is an ``OSError``."""
    from mechakit.runtime.grpc_server import start_server

    chosen: int | None = namespace.dapr_grpc_port
    try:
        grpc_server = await start_server(
            runtime,
            host,
            DEFAULT_GRPC_PORT if chosen is None else chosen,
            api_token=os.environ.get("DAPR_API_TOKEN") or None,
            app_port=namespace.app_port,
            app_protocol=namespace.app_protocol,
            max_bulk_keys=namespace.max_bulk_keys,
        )
    except OSError as exc:
        if chosen is not None:
            raise
        log.warning("the Dapr gRPC API is not served: %s (choose --dapr-grpc-port)", exc)
        return None
    namespace.dapr_grpc_port = grpc_server.port
    log.info("Dapr gRPC API listening on %s:%d", host, grpc_server.port)
    return grpc_server


async def _supervise(
    namespace: argparse.Namespace,
    command: list[str],
    port: int,
    serving: asyncio.Task[None],
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
            env = {
                **os.environ,
                "DAPR_HTTP_PORT": str(port),
                "DAPR_GRPC_PORT": str(namespace.dapr_grpc_port or DEFAULT_GRPC_PORT),
                "APP_ID": namespace.app_id,
            }
            if namespace.app_port is not None:
                env["APP_PORT"] = str(namespace.app_port)
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
