"""mechakit end to end, in one process: the components of examples/components/ used from Python.

    python examples/demo.py

State with ETags, publish and subscribe, a lock, a secret and a file binding, all set up by
the Dapr Component YAML in examples/components/ (the same files `mechakit run` serves).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import mechakit
from mechakit.core.errors import ETagError
from mechakit.runtime.clients import TopicEvent

HERE = Path(__file__).resolve().parent


def step(text: str) -> None:
    print(f"\n== {text}")


async def main() -> int:
    os.chdir(HERE)  # the component files use paths relative to examples/
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="   [%(name)s] %(message)s")
    async with mechakit.open("components", app_id="demo") as rt:
        print("running:", ", ".join(rt.components))

        step("state with optimistic concurrency")
        store = rt.state("statestore")
        await store.delete("order-1")
        await store.set("order-1", {"status": "new", "items": 2})
        item = await store.get("order-1")
        assert item is not None
        print(f"stored {item.value} with etag {item.etag}")
        await store.set("order-1", {"status": "paid", "items": 2}, etag=item.etag)
        try:
            await store.set("order-1", {"status": "lost update"}, etag=item.etag)
        except ETagError as exc:
            print(f"a second write with the old etag is refused: {exc.kind.value}")
        current = await store.get("order-1")
        assert current is not None and current.value["status"] == "paid"
        print(f"now {current.value} with etag {current.etag}")

        step("publish and subscribe")
        received: asyncio.Queue[TopicEvent] = asyncio.Queue()

        async def on_order(event: TopicEvent) -> None:
            await received.put(event)

        pubsub = rt.pubsub("pubsub")
        await pubsub.subscribe("orders", on_order)
        await pubsub.publish("orders", {"order": "order-1", "status": "paid"})
        event = await asyncio.wait_for(received.get(), timeout=5)
        print(f"received {event.data} on {event.topic!r} (CloudEvent id {event.id})")

        step("a distributed lock")
        locks = rt.lock("lockstore")
        async with locks.hold("order-1", owner="worker-a", expiry_seconds=10):
            taken = await locks.try_lock("order-1", owner="worker-b", expiry_seconds=10)
            print(f"worker-a holds the lock; worker-b gets it too? {taken}")
        print("released:", await locks.try_lock("order-1", owner="worker-b", expiry_seconds=10))

        step("a secret")
        secret = await rt.secrets("secretstore").get("db:password")
        print(f"db:password has {len(secret['db:password'])} characters (never print secrets)")

        step("a file binding (its root folder came from the secret store)")
        files = rt.binding("files")
        await files.invoke("create", "hello from mechakit\n", {"fileName": "hello.txt"})
        content = await files.invoke("get", metadata={"fileName": "hello.txt"})
        print(f"read back: {content.data.decode().strip()!r}")
        listing = await files.invoke("list")
        print(f"files: {listing.data.decode()}")

    print("\nall components closed; done")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
