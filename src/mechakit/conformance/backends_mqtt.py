"""The ``mosquitto`` conformance backend: an MQTT broker.

``MECHAKIT_TEST_MQTT_URL`` (``tcp://host:port`` or ``mqtt://host:port``) names a broker to use
as it is; otherwise ``mosquitto -c <conf>`` is started on a free loopback port, anonymous,
with persistence in its temp dir so that sessions (and their unacked messages) survive a
restart; otherwise an ``eclipse-mosquitto`` container via testcontainers. Placeholders:
``{backend.url}`` (tcp://host:port), ``{backend.host}``, ``{backend.port}``.
"""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

from .backends import Backend, BackendInfo, BackendUnavailable, LocalProcess, free_port
from .containers import started, testcontainers

MOSQUITTO_IMAGE = "eclipse-mosquitto:2"
_CONFIG = """\
user {user}
listener {port} {address}
allow_anonymous true
persistence true
persistence_location {store}/
autosave_interval 1
max_queued_messages 10000
"""


class MosquittoBackend(Backend):
    name = "mosquitto"
    env_var = "MECHAKIT_TEST_MQTT_URL"

    def parse_address(self, value: str) -> dict[str, str]:
        return _values(*self.host_and_port(value, ("tcp", "mqtt"), 1883))

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            raise BackendUnavailable(
                f"mosquitto not found on PATH or in /usr/sbin; apt-get install mosquitto "
                f"or set {self.env_var}"
            )
        port = free_port()
        store = workdir / "store"
        store.mkdir(exist_ok=True)
        config = workdir / "mosquitto.conf"
        # Started as root, mosquitto would switch to the user "mosquitto", who cannot write here.
        user = getpass.getuser()
        config.write_text(_CONFIG.format(user=user, port=port, address="127.0.0.1", store=store))
        process = LocalProcess([binary, "-c", str(config)], port, workdir, "mosquitto")
        process.start()
        return process.backend_info(_values("127.0.0.1", str(port)))

    def start_container(self) -> BackendInfo:
        container = (
            testcontainers("core.container", "DockerContainer")(MOSQUITTO_IMAGE)
            .with_exposed_ports(1883)
            .with_command("mosquitto -c /mosquitto-no-auth.conf")
        )

        def ready(host: str, port: str) -> None:
            from .backends import wait_for_port

            wait_for_port(host, int(port))

        host, port = started(container, MOSQUITTO_IMAGE, ready, port=1883)
        return BackendInfo(_values(host, port), source="testcontainers", stop=container.stop)


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"host": host, "port": port, "address": address, "url": f"tcp://{address}"}
