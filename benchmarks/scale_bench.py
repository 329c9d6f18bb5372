"""Cost that does not grow with the data: each figure is a ratio measured in one run.

    .venv/bin/python -m benchmarks.scale_bench [--keys 1000000] [--only state,ttl,pubsub,startup,cli]

- **state** (``state.sqlite``, ``state.postgresql``, ``state.in-memory``): p50/p99 of
  sequential get and set on random keys of a store holding ``--keys`` keys ÷ the same on
  one holding ``--small`` keys. Stores are filled in the backend's own format (a recursive
  CTE in SQLite, ``generate_series`` in PostgreSQL, the dict for in-memory), then a sample
  is read back through the driver to prove it reads what was filled.
- **ttl**: the big store gets ``--keys/10`` expired rows (in-memory: written through the
  driver with a 1 s TTL); p99 of a get/set loop while the driver's TTL cleanup runs ÷ p99
  of the same loop without it. Afterwards every expired row must be gone and every live
  one still there.
- **pubsub** (``pubsub.redis``): a consumer that died holds ``--pending`` (or 100) idle
  entries. The driver's reclaim read (one XAUTOCLAIM page plus delivery counts) timed over
  50 pages, and the time until a new subscriber has handled the first 100 redeliveries.
- **startup**: wall time from spawning ``mechakit run`` until ``/v1.0/healthz/outbound``
  answers 204, with ``--components`` component files (half state.sqlite, half
  state.in-memory) and with one.
- **cli**: wall time of ``mechakit components list`` (and of ``python -c pass``), and the
  SDK packages ``python -X importtime`` shows it importing (the target is none).

Servers come from the conformance backends on free ports (``postgresql``, ``redis``).
Results are printed and written to ``benchmarks/results/scale-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import mechakit.conformance.backends_postgres
import mechakit.conformance.backends_redis  # noqa: F401  (registers "redis")
from benchmarks.scale_process import cli_case, progress, ratio, startup_case
from benchmarks.scale_pubsub import pubsub_case
from mechakit.components._shared.postgresql import quote_name
from mechakit.components.state.in_memory import InMemoryStateStore, _Entry
from mechakit.components.state.postgresql import PostgreSQLStateStore
from mechakit.components.state.sqlite import SQLiteStateStore
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.core.component import ComponentMetadata
from mechakit.core.state import GetRequest, SetRequest, StateStore

RESULTS = Path(__file__).resolve().parent / "results"
NOTE = "x" * 64
SECTIONS = ("state", "ttl", "pubsub", "startup", "cli")
STORES = ("sqlite", "postgresql", "in-memory")


def value(n: int) -> dict[str, Any]:
    return {"n": n, "note": NOTE}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(p99 * 1000, 4),
        "max_ms": round(ordered[-1] * 1000, 4),
        "samples": len(ordered),
    }


# --- filling stores in the backend's own format ---------------------------------------


class Filled:
    """A driver instance over a store filled with keys ``k0`` … ``k<n-1>`` (values ``value(i)``)."""

    def __init__(self, kind: str, store: StateStore[Any], n: int, fill_expired: Any) -> None:
        self.kind, self.store, self.n = kind, store, n
        self.fill_expired: Callable[[int], Awaitable[None]] = fill_expired
        self.count_rows: Callable[[], Awaitable[tuple[int, int]]] = _unknown_rows


async def _unknown_rows() -> tuple[int, int]:
    return (-1, -1)


def chunks(count: int, what: str, parts: int = 10) -> Iterator[tuple[int, int]]:
    """``[start, end)`` ranges covering ``count``; progress printed after each of a big fill."""
    size = max(1, -(-count // parts))
    for start in range(0, count, size):
        yield start, min(count, start + size)
        if count >= 100_000:
            progress(f"{what}: {min(count, start + size):,} of {count:,} written")


def _metadata(kind: str, properties: dict[str, str]) -> ComponentMetadata:
    base = {"keyPrefix": "none", "cleanupInterval": "1h", **properties}
    return ComponentMetadata(f"scale-{kind}", f"state.{kind}", base, app_id="scale")


async def open_sqlite(folder: Path, n: int) -> Filled:
    path = folder / f"scale-{n}.db"
    store = SQLiteStateStore()
    await store.init(_metadata("sqlite", {"connectionString": str(path)}))
    raw = sqlite3.connect(path, isolation_level=None)

    def insert(prefix: str, count: int, first_etag: int, expires: str) -> None:
        for start, end in chunks(count, f"sqlite: {prefix}-keys"):
            raw.execute("BEGIN")
            raw.execute(
                "WITH RECURSIVE c(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM c WHERE i < ? - 1) "
                "INSERT INTO state (key, value, is_binary, etag, expires_at, updated_at) "
                "SELECT ? || i, CAST('{\"n\":' || i || ',\"note\":\"' || ? || '\"}' AS BLOB), "
                f"0, ? + i, {expires}, unixepoch() FROM c",
                (start, end, prefix, NOTE, first_etag),
            )
            raw.execute(
                "UPDATE metadata SET value = ? WHERE key = 'etag-sequence'", (first_etag + end,)
            )
            raw.execute("COMMIT")

    insert("k", n, 1, "NULL")

    async def fill_expired(count: int) -> None:
        insert("x", count, n + 1, "unixepoch() - 60")

    async def count_rows() -> tuple[int, int]:
        live = raw.execute("SELECT count(*) FROM state WHERE key LIKE 'k%'").fetchone()[0]
        expired = raw.execute("SELECT count(*) FROM state WHERE key LIKE 'x%'").fetchone()[0]
        return int(live), int(expired)

    filled = Filled("sqlite", store, n, fill_expired)
    filled.count_rows = count_rows
    return filled


async def open_postgresql(backend: BackendInfo, n: int) -> Filled:
    import psycopg

    table = f"scale_{n}_{os.getpid()}"
    store = PostgreSQLStateStore()
    await store.init(
        _metadata(
            "postgresql",
            {
                "connectionString": backend.values["url"],
                "tableName": table,
                "metadataTableName": f"{table}_meta",
            },
        )
    )
    raw = await psycopg.AsyncConnection.connect(backend.values["url"], autocommit=True)
    sequence = quote_name(f"{table}_etag")

    async def insert(prefix: str, count: int, first_etag: int, expires: str) -> None:
        for start, end in chunks(count, f"postgresql: {prefix}-keys"):
            await raw.execute(
                f"INSERT INTO {quote_name(table)} (key, value, etag, expires_at, updated_at) "
                "SELECT %s || g, jsonb_build_object('n', g, 'note', %s::text), %s + g, "
                f"{expires}, now() FROM generate_series(%s, %s - 1) g",
                (prefix, NOTE, first_etag, start, end),
            )
        await raw.execute(f"SELECT setval('{sequence}', %s)", (first_etag + count,))
        await raw.execute(f"VACUUM ANALYZE {quote_name(table)}")

    await insert("k", n, 1, "NULL")

    async def fill_expired(count: int) -> None:
        await insert("x", count, n + 1, "now() - interval '1 minute'")

    async def count_rows() -> tuple[int, int]:
        counts = []
        for prefix in ("k%", "x%"):
            cursor = await raw.execute(
                f"SELECT count(*) FROM {quote_name(table)} WHERE key LIKE %s", (prefix,)
            )
            row = await cursor.fetchone()
            counts.append(int(row[0]) if row else -1)
        return counts[0], counts[1]

    filled = Filled("postgresql", store, n, fill_expired)
    filled.count_rows = count_rows
    return filled


async def open_in_memory(n: int) -> Filled:
    store = InMemoryStateStore()
    await store.init(_metadata("in-memory", {}))
    # The store's own format: encoded JSON per stored key, ETags from one counter.
    for start, end in chunks(n, "in-memory: k-keys"):
        store._items.update(
            (
                f"k{i}",
                _Entry(json.dumps(value(i), separators=(",", ":")).encode(), False, i + 1, None),
            )
            for i in range(start, end)
        )
    store._etags = itertools.count(n + 1)

    async def fill_expired(count: int) -> None:
        # Through the driver: expiry bookkeeping is the driver's business. TTL 1 s, then wait.
        for i in range(count):
            await store.set(SetRequest(f"x{i}", value(i), metadata={"ttlInSeconds": "1"}))
        await asyncio.sleep(1.2)

    async def count_rows() -> tuple[int, int]:
        keys = list(store._items)
        return sum(k[0] == "k" for k in keys), sum(k[0] == "x" for k in keys)

    filled = Filled("in-memory", store, n, fill_expired)
    filled.count_rows = count_rows
    return filled


async def verify(filled: Filled, rng: random.Random) -> None:
    """The driver reads what the filler wrote."""
    for i in [0, filled.n - 1, *rng.sample(range(filled.n), min(20, filled.n))]:
        item = await filled.store.get(GetRequest(key=f"k{i}"))
        if item is None or item.value != value(i):
            raise AssertionError(f"{filled.kind}: k{i} read back as {item!r}")


# --- state latency ------------------------------------------------------------------------


async def timed_ops(filled: Filled, op: str, count: int, rng: random.Random) -> list[float]:
    store, n = filled.store, filled.n
    samples = []
    for i in range(count):
        key = f"k{rng.randrange(n)}"
        start = time.perf_counter()
        if op == "get":
            await store.get(GetRequest(key=key))
        else:
            await store.set(SetRequest(key=key, value=value(i)))
        samples.append(time.perf_counter() - start)
    return samples


async def latency(
    small: Filled, big: Filled, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    """Rounds of the small and the big store back to back, so that the noise of a shared
    machine pairs; a ratio is the median over rounds of big ÷ small."""
    per_round = max(50, args.ops // args.rounds)
    samples: dict[str, dict[str, list[float]]] = {"small": {}, "big": {}}
    ratios: dict[str, list[float]] = {}
    for op in ("get", "set"):
        for filled in (small, big):  # warm-up: caches, prepared statements
            await timed_ops(filled, op, per_round // 5, rng)
        for _ in range(args.rounds):
            rounds = {}
            for name, filled in (("small", small), ("big", big)):
                rounds[name] = percentiles(await timed_ops(filled, op, per_round, rng))
            for p in ("p50_ms", "p99_ms"):
                ratios.setdefault(f"{op} {p}", []).append(rounds["big"][p] / rounds["small"][p])
            for name in ("small", "big"):
                samples[name].setdefault(f"{op} p50", []).append(rounds[name]["p50_ms"])
                samples[name].setdefault(f"{op} p99", []).append(rounds[name]["p99_ms"])
    return {
        "rounds": args.rounds,
        "ops_per_round": per_round,
        "p50_p99_ms_per_round": samples,
        "ratio": {name: round(statistics.median(values), 3) for name, values in ratios.items()},
    }


async def load_loop(
    store: StateStore[Any], n: int, stop: asyncio.Event, period: float, rng: random.Random
) -> list[tuple[float, float]]:
    """Alternate get and set of random live keys, each due ``period`` seconds after the
    previous one ended, until ``stop``; (due time, end) of each call. Latency counts from
    the due time, so a call held up by a stall counts the stall even when the stall blocked
    the event loop itself (the in-memory store), and a slow call never delays the next
    one's due time (no backlog)."""
    spans = []
    i = 0
    while not stop.is_set():
        due = time.perf_counter() + period
        await asyncio.sleep(period)
        key = f"k{rng.randrange(n)}"
        if i % 2:
            await store.set(SetRequest(key=key, value=value(i)))
        else:
            await store.get(GetRequest(key=key))
        spans.append((due, time.perf_counter()))
        i += 1
    return spans


async def ttl_sweep(filled: Filled, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """p99 of a get/set loop during the driver's TTL cleanup ÷ p99 of the loop without it."""
    expired = max(1, filled.n // 10)
    progress(f"{filled.kind}: writing {expired:,} expired rows")
    await filled.fill_expired(expired)
    before = await filled.count_rows()
    stop = asyncio.Event()
    period = args.period_ms / 1000
    loop = asyncio.create_task(load_loop(filled.store, filled.n, stop, period, rng))
    await asyncio.sleep(args.quiet_seconds)
    stop.set()
    quiet = [end - start for start, end in await loop]

    stop = asyncio.Event()
    loop = asyncio.create_task(load_loop(filled.store, filled.n, stop, period, rng))
    await asyncio.sleep(0.2)
    sweep_start = time.perf_counter()
    await filled.store._purge_expired()  # type: ignore[attr-defined]
    sweep_end = time.perf_counter()
    await asyncio.sleep(0.05)
    stop.set()
    spans = await loop
    during = [end - start for start, end in spans if end >= sweep_start and start <= sweep_end]
    after = await filled.count_rows()
    quiet_stats, during_stats = percentiles(quiet), percentiles(during or [0.0])
    # The same estimator on the same number of samples: p99 of a window of calls as long
    # as the one during the sweep (a short sweep's p99 is its maximum), median over windows.
    size = min(len(quiet), max(1, len(during)))
    windows = [quiet[i : i + size] for i in range(0, len(quiet) - size + 1, size)]
    quiet_stats["p99_ms_same_samples"] = statistics.median(
        percentiles(w)["p99_ms"] for w in windows
    )
    return {
        "expired_rows": expired,
        "sweep_s": round(sweep_end - sweep_start, 3),
        "rows_before": {"live": before[0], "expired": before[1]},
        "rows_after": {"live": after[0], "expired": after[1]},
        "without_sweep": quiet_stats,
        "during_sweep": during_stats,
        "p99_ratio": ratio(during_stats["p99_ms"], quiet_stats["p99_ms_same_samples"]),
    }


@asynccontextmanager
async def opened(
    kind: str, n: int, folder: Path, backends: dict[str, BackendInfo]
) -> AsyncIterator[Filled]:
    started = time.perf_counter()
    progress(f"{kind}: filling {n:,} keys")
    if kind == "sqlite":
        filled = await open_sqlite(folder, n)
    elif kind == "postgresql":
        filled = await open_postgresql(backends["postgresql"], n)
    else:
        filled = await open_in_memory(n)
    progress(f"{kind}: {n:,} keys filled in {time.perf_counter() - started:.1f}s")
    try:
        yield filled
    finally:
        await filled.store.close()


async def state_cases(
    args: argparse.Namespace, folder: Path, backends: dict[str, BackendInfo], notes: list[str]
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    for kind in args.stores:
        if kind == "postgresql" and "postgresql" not in backends:
            notes.append("state.postgresql skipped: no PostgreSQL server")
            continue
        entry: dict[str, Any] = {}
        async with AsyncExitStack() as stack:
            big = await stack.enter_async_context(opened(kind, args.keys, folder, backends))
            await verify(big, rng)
            if "state" in args.only:
                small = await stack.enter_async_context(opened(kind, args.small, folder, backends))
                await verify(small, rng)
                gc.collect()  # settle the fill, as a long-running process has
                entry.update(await latency(small, big, args, rng))
                progress(f"{kind}: latency ratios {entry['ratio']}")
            if "ttl" in args.only:
                entry["ttl"] = await ttl_sweep(big, args, rng)
                progress(f"{kind}: TTL sweep p99 ratio {entry['ttl']['p99_ratio']}")
        out[kind] = entry
    return out


# --- running -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    document: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items()},
        "notes": notes,
    }
    backends: dict[str, BackendInfo] = {}
    with tempfile.TemporaryDirectory(prefix="mechakit-scale-") as tmp:
        folder = Path(tmp)
        try:
            for name, wanted in (("postgresql", "postgresql" in args.stores), ("redis", True)):
                wanted = (wanted and bool({"state", "ttl"} & set(args.only))) or (
                    name == "redis" and "pubsub" in args.only
                )
                if wanted:
                    try:
                        backends[name] = provision(name)
                    except BackendUnavailable as exc:
                        notes.append(f"{name}: {exc}")
            if {"state", "ttl"} & set(args.only):
                document["state"] = await state_cases(args, folder, backends, notes)
            if "pubsub" in args.only and "redis" in backends:
                document["pubsub"] = await pubsub_case(backends["redis"], args)
            if "startup" in args.only:
                document["startup"] = startup_case(args, folder)
            if "cli" in args.only:
                document["cli"] = cli_case(args)
        finally:
            for backend in backends.values():
                backend.stop()
    print_summary(document, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    return 0


def print_summary(document: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{'item':<44} {'figure':>34}  target")
    rows: list[tuple[str, str, str]] = []
    for kind, entry in document.get("state", {}).items():
        for name, figure in entry.get("ratio", {}).items():
            big, small = f"{args.keys:.0e}", f"{args.small:.0e}"
            rows.append((f"state.{kind} {name} {big} ÷ {small}", f"{figure:.2f}x", "≤ 1.5x"))
        if "ttl" in entry:
            ttl = entry["ttl"]
            figure = (
                f"{ttl['p99_ratio']:.2f}x ({ttl['during_sweep']['p99_ms']:.2f} / "
                f"{ttl['without_sweep']['p99_ms_same_samples']:.2f} ms)"
            )
            rows.append((f"state.{kind} p99 during TTL sweep ÷ without", figure, "≤ 2x"))
            rows.append(
                (f"state.{kind} sweep of {ttl['expired_rows']:,} rows", f"{ttl['sweep_s']}s", "")
            )
            rows.append(
                (
                    f"state.{kind} rows after (live, expired)",
                    str(tuple(ttl["rows_after"].values())),
                    "",
                )
            )
    if "pubsub" in document:
        pubsub = document["pubsub"]
        for name, figure in pubsub["ratio"].items():
            rows.append((f"pubsub.redis {name}", f"{figure:.2f}x", "≈ 1x"))
    if "startup" in document:
        startup = document["startup"]
        many = startup[str(args.components)]["median_s"]
        rows.append((f"mechakit run ready, {args.components} components", f"{many:.2f}s", "< 2 s"))
        rows.append(("mechakit run ready, 1 component", f"{startup['1']['median_s']:.2f}s", ""))
    if "cli" in document:
        cli = document["cli"]
        rows.append(("mechakit components list", f"{cli['wall_s']:.3f}s", "< 0.3 s"))
        rows.append(("python -c pass", f"{cli['python_c_pass_s']:.3f}s", ""))
        rows.append(
            ("SDKs imported by components list", ", ".join(cli["sdks_imported"]) or "none", "none")
        )
    for item, figure, target in rows:
        print(f"{item:<44} {figure:>34}  {target}")
    for note in document["notes"]:
        print(f"NOTE: {note}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys in the big stores")
    parser.add_argument("--small", type=int, default=1_000, help="keys in the small stores")
    parser.add_argument("--ops", type=int, default=2_000, help="timed gets (and sets) per store")
    parser.add_argument("--pending", type=int, default=100_000, help="pending Redis entries")
    parser.add_argument("--components", type=int, default=100, help="component files for run")
    parser.add_argument("--repeats", type=int, default=3, help="launches per start-up figure")
    parser.add_argument("--quiet-seconds", type=float, default=1.5, help="load loop without sweep")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per latency ratio")
    parser.add_argument(
        "--period-ms", type=float, default=2.0, help="one call due every this many ms (TTL loop)"
    )
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--stores", type=lambda s: s.split(","), default=list(STORES), help="comma-separated"
    )
    parser.add_argument(
        "--only", type=lambda s: s.split(","), default=list(SECTIONS), help=",".join(SECTIONS)
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
