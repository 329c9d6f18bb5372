"""``mechakit run`` with many component files, and ``mechakit components list``, for
``scale_bench``: wall times of fresh processes, and the SDKs listing imports (none)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mechakit.conformance.backends import free_port


def ratio(big: float, small: float) -> float:
    """``big`` ÷ ``small``, rounded (shared by every part of the scale benchmark)."""
    return round(big / small, 3) if small else float("inf")


def progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


SDKS = (
    "redis", "psycopg", "psycopg_pool", "boto3", "botocore", "grpc", "dapr", "nats",
    "aio_pika", "aiormq", "aiomqtt", "paho", "kafka", "hvac", "azure", "google",
    "starlette", "uvicorn", "httpx",
)  # fmt: skip
"""Client libraries and server frameworks that listing components must not import."""
NAMESPACES = frozenset({"azure", "google", "google.cloud"})
"""Empty namespace packages (no code): ``find_spec("azure.servicebus")``, which tells
whether an extra is installed, imports them."""


COMPONENT = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: {name}}}
spec:
  type: {type}
  version: v1
  metadata: {metadata}
"""


def write_components(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        if i % 2:
            kind, metadata = "state.in-memory", "[]"
        else:
            db = json.dumps([{"name": "connectionString", "value": str(folder / f"s{i}.db")}])
            kind, metadata = "state.sqlite", db
        text = COMPONENT.format(name=f"store{i}", type=kind, metadata=metadata)
        (folder / f"store{i}.yaml").write_text(text)


def time_to_ready(folder: Path) -> float:
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "scale",
        "--resources-path", str(folder), "--log-level", "warning",
        "--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port),
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
    url = f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound"
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=1) as client:
            while time.perf_counter() - started < 60:
                if process.poll() is not None:
                    raise RuntimeError(f"mechakit run exited with {process.returncode}")
                try:
                    if client.get(url).status_code == 204:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise RuntimeError("mechakit run was not ready within 60 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def startup_case(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for count in (1, args.components):
        where = folder / f"components-{count}"
        write_components(where, count)
        runs = [time_to_ready(where) for _ in range(args.repeats)]
        out[str(count)] = {"median_s": round(statistics.median(runs), 3), "runs_s": runs}
        progress(f"mechakit run with {count} components ready in {out[str(count)]['median_s']}s")
    out["ratio"] = ratio(out[str(args.components)]["median_s"], out["1"]["median_s"])
    return out


def wall(command: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        runs.append(time.perf_counter() - started)
    return round(statistics.median(runs), 3)


def cli_case(args: argparse.Namespace) -> dict[str, Any]:
    script = Path(sys.executable).with_name("mechakit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mechakit.runtime.cli"]
    listing = [*command, "components", "list"]
    profile = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mechakit.runtime.cli", "components", "list"],
        check=True,
        capture_output=True,
        text=True,
    )
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in profile.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2 and "cumulative" not in line
    ]
    sdk_modules = [m for m in modules if m.split(".")[0] in SDKS and m not in NAMESPACES]
    out = {
        "command": " ".join(listing),
        "wall_s": wall(listing, args.repeats),
        "python_c_pass_s": wall([sys.executable, "-c", "pass"], args.repeats),
        "modules_imported": len(modules),
        "sdks_imported": sorted({m.split(".")[0] for m in sdk_modules}),
        "sdk_modules": sdk_modules,
        "namespace_packages_imported": sorted(set(modules) & NAMESPACES),
        "mechakit_modules": sorted(m for m in modules if m.startswith("mechakit")),
    }
    progress(f"components list: {out['wall_s']}s, SDKs imported: {out['sdks_imported'] or 'none'}")
    return out
