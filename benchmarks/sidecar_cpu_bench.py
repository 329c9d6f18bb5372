"""Sidecar CPU per call and added latency of ``mechakit run`` at a fixed rate (issue 15).

    .venv/bin/python -m benchmarks.sidecar_cpu_bench [--rate 1000] [--seconds 4]
        [--cases grpc-get-redis,http-publish,...] [--connections 4] [--profile DIR]
    .venv/bin/python -m benchmarks.sidecar_cpu_bench --floor aio|sync   # the floor, see below

One ``mechakit run`` (no app) serves the default components (``statestore`` = state.sqlite,
``pubsub`` = pubsub.in-memory, ``lockstore``) plus ``redis`` (state.redis on a server from the
conformance backends), ``memory`` (state.in-memory) and ``redispubsub`` (pubsub.redis, the
same server), which the publish cases use. Gets read the ``statestore`` (sqlite), ``redis``
and ``memory`` stores. This process is the load generator,
so its CPU is not the sidecar's. Each case is open loop: calls start at ``--rate`` per second
whatever the answers do, spread over ``--connections`` client connections (gRPC: one raw
``Dapr`` stub per channel, each its own HTTP/2 connection; HTTP: raw keep-alive HTTP/1.1
connections, one call at a time each, over asyncio streams).

- CPU per call: the sidecar's ``utime + stime`` (``/proc/<pid>/stat``, every thread; children
  too, if any) before and after the case, ÷ calls. The idle CPU over the same time is read
  at rest first and printed beside it (not subtracted).
- Latency p50/p90/p99 from each call's start to its answer, and the same calls in-process
  (``mechakit.open`` over the same YAML in this process, the same open loop): added latency
  = sidecar - in-process, per percentile.
- RSS (VmRSS) at rest after start and after the load.

``--floor aio|sync`` measures, the same way, a minimal grpcio server (:mod:`.grpc_floor`)
answering ``GetState`` from the same Redis with redis-py: what the server stack alone costs.
``--profile DIR`` runs the server under ``py-spy record --nonblocking`` (if installed) into
``DIR`` (collapsed stacks).
Results are printed and written to ``benchmarks/results/sidecar-cpu-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

import mechakit
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, free_port, provision
from mechakit.runtime.defaults import default_components

from .runtime_bench import COMPONENT, RESULTS, rss_kib, wait_healthy
from .sidecar_callers import KEYS, PAYLOAD, PUBSUB, STORE_OF, VALUE, Call, grpc_calls, http_calls

TICK = os.sysconf("SC_CLK_TCK")
CASES = (
    "grpc-get-redis",
    "grpc-get-memory",
    "grpc-get-sqlite",
    "grpc-publish",
    "http-get-redis",
    "http-get-memory",
    "http-get-sqlite",
    "http-publish",
)


@dataclass
class Result:
    case: str
    calls: int
    failed: int
    achieved_rate: float
    cpu_ms_per_call: float
    idle_cpu_ms_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    in_process_p50_ms: float | None = None
    in_process_p90_ms: float | None = None
    in_process_p99_ms: float | None = None

    def added(self) -> tuple[float, float, float] | None:
        if self.in_process_p50_ms is None:
            return None
        assert self.in_process_p90_ms is not None and self.in_process_p99_ms is not None
        return (
            self.p50_ms - self.in_process_p50_ms,
            self.p90_ms - self.in_process_p90_ms,
            self.p99_ms - self.in_process_p99_ms,
        )


# --- measuring -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live descendants (reaped ones through cutime)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17
        total += sum(int(v) for v in fields[11:15]) / TICK
        pending += [int(child) for child in children]
    return total


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def open_loop(
    call: Call, rate: float, seconds: float, failures: list[str] | None = None
) -> tuple[list[float], float]:
    """Start ``rate * seconds`` calls at ``rate`` per second, each when due whatever the
    others do; the latencies (s, call start to answer) of those that succeeded and the rate
    achieved. A failed call's error goes to ``failures``."""
    failures = [] if failures is None else failures
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    latencies: list[float] = []
    running: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            await call(i)
        except Exception as exc:  # counted and shown; the loop goes on
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        latencies.append(time.perf_counter() - started)

    began = loop.time()
    for i in range(total):
        delay = began + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    return latencies, total / (loop.time() - began)


async def measured(
    name: str, call: Call, pid: int, idle_per_s: float, args: argparse.Namespace
) -> Result:
    await open_loop(call, args.rate, min(1.0, args.seconds / 4))  # warm-up
    before = cpu_seconds(pid)
    failures: list[str] = []
    latencies, achieved = await open_loop(call, args.rate, args.seconds, failures)
    spent = cpu_seconds(pid) - before
    if failures:
        print(f"{name}: {len(failures)} call(s) failed, e.g. {failures[0]}", file=sys.stderr)
    ordered = sorted(latencies) or [float("nan")]
    return Result(
        name,
        len(latencies),
        len(failures),
        round(achieved, 1),
        round(spent * 1000 / (len(latencies) + len(failures)), 3),
        round(idle_per_s * 1000, 2),
        *(round(percentile(ordered, f) * 1000, 3) for f in (0.5, 0.9, 0.99)),
    )


# --- running ---------------------------------------------------------------------------------


def write_components(folder: Path, redis: BackendInfo) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in default_components(folder).items():
        (folder / name).write_text(text)
    metadata = json.dumps([{"name": "redisHost", "value": redis.values["address"]}])
    (folder / "redis.yaml").write_text(
        COMPONENT.format(name="redis", type="state.redis", metadata=metadata)
    )
    (folder / "memory.yaml").write_text(
        COMPONENT.format(name="memory", type="state.in-memory", metadata="[]")
    )
    (folder / "redis-pubsub.yaml").write_text(
        COMPONENT.format(name=PUBSUB, type="pubsub.redis", metadata=metadata)
    )


def seed(base: str) -> None:
    with httpx.Client(base_url=base) as http:
        for store in STORE_OF.values():
            body = [{"key": f"k{n}", "value": VALUE} for n in range(KEYS)]
            http.post(f"/v1.0/state/{store}", json=body).raise_for_status()


async def in_process(folder: Path, redis: BackendInfo, args: argparse.Namespace) -> dict[str, Any]:
    """p50/p90/p99 (ms) of each call in-process, under the same open loop."""
    write_components(folder, redis)
    found: dict[str, Any] = {}
    async with mechakit.open(folder, app_id="bench") as rt:
        pubsub = rt.pubsub(PUBSUB)
        calls: dict[str, Call] = {}
        for short, store in STORE_OF.items():
            client = rt.state(store)
            for n in range(KEYS):
                await client.set(f"k{n}", VALUE)

            async def get(i: int, client: Any = client) -> None:
                assert await client.get(f"k{i % KEYS}") is not None

            calls[f"get-{short}"] = get

        async def publish(i: int) -> None:
            await pubsub.publish("orders", PAYLOAD, content_type="application/json")

        calls["publish"] = publish
        for name, call in calls.items():
            await open_loop(call, args.rate, min(1.0, args.seconds / 4))
            latencies, _ = await open_loop(call, args.rate, args.seconds)
            ordered = sorted(latencies)
            found[name] = [round(percentile(ordered, f) * 1000, 3) for f in (0.5, 0.9, 0.99)]
    return found


def sidecar_command(folder: Path, http_port: int, grpc_port: int) -> list[str]:
    return [
        sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "bench",
        "--resources-path", str(folder), "--log-level", "warning",
        "--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port),
        "--dapr-internal-grpc-port", str(free_port()), "--metrics-port", str(free_port()),
    ]  # fmt: skip


def profiled(command: list[str], out: Path | None) -> list[str]:
    if out is None:
        return command
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"sidecar-{time.strftime('%H%M%S')}.txt"
    return [
        spy,
        "record",
        "--nonblocking",
        "--format",
        "raw",
        "--rate",
        "50",
        "-o",
        str(target),
        "--",
        *command,
    ]


def stop(process: subprocess.Popen[bytes], profiling: bool) -> None:
    """Stop the server; under py-spy the server itself, so that py-spy writes its file."""
    if profiling:
        with contextlib.suppress(RuntimeError, OSError):
            os.kill(sidecar_pid(process, True), signal.SIGTERM)
    else:
        process.terminate()
    process.wait(timeout=30)


def sidecar_pid(process: subprocess.Popen[bytes], profiling: bool) -> int:
    """The sidecar's pid (under py-spy: its child)."""
    if not profiling:
        return process.pid
    for _ in range(100):
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy started no sidecar")


async def drive(pid: int, http_port: int, grpc_port: int, args: argparse.Namespace) -> list[Result]:
    before, began = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(args.idle)
    idle = (cpu_seconds(pid) - before) / (time.perf_counter() - began)
    results = []
    for case in args.cases:  # fresh connections per case: uvicorn closes idle ones after 5 s
        transport, _, op = case.partition("-")
        if transport == "grpc":
            calls, close = await grpc_calls(grpc_port, args.connections)
        else:
            calls, close = await http_calls(http_port, args.http_connections)
        try:
            results.append(await measured(case, calls[op], pid, idle, args))
        finally:
            await close()
    return results


def run_sidecar(redis: BackendInfo, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    served = tmp / "served"
    write_components(served, redis)
    http_port, grpc_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
    environment["MECHAKIT_HOME"] = str(tmp / "home")
    command = profiled(sidecar_command(served, http_port, grpc_port), args.profile)
    process = subprocess.Popen(command, env=environment)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(base, process)
        pid = sidecar_pid(process, args.profile is not None)
        seed(base)
        time.sleep(args.settle)
        rss_at_rest = rss_kib(pid)
        results = asyncio.run(drive(pid, http_port, grpc_port, args))
        rss_after = rss_kib(pid)
    finally:
        stop(process, args.profile is not None)
    return {"results": results, "rss_at_rest_kib": rss_at_rest, "rss_after_kib": rss_after}


def run_floor(redis: BackendInfo, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    command = [
        sys.executable, "-m", "benchmarks.grpc_floor", "--mode", args.floor,
        "--port", str(port), "--redis", redis.values["address"],
    ]  # fmt: skip
    process = subprocess.Popen(profiled(command, args.profile))
    try:
        pid = sidecar_pid(process, args.profile is not None)
        with httpx.Client():  # wait for the port
            from mechakit.conformance.backends import wait_for_port

            wait_for_port("127.0.0.1", port)
        time.sleep(args.settle)
        rss_at_rest = rss_kib(pid)

        async def go() -> list[Result]:
            before, began = cpu_seconds(pid), time.perf_counter()
            await asyncio.sleep(args.idle)
            idle = (cpu_seconds(pid) - before) / (time.perf_counter() - began)
            calls, close = await grpc_calls(port, args.connections)
            try:
                return [await measured(f"floor-{args.floor}-grpc-get-redis", calls["get-redis"],
                                       pid, idle, args)]  # fmt: skip
            finally:
                await close()

        async def seed_redis() -> None:
            import redis.asyncio as aioredis

            client = aioredis.Redis(host=redis.values["host"], port=int(redis.values["port"]))
            for n in range(KEYS):
                await client.set(f"k{n}", PAYLOAD)
            await client.aclose()

        asyncio.run(seed_redis())
        results = asyncio.run(go())
        rss_after = rss_kib(pid)
    finally:
        stop(process, args.profile is not None)
    return {"results": results, "rss_at_rest_kib": rss_at_rest, "rss_after_kib": rss_after}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        redis = provision("redis")
    except BackendUnavailable as exc:
        print(f"cannot benchmark: {exc}", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="mechakit-cpu-bench-") as folder:
            tmp = Path(folder)
            if args.floor:
                run = run_floor(redis, args)
            else:
                run = run_sidecar(redis, tmp, args)
                if not args.no_in_process:
                    found = asyncio.run(in_process(tmp / "local", redis, args))
                    for result in run["results"]:
                        local = found.get(result.case.partition("-")[2])
                        if local:
                            (
                                result.in_process_p50_ms,
                                result.in_process_p90_ms,
                                result.in_process_p99_ms,
                            ) = local
    finally:
        redis.stop()
    print_table(run)
    path = write_results(run, args)
    print(f"\nresults written to {path}")
    return 0


def print_table(run: dict[str, Any]) -> None:
    print(
        f"{'case':<28} {'calls/s':>8} {'failed':>6} {'cpu ms/call':>11} {'p50':>7} {'p90':>7}"
        f" {'p99':>7}"
        f"   {'added p50/p90/p99 ms':>22}"
    )
    for r in run["results"]:
        added = r.added()
        extra = "/".join(f"{a:.3f}" for a in added) if added else "-"
        print(
            f"{r.case:<28} {r.achieved_rate:>8.0f} {r.failed:>6} {r.cpu_ms_per_call:>11.3f}"
            f" {r.p50_ms:>7.3f}"
            f" {r.p90_ms:>7.3f} {r.p99_ms:>7.3f}   {extra:>22}"
        )
    idle = run["results"][0].idle_cpu_ms_per_s if run["results"] else 0
    print(
        f"\nidle CPU {idle:.2f} ms/s; RSS {run['rss_at_rest_kib'] / 1024:.1f} MiB at rest, "
        f"{run['rss_after_kib'] / 1024:.1f} MiB after the load"
    )


def write_results(run: dict[str, Any], args: argparse.Namespace) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"sidecar-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "benchmark": "sidecar-cpu",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": {
            "rate": args.rate,
            "seconds": args.seconds,
            "connections": args.connections,
            "http_connections": args.http_connections,
            "floor": args.floor,
        },
        "memory": {
            "rss_at_rest_kib": run["rss_at_rest_kib"],
            "rss_after_kib": run["rss_after_kib"],
        },
        "results": [asdict(r) for r in run["results"]],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="calls started per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per case")
    parser.add_argument("--connections", type=int, default=4, help="gRPC channels")
    parser.add_argument("--http-connections", type=int, default=8, help="HTTP connections")
    parser.add_argument("--cases", type=lambda s: s.split(","), default=list(CASES))
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU read")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before RSS at rest")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process run")
    parser.add_argument("--floor", choices=("aio", "sync"), help="a minimal grpcio server")
    parser.add_argument("--profile", type=Path, help="py-spy the sidecar into this folder")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
