"""State save/get through ``mechakit run`` (dapr SDK over gRPC, httpx over HTTP) and in-process.

    .venv/bin/python -m benchmarks.runtime_bench [--ops 2000] [--warmup 200]

One ``mechakit run`` serves two state stores, ``state.sqlite`` (a file in a temp folder) and
``state.in-memory``. For each store, three callers do the same sequential work, one call in
flight, with the same 104-byte JSON value:

- ``grpc (sdk)``: ``dapr.clients.DaprClient`` ``save_state`` / ``get_state``;
- ``http``: ``httpx.Client`` (keep-alive) ``POST /v1.0/state/<store>`` / ``GET``;
- ``in-process``: ``mechakit.open(...)`` in this process, ``rt.state(store).set`` / ``get``
  (its own runtime over the same YAML; the SQLite file is a separate one).

Per operation: p50 and p99 latency and ops/s (operations ÷ wall time of the loop). The
runtime's resident memory is read from ``/proc/<pid>/status`` (VmRSS) at rest after start,
and again after the load. Results are printed as a table and written to
``benchmarks/results/runtime-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

import mechakit
from mechakit.conformance.backends import free_port

RESULTS = Path(__file__).resolve().parent / "results"
VALUE = {"order": 42, "customer": "c-1001", "items": ["a", "b", "c"], "note": "x" * 40}
PAYLOAD = json.dumps(VALUE, separators=(",", ":"))
STORES = ("sqlite", "memory")
STARTUP = 30.0

COMPONENT = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: {name}}}
spec:
  type: {type}
  version: v1
  metadata: {metadata}
"""


@dataclass
class Result:
    transport: str
    store: str
    op: str
    ops: int
    p50_ms: float
    p99_ms: float
    ops_per_s: float


def write_components(folder: Path, db: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sqlite = json.dumps([{"name": "connectionString", "value": str(db)}])
    (folder / "sqlite.yaml").write_text(
        COMPONENT.format(name="sqlite", type="state.sqlite", metadata=sqlite)
    )
    (folder / "memory.yaml").write_text(
        COMPONENT.format(name="memory", type="state.in-memory", metadata="[]")
    )


def summarise(transport: str, store: str, op: str, latencies: list[float], wall: float) -> Result:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Result(
        transport,
        store,
        op,
        len(ordered),
        round(statistics.median(ordered) * 1000, 3),
        round(p99 * 1000, 3),
        round(len(ordered) / wall, 1),
    )


def timed(call: Callable[[int], object], ops: int, warmup: int) -> tuple[list[float], float]:
    for i in range(warmup):
        call(i)
    latencies = []
    began = time.perf_counter()
    for i in range(ops):
        start = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - start)
    return latencies, time.perf_counter() - began


async def timed_async(
    call: Callable[[int], Awaitable[object]], ops: int, warmup: int
) -> tuple[list[float], float]:
    for i in range(warmup):
        await call(i)
    latencies = []
    began = time.perf_counter()
    for i in range(ops):
        start = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - start)
    return latencies, time.perf_counter() - began


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def bench_grpc(store: str, args: argparse.Namespace) -> list[Result]:
    from dapr.clients import DaprClient

    results = []
    with DaprClient() as dapr:

        def save(i: int) -> None:
            dapr.save_state(store, f"k{i % 100}", PAYLOAD)

        def get(i: int) -> None:
            assert dapr.get_state(store, f"k{i % 100}").data

        for op, call in (("save", save), ("get", get)):
            latencies, wall = timed(call, args.ops, args.warmup)
            results.append(summarise("grpc (sdk)", store, op, latencies, wall))
    return results


def bench_http(base: str, store: str, args: argparse.Namespace) -> list[Result]:
    results = []
    with httpx.Client(base_url=base) as http:

        def save(i: int) -> None:
            body = [{"key": f"k{i % 100}", "value": VALUE}]
            http.post(f"/v1.0/state/{store}", json=body).raise_for_status()

        def get(i: int) -> None:
            response = http.get(f"/v1.0/state/{store}/k{i % 100}")
            response.raise_for_status()
            assert response.content

        for op, call in (("save", save), ("get", get)):
            latencies, wall = timed(call, args.ops, args.warmup)
            results.append(summarise("http", store, op, latencies, wall))
    return results


async def bench_in_process(folder: Path, args: argparse.Namespace) -> list[Result]:
    results = []
    async with mechakit.open(folder, app_id="bench") as rt:
        for store in STORES:
            client = rt.state(store)

            async def save(i: int, client: Any = client) -> None:
                await client.set(f"k{i % 100}", VALUE)

            async def get(i: int, client: Any = client) -> None:
                assert await client.get(f"k{i % 100}") is not None

            for op, call in (("save", save), ("get", get)):
                latencies, wall = await timed_async(call, args.ops, args.warmup)
                results.append(summarise("in-process", store, op, latencies, wall))
    return results


def wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mechakit run exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/v1.0/healthz/outbound", timeout=1).status_code == 204:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("mechakit run did not become healthy")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mechakit-bench-") as tmp:
        served, local = Path(tmp, "served"), Path(tmp, "local")
        write_components(served, Path(tmp, "served.db"))
        write_components(local, Path(tmp, "local.db"))
        http_port, grpc_port = free_port(), free_port()
        environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
        command = [
            sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "bench",
            "--resources-path", str(served), "--log-level", "warning",
            "--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port),
        ]  # fmt: skip
        process = subprocess.Popen(command, env=environment)
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_healthy(base, process)
            time.sleep(args.settle)
            rss_at_rest = rss_kib(process.pid)
            os.environ.update(DAPR_HTTP_PORT=str(http_port), DAPR_GRPC_PORT=str(grpc_port))
            os.environ.pop("DAPR_API_TOKEN", None)
            results: list[Result] = []
            for store in STORES:
                results += bench_grpc(store, args)
                results += bench_http(base, store, args)
            rss_after = rss_kib(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=STARTUP)
        results += asyncio.run(bench_in_process(local, args))
    memory = {"rss_at_rest_kib": rss_at_rest, "rss_after_load_kib": rss_after}
    print_table(results, memory)
    path = write_results(results, memory, args)
    print(f"\nresults written to {path}")
    return 0


def print_table(results: list[Result], memory: dict[str, int]) -> None:
    order = {"grpc (sdk)": 0, "http": 1, "in-process": 2}
    rows = sorted(results, key=lambda r: (r.store, r.op, order[r.transport]))
    print(f"{'store':<8} {'op':<5} {'transport':<11} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>9}")
    for r in rows:
        print(
            f"{r.store:<8} {r.op:<5} {r.transport:<11} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} "
            f"{r.ops_per_s:>9,.0f}"
        )
    print(
        f"\nmechakit run RSS: {memory['rss_at_rest_kib'] / 1024:.1f} MiB at rest, "
        f"{memory['rss_after_load_kib'] / 1024:.1f} MiB after the load"
    )


def write_results(results: list[Result], memory: dict[str, int], args: argparse.Namespace) -> Path:
    from importlib.metadata import version

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"runtime-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "benchmark": "runtime",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {name: version(name) for name in ("dapr", "grpcio", "httpx", "uvicorn")},
        "options": {"ops": args.ops, "warmup": args.warmup, "value_bytes": len(PAYLOAD)},
        "memory": memory,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before RSS at rest")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
