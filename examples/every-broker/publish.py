"""The publisher: sends orders to the topic ``orders`` through the sidecar's HTTP API.

``python publish.py [--count N]`` publishes N orders whose outcome is ``ok``, then one each
of ``retry-once``, ``retry-always`` and ``drop`` (see app.py for what the subscriber answers
to each). Every publish carries the metadata ``orderSource`` (``?metadata.orderSource=...``),
which the subscriber gets back as the HTTP header ``ordersource``. The sidecar is found as
the Dapr SDKs find it: ``DAPR_HTTP_PORT`` (default 3500) and ``DAPR_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import os

import httpx

SOURCE = "every-broker-example"


def orders(count: int) -> list[dict[str, str]]:
    """The orders one run publishes: ``count`` that succeed, then one of each other kind."""
    plain = [{"id": str(n), "outcome": "ok"} for n in range(1, count + 1)]
    special = ["retry-once", "retry-always", "drop"]
    return plain + [{"id": outcome, "outcome": outcome} for outcome in special]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="orders that succeed")
    parser.add_argument("--pubsub", default="pubsub", help="the pub/sub component's name")
    arguments = parser.parse_args()
    port = os.environ.get("DAPR_HTTP_PORT", "3500")
    token = os.environ.get("DAPR_API_TOKEN")
    headers = {"dapr-api-token": token} if token else {}
    url = f"http://127.0.0.1:{port}/v1.0/publish/{arguments.pubsub}/orders"
    with httpx.Client(headers=headers, timeout=30) as client:
        for order in orders(arguments.count):
            answer = client.post(url, json=order, params={"metadata.orderSource": SOURCE})
            if answer.is_error:
                raise SystemExit(f"order {order['id']}: {answer.status_code} {answer.text}")
            print(f"published order {order['id']} ({order['outcome']})")


if __name__ == "__main__":
    main()
