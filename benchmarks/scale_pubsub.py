"""``pubsub.redis`` redelivery with many pending entries, for ``scale_bench``.

A consumer that died (``gone``) holds every entry of a fresh stream as pending, idle for
longer than ``processingTimeout``. Two figures per pending count (100, then ``--pending``):

- the driver's reclaim read (``_Stream._reclaim``: one XAUTOCLAIM page of 100 plus the
  delivery counts), timed over 50 pages; the claimed entries are backdated again between
  pages (outside the clock) so every page finds 100 idle entries;
- the time a new subscriber takes to handle the first 100 redeliveries, less
  ``redeliverInterval`` (the wait before its first reclaim pass), three times each. The
  subscriber's first read blocks until then, and Redis may end a blocking read only when
  its event loop next wakes (``hz`` 10 by default), so this figure jitters by tens of ms
  whatever the pending count.

Pages and subscribers of the two pending counts run in turn, so the noise of a shared
machine pairs; each ratio is the median over pairs.

Redis' own ``INFO commandstats`` (µs per call of XAUTOCLAIM and XPENDING) is kept too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from mechakit.components.pubsub.redis import RedisPubSub, _Stream
from mechakit.conformance.backends import BackendInfo
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import Message, SubscribeRequest

PAGE = 100
PAGES = 50
REPEATS = 3
INTERVAL_S = 0.2
PROCESSING_TIMEOUT = "1s"


async def fill_pending(raw: Any, topic: str, group: str, count: int) -> None:
    """``count`` entries, all delivered to the consumer ``gone`` and never acked."""
    for start in range(0, count, 10_000):
        pipe = raw.pipeline(transaction=False)
        for i in range(start, min(count, start + 10_000)):
            pipe.xadd(topic, {"data": f'{{"n":{i}}}'})
        await pipe.execute()
    await raw.xgroup_create(topic, group, "0")
    read = 0
    while read < count:
        reply = await raw.xreadgroup(group, "gone", {topic: ">"}, count=10_000)
        read += sum(len(entries) for _stream, entries in reply or ())
    await asyncio.sleep(1.1)  # idle past processingTimeout


async def open_pubsub(address: str, group: str) -> RedisPubSub:
    pubsub = RedisPubSub()
    properties = {
        "redisHost": address,
        "consumerID": group,
        "processingTimeout": PROCESSING_TIMEOUT,
        "redeliverInterval": f"{int(INTERVAL_S * 1000)}ms",
        "queueDepth": str(PAGE),
    }
    await pubsub.init(ComponentMetadata("scale", "pubsub.redis", properties, app_id="scale"))
    return pubsub


async def command_stats(raw: Any) -> dict[str, float]:
    stats = await raw.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): float(row["usec_per_call"])
        for name, row in stats.items()
        if name.removeprefix("cmdstat_") in ("xautoclaim", "xpending", "xclaim", "xack")
    }


async def reclaim_pages(raw: Any, address: str, counts: tuple[int, int]) -> dict[str, Any]:
    """Reclaim pages of the two streams taken in turn, so that the noise of a shared
    machine pairs; the ratio is the median over pairs of big ÷ small."""
    group = "scale"
    topics = [f"scale-{uuid.uuid4().hex[:8]}" for _ in counts]
    for topic, pending in zip(topics, counts, strict=True):
        await fill_pending(raw, topic, group, pending)
    pubsub = await open_pubsub(address, group)
    times: list[list[float]] = [[], []]
    try:
        streams = [_Stream(pubsub, pubsub._redis, topic, pubsub._redis) for topic in topics]
        for _ in range(PAGES):
            for stream, samples in zip(streams, times, strict=True):
                started = time.perf_counter()
                page = await stream._reclaim(PAGE)
                samples.append(time.perf_counter() - started)
                if len(page) != PAGE:
                    raise AssertionError(f"a reclaim page held {len(page)} entries, not {PAGE}")
                await stream._backdate(page)
    finally:
        await pubsub.close()
        await raw.delete(*topics)
    small, big = times
    return {
        "page_p50_ms": {
            str(count): round(statistics.median(samples) * 1000, 3)
            for count, samples in zip(counts, times, strict=True)
        },
        "page_ratio": round(statistics.median(b / a for a, b in zip(small, big, strict=True)), 3),
    }


async def first_redeliveries(raw: Any, address: str, topic: str, group: str) -> float:
    """Milliseconds until a new subscriber has handled 100 redeliveries, less the wait
    before its first reclaim pass. What it did not handle it gives back (idle again)."""
    pubsub = await open_pubsub(address, group)
    handled: set[str] = set()
    done = asyncio.Event()
    try:

        async def handler(message: Message) -> None:
            handled.add(message.id)
            if len(handled) >= PAGE:
                done.set()

        started = time.perf_counter()
        subscription = await pubsub.subscribe(SubscribeRequest(topic=topic), handler)
        await asyncio.wait_for(done.wait(), 60)
        elapsed = time.perf_counter() - started
        await subscription.cancel()
    finally:
        await pubsub.close()
    return (elapsed - INTERVAL_S) * 1000


async def redelivery_times(raw: Any, address: str, counts: tuple[int, int]) -> dict[str, Any]:
    """``first_redeliveries`` ``REPEATS`` times per pending count, in turn (the big stream
    is filled once: 100 fewer each time is still about as many)."""
    group, big = "scale", f"scale-{uuid.uuid4().hex[:8]}"
    await fill_pending(raw, big, group, counts[1])
    times: list[list[float]] = [[], []]
    try:
        for _ in range(REPEATS):
            small = f"scale-{uuid.uuid4().hex[:8]}"
            await fill_pending(raw, small, group, counts[0])
            times[0].append(await first_redeliveries(raw, address, small, group))
            await raw.delete(small)
            times[1].append(await first_redeliveries(raw, address, big, group))
    finally:
        await raw.delete(big)
    return {
        "first_100_ms": {
            str(count): [round(t, 2) for t in samples]
            for count, samples in zip(counts, times, strict=True)
        },
        "first_100_ratio": round(
            statistics.median(b / max(a, 0.01) for a, b in zip(*times, strict=True)), 3
        ),
    }


async def pubsub_case(backend: BackendInfo, args: argparse.Namespace) -> dict[str, Any]:
    raw = aioredis.Redis(host=backend.values["host"], port=int(backend.values["port"]))
    address = backend.values["address"]
    out: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await raw.config_resetstat()
        out["reclaim"] = await reclaim_pages(raw, address, (PAGE, args.pending))
        out["redis_usec_per_call"] = await command_stats(raw)
        out["redelivery"] = await redelivery_times(raw, address, (PAGE, args.pending))
        print(f"  pubsub.redis: {out} ({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    finally:
        await raw.aclose()
    out["ratio"] = {
        f"reclaim page p50 {args.pending:.0e} ÷ 1e+02 pending": out["reclaim"]["page_ratio"],
        f"first 100 redeliveries {args.pending:.0e} ÷ 1e+02 pending": out["redelivery"][
            "first_100_ratio"
        ],
    }
    return out
