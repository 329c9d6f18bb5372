"""Auto-pipelining: concurrent calls on one Redis client share round trips.

A call made while the client already has :data:`LANES` sends under way waits in a queue;
when a send ends, everything queued goes out as one pipeline (as ioredis and Lettuce do).
A lone call goes out at once as a plain command, so latency with one call in flight is
that of redis-py itself; under load, 32 callers cost a couple of round trips instead of 32,
and the Python work per call shrinks with the socket reads and pool checkouts saved.

What a caller sees does not change: each call gets its own reply or its own error (a reply
error such as NOSCRIPT or WRONGTYPE belongs to that call alone; a lost connection fails every
call of its pipeline, each with its own copy of the error, after redis-py's retries, which
resend the pipeline as they would resend a lone command). A caller that gives up while its
call is still queued takes the call with it: it is never sent. A Redis Cluster client is
left as it is (redis-py refuses scripts in a cluster pipeline); calls go out one by one.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mechakit.components._shared.redis import RedisScript, is_cluster, is_noscript

LANES = 2
"""Sends under way at once: one can be on the wire while the replies of another are read."""
MAX_BATCH = 512
"""Most calls in one pipeline; more wait for the next one."""


Send = Callable[[Any], Any]
"""Issues one command on a redis-py client or pipeline: ``lambda r: r.get(key)``. On the
client it returns the awaitable reply; on a pipeline it queues the command."""


@dataclass(slots=True)
class _Queued:
    send: Send
    script: RedisScript | None
    future: asyncio.Future[Any]


class AutoPipeline:
    """Sends calls on ``client`` (from ``_shared.redis.connect``), batching them under load."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._one_by_one = is_cluster(client)
        self._busy = 0
        self._queue: list[_Queued] = []
        self._lanes: set[asyncio.Task[None]] = set()

    async def script(self, script: RedisScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``; loaded again (once) if the server forgot it."""
        return await self._call(lambda r: r.evalsha(script.sha, len(keys), *keys, *args), script)

    async def command(self, send: Send) -> Any:
        """The reply of the one command ``send`` issues, e.g. ``command(lambda r: r.get(k))``."""
        return await self._call(send, None)

    async def drain(self) -> None:
        """Wait until every queued call was sent and answered (before closing the client)."""
        while self._lanes:
            await asyncio.gather(*self._lanes, return_exceptions=True)

    async def _call(self, send: Send, script: RedisScript | None) -> Any:
        if self._one_by_one:
            return await self._send_one(send, script)
        if self._busy < LANES and not self._queue:
            self._busy += 1
            try:
                return await self._send_one(send, script)
            finally:
                self._lane_free()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(send, script, future))
        return await future

    async def _send_one(self, send: Send, script: RedisScript | None) -> Any:
        if script is None:
            return await send(self._client)
        try:
            return await send(self._client)
        except Exception as exc:
            if not is_noscript(exc):
                raise
        await self._client.script_load(script.source)
        return await send(self._client)

    def _lane_free(self) -> None:
        self._busy -= 1
        if self._queue and self._busy < LANES:
            self._busy += 1
            lane = asyncio.get_running_loop().create_task(self._run_lane())
            self._lanes.add(lane)
            lane.add_done_callback(self._lanes.discard)

    async def _run_lane(self) -> None:
        """Send what is queued, pipeline after pipeline, until the queue is empty."""
        try:
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                live = [call for call in batch if not call.future.done()]  # cancelled: never sent
                if live:
                    await self._send_batch(live)
        finally:
            self._lane_free()

    async def _send_batch(self, batch: list[_Queued]) -> None:
        try:
            replies = await self._pipeline([call.send for call in batch])
            missing = [i for i, reply in enumerate(replies) if is_noscript(reply)]
            if missing:
                scripts = {id(s): s for i in missing if (s := batch[i].script) is not None}
                for script in scripts.values():
                    await self._client.script_load(script.source)
                again = await self._pipeline([batch[i].send for i in missing])
                for index, reply in zip(missing, again, strict=True):
                    replies[index] = reply
        except Exception as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(_own_copy(exc))
            return
        except BaseException:  # cancelled with the client closing: nobody waits any more
            for call in batch:
                call.future.cancel()
            raise
        for call, reply in zip(batch, replies, strict=True):
            if call.future.done():
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _pipeline(self, sends: Sequence[Send]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for send in sends:
            send(pipe)
        replies = list(await pipe.execute(raise_on_error=False))
        if len(replies) != len(sends):  # a driver's bug, not the server's
            raise RuntimeError(f"{len(sends)} auto-pipelined calls gave {len(replies)} replies")
        return replies


def _own_copy(exc: Exception) -> Exception:
    """A copy of ``exc`` for one caller, so that callers raising it do not share tracebacks."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


__all__ = ["LANES", "MAX_BATCH", "AutoPipeline"]
