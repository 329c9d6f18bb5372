"""``mechakit run -f``: every app of a multi-app template with its sidecar, one command.

Each app gets a child ``mechakit run`` (this Python, ``-m mechakit.runtime.cli``) started in
its ``appDirPath`` with the flags the template gives and free ports for the ones it does not,
the app's command after ``--``. The child writes its own log to a pipe of its own
(:data:`LOG_FD_VARIABLE`) while the app keeps the child's stdout and stderr, so the two are
told apart as the Dapr CLI tells daprd from the app: app lines go out as ``== APP - <id> ==
<line>`` (console and/or ``<appDirPath>/.dapr/logs/<id>_app_<time>.log``, by
``appLogDestination``, default both), sidecar lines raw to ``<id>_daprd_<time>.log`` and,
when ``daprdLogDestination`` says so, to the console as ``== SIDECAR - <id> == <line>``.

As with the Dapr CLI: when one app exits that is said and the others keep running; SIGINT
or SIGTERM stops them all (each sidecar stops its app; after :data:`STOP_GRACE` seconds
what is left is killed); the exit code is 1 when a sidecar failed to start. Each child has a
parent-death signal (Linux), so a killed ``mechakit run -f`` takes its sidecars along, and
each sidecar its app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mechakit.core.errors import ConfigurationError
from mechakit.runtime.app_process import HAS_PDEATHSIG, launch_argv

from ._serve import socket_path
from .multi_app import AppSpec, Template, app_environment, load_template

LOG_FD_VARIABLE = "MECHAKIT_RUN_LOG_FD"
"""Set for a child ``mechakit run``: the file descriptor it writes its own log to."""
STOP_GRACE = 15.0
"""Seconds a sidecar gets after SIGTERM (its graceful shutdown, then its app's) before SIGKILL."""
READY_TIMEOUT = 60.0
"""Seconds to wait for a sidecar's API, as the Dapr CLI (then a warning, not a failure)."""
LINE_LIMIT = 1 << 20
_COLOURS = re.compile(rb"\x1b\[[\d;]*m")


def take_log_fd() -> None:
    """In a child ``mechakit run`` of a multi-app run: send what it writes to stderr to the
    pipe it was given, so the app alone has stdout and stderr. Not passed on to the app."""
    value = os.environ.pop(LOG_FD_VARIABLE, None)
    if value is None or not value.isdigit():
        return
    with contextlib.suppress(OSError):
        sys.stderr = open(  # noqa: SIM115 - lives as long as the process
            int(value), "w", buffering=1, encoding="utf-8", errors="replace"
        )


def run_template(path: str, extra_flags: tuple[str, ...] = ()) -> int:
    """Run every app of the template at ``path``; the exit code of ``mechakit run -f``."""
    try:
        template = load_template(path)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in template.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return asyncio.run(_run_all(template, extra_flags))


class _Sink:
    """Where one stream of one app goes: the console with a prefix, and/or a log file."""

    def __init__(self, prefix: str, destination: str, file: Path | None, prefix_file: bool) -> None:
        self.prefix = prefix.encode()
        self.console = destination in ("console", "fileAndConsole")
        self.prefix_file = prefix_file
        self.file: IO[bytes] | None = None
        self.path = file if destination in ("file", "fileAndConsole") else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("ab")

    def write(self, line: bytes) -> None:
        line = line.rstrip(b"\r\n") + b"\n"
        if self.console:
            sys.stdout.buffer.write(self.prefix + line)
            sys.stdout.buffer.flush()
        if self.file is not None:
            self.file.write((self.prefix if self.prefix_file else b"") + _COLOURS.sub(b"", line))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _AppRun:
    """One app's ``mechakit run``: started, watched, its output relayed, stopped."""

    def __init__(self, spec: AppSpec, ports: dict[str, int], extra: tuple[str, ...]) -> None:
        self.spec, self.ports, self.extra = spec, ports, extra
        self.process: asyncio.subprocess.Process | None = None
        self.relays: list[asyncio.Task[None]] = []
        stamp = time.strftime("%Y%m%d%H%M%S")
        logs = spec.logs_dir
        self.sidecar = _Sink(
            f"== SIDECAR - {spec.app_id} == ",
            spec.sidecar_log,
            logs / f"{spec.app_id}_daprd_{stamp}.log",
            prefix_file=False,
        )
        self.app = (
            _Sink(
                f"== APP - {spec.app_id} == ",
                spec.app_log,
                logs / f"{spec.app_id}_app_{stamp}.log",
                True,
            )
            if spec.command
            else self.sidecar
        )

    @property
    def http_port(self) -> int:
        return self.ports["--dapr-http-port"]

    def argv(self) -> list[str]:
        flags = [*self.spec.flags, *self.extra]
        for flag, port in self.ports.items():
            flags += [flag, str(port)]
        command = [sys.executable, "-m", "mechakit.runtime.cli", "run", *flags]
        if self.spec.command:
            command += ["--", *self.spec.command]
        return launch_argv(command, os.getpid()) if HAS_PDEATHSIG else command

    async def start(self) -> None:
        read_end, write_end = os.pipe()
        try:
            env = {**app_environment(self.spec), LOG_FD_VARIABLE: str(write_end)}
            self.process = await asyncio.create_subprocess_exec(
                *self.argv(),
                cwd=self.spec.app_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_end,),
                process_group=0,  # Ctrl-C at a terminal reaches this process, not each sidecar
                limit=LINE_LIMIT,
            )
        finally:
            os.close(write_end)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb")
        )
        assert self.process.stdout is not None
        self.relays = [
            asyncio.create_task(_relay(self.process.stdout, self.app.write)),
            asyncio.create_task(_relay(reader, self.sidecar.write)),
        ]

    async def wait_ready(self, stopping: asyncio.Event) -> bool:
        """Whether the sidecar came up: its API answers (True), or it exited first (False)."""
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not stopping.is_set():
            if self.process.returncode is not None:
                return False
            if await _healthy(self.spec, self.http_port):
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 0.1)
        if not stopping.is_set():
            _status(
                f"the sidecar of app {self.spec.app_id!r} might not be responding: its API "
                f"did not answer within {READY_TIMEOUT:g}s"
            )
        return self.process.returncode is None

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                _status(f"app {self.spec.app_id!r} did not stop within {STOP_GRACE:g}s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.relays, return_exceptions=True), 5)
        self.app.close()
        self.sidecar.close()

    def describe(self) -> str:
        where = (
            f"HTTP socket {socket_path(self.spec.unix_domain_socket, self.spec.app_id, 'http')}"
            if self.spec.unix_domain_socket
            else f"HTTP port {self.http_port}, gRPC port {self.ports['--dapr-grpc-port']}"
        )
        return f"app {self.spec.app_id!r} is up: {where}; log files in {self.spec.logs_dir}"


async def _run_all(template: Template, extra: tuple[str, ...]) -> int:
    taken = {port for spec in template.apps for port in spec.ports.values()}
    runs: list[_AppRun] = []
    for spec in template.apps:
        try:
            runs.append(_AppRun(spec, _with_free_ports(spec, taken), extra))
        except OSError as exc:  # the log folder cannot be written
            _status(f"app {spec.app_id!r}: cannot open its log files: {exc}", error=True)
            for run in runs:
                run.app.close()
                run.sidecar.close()
            return 1
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            _status(f"{signal.Signals(signum).name} again: killing every app")
            for run in runs:
                if run.process is not None and run.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(run.process.pid, signal.SIGKILL)
            return
        _status(f"{signal.Signals(signum).name} received: stopping every app and its sidecar")
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await _start_and_watch(template, runs, stopping)
    finally:
        await asyncio.gather(*(run.stop() for run in runs))
        _status("every app and its sidecar stopped")
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _start_and_watch(template: Template, runs: list[_AppRun], stopping: asyncio.Event) -> int:
    for run in runs:
        _status(f"starting app {run.spec.app_id!r} in {run.spec.app_dir}")
        try:
            await run.start()
        except OSError as exc:
            _status(f"cannot start the sidecar of app {run.spec.app_id!r}: {exc}", error=True)
            return 1
    failed = await _wait_all_ready(runs, stopping)
    for run in failed:
        assert run.process is not None
        _status(
            f"the sidecar of app {run.spec.app_id!r} failed to start: it exited with code "
            f"{run.process.returncode} before its API answered; its log: "
            f"{run.sidecar.path or 'on the console'}",
            error=True,
        )
    if failed:
        return 1
    if stopping.is_set():
        return 0
    for run in runs:
        if run.process is not None and run.process.returncode is None:
            _status(run.describe())
    running = sum(run.process is not None and run.process.returncode is None for run in runs)
    _status(f"{template.file.resolve()}: {running} app(s) running; Ctrl+C stops them all")
    return await _watch(runs, stopping)


async def _wait_all_ready(runs: list[_AppRun], stopping: asyncio.Event) -> list[_AppRun]:
    """The runs whose sidecar exited with an error before its API answered; on the first
    one the others are not waited for (they are stopped next, as the Dapr CLI does)."""
    waits: dict[asyncio.Future[bool], _AppRun] = {
        asyncio.ensure_future(run.wait_ready(stopping)): run for run in runs
    }
    pending: set[asyncio.Future[bool]] = set(waits)
    failed: list[_AppRun] = []
    while pending and not failed:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for waited in done:
            process = waits[waited].process
            if not waited.result() and process is not None and process.returncode:
                failed.append(waits[waited])
    for waiter in pending:
        waiter.cancel()
    return failed


async def _watch(runs: list[_AppRun], stopping: asyncio.Event) -> int:
    """Until a signal: say when an app exits, keep the others running."""
    alive = {run: asyncio.ensure_future(run.process.wait()) for run in runs if run.process}
    for run, waiter in list(alive.items()):
        if waiter.done() or (run.process is not None and run.process.returncode is not None):
            _exited(run)
            del alive[run]
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while alive and not stopping.is_set():
            await asyncio.wait([stop, *alive.values()], return_when=asyncio.FIRST_COMPLETED)
            for run, waiter in list(alive.items()):
                if waiter.done():
                    _exited(run)
                    del alive[run]
    finally:
        stop.cancel()
        for waiter in alive.values():
            waiter.cancel()
    if stopping.is_set():
        return 0
    _status("every app has exited")
    return 1 if any(run.process is not None and run.process.returncode for run in runs) else 0


def _exited(run: _AppRun) -> None:
    assert run.process is not None
    code = run.process.returncode
    what = "exited" if code == 0 else f"exited with code {code}"
    _status(f"app {run.spec.app_id!r} {what}; its sidecar stopped; the other apps keep running")


def _with_free_ports(spec: AppSpec, taken: set[int]) -> dict[str, int]:
    """The template's ports, and a free one (not given to another app) for each other port."""
    from .multi_app import PORT_FIELDS

    ports = dict(spec.ports)
    for flag in PORT_FIELDS.values():
        if flag not in ports:
            ports[flag] = _free_port(taken)
            taken.add(ports[flag])
    return ports


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


async def _healthy(spec: AppSpec, port: int) -> bool:
    """Whether the sidecar's ``/v1.0/healthz/outbound`` answers 204."""
    try:
        if spec.unix_domain_socket:
            path = socket_path(spec.unix_domain_socket, spec.app_id, "http")
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 1)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(spec.listen_address, port), 1
            )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /v1.0/healthz/outbound HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 2)
        return status.split(b" ")[1:2] == [b"204"]
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _relay(reader: asyncio.StreamReader, write: Callable[[bytes], None]) -> None:
    """Each line of ``reader`` to ``write``, until the end; a line over the limit in pieces."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                write(exc.partial)
            return
        except asyncio.LimitOverrunError as exc:
            line = await reader.read(exc.consumed)
        write(line)


def _status(message: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    print(f"{'error' if error else 'info'}: {message}", file=stream, flush=True)


__all__ = ["LOG_FD_VARIABLE", "run_template", "take_log_fd"]
