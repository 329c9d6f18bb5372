"""pubsub.aws.snssqs against plain boto3 doing the same calls, on one moto server.

    .venv/bin/python -m benchmarks.snssqs_bench [--messages 300] [--rounds 3] [--in-flight 8]

The server comes from ``MECHAKIT_TEST_AWS_ENDPOINT`` or ``python -m moto.server`` started
on a free port (the conformance "moto" backend). A case publishes ``--messages`` messages
to a topic whose queue is being consumed and stops the clock when the last one has been
handled and deleted. Publishers run one at a time (sequential) and ``--in-flight`` at once.

mechakit: ``publish`` and a ``subscribe`` handler. boto3: ``sns.publish`` (from that many
threads), and one thread looping ``sqs.receive_message`` (10 at a time, long polling) and
``sqs.delete_message_batch`` for what it received: the same calls the driver makes, minus
its visibility extensions. The slowdown is the median over rounds of boto3's throughput
divided by mechakit's (1.0 = as fast as plain boto3). moto does the AWS side in Python on
the same machine, so absolute figures say little about AWS; the ratio is the point.

Results are printed and written to ``benchmarks/results/snssqs-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

import mechakit.conformance.backends_aws  # noqa: F401  (registers the "moto" backend)
from mechakit.components.pubsub.aws_snssqs import SnsSqsPubSub
from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.conformance.backends_aws import boto3_client
from mechakit.core.component import ComponentMetadata
from mechakit.core.pubsub import Message, PublishRequest, SubscribeRequest

RESULTS = Path(__file__).resolve().parent / "results"
PAYLOAD = json.dumps({"order": 42, "customer": "c-1001", "note": "x" * 64}).encode()


async def run_mechakit(info: BackendInfo, messages: int, in_flight: int) -> float:
    """Messages per second through pubsub.aws.snssqs."""
    v = info.values
    pubsub = SnsSqsPubSub()
    await pubsub.init(
        ComponentMetadata(
            "bench",
            "pubsub.aws.snssqs",
            {
                "endpoint": v["endpoint"],
                "region": v["region"],
                "accessKey": v["accessKey"],
                "secretKey": v["secretKey"],
                "consumerID": f"bench-{uuid.uuid4().hex[:8]}",
                "messageWaitTimeSeconds": "1",
            },
        )
    )
    topic, handled, done = f"bench-{uuid.uuid4().hex[:8]}", 0, asyncio.Event()

    async def handle(message: Message) -> None:
        nonlocal handled
        handled += 1
        if handled >= messages:
            done.set()

    try:
        await pubsub.subscribe(SubscribeRequest(topic=topic), handle)
        request = PublishRequest(topic=topic, data=PAYLOAD)
        todo = iter(range(messages))

        async def publisher() -> None:
            for _ in todo:
                await pubsub.publish(request)

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(in_flight)))
        await asyncio.wait_for(done.wait(), 120)
        return messages / (time.perf_counter() - started)
    finally:
        await pubsub.close()


def run_boto3(info: BackendInfo, messages: int, in_flight: int) -> float:
    """Messages per second through plain boto3 calls (SNS topic fanned into an SQS queue)."""
    sns, sqs = boto3_client(info.values, "sns"), boto3_client(info.values, "sqs")
    name = f"raw-{uuid.uuid4().hex[:8]}"
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    handled = 0
    finished = threading.Event()

    def consume() -> None:
        nonlocal handled
        while handled < messages:
            reply = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
            batch = reply.get("Messages") or []
            for message in batch:
                json.loads(message["Body"])
            if batch:
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(batch)
                    ],
                )
                handled += len(batch)
        finished.set()

    body = PAYLOAD.decode()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(lambda _i: sns.publish(TopicArn=topic_arn, Message=body), range(messages)))
    finished.wait(120)
    return messages / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    try:
        info = provision("moto")
    except BackendUnavailable as exc:
        sys.exit(f"no moto server: {exc}")
    rows: list[dict[str, Any]] = []
    try:
        for mode, in_flight in (("sequential", 1), (f"{args.in_flight} in flight", args.in_flight)):
            ours, raw, ratios = [], [], []
            for _ in range(args.rounds):
                a = asyncio.run(run_mechakit(info, args.messages, in_flight))
                b = run_boto3(info, args.messages, in_flight)
                ours.append(a)
                raw.append(b)
                ratios.append(b / a)
            rows.append(
                {
                    "case": "publish+consume",
                    "mode": mode,
                    "mechakit_msgs_per_s": statistics.median(ours),
                    "boto3_msgs_per_s": statistics.median(raw),
                    "slowdown": statistics.median(ratios),
                }
            )
    finally:
        info.stop()
    print(f"{'mode':<14} {'mechakit':>12} {'boto3':>12} {'slowdown':>9}")
    for row in rows:
        print(
            f"{row['mode']:<14} {row['mechakit_msgs_per_s']:>10,.0f}/s "
            f"{row['boto3_msgs_per_s']:>10,.0f}/s {row['slowdown']:>8.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"snssqs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "messages": args.messages,
        "rounds": args.rounds,
        "source": info.source,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
