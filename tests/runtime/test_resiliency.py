"""``kind: Resiliency``: outbound on component calls, against a real redis-server paused with
SIGSTOP; inbound on deliveries to a real HTTP app from ``pubsub.in-memory`` and a cron binding."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

import mechakit
from mechakit.conformance.backends import BackendInfo
from mechakit.core.errors import ConnectionFailedError, ETagError, ManifestError
from mechakit.runtime.in_process import Runtime
from mechakit.runtime.resiliency import CircuitOpenError

from .recording_app import RecordingApp
from .test_delivery import CRON, WriteFiles, delivering, pending_after_stop, pubsub_yaml, subscribe

RESILIENCY = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: myresiliency}
spec:
  policies:
    timeouts:
      quick: 300ms
    retries:
      steady:
        policy: constant
        duration: 200ms
        maxRetries: 30
    circuitBreakers:
      fragile:
        maxRequests: 1
        timeout: 30s
        trip: consecutiveFailures >= 2
  targets:
    components:
      patient:
        outbound: {retry: steady}
      hasty:
        outbound: {timeout: quick}
      breaking:
        outbound: {circuitBreaker: fragile}
"""


@pytest.fixture
async def runtime(
    resources: Callable[..., Path], component: Callable[..., str], pausable_redis: BackendInfo
) -> AsyncIterator[Runtime]:
    address = pausable_redis.values["address"]
    stores = {
        name: component(
            name,
            "state.redis",
            ("redisHost", address),
            ("keyPrefix", "name"),
            ("readTimeout", "500ms"),
            ("maxRetries", "0"),
        )
        for name in ("patient", "hasty", "breaking", "plain")
    }
    folder = resources(resiliency=RESILIENCY, **stores)
    async with mechakit.open(folder, app_id="resilient") as rt:
        yield rt


async def test_a_retry_policy_carries_a_read_through_a_stall(
    runtime: Runtime, pausable_redis: BackendInfo
) -> None:
    key = f"k-{uuid.uuid4().hex}"
    await runtime.state("patient").set(key, "v")
    await runtime.state("plain").set(key, "v")
    assert pausable_redis.freeze is not None
    pausable_redis.freeze(True)
    try:
        patient = asyncio.create_task(runtime.state("patient").get(key))
        plain = asyncio.create_task(runtime.state("plain").get(key))
        with pytest.raises(ConnectionFailedError):
            await plain  # no policy: the driver's own timeout, no retry
        await asyncio.sleep(0.8)
    finally:
        pausable_redis.freeze(False)
    item = await patient
    assert item is not None and item.value == "v"


async def test_a_conditional_write_is_not_retried_and_a_conflict_never(
    runtime: Runtime, pausable_redis: BackendInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = runtime.state("patient")
    key = f"k-{uuid.uuid4().hex}"
    await store.set(key, 1)
    stale = (await store.get(key)).etag  # type: ignore[union-attr]
    await store.set(key, 2)
    calls: list[object] = []
    driver = store.component
    real_set = driver.set

    async def counted(request: object) -> None:
        calls.append(request)
        await real_set(request)  # type: ignore[arg-type]

    monkeypatch.setattr(driver, "set", counted)
    with pytest.raises(ETagError):
        await store.set(key, 3, etag=stale)
    assert len(calls) == 1  # a conflict is never retried
    assert pausable_redis.freeze is not None
    current = (await store.get(key)).etag  # type: ignore[union-attr]
    pausable_redis.freeze(True)
    try:
        with pytest.raises(ConnectionFailedError, match="may or may not have been applied"):
            await store.set(key, 4, etag=current)  # one try: a repeat could be a false 409
    finally:
        pausable_redis.freeze(False)
    assert len(calls) == 2


async def test_a_timeout_policy_bounds_a_call(
    runtime: Runtime, pausable_redis: BackendInfo
) -> None:
    assert pausable_redis.freeze is not None
    pausable_redis.freeze(True)
    try:
        with pytest.raises(ConnectionFailedError, match=r"no answer within 0\.3s"):
            await runtime.state("hasty").get("k")  # the policy's 300 ms, not the 500 ms read
    finally:
        pausable_redis.freeze(False)


async def test_a_circuit_breaker_opens_and_then_refuses_without_calling(
    runtime: Runtime, pausable_redis: BackendInfo
) -> None:
    store = runtime.state("breaking")
    assert pausable_redis.freeze is not None
    pausable_redis.freeze(True)
    try:
        for _ in range(2):
            with pytest.raises(ConnectionFailedError):
                await store.get("k")
    finally:
        pausable_redis.freeze(False)
    with pytest.raises(CircuitOpenError, match="circuit breaker 'fragile' is open"):
        await store.get("k")  # Redis answers again, but the breaker is open
    assert await runtime.state("plain").get("k") is None


async def test_a_policy_naming_an_unknown_retry_is_an_error_naming_the_field(
    resources: Callable[..., Path],
) -> None:
    folder = resources(
        resiliency=RESILIENCY.replace("retry: steady", "retry: stedy"),
    )
    with pytest.raises(ManifestError, match=r"targets\.components\.patient\.outbound\.retry"):
        async with mechakit.open(folder, app_id="resilient"):
            pass


def test_a_trip_expression_is_parsed_not_evaluated() -> None:
    from mechakit.runtime.resiliency import compile_trip

    trip = compile_trip("requests > 10 && (totalFailures > 3 || consecutiveFailures > 1)")
    assert trip({"requests": 11, "totalFailures": 4}) is True
    assert trip({"requests": 5, "totalFailures": 9}) is False
    for bad in ("__import__('os')", "failures > 1", "requests >", "requests > 1 &&"):
        with pytest.raises(ValueError, match="unexpected|unknown counter|comparison|too early"):
            compile_trip(bad)


# --- inbound: deliveries from a component to the app -------------------------------------------


def inbound(target: str, policy: str) -> str:
    """A Resiliency giving component ``target`` the inbound ``policy`` (a flow mapping)."""
    return f"""
        apiVersion: dapr.io/v1alpha1
        kind: Resiliency
        metadata: {{name: inbound}}
        spec:
          policies:
            timeouts: {{brief: 200ms}}
            retries:
              twice: {{policy: constant, duration: 10ms, maxRetries: 2}}
            circuitBreakers:
              fragile: {{maxRequests: 1, timeout: 1s, trip: consecutiveFailures >= 2}}
          targets:
            components:
              {target}:
                inbound: {policy}
        """


async def test_an_inbound_retry_repeats_the_delivery_before_the_broker_gets_it_back(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[subscribe("orders", "/orders")],
        answers={"/orders": [(200, {"status": "RETRY"}), (503, None), (200, {})]},
    )
    once = pubsub_yaml(max_deliveries=1, interval="30s")  # no redelivery by the broker
    files = {"pubsub": once, "resiliency": inbound("pubsub", "{retry: twice}")}
    async with delivering(resources, app, **files) as (runtime, delivery):
        await runtime.pubsub("pubsub").publish("orders", {"n": 1})
        calls = await app.wait_for("/orders", 3)
        assert await pending_after_stop(runtime, delivery, "orders") == []
    assert len({call.event["id"] for call in calls}) == 1
    assert len(app.at("/orders")) == 3


async def test_each_broker_delivery_gets_the_inbound_retries_then_the_dead_letter_topic(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[
            subscribe("orders", "/orders", deadLetterTopic="poison"),
            subscribe("poison", "/poison"),
        ],
        always={"/orders": (500, None)},
    )
    files = {
        "pubsub": pubsub_yaml(max_deliveries=2, interval="0s"),
        "resiliency": inbound("pubsub", "{retry: twice}"),
    }
    async with delivering(resources, app, **files) as (runtime, _):
        await runtime.pubsub("pubsub").publish("orders", {"n": 1})
        await app.wait_for("/poison")
    assert len(app.at("/orders")) == 2 * 3  # two broker deliveries, each tried three times


async def test_an_inbound_timeout_bounds_one_call_to_the_app(resources: WriteFiles) -> None:
    app = StallingApp(subscriptions=[subscribe("orders", "/orders")], stalls=[3.0])
    files = {
        "pubsub": pubsub_yaml(max_deliveries=1, interval="30s"),
        "resiliency": inbound("pubsub", "{timeout: brief, retry: twice}"),
    }
    async with delivering(resources, app, **files) as (runtime, delivery):
        started = time.monotonic()
        await runtime.pubsub("pubsub").publish("orders", "slow")
        await app.wait_for("/orders", 2)
        assert await pending_after_stop(runtime, delivery, "orders") == []
        assert time.monotonic() - started < 2.0  # the stalled call was cut at 200 ms


async def test_an_open_inbound_circuit_breaker_holds_deliveries_back_without_losing_them(
    resources: WriteFiles,
) -> None:
    app = RecordingApp(
        subscriptions=[subscribe("orders", "/orders")],
        answers={"/orders": [(500, None), (500, None)]},
    )
    files = {
        "pubsub": pubsub_yaml(max_deliveries=10, interval="50ms"),
        "resiliency": inbound("pubsub", "{circuitBreaker: fragile}"),
    }
    async with delivering(resources, app, **files) as (runtime, delivery):
        await runtime.pubsub("pubsub").publish("orders", {"n": 1})
        await app.wait_for("/orders", 2)
        opened = time.monotonic()
        calls = await app.wait_for("/orders", 3)
        assert time.monotonic() - opened > 0.8  # no call while the breaker was open (1 s)
        assert await pending_after_stop(runtime, delivery, "orders") == []
    assert len({call.event["id"] for call in calls}) == 1
    assert len(app.at("/orders")) == 3


async def test_an_inbound_retry_repeats_an_input_binding_event(resources: WriteFiles) -> None:
    app = RecordingApp(answers={"/tick": [(500, None)]})
    files = {"tick": CRON.format(name="tick"), "resiliency": inbound("tick", "{retry: twice}")}
    async with delivering(resources, app, **files):
        first, second, *_ = await app.wait_for("/tick", 2)
    assert first.body == second.body  # the same event again, not the next tick


@dataclass
class StallingApp(RecordingApp):
    """A :class:`RecordingApp` whose first POSTs answer only after ``stalls`` seconds."""

    stalls: list[float] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        response = await super().handle(request)
        if request.method == "POST" and self.stalls:
            await asyncio.sleep(self.stalls.pop(0))
        return response


async def test_a_half_open_breaker_gets_its_trial_back_from_a_call_that_proved_nothing() -> None:
    """A half-open breaker lets ``maxRequests`` trial calls through; one that ends neither
    in success nor in a retriable failure (refused by an unhealthy app, cancelled, a bad
    request) must not keep the breaker busy for ever."""
    from mechakit.core.delivery import NotDelivered
    from mechakit.runtime.resiliency import CircuitBreaker, Policy, compile_trip

    breaker = CircuitBreaker("fragile", compile_trip("consecutiveFailures >= 1"), timeout=0.0)
    policy = Policy("pubsub", breaker=breaker)

    async def unreachable() -> None:
        raise ConnectionFailedError("down", component="pubsub")

    async def refused() -> None:
        raise NotDelivered("the app is unhealthy")

    async def answered() -> str:
        return "ok"

    with pytest.raises(ConnectionFailedError):
        await policy.run(unreachable)  # opens it; timeout 0: half-open on the next call
    with pytest.raises(NotDelivered):
        await policy.run(refused)
    assert await policy.run(answered) == "ok"
