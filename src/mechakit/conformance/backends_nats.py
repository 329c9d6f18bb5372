"""The ``nats`` conformance backend: a NATS server with JetStream.

``MECHAKIT_TEST_NATS_URL`` (``nats://host:port``) names a server to use as it is; otherwise
``nats-server -js`` is started on a free loopback port with its store in a temp dir.
Placeholders: ``{backend.host}``, ``{backend.port}``, ``{backend.address}`` (host:port) and
``{backend.url}``. There is no container recipe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .backends import Backend, BackendInfo, BackendUnavailable, LocalProcess, free_port


class NatsBackend(Backend):
    name = "nats"
    env_var = "MECHAKIT_TEST_NATS_URL"

    def parse_address(self, value: str) -> dict[str, str]:
        return _values(*self.host_and_port(value, ("nats", "tls"), 4222))

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
        )
        if binary is None:
            raise BackendUnavailable(
                f"nats-server not found on PATH or in /usr/sbin; apt-get install nats-server "
                f"or set {self.env_var}"
            )
        port = free_port()
        store = workdir / "jetstream"
        store.mkdir(exist_ok=True)
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
        process = LocalProcess(argv, port, workdir, "nats")
        process.start()
        return process.backend_info(_values("127.0.0.1", str(port)))


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"host": host, "port": port, "address": address, "url": f"nats://{address}"}
