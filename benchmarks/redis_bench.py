"""state.redis and pubsub.redis against redis-py doing the same work, on one Redis server.

    .venv/bin/python -m benchmarks.redis_bench [--seconds 0.25] [--rounds 5] [--in-flight 32]

The server comes from ``MECHAKIT_TEST_REDIS_URL`` or a local ``redis-server`` started on a
free port (the conformance "redis" backend). Every case runs as a sequential loop (one
call in flight: latency bound) and with ``--in-flight`` concurrent callers. Rounds of the
contenders run back to back; the slowdown is the median over rounds of redis-py's
throughput divided by mechakit's (1.0 = as fast as redis-py; the targets, from issue 15:
state calls at most 1.1 with one call in flight and at most 0.5 — twice redis-py's throughput,
through auto-pipelining — with many; pub/sub at most 1.2 with one publisher). Two redis-py baselines: a client with redis-py's defaults (no timeouts), and
"same client", built with the socket timeouts and retries mechakit's drivers use, which
separates the cost of those settings from the cost of the driver code.

Raw equivalents: set = one ``HSET key data <json> version <n>``; get = ``HGETALL`` and
``json.loads``; ETag set = ``EVALSHA`` of a minimal compare-and-set script; pub/sub =
``XADD`` and a consumer looping ``XREADGROUP`` (COUNT 100, BLOCK) with an ``XACK`` per
message. Commands per ETag set are counted twice: ``INFO commandstats`` (which also counts
the commands a Lua script runs) and ``MONITOR`` (only what the client sent).

Results are printed as a table and written to ``benchmarks/results/redis-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

import mechakit.conformance.backends_redis  # noqa: F401  (registers the "redis" backend)
from benchmarks.harness import Case, Op, compare
from mechakit.components._shared.redis import RedisSettings, connect
from mechakit.components.pubsub.redis import RedisPubSub
from mechakit.components.state.redis import _SET as _DRIVER_SET
from mechakit.components.state.redis import RedisStateStore
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import Message, PublishRequest, SubscribeRequest
from mechakit.core.state import DeleteRequest, GetRequest, SetRequest

RESULTS = Path(__file__).resolve().parent / "results"
VALUE = {"order": 42, "customer": "c-1001", "items": ["a", "b", "c"], "note": "x" * 64}
PAYLOAD = json.dumps(VALUE).encode()
ETAG_SETS_COUNTED = 500
MECHAKIT_POOL = "64"
"""poolSize for the drivers: the default (10 per CPU) is below --in-flight on small machines,
where callers would queue for a connection while redis-py's default client opens one each."""

SAME_CLIENT = "same client"
"""redis-py configured as mechakit's drivers configure it (socket timeouts, retries)."""


# A versioned write, the least a hand-written store needs so that ETags can work at all.
_VERSIONED_SET = """
redis.call('HSET', KEYS[1], 'data', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""

_CAS = """
local v = redis.call('HGET', KEYS[1], 'version')
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', tonumber(v) + 1)
return 1
"""


# --- state --------------------------------------------------------------------------------


async def state_cases(
    store: RedisStateStore, clients: Mapping[str, Any], args: argparse.Namespace
) -> tuple[list[Case], dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    keys = [f"bench-{run}-{n}" for n in range(args.in_flight)]
    versions = [0] * args.in_flight

    async def mk_set(n: int, i: int) -> None:
        await store.set(SetRequest(key=keys[n], value=VALUE))

    async def mk_get(n: int, i: int) -> None:
        item = await store.get(GetRequest(key=keys[n]))
        assert item is not None

    async def mk_etag_set(n: int, i: int) -> None:
        await store.set(SetRequest(key=keys[n], value=VALUE, etag=str(versions[n])))
        versions[n] += 1

    async def reset_mk() -> None:
        for n, key in enumerate(keys):
            await store.delete(DeleteRequest(key=key))
            await store.set(SetRequest(key=key, value=VALUE))
            item = await store.get(GetRequest(key=key))
            assert item is not None and item.etag is not None
            versions[n] = int(item.etag)

    mechakit = {
        "state set": (reset_mk, mk_set),
        "state set, same script": (reset_mk, mk_set),
        "state get": (reset_mk, mk_get),
        "state ETag set": (reset_mk, mk_etag_set),
    }
    raw = {
        who: await raw_state_ops(client, f"{who}||bench-{run}", args)
        for who, client in clients.items()
    }
    cases = []
    # Targets (issue 15): at most 1.1x redis-py's latency with one call in flight; at least
    # twice its throughput (a slowdown of at most 0.5) with many, through auto-pipelining.
    for mode, in_flight, target in (
        ("sequential", 1, 1.1),
        (f"{args.in_flight} in flight", args.in_flight, 0.5),
    ):
        for name in ("state set", "state set, same script", "state get", "state ETag set"):
            contenders = {
                "mechakit": mechakit[name],
                **{who: ops[name] for who, ops in raw.items()},
            }
            cases.append(await compare(name, mode, contenders, args, in_flight, target))
            print(f"  {name:<16} {mode:<14} done", file=sys.stderr)

    await reset_mk()
    probe = next(iter(clients.values()))
    commands = await count_commands(probe, lambda i: mk_etag_set(0, i), ETAG_SETS_COUNTED)
    return cases, commands


async def raw_state_ops(
    client: Any, prefix: str, args: argparse.Namespace
) -> dict[str, tuple[Callable[[], Awaitable[None]], Op]]:
    """What a redis-py user writes by hand for the same set, get and ETag set."""
    keys = [f"{prefix}-{n}" for n in range(args.in_flight)]
    versions = [1] * args.in_flight
    cas = await client.script_load(_CAS)
    versioned_set = await client.script_load(_VERSIONED_SET)
    driver_set = await client.script_load(_DRIVER_SET.source)

    async def reset() -> None:
        for n, key in enumerate(keys):
            await client.delete(key)
            await client.hset(key, mapping={"data": json.dumps(VALUE), "version": 1})
            versions[n] = 1

    async def set_(n: int, i: int) -> None:
        await client.evalsha(versioned_set, 1, keys[n], json.dumps(VALUE))

    async def same_script_set(n: int, i: int) -> None:
        # The driver's own set script (no ETag, no first-write), called by hand: Dapr's
        # semantics (version bump, binary flag, TTL) without the driver's Python layer.
        await client.evalsha(driver_set, 1, keys[n], json.dumps(VALUE), "", "")

    async def get(n: int, i: int) -> None:
        fields = await client.hgetall(keys[n])
        json.loads(fields[b"data"])

    async def etag_set(n: int, i: int) -> None:
        ok = await client.evalsha(cas, 1, keys[n], str(versions[n]), json.dumps(VALUE))
        assert ok == 1
        versions[n] += 1

    return {
        "state set": (reset, set_),
        "state set, same script": (reset, same_script_set),
        "state get": (reset, get),
        "state ETag set": (reset, etag_set),
    }


async def count_commands(
    raw: Any, op: Callable[[int], Awaitable[None]], count: int
) -> dict[str, Any]:
    """Commands per call of ``op``: INFO commandstats deltas, and MONITOR's client-sent ones."""
    before = await raw.info("commandstats")
    for i in range(count):
        await op(i)
    after = await raw.info("commandstats")
    per_call = {}
    for name, stats in after.items():
        calls = stats["calls"] - before.get(name, {}).get("calls", 0)
        command = name.removeprefix("cmdstat_")
        if calls and command not in ("info",):
            per_call[command] = round(calls / count, 3)

    sent: list[str] = []
    kwargs = raw.connection_pool.connection_kwargs
    monitor_client = aioredis.Redis(host=kwargs["host"], port=kwargs["port"])
    ready = asyncio.Event()

    async def watch() -> None:
        async with monitor_client.monitor() as monitor:
            ready.set()
            async for event in monitor.listen():
                if event["client_address"] != "lua":
                    sent.append(str(event["command"]).split(" ", 1)[0].upper())

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 5)
    await asyncio.sleep(0.1)
    for i in range(count):
        await op(count + i)
    await asyncio.sleep(0.3)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await watcher
    await monitor_client.aclose()
    by_command: dict[str, float] = {}
    for command in sent:
        by_command[command] = by_command.get(command, 0) + 1
    return {
        "commandstats_per_etag_set": per_call,
        "client_commands_per_etag_set": round(len(sent) / count, 3),
        "client_commands_by_name": {k: round(v / count, 3) for k, v in by_command.items()},
    }


# --- pub/sub ------------------------------------------------------------------------------


async def pubsub_cases(
    pubsub: RedisPubSub, clients: Mapping[str, tuple[Any, Any]], args: argparse.Namespace
) -> list[Case]:
    cases = []
    for mode, in_flight in (("sequential", 1), (f"{args.in_flight} in flight", args.in_flight)):
        rounds: dict[str, list[float]] = {"mechakit": [], **{who: [] for who in clients}}
        for _ in range(args.rounds):
            rounds["mechakit"].append(await mechakit_pubsub_round(pubsub, args, in_flight))
            for who, (client, reader) in clients.items():
                rounds[who].append(await raw_pubsub_round(client, reader, args, in_flight))
        print(f"  {'pub/sub':<16} {mode:<14} done", file=sys.stderr)
        target = 1.2 if in_flight == 1 else None
        cases.append(Case("pub/sub publish+consume", mode, rounds, unit="msgs/s", target=target))
    return cases


def message_count(args: argparse.Namespace, in_flight: int) -> int:
    return int(args.messages * (3 if in_flight > 1 else 1))


async def publish_all(publish: Callable[[], Awaitable[None]], total: int, in_flight: int) -> None:
    async def publisher(count: int) -> None:
        for _ in range(count):
            await publish()

    share, extra = divmod(total, in_flight)
    await asyncio.gather(*(publisher(share + (1 if n < extra else 0)) for n in range(in_flight)))


async def mechakit_pubsub_round(
    pubsub: RedisPubSub, args: argparse.Namespace, in_flight: int
) -> float:
    topic, total = f"bench-{uuid.uuid4().hex[:8]}", message_count(args, in_flight)
    handled, done = 0, asyncio.Event()

    async def handler(message: Message) -> None:
        nonlocal handled
        handled += 1
        if handled == total:
            done.set()

    subscription = await pubsub.subscribe(SubscribeRequest(topic=topic), handler)
    start = time.perf_counter()
    await publish_all(
        lambda: pubsub.publish(PublishRequest(topic=topic, data=PAYLOAD)), total, in_flight
    )
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    await subscription.cancel()
    return total / elapsed


async def raw_pubsub_round(
    raw: Any, reader: Any, args: argparse.Namespace, in_flight: int
) -> float:
    topic, total, group = f"raw-bench-{uuid.uuid4().hex[:8]}", message_count(args, in_flight), "g"
    handled, done = 0, asyncio.Event()
    await raw.xgroup_create(topic, group, "0", mkstream=True)

    async def consume() -> None:
        nonlocal handled
        while not done.is_set():
            reply = await reader.xreadgroup(group, "raw", {topic: ">"}, count=100, block=200)
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    assert fields[b"data"]
                    handled += 1
                    await raw.xack(topic, group, entry_id)
                    if handled == total:
                        done.set()

    consumer = asyncio.create_task(consume())
    start = time.perf_counter()
    await publish_all(lambda: raw.xadd(topic, {"data": PAYLOAD}), total, in_flight)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    # The loop ends on its own: redis-py may swallow a cancellation inside a blocking read.
    await asyncio.wait_for(consumer, 5)
    return total / elapsed


# --- running ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    try:
        backend = provision("redis")
    except BackendUnavailable as exc:
        print(f"cannot benchmark: {exc}", file=sys.stderr)
        return 2
    try:
        return await run(backend, args)
    finally:
        backend.stop()


async def run(backend: BackendInfo, args: argparse.Namespace) -> int:
    host, port = backend.values["host"], int(backend.values["port"])
    properties = {"redisHost": backend.values["address"], "poolSize": MECHAKIT_POOL}
    settings = RedisSettings.from_metadata(properties, component="benchmark")
    clients: dict[str, Any] = {
        "redis-py": aioredis.Redis(host=host, port=port),
        SAME_CLIENT: await connect(settings, component="benchmark"),
    }
    readers: dict[str, Any] = {
        "redis-py": aioredis.Redis(host=host, port=port),
        SAME_CLIENT: await connect(settings, component="benchmark"),
    }
    store = RedisStateStore()
    await store.init(ComponentMetadata("bench", "state.redis", properties, app_id="bench"))
    pubsub = RedisPubSub()
    await pubsub.init(ComponentMetadata("bench", "pubsub.redis", properties, app_id="bench"))
    server = await clients["redis-py"].info("server")
    print(
        f"Redis {server['redis_version']} ({backend.source}), {os.cpu_count()} CPUs, "
        f"{args.seconds}s x {args.rounds} rounds per case",
        file=sys.stderr,
    )
    notes: list[str] = []
    try:
        try:
            state, commands = await state_cases(store, clients, args)
        except Exception as exc:  # benchmark what works, and say what did not
            state, commands = [], {}
            notes.append(f"state.redis not benchmarked: {exc!r}")
        pairs = {who: (clients[who], readers[who]) for who in clients}
        messaging = await pubsub_cases(pubsub, pairs, args)
    finally:
        await pubsub.close()
        await store.close()
        for client in [*clients.values(), *readers.values()]:
            await client.aclose()

    cases = state + messaging
    print_table(cases, commands, notes)
    path = write_results(cases, commands, notes, args, backend, server)
    print(f"\nresults written to {path}")
    return 0


def print_table(cases: list[Case], commands: dict[str, Any], notes: list[str]) -> None:
    print()
    header = (
        f"{'case (ops/s, msgs/s)':<24} {'mode':<13} {'mechakit':>9} {'redis-py':>9} "
        f"{'slowdown':>9}  {'target':<12} {'same client':>11} {'slowdown':>9}"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        slowdown = case.slowdown("redis-py")
        target = ""
        if case.target:
            target = f"<={case.target}x " + ("ok" if slowdown <= case.target else "MISSED")
        print(
            f"{case.name:<24} {case.mode:<13} {case.median('mechakit'):>9,.0f} "
            f"{case.median('redis-py'):>9,.0f} {slowdown:>8.2f}x  {target:<12} "
            f"{case.median(SAME_CLIENT):>11,.0f} {case.slowdown(SAME_CLIENT):>8.2f}x"
        )
    print(
        "\nslowdown: median over rounds of redis-py ÷ mechakit throughput. 'same client': "
        "redis-py with the\nsocket timeouts and retry policy mechakit's Redis drivers use "
        "(built by _shared.redis.connect)."
    )
    if commands:
        print(
            f"\nstate ETag set: {commands['client_commands_per_etag_set']} client command(s) per "
            f"call {commands['client_commands_by_name']} (target 1); INFO commandstats per call, "
            f"script internals included: {commands['commandstats_per_etag_set']}"
        )
    for note in notes:
        print(f"NOTE: {note}")


def write_results(
    cases: list[Case],
    commands: dict[str, Any],
    notes: list[str],
    args: argparse.Namespace,
    backend: BackendInfo,
    server: dict[str, Any],
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"redis-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "redis_server": server["redis_version"],
            "server_source": backend.source,
        },
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "in_flight": args.in_flight,
            "messages": args.messages,
            "mechakit_pool_size": int(MECHAKIT_POOL),
        },
        "cases": [
            {
                **asdict(c),
                "median": {who: round(c.median(who)) for who in c.rounds},
                "slowdown": {who: round(c.slowdown(who), 3) for who in c.rounds},
            }
            for c in cases
        ],
        "commands": commands,
        "notes": notes,
    }
    path.write_text(json.dumps(document, indent=2))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.25, help="length of one round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender and case")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent callers")
    parser.add_argument(
        "--messages", type=int, default=1000, help="messages per sequential pub/sub round"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
