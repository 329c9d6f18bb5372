"""``kind: Resiliency`` on component calls, against a real redis-server paused with SIGSTOP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import mechakit
from mechakit.conformance.backends import BackendInfo
from mechakit.core.errors import ConnectionFailedError, ETagError, ManifestError
from mechakit.runtime.in_process import Runtime
from mechakit.runtime.resiliency import CircuitOpenError

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
