"""The ``redis`` and ``redis-cluster`` conformance backends.

``redis``: ``MECHAKIT_TEST_REDIS_URL`` (``redis://host:port``) names a server to use as it is;
otherwise ``redis-server`` is started on a free loopback port with nothing persisted and
keyspace notifications on (so restarts come back empty, and ``configuration.redis`` can
subscribe without CONFIG SET); otherwise a ``redis`` container via testcontainers.
Placeholders: ``{backend.host}``, ``{backend.port}``, ``{backend.address}`` (host:port)
and ``{backend.url}``.

``redis-cluster``: ``MECHAKIT_TEST_REDIS_CLUSTER_URL`` (``host:port[,host:port…]``, seeds of a
running cluster); otherwise three ``redis-server`` nodes in cluster mode on free ports,
joined by ``redis-cli --cluster create`` (no replicas). ``{backend.address}`` is the list of
seed addresses, ready for ``redisHost``. There is no container recipe.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .backends import (
    Backend,
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
)
from .containers import started, testcontainers

REDIS_IMAGE = "redis:7-alpine"


class RedisBackend(Backend):
    name = "redis"
    env_var = "MECHAKIT_TEST_REDIS_URL"

    def parse_address(self, value: str) -> dict[str, str]:
        return _values(*self.host_and_port(value, ("redis", "rediss"), 6379))

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = _binary("redis-server", self.env_var)
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
        return process.backend_info(_values("127.0.0.1", str(port)))

    def start_container(self) -> BackendInfo:
        container = testcontainers("redis", "RedisContainer")(REDIS_IMAGE).with_command(
            "redis-server --save '' --appendonly no --notify-keyspace-events KEA"
        )
        host, port = started(container, REDIS_IMAGE, port=6379)
        return BackendInfo(_values(host, port), source="testcontainers", stop=container.stop)


class RedisClusterBackend(Backend):
    name = "redis-cluster"
    env_var = "MECHAKIT_TEST_REDIS_CLUSTER_URL"
    nodes = 3

    def parse_address(self, value: str) -> dict[str, str]:
        from mechakit.components._shared.redis import parse_addresses

        try:
            seeds = parse_addresses(value.replace("redis://", ""))
        except ValueError as exc:
            raise BackendUnavailable(f"{self.env_var}={value!r}: {exc}") from None
        return _cluster_values(seeds)

    def start_local(self, workdir: Path) -> BackendInfo:
        server = _binary("redis-server", self.env_var)
        cli = _binary("redis-cli", self.env_var)
        processes: list[LocalProcess] = []

        def stop() -> None:
            for process in processes:
                process.stop()
            shutil.rmtree(workdir, ignore_errors=True)

        try:
            for n in range(self.nodes):
                port, bus_port, node_dir = free_port(), free_port(), workdir / f"node-{n}"
                node_dir.mkdir()
                argv = [
                    server,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-port", str(bus_port),
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(node_dir),
                    "--notify-keyspace-events", "KEA",
                ]  # fmt: skip
                process = LocalProcess(argv, port, node_dir, "redis")
                process.start()
                processes.append(process)
            seeds = [("127.0.0.1", p.port) for p in processes]
            _create_cluster(cli, seeds)
        except BaseException:
            stop()
            raise
        return BackendInfo(_cluster_values(seeds), source="local binaries", stop=stop)


def _binary(name: str, env_var: str) -> str:
    binary = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if binary is None:
        raise BackendUnavailable(
            f"{name} not found on PATH; apt-get install redis-server or set {env_var}"
        )
    return binary


def _create_cluster(cli: str, seeds: list[tuple[str, int]], timeout: float = 30.0) -> None:
    """Spreads the slots over the nodes and waits until every node reports the cluster ok."""
    addresses = [f"{host}:{port}" for host, port in seeds]
    created = subprocess.run(
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if created.returncode != 0:
        raise BackendUnavailable(f"redis-cli --cluster create failed: {created.stdout[-800:]}")
    deadline = time.monotonic() + timeout
    waiting = list(seeds)
    while waiting:
        host, port = waiting[0]
        info = subprocess.run(
            [cli, "-h", host, "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if "cluster_state:ok" in info.stdout:
            waiting.pop(0)
        elif time.monotonic() > deadline:
            raise BackendUnavailable(f"the cluster did not become ready: {info.stdout[:300]}")
        else:
            time.sleep(0.1)


def _cluster_values(seeds: list[tuple[str, int]]) -> dict[str, str]:
    addresses = ",".join(_values(host, str(port))["address"] for host, port in seeds)
    host, port = seeds[0]
    return {"host": host, "port": str(port), "address": addresses, "url": f"redis://{addresses}"}


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"host": host, "port": port, "address": address, "url": f"redis://{address}"}
