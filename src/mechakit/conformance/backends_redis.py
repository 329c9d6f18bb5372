"""The ``redis`` conformance backend.

``MECHAKIT_TEST_REDIS_URL`` (``redis://host:port``) names a server to use as it is;
otherwise ``redis-server`` is started on a free loopback port with nothing persisted and
keyspace notifications on (so restarts come back empty, and ``configuration.redis`` can
subscribe without CONFIG SET); otherwise a ``redis`` container via testcontainers.
Placeholders: ``{backend.host}``, ``{backend.port}``, ``{backend.address}`` (host:port)
and ``{backend.url}``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

from .backends import (
    Backend,
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
    register_backend,
)

REDIS_IMAGE = "redis:7-alpine"


class RedisBackend(Backend):
    name = "redis"
    env_var = "MECHAKIT_TEST_REDIS_URL"

    def parse_address(self, value: str) -> dict[str, str]:
        parts = urlsplit(value if "://" in value else f"redis://{value}")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise BackendUnavailable(f"{self.env_var}={value!r} is not a redis://host:port URL")
        host, port = parts.hostname, str(parts.port or 6379)
        return _values(host, port)

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            raise BackendUnavailable(
                "redis-server not found on PATH; apt-get install redis-server "
                f"or set {self.env_var}"
            )
        port = free_port()
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--notify-keyspace-events", "KEA",
        ]  # fmt: skip
        process = LocalProcess(argv, port, workdir, "redis")
        process.start()

        def stop() -> None:
            process.stop()
            shutil.rmtree(workdir, ignore_errors=True)

        return BackendInfo(
            _values("127.0.0.1", str(port)),
            source="local binary",
            stop=stop,
            restart=process.restart,
        )

    def start_container(self) -> BackendInfo:
        try:
            from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]
        except ImportError:
            raise BackendUnavailable("testcontainers is not installed") from None
        container = RedisContainer(REDIS_IMAGE).with_command(
            "redis-server --save '' --appendonly no --notify-keyspace-events KEA"
        )
        try:
            container.start()
        except Exception as exc:
            raise BackendUnavailable(f"could not start {REDIS_IMAGE}: {exc}") from None
        host = str(container.get_container_host_ip())
        port = str(container.get_exposed_port(6379))
        return BackendInfo(_values(host, port), source="testcontainers", stop=container.stop)


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"host": host, "port": port, "address": address, "url": f"redis://{address}"}


register_backend(RedisBackend())
