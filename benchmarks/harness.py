"""What every benchmark here shares: contenders run back to back, ratios per round."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

Op = Callable[[int, int], Awaitable[None]]
"""One operation, given the caller's number and its iteration."""
Reset = Callable[[], Awaitable[None]]


@dataclass
class Case:
    name: str
    mode: str
    rounds: dict[str, list[float]]
    """Ops (or messages) per second of each round, per contender."""
    unit: str = "ops/s"
    target: float | None = None

    def median(self, who: str) -> float:
        return statistics.median(self.rounds[who])

    def slowdown(self, baseline: str) -> float:
        """Median over rounds of baseline ÷ mechakit; rounds ran back to back, so noise pairs."""
        pairs = zip(self.rounds[baseline], self.rounds["mechakit"], strict=True)
        return statistics.median(raw / mine for raw, mine in pairs)


async def throughput(op: Op, seconds: float, in_flight: int) -> float:
    """Ops per second of ``in_flight`` callers each looping ``op`` until the time is up."""
    counts = [0] * in_flight
    deadline = time.perf_counter() + seconds

    async def caller(number: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            await op(number, i)
            i += 1
        counts[number] = i

    start = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(in_flight)))
    return sum(counts) / (time.perf_counter() - start)


async def compare(
    name: str,
    mode: str,
    contenders: Mapping[str, tuple[Reset, Op]],
    args: argparse.Namespace,
    in_flight: int,
    target: float | None = None,
) -> Case:
    """Runs the contenders' rounds back to back (each after its own reset), ``rounds`` times."""
    rounds: dict[str, list[float]] = {who: [] for who in contenders}
    for round_number in range(args.rounds):
        for who, (reset, op) in contenders.items():
            await reset()
            if round_number == 0:  # warm-up: connections, caches, prepared statements
                await throughput(op, min(0.1, args.seconds / 3), in_flight)
                await reset()
            rounds[who].append(await throughput(op, args.seconds, in_flight))
    return Case(name, mode, rounds, target=target)
