"""state.postgresql against psycopg 3 doing the same work by hand, on one PostgreSQL server.

    .venv/bin/python -m benchmarks.postgresql_bench [--seconds 0.25] [--rounds 5] [--in-flight 16]

The server comes from ``MECHAKIT_TEST_POSTGRES_URL`` or a throw-away local cluster
(``initdb``, fsync off) on a free port: the conformance "postgresql" backend. Every case
runs as a sequential loop (one call in flight: latency bound) and, where it can, with
``--in-flight`` concurrent callers, each on its own key. Rounds of the contenders run back
to back; the slowdown is the median over rounds of the baseline's throughput divided by
mechakit's (1.0 = as fast as the baseline). Every contender uses an async psycopg pool of
the same size (``--pool-size``, default the driver's: the larger of 4 and the CPU count).

Baselines: "psycopg" is what a user writes by hand on a minimal table
``(key text primary key, value jsonb, etag bigint)``: set = ``INSERT … ON CONFLICT (key)
DO UPDATE SET value = excluded.value, etag = t.etag + 1``; get = ``SELECT value, etag …
WHERE key = %s``; ETag set = ``UPDATE … SET value = %s, etag = etag + 1 WHERE key = %s AND
etag = %s`` (rowcount 1). "same SQL" runs the driver's own statements (its ``_Statements``)
on the driver's table through raw psycopg, which separates the cost of the driver's SQL
(etag sequence, TTL and binary columns, ``key = ANY(…)``) from the cost of its Python layer.

The driver's ETags come from one sequence per table, and ``set`` does not return the new
ETag, so only one caller can predict its next ETag: "state ETag set" (a bare conditional
write) runs sequentially; "state ETag get+set" (read the ETag, write with it: the
optimistic-update loop a user writes) runs in both modes. Round trips per call are counted
by a small proxy between client and server that counts the protocol messages the client
sends (a round trip is one ``Sync`` or simple ``Query``).

Results are printed as a table and written to ``benchmarks/results/postgresql-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

import mechakit.conformance.backends_postgres  # noqa: F401  (registers the "postgresql" backend)
from benchmarks.harness import Case, Op, Reset, compare
from mechakit.components.state.postgresql import PostgreSQLStateStore, _Statements
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, free_port, provision
from mechakit.core.component import ComponentMetadata
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest

RESULTS = Path(__file__).resolve().parent / "results"
VALUE = {"order": 42, "customer": "c-1001", "items": ["a", "b", "c"], "note": "x" * 64}
CALLS_COUNTED = 200
PSYCOPG = "psycopg"
SAME_SQL = "same SQL"

Ops = dict[str, tuple[Reset, Op]]
Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


# --- contenders ---------------------------------------------------------------------------


def mechakit_ops(store: PostgreSQLStateStore, keys: list[str]) -> Ops:
    """state.postgresql's set, get, ETag set and ETag get+set on ``keys`` (one per caller)."""
    etags = [0] * len(keys)
    latest = [0]  # the table's sequence: every write draws the next number

    async def reset() -> None:
        for n, key in enumerate(keys):
            await store.delete(DeleteRequest(key=key))
            await store.set(SetRequest(key=key, value=VALUE))
            item = await store.get(GetRequest(key=key))
            assert item is not None and item.etag is not None
            etags[n] = int(item.etag)
        latest[0] = max(etags)

    async def set_(n: int, i: int) -> None:
        await store.set(SetRequest(key=keys[n], value=VALUE))

    async def get(n: int, i: int) -> None:
        item = await store.get(GetRequest(key=keys[n]))
        assert item is not None

    async def etag_set(n: int, i: int) -> None:
        await store.set(SetRequest(key=keys[n], value=VALUE, etag=str(etags[n])))
        latest[0] += 1
        etags[n] = latest[0]

    async def etag_get_set(n: int, i: int) -> None:
        item = await store.get(GetRequest(key=keys[n]))
        assert item is not None
        await store.set(SetRequest(key=keys[n], value=VALUE, etag=item.etag))

    return {
        "state set": (reset, set_),
        "state get": (reset, get),
        "state ETag set": (reset, etag_set),
        "state ETag get+set": (reset, etag_get_set),
    }


def psycopg_ops(pool: Pool, table: str, keys: list[str]) -> Ops:
    """What a psycopg user writes by hand on a minimal table for the same four cases."""
    upsert = (
        f"INSERT INTO {table} AS t (key, value, etag) VALUES (%s, %s, 1) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = t.etag + 1"
    )
    select = f"SELECT value, etag FROM {table} WHERE key = %s"
    update_if = f"UPDATE {table} SET value = %s, etag = etag + 1 WHERE key = %s AND etag = %s"
    etags = [1] * len(keys)

    async def reset() -> None:
        async with pool.connection() as conn:
            for n, key in enumerate(keys):
                await conn.execute(f"DELETE FROM {table} WHERE key = %s", (key,))
                await conn.execute(upsert, (key, Jsonb(VALUE)))
                etags[n] = 1

    async def set_(n: int, i: int) -> None:
        async with pool.connection() as conn:
            await conn.execute(upsert, (keys[n], Jsonb(VALUE)))

    async def get(n: int, i: int) -> None:
        async with pool.connection() as conn:
            cursor = await conn.execute(select, (keys[n],))
            row = await cursor.fetchone()
            assert row is not None

    async def etag_set(n: int, i: int) -> None:
        async with pool.connection() as conn:
            cursor = await conn.execute(update_if, (Jsonb(VALUE), keys[n], etags[n]))
            assert cursor.rowcount == 1
        etags[n] += 1

    async def etag_get_set(n: int, i: int) -> None:
        async with pool.connection() as conn:
            cursor = await conn.execute(select, (keys[n],))
            row = await cursor.fetchone()
        assert row is not None
        async with pool.connection() as conn:
            cursor = await conn.execute(update_if, (Jsonb(VALUE), keys[n], row[1]))
            assert cursor.rowcount == 1

    return {
        "state set": (reset, set_),
        "state get": (reset, get),
        "state ETag set": (reset, etag_set),
        "state ETag get+set": (reset, etag_get_set),
    }


def same_sql_ops(pool: Pool, sql: _Statements, keys: list[str]) -> Ops:
    """The driver's own statements and parameters on its table, through raw psycopg."""
    etags = [0] * len(keys)
    latest = [0]

    def params(key: str, etag: int | None = None) -> dict[str, Any]:
        text = json.dumps(VALUE, separators=(",", ":"))
        return {"key": key, "value": text, "value_bytes": None, "ttl": None, "etag": etag}

    async def read(conn: psycopg.AsyncConnection[Any], key: str) -> int:
        cursor = await conn.execute(sql.select, ([key],))
        rows = await cursor.fetchall()
        assert rows
        _key, text, _binary, etag, _expires = rows[0]
        json.loads(text)
        return int(etag)

    async def reset() -> None:
        async with pool.connection() as conn:
            for n, key in enumerate(keys):
                await conn.execute(sql.delete, {"key": key})
                await conn.execute(sql.upsert, params(key))
                etags[n] = await read(conn, key)
        latest[0] = max(etags)

    async def set_(n: int, i: int) -> None:
        async with pool.connection() as conn:
            await conn.execute(sql.upsert, params(keys[n]))

    async def get(n: int, i: int) -> None:
        async with pool.connection() as conn:
            await read(conn, keys[n])

    async def etag_set(n: int, i: int) -> None:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql.update_if, params(keys[n], etags[n]))
            assert cursor.rowcount == 1
        latest[0] += 1
        etags[n] = latest[0]

    async def etag_get_set(n: int, i: int) -> None:
        async with pool.connection() as conn:
            etag = await read(conn, keys[n])
        async with pool.connection() as conn:
            cursor = await conn.execute(sql.update_if, params(keys[n], etag))
            assert cursor.rowcount == 1

    return {
        "state set": (reset, set_),
        "state get": (reset, get),
        "state ETag set": (reset, etag_set),
        "state ETag get+set": (reset, etag_get_set),
    }


CASES = (
    ("state set", True),
    ("state get", True),
    ("state ETag set", False),  # the driver's next ETag is predictable with one caller only
    ("state ETag get+set", True),
)


async def state_cases(contenders: Mapping[str, Ops], args: argparse.Namespace) -> list[Case]:
    cases = []
    for mode, in_flight in (("sequential", 1), (f"{args.in_flight} in flight", args.in_flight)):
        for name, concurrent in CASES:
            if in_flight > 1 and not concurrent:
                continue
            ops = {who: contender[name] for who, contender in contenders.items()}
            cases.append(await compare(name, mode, ops, args, in_flight))
            print(f"  {name:<20} {mode:<14} done", file=sys.stderr)
    return cases


# --- round trips ----------------------------------------------------------------------------


class CountingProxy:
    """A TCP relay to the server that counts the frontend protocol messages clients send."""

    # Untyped messages sent before (or instead of) the startup message.
    _PRE_STARTUP = frozenset({80877102, 80877103, 80877104})  # cancel, SSL, GSSENC request

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.sent: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def round_trips(self) -> int:
        return self.sent["S"] + self.sent["Q"]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        upstream = asyncio.create_task(self._pump(client_r, server_w, count=True))
        downstream = asyncio.create_task(self._pump(server_r, client_w, count=False))
        self._tasks |= {upstream, downstream}
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
            self._tasks.discard(task)
        for writer in (client_w, server_w):
            writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        buffer, started = bytearray(), False
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if not count:
                continue
            buffer += data
            while True:
                if not started:
                    if len(buffer) < 8:
                        break
                    length, code = struct.unpack("!ii", buffer[:8])
                    started = code not in self._PRE_STARTUP
                    del buffer[:length]
                    continue
                if len(buffer) < 5:
                    break
                length = struct.unpack("!i", buffer[1:5])[0]
                if len(buffer) < 1 + length:
                    break
                self.sent[chr(buffer[0])] += 1
                del buffer[: 1 + length]


MESSAGE_NAMES = {
    "P": "Parse",
    "B": "Bind",
    "D": "Describe",
    "E": "Execute",
    "S": "Sync",
    "Q": "Query",
    "C": "Close",
    "H": "Flush",
}


async def count_round_trips(
    make: Callable[[str], Awaitable[tuple[Ops, Callable[[], Awaitable[None]]]]],
    proxy: CountingProxy,
    proxy_conninfo: str,
) -> dict[str, Any]:
    """Round trips and client messages per sequential call of each case, after a warm-up."""
    ops, close = await make(proxy_conninfo)
    counted: dict[str, Any] = {}
    try:
        for name, (reset, op) in ops.items():
            await reset()
            for i in range(20):  # psycopg prepares a statement on its 5th use
                await op(0, i)
            proxy.sent.clear()
            for i in range(CALLS_COUNTED):
                await op(0, i)
            counted[name] = {
                "round_trips": round(proxy.round_trips() / CALLS_COUNTED, 3),
                "messages": {
                    MESSAGE_NAMES.get(k, k): round(v / CALLS_COUNTED, 3)
                    for k, v in sorted(proxy.sent.items())
                },
            }
    finally:
        await close()
    return counted


# --- running ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    try:
        backend = provision("postgresql")
    except BackendUnavailable as exc:
        print(f"cannot benchmark: {exc}", file=sys.stderr)
        return 2
    try:
        return await run(backend, args)
    finally:
        backend.stop()


async def open_raw_pool(conninfo: str, size: int) -> Pool:
    pool: Pool = AsyncConnectionPool(
        conninfo, min_size=1, max_size=size, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    return pool


async def open_store(conninfo: str, table: str, pool_size: int) -> PostgreSQLStateStore:
    properties = {
        "connectionString": conninfo,
        "tableName": table,
        "maxConns": str(pool_size),
        "cleanupInterval": "0",
    }
    store = PostgreSQLStateStore()
    await store.init(ComponentMetadata("bench", "state.postgresql", properties, app_id="bench"))
    return store


async def run(backend: BackendInfo, args: argparse.Namespace) -> int:
    conninfo = backend.values["url"]
    run_id = uuid.uuid4().hex[:6]
    table, raw_table = f"bench_{run_id}", f"bench_raw_{run_id}"
    keys = [f"k-{n}" for n in range(args.in_flight)]
    sql = _Statements(table, "dapr_metadata")

    store = await open_store(conninfo, table, args.pool_size)
    raw_pool = await open_raw_pool(conninfo, args.pool_size)
    same_pool = await open_raw_pool(conninfo, args.pool_size)
    async with raw_pool.connection() as conn:
        await conn.execute(
            f"CREATE TABLE {raw_table} (key text PRIMARY KEY, value jsonb NOT NULL, "
            "etag bigint NOT NULL)"
        )
        cursor = await conn.execute("SHOW server_version")
        row = await cursor.fetchone()
        server_version = str(row[0]) if row else "?"
    print(
        f"PostgreSQL {server_version} ({backend.source}), {os.cpu_count()} CPUs, pool size "
        f"{args.pool_size}, {args.seconds}s x {args.rounds} rounds per case",
        file=sys.stderr,
    )
    proxy = CountingProxy(backend.values["host"], int(backend.values["port"]))
    await proxy.start()
    proxy_conninfo = psycopg.conninfo.make_conninfo(
        conninfo, host="127.0.0.1", port=str(proxy.port), sslmode="disable", gssencmode="disable"
    )

    async def proxied_mechakit(info: str) -> tuple[Ops, Callable[[], Awaitable[None]]]:
        counted_store = await open_store(info, table, 1)
        return mechakit_ops(counted_store, ["counted"]), counted_store.close

    async def proxied_psycopg(info: str) -> tuple[Ops, Callable[[], Awaitable[None]]]:
        pool = await open_raw_pool(info, 1)
        return psycopg_ops(pool, raw_table, ["counted"]), pool.close

    async def proxied_same_sql(info: str) -> tuple[Ops, Callable[[], Awaitable[None]]]:
        pool = await open_raw_pool(info, 1)
        return same_sql_ops(pool, sql, ["same||counted"]), pool.close

    try:
        contenders = {
            "mechakit": mechakit_ops(store, keys),
            PSYCOPG: psycopg_ops(raw_pool, raw_table, keys),
            SAME_SQL: same_sql_ops(same_pool, sql, [f"same||{key}" for key in keys]),
        }
        cases = await state_cases(contenders, args)
        round_trips = {
            "mechakit": await count_round_trips(proxied_mechakit, proxy, proxy_conninfo),
            PSYCOPG: await count_round_trips(proxied_psycopg, proxy, proxy_conninfo),
            SAME_SQL: await count_round_trips(proxied_same_sql, proxy, proxy_conninfo),
        }
    finally:
        await proxy.stop()
        await store.close()
        async with raw_pool.connection() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {raw_table}, {table}")
            await conn.execute(f"DROP SEQUENCE IF EXISTS {table}_etag")
            await conn.execute("DELETE FROM dapr_metadata WHERE key LIKE %s", (f"%:{table}",))
        await raw_pool.close()
        await same_pool.close()

    print_table(cases, round_trips)
    path = write_results(cases, round_trips, args, backend, server_version)
    print(f"\nresults written to {path}")
    return 0


def print_table(cases: list[Case], round_trips: dict[str, dict[str, Any]]) -> None:
    print()
    header = (
        f"{'case (ops/s)':<20} {'mode':<13} {'mechakit':>9} {'psycopg':>9} {'slowdown':>9}  "
        f"{'same SQL':>9} {'slowdown':>9}"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        print(
            f"{case.name:<20} {case.mode:<13} {case.median('mechakit'):>9,.0f} "
            f"{case.median(PSYCOPG):>9,.0f} {case.slowdown(PSYCOPG):>8.2f}x  "
            f"{case.median(SAME_SQL):>9,.0f} {case.slowdown(SAME_SQL):>8.2f}x"
        )
    print(
        "\nslowdown: median over rounds of the baseline's ÷ mechakit's throughput. 'psycopg': "
        "hand-written\nstatements on a minimal table; 'same SQL': the driver's statements on "
        "its table, through raw psycopg."
    )
    print(f"\nround trips per sequential call (client messages per call), {CALLS_COUNTED} calls:")
    for name in round_trips["mechakit"]:
        cells = []
        for who, counted in round_trips.items():
            entry = counted[name]
            messages = " ".join(f"{k} {v:g}" for k, v in entry["messages"].items())
            cells.append(f"{who} {entry['round_trips']:g} ({messages})")
        print(f"  {name:<20} " + "; ".join(cells))


def write_results(
    cases: list[Case],
    round_trips: dict[str, Any],
    args: argparse.Namespace,
    backend: BackendInfo,
    server_version: str,
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"postgresql-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "psycopg": psycopg.__version__,
            "libpq": psycopg.pq.version(),
            "postgresql_server": server_version,
            "server_source": backend.source,
        },
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "in_flight": args.in_flight,
            "pool_size": args.pool_size,
        },
        "cases": [
            {
                **asdict(c),
                "median": {who: round(c.median(who)) for who in c.rounds},
                "slowdown": {who: round(c.slowdown(who), 3) for who in c.rounds},
            }
            for c in cases
        ],
        "round_trips_per_call": round_trips,
    }
    path.write_text(json.dumps(document, indent=2))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.25, help="length of one round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender and case")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent callers")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=max(4, os.cpu_count() or 1),
        help="connections per pool, for every contender (default: the driver's default)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
