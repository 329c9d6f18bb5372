"""The ``rabbitmq`` conformance backend: a RabbitMQ node of the suite's own.

``MECHAKIT_TEST_RABBITMQ_URL`` (``amqp://user:pass@host:port/vhost``) names a broker to use
as it is. Otherwise a ``rabbitmq-server`` node is started with everything in a temp dir:
its own node name (``mechakit-<port>@localhost``), AMQP and distribution ports picked free
on the loopback, its own database, logs, config and an empty plugin list, so that it never
touches the system node (5672, its management port) and only registers with the running
epmd. Starting a node takes seconds: use one per test session or module. Fault tests may
``restart`` it (same ports, same data: durable queues survive) or ``freeze`` it.

Placeholders: ``{backend.url}``, ``{backend.host}``, ``{backend.port}``, ``{backend.address}``.
Where Docker answers, testcontainers' ``RabbitMqContainer`` is the fallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

from .backends import Backend, BackendInfo, BackendUnavailable, LocalProcess, free_port
from .containers import started, testcontainers

RABBITMQ_IMAGE = "rabbitmq:3.13-alpine"
_SERVER_PATHS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")
_START_WITHIN = 60.0
"""Seconds a node may take to accept AMQP connections (Erlang boot, a fresh database)."""


class RabbitMQBackend(Backend):
    name = "rabbitmq"
    env_var = "MECHAKIT_TEST_RABBITMQ_URL"

    def parse_address(self, value: str) -> dict[str, str]:
        parts = urlsplit(value)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise BackendUnavailable(
                f"{self.env_var}={value!r} is not an amqp://user:pass@host:port/vhost URL"
            )
        port = str(parts.port or (5671 if parts.scheme == "amqps" else 5672))
        return {**_values(parts.hostname, port), "url": value}

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = _server_binary()
        if binary is None:
            raise BackendUnavailable(
                f"rabbitmq-server not found in {' or '.join(_SERVER_PATHS)} or on PATH; "
                f"apt-get install rabbitmq-server or set {self.env_var}"
            )
        port, dist_port = free_port(), free_port()
        node = RabbitMQNode(binary, port, dist_port, workdir)
        node.start(_START_WITHIN)
        info = node.backend_info(_values("127.0.0.1", str(port)))
        info.values["node"] = node.node_name
        return info

    def start_container(self) -> BackendInfo:
        container = testcontainers("rabbitmq", "RabbitMqContainer")(RABBITMQ_IMAGE)
        host, port = started(container, RABBITMQ_IMAGE, port=5672)
        return BackendInfo(_values(host, port), source="testcontainers", stop=container.stop)


class RabbitMQNode(LocalProcess):
    """A ``rabbitmq-server`` started with the environment that keeps it apart from any
    other node on the machine; restartable with the same name, ports and data."""

    def __init__(self, binary: str, port: int, dist_port: int, workdir: Path) -> None:
        super().__init__([binary], port, workdir, "rabbitmq")
        self.node_name = f"mechakit-{port}@localhost"
        self.start_within = _START_WITHIN
        for folder in ("mnesia", "log", "home"):
            (workdir / folder).mkdir(exist_ok=True)
        plugins = workdir / "enabled_plugins"
        plugins.write_text("[].\n")
        config = workdir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        self.env = {
            **os.environ,
            "HOME": str(workdir / "home"),  # the Erlang cookie lives here, ours alone
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            "RABBITMQ_ALLOW_INPUT": "",
        }

    def start(self, timeout: float = 0.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a test's Ctrl-C does not reach the node
            )
        try:
            from .backends import wait_for_port

            wait_for_port("127.0.0.1", self.port, timeout or self.start_within)
        except BackendUnavailable as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-800:]
            raise BackendUnavailable(f"rabbitmq-server did not start: {exc}\n{tail}") from None


def _server_binary() -> str | None:
    for path in _SERVER_PATHS[:1]:  # the wrapper in /usr/sbin switches to the rabbitmq user
        if Path(path).exists():
            return path
    found = shutil.which("rabbitmq-server")
    if found is None and Path(_SERVER_PATHS[1]).exists():
        found = _SERVER_PATHS[1]
    return found


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    user = quote("guest", safe="")
    return {
        "host": host,
        "port": port,
        "address": address,
        "url": f"amqp://{user}:{user}@{address}/",
    }
