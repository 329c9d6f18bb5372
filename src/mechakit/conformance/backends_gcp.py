"""The ``gcp-pubsub`` conformance backend: the Google Cloud Pub/Sub emulator.

``MECHAKIT_TEST_PUBSUB_EMULATOR_HOST`` (``host:port``) names a running emulator to use as it
is; otherwise the gcloud SDK's emulator (``platform/pubsub-emulator``, Java) is started on a
free loopback port with its data in a temp dir. It is called directly: ``gcloud beta
emulators`` wants the network. Placeholders: ``{backend.host}``, ``{backend.port}``,
``{backend.address}`` (host:port) and ``{backend.project}`` (any id works on an emulator).
There is no container recipe.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .backends import Backend, BackendInfo, BackendUnavailable, LocalProcess, free_port

_EMULATOR = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
_SDK_ROOTS = (
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
    str(Path.home() / "google-cloud-sdk"),
)
PROJECT = "mechakit-conformance"


def emulator_binary() -> Path | None:
    """The installed emulator: under the gcloud SDK's root (``gcloud info``), else under
    the usual install locations."""
    roots = list(_SDK_ROOTS)
    gcloud = shutil.which("gcloud")
    if gcloud is not None:
        try:
            result = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            if result.returncode == 0 and result.stdout.strip():
                roots.insert(0, result.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
        roots.insert(1, str(Path(gcloud).resolve().parent.parent))
    for root in roots:
        candidate = Path(root) / _EMULATOR
        if candidate.is_file():
            return candidate
    return None


class PubSubEmulatorBackend(Backend):
    name = "gcp-pubsub"
    env_var = "MECHAKIT_TEST_PUBSUB_EMULATOR_HOST"

    def parse_address(self, value: str) -> dict[str, str]:
        return _values(*self.host_and_port(value, ("http",), 8085))

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = emulator_binary()
        if binary is None:
            raise BackendUnavailable(
                "the Pub/Sub emulator is not installed (gcloud components install "
                f"pubsub-emulator, or apt-get install google-cloud-cli-pubsub-emulator); "
                f"or set {self.env_var}"
            )
        if shutil.which("java") is None:
            raise BackendUnavailable(
                f"the Pub/Sub emulator needs Java on PATH; or set {self.env_var}"
            )
        port = free_port()
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        argv = [str(binary), "--host=127.0.0.1", f"--port={port}", f"--data-dir={data}"]
        process = LocalProcess(argv, port, workdir, "pubsub-emulator")
        process.start(timeout=60.0)  # the JVM takes a few seconds
        return process.backend_info(_values("127.0.0.1", str(port)))


def _values(host: str, port: str) -> dict[str, str]:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"host": host, "port": port, "address": address, "project": PROJECT}
