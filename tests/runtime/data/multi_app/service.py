"""One of the three apps of the multi-app run test (order → stock and payment), stdlib only.

``python ../service.py ROLE`` from the app's folder, with the variables ``dapr run`` sets
(``APP_PORT``, ``DAPR_HTTP_PORT``). The order app calls stock and payment through its sidecar
(service invocation); stock keeps the reservation in the state store; payment publishes
``paid`` and, subscribed to it, prints each event it receives.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROLE = sys.argv[1]
SIDECAR = f"http://127.0.0.1:{os.environ['DAPR_HTTP_PORT']}"


def call(method: str, path: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        SIDECAR + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def order(body: dict[str, Any]) -> dict[str, Any]:
    stock = call("POST", "/v1.0/invoke/stock/method/reserve", body)
    payment = call("POST", "/v1.0/invoke/payment/method/pay", {"order": body["id"]})
    print(f"order {body['id']} placed", flush=True)
    return {"order": body["id"], "stock": stock, "payment": payment}


def reserve(body: dict[str, Any], caller: str) -> dict[str, Any]:
    call("POST", "/v1.0/state/statestore", [{"key": body["id"], "value": body}])
    print(f"reserved {body['qty']} x {body['item']} for {body['id']}", flush=True)
    return {
        "reserved": body["qty"],
        "caller": caller,
        "saved": call("GET", f"/v1.0/state/statestore/{body['id']}"),
    }


def pay(body: dict[str, Any]) -> dict[str, Any]:
    call("POST", "/v1.0/publish/pubsub/paid", {"order": body["order"]})
    return {"paid": body["order"]}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/dapr/subscribe" and ROLE == "payment":
            self.answer(200, [{"pubsubname": "pubsub", "topic": "paid", "route": "/paid"}])
        else:
            self.answer(200 if self.path == "/ready" else 404, {"role": ROLE})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if ROLE == "order" and self.path == "/orders":
            self.answer(200, order(body))
        elif ROLE == "stock" and self.path == "/reserve":
            self.answer(200, reserve(body, self.headers.get("dapr-caller-app-id", "")))
        elif ROLE == "payment" and self.path == "/pay":
            self.answer(200, pay(body))
        elif ROLE == "payment" and self.path == "/paid":
            print(f"payment event received: {body['data']['order']}", flush=True)
            self.answer(200, {"status": "SUCCESS"})
        else:
            self.answer(404, {"role": ROLE, "path": self.path})

    def answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def exit_once_the_sidecar_answers() -> None:
    """The ``oneshot`` app: exits with code 3 a moment after its sidecar is up."""
    for _ in range(600):
        try:
            urllib.request.urlopen(SIDECAR + "/v1.0/healthz", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1)  # so that the run has seen the sidecar up: this is an exit, not a failed start
    print("oneshot done", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    if ROLE == "oneshot":
        exit_once_the_sidecar_answers()
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["APP_PORT"])), Handler)
    print(f"{ROLE} listening on port {os.environ['APP_PORT']} (pid {os.getpid()})", flush=True)
    print(f"{ROLE} greets stderr", file=sys.stderr, flush=True)
    server.serve_forever()
