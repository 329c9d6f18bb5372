"""Backend provisioning for the conformance suite.

In order: an address from the environment; a local binary started on a free loopback port
in a temp dir; testcontainers where a Docker engine answers; otherwise the tests are
skipped with the reason, which pytest prints (``-rs``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


class BackendUnavailable(Exception):
    """The backend cannot be had here; the message says why and how to provide one."""


@dataclass
class BackendInfo:
    """Where a provisioned backend answers, as placeholders ``{backend.<key>}``."""

    values: dict[str, str]
    source: str
    """How it was obtained: 'environment', 'local binary', 'testcontainers'."""
    stop: Callable[[], None] = field(default=lambda: None)
    restart: Callable[[], None] | None = None
    """Stop and start the same server again (for fault tests); None when not ours."""
    freeze: Callable[[bool], None] | None = None
    """``freeze(True)`` stalls the server (SIGSTOP: connections stay open, nothing is
    answered), ``freeze(False)`` resumes it; for fault tests, None when not ours."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BackendUnavailable(f"nothing answered on {host}:{port} within {timeout:.0f}s")


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class LocalProcess:
    """A server binary run in a temp dir until stopped; restartable with the same arguments."""

    def __init__(self, argv: Sequence[str], port: int, workdir: Path, log_name: str) -> None:
        self.argv, self.port, self.workdir = list(argv), port, workdir
        self.log_path = workdir / f"{log_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the handle
            self.proc = subprocess.Popen(
                self.argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except BackendUnavailable as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-800:]
            raise BackendUnavailable(f"{self.argv[0]} did not start: {exc}\n{tail}") from None

    def discard(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def backend_info(self, values: dict[str, str]) -> BackendInfo:
        """What the suite gets of this started server: its ``values``; stopping discards it,
        and fault tests can restart and freeze it."""
        return BackendInfo(
            values,
            source="local binary",
            stop=self.discard,
            restart=self.restart,
            freeze=self.freeze,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)  # a frozen server handles SIGTERM only then
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self, frozen: bool) -> None:
        """Stall (SIGSTOP) or resume (SIGCONT) the server, as a hung host or GC pause would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)


class Backend(ABC):
    """How to get one kind of server. Subclasses fill in the three ways."""

    name: str = ""
    env_var: str = ""
    """Environment variable holding an address to use instead of starting anything."""

    def from_environment(self, environ: Mapping[str, str]) -> BackendInfo | None:
        value = environ.get(self.env_var) if self.env_var else None
        if not value:
            return None
        return BackendInfo(self.parse_address(value), source=f"environment ({self.env_var})")

    def parse_address(self, value: str) -> dict[str, str]:
        return {"url": value}

    def host_and_port(
        self, value: str, schemes: tuple[str, ...], default_port: int
    ) -> tuple[str, str]:
        """``value`` (``host:port``, or a URL of one of ``schemes``) as host and port;
        BackendUnavailable naming the variable when it is neither."""
        parts = urlsplit(value if "://" in value else f"{schemes[0]}://{value}")
        if parts.scheme not in schemes or not parts.hostname:
            raise BackendUnavailable(
                f"{self.env_var}={value!r} is not a {schemes[0]}://host:port URL"
            )
        return parts.hostname, str(parts.port or default_port)

    @abstractmethod
    def start_local(self, workdir: Path) -> BackendInfo:
        """Start a local binary; raise ``BackendUnavailable`` with a reason when it is missing."""

    def start_container(self) -> BackendInfo:
        raise BackendUnavailable(f"no testcontainers recipe for {self.name}")


BUILTIN_BACKENDS: dict[str, str] = {
    "redis": "mechakit.conformance.backends_redis:RedisBackend",
    "redis-cluster": "mechakit.conformance.backends_redis:RedisClusterBackend",
    "postgresql": "mechakit.conformance.backends_postgres:PostgresBackend",
    "moto": "mechakit.conformance.backends_aws:MotoBackend",
    "vault": "mechakit.conformance.backends_vault:VaultBackend",
    "http-echo": "mechakit.conformance.backends_http:HTTPEchoBackend",
    "nats": "mechakit.conformance.backends_nats:NatsBackend",
    "rabbitmq": "mechakit.conformance.backends_rabbitmq:RabbitMQBackend",
    "kafka": "mechakit.conformance.backends_kafka:KafkaBackend",
    "mosquitto": "mechakit.conformance.backends_mqtt:MosquittoBackend",
    "gcp-pubsub": "mechakit.conformance.backends_gcp:PubSubEmulatorBackend",
    "azure-servicebus": "mechakit.conformance.backends_azure:ServiceBusBackend",
    "multicast": "mechakit.conformance.backends_mdns:MulticastBackend",
}
"""Short backend names of the matrix → ``module:factory``; nothing is imported until used."""

_REGISTERED: dict[str, Backend] = {}
_RESOLVED: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make a backend known by its name at run time (a matrix can also name a factory)."""
    _REGISTERED[backend.name] = backend
    return backend


def known_backends() -> list[str]:
    """The short names a matrix ``backend:`` field may use (besides ``module:factory``)."""
    return sorted({*BUILTIN_BACKENDS, *_REGISTERED})


class UnknownBackendError(LookupError):
    """A matrix names a backend that is neither known nor an importable ``module:factory``."""


def check_backend(name: str) -> None:
    """Raise ``UnknownBackendError`` unless ``name`` is known or an importable factory
    (a short name is not imported yet)."""
    if name not in BUILTIN_BACKENDS and name not in _REGISTERED:
        resolve_backend(name)


def resolve_backend(name: str) -> Backend:
    """The backend a matrix names: a short name, or ``package.module:factory`` where
    ``factory()`` returns a :class:`Backend` (a Backend subclass is such a factory)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _RESOLVED:
        path = BUILTIN_BACKENDS.get(name, name)
        if ":" not in path:
            raise UnknownBackendError(
                f"unknown backend {name!r}: use one of {', '.join(known_backends())} "
                "or name a factory as 'package.module:factory'"
            )
        module_name, _, attribute = path.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise UnknownBackendError(f"backend {name!r}: cannot load {path}: {exc}") from None
        try:
            backend = factory()
        except Exception as exc:
            raise UnknownBackendError(f"backend {name!r}: {path}() failed: {exc}") from exc
        if not isinstance(backend, Backend):
            raise UnknownBackendError(
                f"backend {name!r}: {path}() returned {type(backend).__name__}, not a Backend"
            )
        _RESOLVED[name] = backend
    return _RESOLVED[name]


def provision(name: str, environ: Mapping[str, str] | None = None) -> BackendInfo:
    """Environment → local binary → testcontainers; ``BackendUnavailable`` lists every reason.

    ``name`` is a short name or ``module:factory`` (:func:`resolve_backend`); one that names
    nothing is an ``UnknownBackendError``, never a skip.
    """
    backend = resolve_backend(name)
    info = backend.from_environment(os.environ if environ is None else environ)
    if info is not None:
        return info
    reasons = []
    if backend.env_var:
        reasons.append(f"{backend.env_var} is not set")
    workdir = Path(tempfile.mkdtemp(prefix=f"mechakit-{name}-"))
    try:
        return backend.start_local(workdir)
    except BackendUnavailable as exc:
        reasons.append(f"local binary: {exc}")
    if docker_available():
        try:
            return backend.start_container()
        except BackendUnavailable as exc:
            reasons.append(f"testcontainers: {exc}")
    else:
        reasons.append("testcontainers: no Docker engine answers")
    raise BackendUnavailable(f"{name} backend unavailable: " + "; ".join(reasons))
