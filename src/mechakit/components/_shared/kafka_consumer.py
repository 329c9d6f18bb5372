"""Kafka consumer group membership as delivery-engine transports (kafka-python).

A component is **one member** of its consumer group, subscribed to every topic it has
subscriptions for (as upstream): kafka-python's group leader assigns only topics it has
metadata for, so members of one group with different topic sets would leave topics
unassigned. ``GroupMember`` owns the ``KafkaConsumer`` and the one thread that makes every
call on it (it is blocking and not thread-safe): it polls without pause (which keeps the
member in its group), pauses the partitions of a topic while the engine holds enough of
its records, and commits what the event loop has settled. Each subscription is a
``GroupTransport`` over it, receiving the records of its topics.

**Offsets are committed only past records that are done.** Records of a partition arrive
in offset order; each is outstanding until the engine acks it (handler succeeded, dropped,
or dead-lettered). The committed offset is the first outstanding one, so a crash, a close
or a rebalance redelivers every record not done (at least once; never skipped).

**A retrying record never blocks a rebalance.** A failed record is held here, not in a
loop that sleeps inside the consumer: it is handed to the engine again after its delay,
counted as a new delivery. When its partition is revoked (kafka-python 3 runs the callback
on its I/O thread, which must not block), the partition's held and buffered records are
forgotten and late acks of the old assignment are ignored; the new owner reads them from
the committed offset, so nothing is lost, nothing waits for a handler, and one record does
not bounce between members. What was done but not yet committed (the thread commits every
poll, ~0.1 s) is delivered once more.

**Order per key**: deliveries carry their partition and key as ordering key, so the engine
handles one record of a key at a time; when one is retried, the later ones of its key wait
behind it here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import types
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechakit.core.pubsub import Delivery, Message, Transport

Log = Any
CONTENT_TYPE = "content-type"
"""The header carrying a message's content type (taken out of its metadata)."""
_POLL_MS = 100
_CLOSE_WITHIN = 10.0
_READY_WITHIN = 30.0
"""Seconds a new subscription waits for the group to assign partitions (broker up)."""
_JOIN_WITHIN_MS = 30_000
_epochs = itertools.count(1)


@dataclass
class _Partition:
    """One assigned partition's outstanding offsets, in arrival order."""

    epoch: int
    order: collections.deque[int] = field(default_factory=collections.deque)
    done: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)
    """Deliveries of each outstanding offset so far."""
    next_offset: int = -1
    """The offset to commit when nothing is outstanding (last arrived + 1)."""
    committed: int = -1

    @property
    def outstanding(self) -> int:
        return len(self.order) - len(self.done)

    def commit_point(self) -> int:
        while self.order and self.order[0] in self.done:
            self.done.discard(self.order.popleft())
        return self.order[0] if self.order else self.next_offset


@dataclass(frozen=True)
class _Receipt:
    tp: Any
    offset: int
    epoch: int
    record: Any


@dataclass
class _Waiter:
    version: int
    ready: threading.Event = field(default_factory=threading.Event)


class GroupMember:
    """A component's member of its consumer group: one consumer, one thread, all topics."""

    def __init__(self, options: dict[str, Any], *, label: str, log: Log, room: int) -> None:
        self._options, self._label, self._log = options, label, log
        self._limit = max(room, 1) * 2
        """Outstanding records of one topic at which its partitions are paused."""
        self.lock = threading.Lock()
        self.partitions: dict[Any, _Partition] = {}
        self._sinks: dict[str, GroupTransport] = {}
        self._version = 0
        """Bumped by every change of the topic set; the consumer follows it."""
        self._joined_version = -1
        self._applied_version = -1
        self._waiters: list[_Waiter] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused: set[Any] = set()
        self._rewind: dict[Any, int] = {}
        self._unreachable = False
        """The brokers did not answer the last attempt to connect: subscribe does not wait."""

    @property
    def topics(self) -> list[str]:
        with self.lock:
            return sorted(self._sinks)

    async def add(self, transport: GroupTransport) -> None:
        """Adds the transport's topics to the subscription; waits (a while, with the broker
        up) for the rebalance, so that what is published afterwards is read. A broker that
        is down does not fail it: the member joins once the broker is back."""
        with self.lock:
            for topic in transport.topics:
                self._sinks[topic] = transport
            self._version += 1
            waiter = _Waiter(self._version)
            self._waiters.append(waiter)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"{self._label} consumer",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        if not self._unreachable:
            await asyncio.to_thread(waiter.ready.wait, _READY_WITHIN)

    async def remove(self, transport: GroupTransport) -> None:
        """Takes its topics out; the last one out stops the consumer (leaving the group)."""
        with self.lock:
            for topic in transport.topics:
                if self._sinks.get(topic) is transport:
                    del self._sinks[topic]
            self._version += 1
            empty = not self._sinks
        if empty:
            self._stop.set()
            thread, self._thread = self._thread, None
            if thread is not None:
                await asyncio.to_thread(thread.join, _CLOSE_WITHIN)
                if thread.is_alive():
                    self._log.warning("%s: the Kafka consumer did not stop within %.0fs",
                                      self._label, _CLOSE_WITHIN)  # fmt: skip

    # --- the consumer thread --------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._connect()
        if consumer is None:
            return
        try:
            self._consume(consumer)
        finally:
            self._commit(consumer, final=True)
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)
            with self.lock:
                self.partitions.clear()
                self._applied_version = self._joined_version = -1

    def _connect(self) -> Any:
        from kafka import KafkaConsumer

        wait, warned = 0.5, False
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(**self._options)
            except Exception as exc:
                self._unreachable = True
                if not warned:
                    self._log.warning("%s: cannot reach the Kafka brokers (%s: %s); "
                                      "subscriptions start once they answer", self._label,
                                      type(exc).__name__, exc)  # fmt: skip
                    warned = True
                    self._release_waiters(everyone=True)  # do not hold up subscribe
                self._stop.wait(wait)
                wait = min(wait * 2, 5.0)
                continue
            self._unreachable = False
            if warned:
                self._log.info("%s: the Kafka brokers answer; subscribing", self._label)
            return consumer
        return None

    def _consume(self, consumer: Any) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._follow_topics(consumer)
                self._commit(consumer)
                self._pause_full(consumer)
                _join_if_needed(consumer)
                batches = consumer.poll(timeout_ms=_POLL_MS)
                self._release_waiters(consumer=consumer)
            except Exception as exc:
                self._log.warning("%s: polling Kafka failed (%s: %s); retrying in %.1fs",
                                  self._label, type(exc).__name__, exc, backoff)  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            if batches:
                self._take(batches)

    def _follow_topics(self, consumer: Any) -> None:
        with self.lock:
            version, topics = self._version, sorted(self._sinks)
        if version != self._applied_version and topics:
            for topic in topics:  # metadata first: else the join is followed by a second one
                consumer.partitions_for_topic(topic)
            consumer.subscribe(topics, listener=_listener(self, consumer))
            self._applied_version = version

    def _pause_full(self, consumer: Any) -> None:
        """Pauses the partitions of topics with ``_limit`` records outstanding, resumes the
        others (calls only when something changes: the consumer is left alone otherwise)."""
        with self.lock:
            load: collections.Counter[str] = collections.Counter()
            for tp, part in self.partitions.items():
                load[tp.topic] += part.outstanding
        full = {tp for tp in consumer.assignment() if load[tp.topic] >= self._limit}
        if full != self._paused:
            if self._paused - full:
                consumer.resume(*(self._paused - full))
            if full - self._paused:
                consumer.pause(*(full - self._paused))
            self._paused = full

    def _release_waiters(self, *, consumer: Any = None, everyone: bool = False) -> None:
        with self.lock:
            due = [w for w in self._waiters if everyone or w.version <= self._joined_version]
            self._waiters = [w for w in self._waiters if w not in due]
        if not due:
            return
        if consumer is not None:
            for tp in consumer.assignment():
                consumer.position(tp)  # resolves "newest" now, not at the first record
        for waiter in due:
            waiter.ready.set()

    def _take(self, batches: dict[Any, list[Any]]) -> None:
        """Records of partitions still ours become outstanding and go to their transport."""
        by_sink: dict[GroupTransport, list[_Receipt]] = {}
        with self.lock:
            for tp, records in batches.items():
                part, sink = self.partitions.get(tp), self._sinks.get(tp.topic)
                if part is None or sink is None:
                    continue
                receipts = by_sink.setdefault(sink, [])
                for record in records:
                    part.order.append(record.offset)
                    part.counts[record.offset] = 0
                    part.next_offset = record.offset + 1
                    receipts.append(_Receipt(tp, record.offset, part.epoch, record))
        for sink, receipts in by_sink.items():
            sink.hand_over(receipts)

    def _commit(self, consumer: Any, *, final: bool = False) -> None:
        from kafka.structs import OffsetAndMetadata

        moves: dict[Any, int] = {}
        with self.lock:
            for tp, part in self.partitions.items():
                point = part.commit_point()
                if point > part.committed:
                    moves[tp] = part.committed = point
        if not moves:
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in moves.items()})
        except Exception as exc:  # a rebalance took them: their records come back
            level = logging.WARNING if final else logging.DEBUG
            self._log.log(level, "%s: committing Kafka offsets failed (%s: %s); their "
                          "records may be delivered again", self._label, type(exc).__name__,
                          exc)  # fmt: skip
            with self.lock:
                for tp in moves:
                    held = self.partitions.get(tp)
                    if held is not None:
                        held.committed = -1

    def revoked(self, partitions: Any) -> None:
        """On kafka-python's I/O thread, before a rebalance: forget the partitions, noting
        where each one's first record not done is."""
        with self.lock:
            for tp in partitions:
                part = self.partitions.pop(tp, None)
                if part is not None and part.next_offset >= 0:
                    self._rewind[tp] = part.commit_point()

    def assigned(self, consumer: Any, partitions: Any) -> None:
        """After a rebalance (maybe with nothing for this member), before fetching: start
        counting anew. A partition that stays here is read again from its first record not
        done (kafka-python would go on from where it had fetched, past records that were
        held for a retry and are forgotten now)."""
        with self.lock:
            rewind, self._rewind = self._rewind, {}
            for tp in partitions:
                if tp not in self.partitions:
                    self.partitions[tp] = _Partition(epoch=next(_epochs))
                if tp in rewind:
                    consumer.seek(tp, rewind[tp])
            self._joined_version = self._applied_version

    # --- for the transports (on the event loop) -------------------------------------------

    def count(self, receipt: _Receipt) -> int | None:
        """Counts a delivery of the record; None when its partition is no longer ours."""
        with self.lock:
            part = self.partitions.get(receipt.tp)
            if part is None or part.epoch != receipt.epoch or receipt.offset in part.done:
                return None
            part.counts[receipt.offset] = part.counts.get(receipt.offset, 0) + 1
            return part.counts[receipt.offset]

    def uncount(self, receipt: _Receipt) -> bool:
        """A delivery that reached no handler; False when its partition is no longer ours."""
        with self.lock:
            part = self.partitions.get(receipt.tp)
            if part is None or part.epoch != receipt.epoch:
                return False
            part.counts[receipt.offset] = max(part.counts.get(receipt.offset, 1) - 1, 0)
            return True

    def done(self, receipts: Sequence[_Receipt]) -> None:
        """Settled for good: the thread commits past them at its next poll."""
        with self.lock:
            for r in receipts:
                part = self.partitions.get(r.tp)
                if part is not None and part.epoch == r.epoch:
                    part.done.add(r.offset)
                    part.counts.pop(r.offset, None)


class GroupTransport(Transport):
    """One subscription's records (of ``topics``) from the component's group member."""

    def __init__(
        self,
        member: GroupMember,
        topics: Sequence[str],
        *,
        label: str,
        route: Callable[[str], str] | None = None,
        dead_letter: Callable[[Delivery, str], Awaitable[None]] | None = None,
    ) -> None:
        self.source = f"topic {topics[0]!r}" if len(topics) == 1 else f"topics {list(topics)!r}"
        self.topics = tuple(topics)
        self._member, self._label = member, label
        self._route = route or (lambda topic: topic)
        self._dead_letter = dead_letter
        self._loop = asyncio.get_running_loop()
        self._arrived: collections.deque[_Receipt] = collections.deque()
        self._wake = asyncio.Event()
        self._waiting: dict[str, list[_Receipt]] = {}
        """Records of a key behind one held for retry, released together with it."""

    async def start(self) -> None:
        await self._member.add(self)

    def hand_over(self, receipts: list[_Receipt]) -> None:
        """From the consumer thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._arrive, receipts)

    def _arrive(self, receipts: list[_Receipt]) -> None:
        for receipt in receipts:
            key = _ordering_key(receipt)
            if key is not None and key in self._waiting:
                self._waiting[key].append(receipt)
            else:
                self._arrived.append(receipt)
        self._wake.set()

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if not self._arrived:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # no task of its own, unlike wait_for
                    await self._wake.wait()
        deliveries: list[Delivery] = []
        while self._arrived and len(deliveries) < max_count:
            receipt = self._arrived.popleft()
            count = self._member.count(receipt)
            if count is not None:  # else revoked meanwhile: the new owner reads it
                deliveries.append(self._delivery(receipt, count))
        return deliveries

    def _delivery(self, receipt: _Receipt, count: int) -> Delivery:
        record = receipt.record
        metadata = {name: bytes(value or b"").decode("utf-8", "replace")
                    for name, value in record.headers or ()}  # fmt: skip
        content_type = metadata.pop(CONTENT_TYPE, None)
        if record.key is not None:
            metadata["__key"] = bytes(record.key).decode("utf-8", "replace")
        metadata.update(__topic=record.topic, __partition=str(record.partition),
                        __offset=str(record.offset))  # fmt: skip
        message = Message(
            topic=self._route(record.topic),
            data=bytes(record.value or b""),
            metadata=types.MappingProxyType(metadata),
            content_type=content_type,
            id=f"{record.topic}-{record.partition}-{record.offset}",
            delivery_count=count,
        )
        return Delivery(message, receipt=receipt, ordering_key=_ordering_key(receipt))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Marks them done; the consumer thread commits within one poll (~0.1 s)."""
        self._member.done([d.receipt for d in deliveries])

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        receipt: _Receipt = delivery.receipt
        key = delivery.ordering_key
        if key is not None:
            behind = self._waiting.setdefault(key, [])
            if any(_ordering_key(r) == key for r in self._arrived):  # not handed out yet
                behind.extend(r for r in self._arrived if _ordering_key(r) == key)
                self._arrived = collections.deque(r for r in self._arrived
                                                  if _ordering_key(r) != key)  # fmt: skip
        self._loop.call_later(delay, self._again, receipt, key)

    def _again(self, receipt: _Receipt, key: str | None) -> None:
        behind = self._waiting.pop(key, []) if key is not None else []
        self._arrived.extend([receipt, *behind])
        self._wake.set()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Back to the front (or behind the record of its key being retried), uncounted."""
        fresh: list[_Receipt] = []
        for d in deliveries:
            if not self._member.uncount(d.receipt):
                continue
            if d.ordering_key is not None and d.ordering_key in self._waiting:
                self._waiting[d.ordering_key].append(d.receipt)
            else:
                fresh.append(d.receipt)
        self._arrived.extendleft(reversed(fresh))
        if fresh:
            self._wake.set()

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        if self._dead_letter is None:
            raise RuntimeError(f"{self._label} has no dead-letter topic")
        await self._dead_letter(delivery, topic)

    async def close(self) -> None:
        """Leaves the subscription; what is not done is read again by whoever owns it next."""
        await self._member.remove(self)
        self._arrived.clear()
        self._waiting.clear()


def _join_if_needed(consumer: Any) -> None:
    """Completes a pending (re)join in one call, before ``poll``.

    kafka-python 3.0 loses a join whose answer arrives just as a short ``poll`` times out:
    the member then stays in the group with no partitions (seen one time in three when a
    subscription is added). Waiting for a join outside ``poll`` narrows that window, and a
    join left finished but never applied is started again."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "need_rejoin"):
        return
    task = getattr(coordinator, "_join_task", None)
    if not coordinator.need_rejoin() and task is not None and getattr(task, "is_done", False):
        coordinator._join_task = None
        coordinator.request_rejoin()
    if coordinator.need_rejoin():
        coordinator.ensure_active_group(timeout_ms=_JOIN_WITHIN_MS)


def _ordering_key(receipt: _Receipt) -> str | None:
    key = receipt.record.key
    if key is None:
        return None
    return f"{receipt.record.topic}/{receipt.record.partition}/{bytes(key).hex()}"


def _listener(member: GroupMember, consumer: Any) -> Any:
    """kafka-python's rebalance callbacks, forwarded to the member."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            member.revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            member.assigned(consumer, assigned)

    return Listener()


__all__ = ["CONTENT_TYPE", "GroupMember", "GroupTransport"]
