"""``mechakit run --enable-app-health-check`` stops taking messages from the broker while the
app is unhealthy, as daprd does: a real sidecar on ``pubsub.redis`` (a redis-server of the
module's own), whose consumer group shows what the sidecar has taken and not acked."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from .pubsub_sidecar import component_yaml, redis_address
from .test_run_dapr_flags import App, Sidecar, home, publish, sidecars, tcp_sidecar, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sockets")
__all__ = ["home", "redis_address", "sidecars"]  # the fixtures, imported for this module's tests

HEALTH = [
    "--enable-app-health-check",
    "--app-health-check-path", "/healthz",
    "--app-health-probe-interval", "1",
    "--app-health-probe-timeout", "500",
    "--app-health-threshold", "1",
]  # fmt: skip
PAUSED = "deliveries paused"
RESUMED = "deliveries resumed"


@pytest.fixture
def broker(redis_address: str) -> Iterator[redis.Redis]:
    host, _, port = redis_address.rpartition(":")
    client = redis.Redis(host=host, port=int(port))
    client.delete("orders")
    try:
        yield client
    finally:
        client.close()


def start(
    sidecars: list[Sidecar], home: Path, app: App, address: str, *args: str, reclaim: str = "1s"
) -> tuple[Sidecar, httpx.Client]:
    """``mechakit run`` for ``app`` with health checks every second, on ``pubsub.redis``
    (which redelivers what stays pending ``reclaim`` long)."""
    folder = home.parent / "resources"
    folder.mkdir(exist_ok=True)
    settings = {"redisHost": address, "redeliverInterval": "100ms", "processingTimeout": reclaim}
    (folder / "pubsub.yaml").write_text(component_yaml("pubsub.redis", settings))
    return tcp_sidecar(
        sidecars, home, "-a", "shop", "-p", str(app.port), "--resources-path", str(folder),
        *HEALTH, *args,
    )  # fmt: skip


def pending(broker: redis.Redis) -> int:
    """Messages the sidecar has read from ``orders`` and not acked (its consumer group)."""
    groups = broker.xinfo_groups("orders")
    return sum(int(group["pending"]) for group in groups)


def ids(app: App) -> list[str]:
    return sorted(event["id"] for event in app.events)


def test_an_unhealthy_app_leaves_messages_in_the_broker_until_it_is_healthy_again(
    sidecars: list[Sidecar], home: Path, redis_address: str, broker: redis.Redis
) -> None:
    with App(healthy=True) as app:
        sidecar, client = start(sidecars, home, app, redis_address)
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "before")
        wait_until(lambda: ids(app) == ["before"], "the first delivery", sidecar)

        app.healthy = False
        sidecar.wait_for_line(PAUSED)
        publish(client, "while-1", "while-2", "while-3")
        time.sleep(2.0)  # a subscription left running would have read them by now
        assert broker.xlen("orders") == 4
        assert pending(broker) == 0, sidecar.log
        assert ids(app) == ["before"]

        app.healthy = True
        wait_until(lambda: len(app.events) >= 4, "the deliveries after resuming", sidecar)
        time.sleep(1.5)  # room for a duplicate to show up
        assert ids(app) == ["before", "while-1", "while-2", "while-3"]
        wait_until(lambda: pending(broker) == 0, "every message acked", sidecar)


def test_an_app_unhealthy_from_the_start_gets_nothing_until_its_first_good_probe(
    sidecars: list[Sidecar], home: Path, redis_address: str, broker: redis.Redis
) -> None:
    with App(healthy=False) as app:
        sidecar, client = start(sidecars, home, app, redis_address)
        sidecar.wait_for_line("app is not healthy yet")
        publish(client, "early-1", "early-2")
        time.sleep(1.5)
        assert app.events == [] and pending(broker) == 0
        app.healthy = True
        sidecar.wait_for_line(RESUMED)
        wait_until(lambda: len(app.events) >= 2, "the deliveries once healthy", sidecar)
        time.sleep(1.0)
        assert ids(app) == ["early-1", "early-2"]
        assert pending(broker) == 0


def test_a_delivery_waiting_at_the_gate_goes_back_to_the_broker_and_comes_again(
    sidecars: list[Sidecar], home: Path, redis_address: str, broker: redis.Redis
) -> None:
    with App(healthy=True, delay=1.5) as app:
        sidecar, client = start(
            sidecars, home, app, redis_address, "--app-max-concurrency", "1", reclaim="4s"
        )
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "slow", "waiting")
        wait_until(lambda: len(app.started) == 1, "the first delivery", sidecar)
        app.healthy = False
        began = time.monotonic()
        sidecar.wait_for_line(PAUSED)
        # The pause waits for the send in flight (1.5 s), not for the one waiting at the gate.
        assert time.monotonic() - began < 4.5, sidecar.log
        assert app.started == [app.started[0]]
        app.healthy = True
        wait_until(lambda: len(app.events) >= 2, "both deliveries", sidecar)
        time.sleep(1.0)
        assert ids(app) == ["slow", "waiting"]


FRAGILE = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: fragile}
spec:
  policies:
    circuitBreakers:
      fragile: {maxRequests: 1, timeout: 60s, trip: consecutiveFailures >= 1}
  targets:
    components:
      pubsub:
        inbound: {circuitBreaker: fragile}
"""


def test_a_delivery_refused_while_the_app_is_unhealthy_is_not_a_delivery_attempt(
    sidecars: list[Sidecar], home: Path
) -> None:
    """``maxDeliveries: 1`` and a breaker that opens on one failure: the event refused at
    the gate while the app is unhealthy would be dropped, or held back by the open breaker,
    if its refusal counted as a failed delivery."""
    folder = home.parent / "resources"
    folder.mkdir(exist_ok=True)
    settings = {"maxDeliveries": "1", "redeliveryInterval": "10ms"}
    (folder / "pubsub.yaml").write_text(component_yaml("pubsub.in-memory", settings))
    (folder / "resiliency.yaml").write_text(FRAGILE)
    with App(healthy=True, delay=1.5) as app:
        sidecar, client = tcp_sidecar(
            sidecars, home, "-a", "shop", "-p", str(app.port), "--resources-path", str(folder),
            *HEALTH, "--app-max-concurrency", "1",
        )  # fmt: skip
        sidecar.wait_for_line("delivering .*orders")
        publish(client, "slow", "waiting")
        wait_until(lambda: len(app.started) == 1, "the first delivery", sidecar)
        app.healthy = False
        sidecar.wait_for_line(PAUSED)
        app.healthy = True
        wait_until(lambda: len(app.events) >= 2, "both deliveries", sidecar)
        assert ids(app) == ["slow", "waiting"]
    assert "dropped" not in sidecar.log and "circuit breaker" not in sidecar.log
