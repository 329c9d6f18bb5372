"""The subscriber: one HTTP app that runs unchanged on every broker.

It subscribes programmatically (``GET /dapr/subscribe``) to the topic ``orders`` of the
component ``pubsub`` (route ``/orders``; failed orders go to ``orders-dead``, routed to
``/dead``) and answers from the order's ``outcome``: ``ok`` SUCCESS, ``drop`` DROP,
``retry-always`` RETRY, ``retry-once`` RETRY the first time this instance sees the order,
then SUCCESS. ``GET /received`` lists what came in, with the headers, so you (or a test) can
see what each broker delivered. Run it under ``mechakit run``, which sets ``APP_PORT``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PUBSUB = "pubsub"
INSTANCE = f"{os.environ.get('APP_ID', 'orders')}:{os.environ.get('APP_PORT', '8001')}"
received: list[dict[str, Any]] = []
seen: set[str] = set()


async def subscribe(request: Request) -> JSONResponse:
    return JSONResponse(
        [
            {
                "pubsubname": PUBSUB,
                "topic": "orders",
                "route": "/orders",
                "deadLetterTopic": "orders-dead",
            },
            {"pubsubname": PUBSUB, "topic": "orders-dead", "route": "/dead"},
        ]
    )


def _order(event: dict[str, Any]) -> dict[str, Any]:
    """The order in a CloudEvent; a dead letter may carry the original event as its data."""
    data = event.get("data")
    if isinstance(data, str):
        data = json.loads(data)
    if isinstance(data, dict) and "specversion" in data:
        return _order(data)
    return data if isinstance(data, dict) else {}


async def orders(request: Request) -> JSONResponse:
    order = _order(await request.json())
    key = str(order.get("id"))
    outcome = order.get("outcome", "ok")
    first_time = key not in seen
    seen.add(key)
    if outcome == "drop":
        status = "DROP"
    elif outcome == "retry-always" or (outcome == "retry-once" and first_time):
        status = "RETRY"
    else:
        status = "SUCCESS"
    _record(request, "/orders", order, status)
    return JSONResponse({"status": status})


async def dead(request: Request) -> JSONResponse:
    _record(request, "/dead", _order(await request.json()), "SUCCESS")
    return JSONResponse({"status": "SUCCESS"})


def _record(request: Request, route: str, order: dict[str, Any], status: str) -> None:
    received.append(
        {
            "instance": INSTANCE,
            "route": route,
            "id": order.get("id"),
            "outcome": order.get("outcome"),
            "answer": status,
            "headers": dict(request.headers),
        }
    )
    print(f"{INSTANCE} {route} order {order.get('id')} ({order.get('outcome')}): {status}")


async def list_received(request: Request) -> JSONResponse:
    return JSONResponse(received)


app = Starlette(
    routes=[
        Route("/dapr/subscribe", subscribe, methods=["GET"]),
        Route("/orders", orders, methods=["POST"]),
        Route("/dead", dead, methods=["POST"]),
        Route("/received", list_received, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    port = int(os.environ.get("APP_PORT", "8001"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
