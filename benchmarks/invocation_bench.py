"""Service invocation through two ``mechakit run`` sidecars against a direct HTTP call.

    .venv/bin/python -m benchmarks.invocation_bench [--ops 2000] [--in-flight 32] [--rounds 4]

The callee is a small echo app (raw ASGI on uvicorn, started by this script) behind its own
sidecar; the caller is this benchmark (``httpx.AsyncClient``, keep-alive). Two paths, the
same 122-byte body each call:

- ``direct``: ``POST http://127.0.0.1:<app>/echo``;
- ``sidecars``: ``POST http://127.0.0.1:<caller's sidecar>/v1.0/invoke/callee/method/echo``,
  which goes caller sidecar → internal gRPC → callee sidecar → the app, and back.

Each path runs sequentially (one call in flight) and with ``--in-flight`` concurrent
callers, in ``--rounds`` rounds where the two paths take turns; per case the p50 and p99 latency of the calls and their throughput (calls ÷ wall
time). The sidecar cost is the difference per percentile (sidecars minus direct). The two
sidecars find each other through ``nameresolution.sqlite`` in a temporary
``MECHAKIT_HOME``. Results are printed and written to
``benchmarks/results/invocation-<time>.json``.
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

from benchmarks.runtime_bench import wait_healthy
from mechakit.conformance.backends import free_port

RESULTS = Path(__file__).resolve().parent / "results"
BODY = json.dumps({"order": 42, "note": "x" * 100}, separators=(",", ":")).encode()
"""122 bytes of JSON."""
STARTUP = 30.0
CALLEE = "callee"


@dataclass
class Result:
    path: str
    mode: str
    calls: int
    p50_ms: float
    p99_ms: float
    calls_per_s: float


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The callee: answers every request with its body (raw ASGI, nothing in between)."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_echo(port: int) -> None:
    import uvicorn

    uvicorn.run(echo_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarise(path: str, mode: str, latencies: list[float], wall: float) -> Result:
    ordered = sorted(latencies)
    return Result(
        path,
        mode,
        len(ordered),
        round(statistics.median(ordered) * 1000, 3),
        round(_percentile(ordered, 0.99) * 1000, 3),
        round(len(ordered) / wall, 1),
    )


async def measure(
    call: Callable[[], Awaitable[None]], calls: int, in_flight: int, warmup: int
) -> tuple[list[float], float]:
    """Latency of each of ``calls`` calls made by ``in_flight`` concurrent callers, and the
    wall time of them all (after ``warmup`` untimed calls)."""
    await asyncio.gather(*(call() for _ in range(warmup)))
    latencies: list[float] = []
    share = [calls // in_flight + (n < calls % in_flight) for n in range(in_flight)]

    async def caller(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(caller(count) for count in share))
    return latencies, time.perf_counter() - began


async def bench(urls: dict[str, str], args: argparse.Namespace) -> list[Result]:
    """Each mode's calls in ``--rounds`` rounds, the paths taking turns, so that the load of
    a shared machine falls on both alike."""
    limits = httpx.Limits(max_connections=args.in_flight, max_keepalive_connections=args.in_flight)
    results: list[Result] = []
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as client:
        for mode, in_flight in (("sequential", 1), (f"{args.in_flight} in flight", args.in_flight)):
            latencies: dict[str, list[float]] = {path: [] for path in urls}
            walls = dict.fromkeys(urls, 0.0)
            for _ in range(args.rounds):
                for path, url in urls.items():

                    async def call(url: str = url) -> None:
                        answer = await client.post(url, content=BODY)
                        if answer.status_code != 200 or answer.content != BODY:
                            raise RuntimeError(
                                f"{url} answered {answer.status_code}: {answer.text}"
                            )

                    calls = args.ops // args.rounds
                    timed, wall = await measure(call, calls, in_flight, args.warmup)
                    latencies[path] += timed
                    walls[path] += wall
            results += [summarise(path, mode, latencies[path], walls[path]) for path in urls]
    return results


def added(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per mode: what the two sidecars add to p50 and p99 (ms) and the throughput ratio."""
    by = {(r.path, r.mode): r for r in results}
    found: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(r.mode for r in results):
        direct, through = by[("direct", mode)], by[("sidecars", mode)]
        found[mode] = {
            "p50_ms": round(through.p50_ms - direct.p50_ms, 3),
            "p99_ms": round(through.p99_ms - direct.p99_ms, 3),
            "throughput_ratio": round(through.calls_per_s / direct.calls_per_s, 3),
        }
    return found


def start(argv: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *argv], env=environment)


def wait_app(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the echo app exited with {process.returncode}")
        try:
            httpx.post(f"http://127.0.0.1:{port}/echo", content=b"{}", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("the echo app never answered")


def sidecar(app_id: str, app_port: int | None) -> tuple[list[str], str]:
    """``mechakit run`` arguments for ``app_id`` on free ports, and its HTTP API's address."""
    ports = [str(free_port()) for _ in range(4)]
    argv = [
        "-m", "mechakit.runtime.cli", "run", "--app-id", app_id, "--log-level", "warning",
        "--dapr-http-port", ports[0], "--dapr-grpc-port", ports[1],
        "--dapr-internal-grpc-port", ports[2], "--metrics-port", ports[3],
    ]  # fmt: skip
    argv += ["--app-port", str(app_port)] if app_port is not None else []
    return argv, f"http://127.0.0.1:{ports[0]}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0
    with tempfile.TemporaryDirectory(prefix="mechakit-invoke-bench-") as home:
        environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
        environment["MECHAKIT_HOME"] = home
        app_port = free_port()
        callee, caller = sidecar(CALLEE, app_port), sidecar("caller", None)
        script = ["-m", "benchmarks.invocation_bench", "--serve-echo", str(app_port)]
        processes = [start(script, environment)]
        try:
            wait_app(app_port, processes[0])
            for command, address in (callee, caller):
                processes.append(start(command, environment))
                wait_healthy(address, processes[-1])
            urls = {
                "direct": f"http://127.0.0.1:{app_port}/echo",
                "sidecars": f"{caller[1]}/v1.0/invoke/{CALLEE}/method/echo",
            }
            results = asyncio.run(bench(urls, args))
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=STARTUP)
    costs = added(results)
    print_table(results, costs)
    print(f"\nresults written to {write_results(results, costs, args)}")
    return 0


def print_table(results: list[Result], costs: dict[str, dict[str, float]]) -> None:
    print(f"{'mode':<14} {'path':<9} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9}")
    for r in results:
        print(f"{r.mode:<14} {r.path:<9} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.calls_per_s:>9,.0f}")
    for mode, cost in costs.items():
        print(
            f"{mode}: the sidecars add {cost['p50_ms']:.3f} ms at p50, {cost['p99_ms']:.3f} ms "
            f"at p99; throughput x{cost['throughput_ratio']:.2f} of direct"
        )


def write_results(
    results: list[Result], costs: dict[str, dict[str, float]], args: argparse.Namespace
) -> Path:
    from importlib.metadata import version

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"invocation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "benchmark": "invocation",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {name: version(name) for name in ("grpcio", "httpx", "uvicorn")},
        "options": {
            "ops": args.ops,
            "warmup": args.warmup,
            "in_flight": args.in_flight,
            "rounds": args.rounds,
            "body_bytes": len(BODY),
        },
        "added_by_sidecars": costs,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="timed calls per path and mode")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls first, per case")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=4, help="turns the two paths take")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
