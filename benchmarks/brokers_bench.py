"""Kafka, JetStream, RabbitMQ and MQTT pubsub drivers against their raw clients, same loop.

    .venv/bin/python -m benchmarks.brokers_bench [--broker kafka|jetstream|rabbitmq|mqtt|all]
        [--messages N] [--rounds 3] [--publishers 32]

Each broker comes from ``mechakit.conformance.backends.provision`` (kafka, nats, rabbitmq,
mosquitto). A round subscribes to a fresh topic, publishes one priming message and waits for
it (so consumer-group joins and subscription set-up are outside the clock), then publishes
``--messages`` messages from one publisher and from ``--publishers`` concurrent ones, and
stops the clock when the last has been handled and acked. mechakit is the driver class used
in-process (``init``, ``subscribe`` a handler, ``publish``); the raw side does the same with
the library the driver wraps:

- kafka: kafka-python ``KafkaProducer`` (acks=all, ``send().get()`` per message, publishers
  are threads) and a thread looping ``KafkaConsumer.poll`` + manual ``commit``;
- jetstream: nats-py ``js.publish`` and a durable pull subscription, ``fetch`` + ``ack``;
- rabbitmq: aio-pika publishes with publisher confirms to a fanout exchange, one consumer
  on its queue acking each message (the driver runs with ``publisherConfirm: true``);
- mqtt: aiomqtt QoS 1 publishes and a QoS 1 subscription (the driver's default QoS); the
  publisher's ``pending_calls_threshold`` is raised as the driver raises it, so that 32
  publishers do not log a warning per publish.

Rounds run mechakit and raw back to back, in alternating order; the slowdown is the median
over rounds of raw ÷ mechakit throughput (1.0 = as fast as the raw client). The CPU ratio is
the median of mechakit ÷ raw process CPU time per message over the timed part: on a machine
other jobs load, wall-clock throughput swings with their bursts, CPU per message much less. Results are printed and written to
``benchmarks/results/brokers-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechakit.components.pubsub.jetstream import JetStreamPubSub
from mechakit.components.pubsub.kafka import KafkaPubSub
from mechakit.components.pubsub.mqtt3 import MQTTPubSub
from mechakit.components.pubsub.rabbitmq import RabbitMQPubSub
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import Message, PublishRequest, PubSub, SubscribeRequest

RESULTS = Path(__file__).resolve().parent / "results"
PAYLOAD = json.dumps({"order": 42, "customer": "c-1001", "note": "x" * 64}).encode()
WAIT = 120.0
"""Seconds a round may take before it counts as lost messages."""


@dataclass(frozen=True)
class Timing:
    rate: float
    """Messages per second (wall clock)."""
    cpu_us: float
    """This process's CPU time per message in microseconds, all threads (brokers run apart)."""


Raw = Callable[[BackendInfo, int, int], Awaitable[Timing]]
"""The raw client's timing, given the backend, messages and publishers."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Counter:
    """Counts handled messages; ``first`` is set by the priming one, ``done`` by the last."""

    def __init__(self, messages: int) -> None:
        self.messages, self.handled = messages, 0
        self.first, self.done = asyncio.Event(), asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def add(self, count: int = 1) -> None:
        self.handled += count
        self.first.set()
        if self.handled > self.messages:  # the priming message plus all of the round's
            self.done.set()

    def add_threadsafe(self, count: int) -> None:
        self._loop.call_soon_threadsafe(self.add, count)


async def timed(
    counter: Counter, publish: Callable[[], Awaitable[None]], messages: int, publishers: int
) -> Timing:
    """Primes, then times ``publishers`` loops sharing ``messages`` publishes."""
    await publish()
    await asyncio.wait_for(counter.first.wait(), WAIT)
    todo = iter(range(messages))

    async def publisher() -> None:
        for _ in todo:
            await publish()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(publisher() for _ in range(publishers)))
    await asyncio.wait_for(counter.done.wait(), WAIT)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Timing(messages / elapsed, cpu / messages * 1e6)


async def run_mechakit(broker: Broker, info: BackendInfo, messages: int, publishers: int) -> Timing:
    """One driver's timing, used in-process as the runtime uses it."""
    component = broker.component()
    await component.init(ComponentMetadata("bench", broker.type, broker.properties(info)))
    topic, counter = unique("bench"), Counter(messages)

    async def handle(message: Message) -> None:
        counter.add()

    try:
        await component.subscribe(SubscribeRequest(topic=topic), handle)
        request = PublishRequest(topic=topic, data=PAYLOAD)
        return await timed(counter, lambda: component.publish(request), messages, publishers)
    finally:
        await component.close()


async def raw_kafka(info: BackendInfo, messages: int, publishers: int) -> Timing:
    """kafka-python: blocking ``send().get()`` from threads, one consumer thread committing."""
    from kafka import KafkaConsumer, KafkaProducer

    brokers, topic, counter = info.values["brokers"], unique("raw"), Counter(messages)
    producer = KafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=0)
    consumer = KafkaConsumer(
        bootstrap_servers=brokers,
        group_id=unique("raw"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.subscribe([topic])
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=100)
            count = sum(len(records) for records in batches.values())
            for records in batches.values():
                for record in records:
                    json.loads(record.value)
            if count:
                consumer.commit()
                counter.add_threadsafe(count)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    pool = ThreadPoolExecutor(publishers)
    loop = asyncio.get_running_loop()

    async def publish() -> None:
        await loop.run_in_executor(pool, lambda: producer.send(topic, PAYLOAD).get(30))

    try:
        return await timed(counter, publish, messages, publishers)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        pool.shutdown()
        consumer.close(autocommit=False)
        producer.close()


async def raw_jetstream(info: BackendInfo, messages: int, publishers: int) -> Timing:
    """nats-py: ``js.publish`` and a durable pull consumer fetching batches, acking each."""
    import nats

    client = await nats.connect(info.values["url"])
    js = client.jetstream()
    topic, counter = unique("raw"), Counter(messages)
    await js.add_stream(name=topic, subjects=[topic])
    subscription = await js.pull_subscribe(topic, durable=unique("raw"))

    async def consume() -> None:
        while True:
            try:
                batch = await subscription.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for message in batch:
                json.loads(message.data)
                await message.ack()
            counter.add(len(batch))

    consumer = asyncio.create_task(consume())

    async def publish() -> None:
        await js.publish(topic, PAYLOAD)

    try:
        return await timed(counter, publish, messages, publishers)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await js.delete_stream(topic)
        await client.close()


async def raw_rabbitmq(info: BackendInfo, messages: int, publishers: int) -> Timing:
    """aio-pika: confirmed publishes to a fanout exchange, one consumer acking each message."""
    import aio_pika

    connection = await aio_pika.connect(info.values["url"])
    channel = await connection.channel(publisher_confirms=True)
    topic, counter = unique("raw"), Counter(messages)
    exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.FANOUT)
    queue = await channel.declare_queue(f"raw-{topic}", auto_delete=True)
    await queue.bind(exchange)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        json.loads(message.body)
        await message.ack()
        counter.add()

    await queue.consume(handle)

    async def publish() -> None:
        await exchange.publish(aio_pika.Message(PAYLOAD), routing_key="")

    try:
        return await timed(counter, publish, messages, publishers)
    finally:
        await exchange.delete()
        await connection.close()


async def raw_mqtt(info: BackendInfo, messages: int, publishers: int) -> Timing:
    """aiomqtt: QoS 1 publishes on one client, a QoS 1 subscription on another."""
    import aiomqtt

    host, port = info.values["host"], int(info.values["port"])
    topic, counter = unique("raw"), Counter(messages)
    async with (
        aiomqtt.Client(host, port, identifier=unique("sub")) as subscriber,
        aiomqtt.Client(host, port, identifier=unique("pub")) as publisher,
    ):
        publisher.pending_calls_threshold = 10_000  # as the driver: no warning per publish
        await subscriber.subscribe(topic, qos=1)

        async def consume() -> None:
            async for message in subscriber.messages:
                json.loads(message.payload)
                counter.add()

        consumer = asyncio.create_task(consume())

        async def publish() -> None:
            await publisher.publish(topic, PAYLOAD, qos=1)

        try:
            return await timed(counter, publish, messages, publishers)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)


@dataclass(frozen=True)
class Broker:
    backend: str
    type: str
    component: Callable[[], PubSub[Any]]
    properties: Callable[[BackendInfo], dict[str, str]]
    raw: Raw
    raw_name: str
    messages: int


BROKERS = {
    "kafka": Broker(
        "kafka",
        "pubsub.kafka",
        KafkaPubSub,
        lambda i: {"brokers": i.values["brokers"], "initialOffset": "oldest", "consumerID": "b"},
        raw_kafka,
        "kafka-python",
        1000,
    ),
    "jetstream": Broker(
        "nats",
        "pubsub.jetstream",
        JetStreamPubSub,
        lambda i: {"natsURL": i.values["url"], "consumerID": unique("b")},
        raw_jetstream,
        "nats-py",
        2000,
    ),
    "rabbitmq": Broker(
        "rabbitmq",
        "pubsub.rabbitmq",
        RabbitMQPubSub,
        lambda i: {"host": i.values["url"], "publisherConfirm": "true", "consumerID": "b"},
        raw_rabbitmq,
        "aio-pika",
        2000,
    ),
    "mqtt": Broker(
        "mosquitto",
        "pubsub.mqtt3",
        MQTTPubSub,
        lambda i: {"url": i.values["url"], "consumerID": unique("b")},
        raw_mqtt,
        "aiomqtt",
        2000,
    ),
}


async def bench(
    broker: Broker, info: BackendInfo, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Both modes of one broker; each round is mechakit then raw, on fresh topics."""
    messages = args.messages or broker.messages
    rows = []
    for mode, publishers in (
        ("1 publisher", 1),
        (f"{args.publishers} publishers", args.publishers),
    ):
        ours: list[Timing] = []
        raw: list[Timing] = []
        for round_ in range(args.rounds):  # the order alternates, so drift hits both sides
            if round_ % 2:
                raw.append(await broker.raw(info, messages, publishers))
                ours.append(await run_mechakit(broker, info, messages, publishers))
            else:
                ours.append(await run_mechakit(broker, info, messages, publishers))
                raw.append(await broker.raw(info, messages, publishers))
        pairs = list(zip(raw, ours, strict=True))
        rows.append(
            {
                "mode": mode,
                "messages": messages,
                "raw_client": broker.raw_name,
                "mechakit_msgs_per_s": statistics.median(t.rate for t in ours),
                "raw_msgs_per_s": statistics.median(t.rate for t in raw),
                "slowdown": statistics.median(r.rate / m.rate for r, m in pairs),
                "mechakit_cpu_us_per_msg": statistics.median(t.cpu_us for t in ours),
                "raw_cpu_us_per_msg": statistics.median(t.cpu_us for t in raw),
                "cpu_ratio": statistics.median(m.cpu_us / r.cpu_us for r, m in pairs),
                "rounds": {
                    "mechakit": [t.rate for t in ours],
                    "raw": [t.rate for t in raw],
                    "mechakit_cpu_us": [t.cpu_us for t in ours],
                    "raw_cpu_us": [t.cpu_us for t in raw],
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=[*BROKERS, "all"], default="all")
    parser.add_argument("--messages", type=int, default=0, help="default: per broker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=32)
    args = parser.parse_args()
    names = list(BROKERS) if args.broker == "all" else [args.broker]
    results: dict[str, Any] = {}
    for name in names:
        broker = BROKERS[name]
        try:
            info = provision(broker.backend)
        except BackendUnavailable as exc:
            print(f"{name}: skipped, no {broker.backend} backend ({exc})")
            continue
        try:
            results[name] = {"source": info.source, "rows": asyncio.run(bench(broker, info, args))}
        finally:
            info.stop()
    print(
        f"{'broker':<10} {'mode':<14} {'mechakit':>12} {'raw':>12} {'slowdown':>9} "
        f"{'cpu/msg (ours / raw)':>22} {'cpu ratio':>9}"
    )
    for name, result in results.items():
        for row in result["rows"]:
            cpu = f"{row['mechakit_cpu_us_per_msg']:.0f} / {row['raw_cpu_us_per_msg']:.0f} µs"
            print(
                f"{name:<10} {row['mode']:<14} {row['mechakit_msgs_per_s']:>10,.0f}/s "
                f"{row['raw_msgs_per_s']:>10,.0f}/s {row['slowdown']:>8.2f}x "
                f"{cpu:>22} {row['cpu_ratio']:>8.2f}x"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"brokers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"python": platform.python_version(), "rounds": args.rounds}
    out.write_text(json.dumps({"meta": meta, "brokers": results}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
