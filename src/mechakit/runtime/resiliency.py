"""``kind: Resiliency``: timeouts, retries and circuit breakers around component calls.

As daprd applies them: ``spec.policies`` names the policies, ``spec.targets.components``
gives a component its ``outbound`` ones (calls of the app to the component: state, publish,
bindings, secrets, locks, configuration) and its ``inbound`` ones (deliveries from the
component to the app: pub/sub messages, input-binding events; see
:mod:`mechakit.runtime.delivery`). A retry repeats only a failure the component calls
retriable (a lost connection, a timeout, the app's RETRY) — never an ETag conflict or a bad
request.
A circuit breaker opens when its ``trip`` expression holds (Dapr's default:
``consecutiveFailures > 5``), refuses calls for ``timeout``, then lets ``maxRequests`` calls
through half-open: success closes it, a failure opens it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from mechakit.core.errors import ManifestError, OperationTimeoutError
from mechakit.core.metadata import parse_duration

from .manifest import ResiliencyManifest

log = logging.getLogger("mechakit.resiliency")

T = TypeVar("T")


class CircuitOpenError(OperationTimeoutError):
    """The component's circuit breaker is open: the call was not made. Retriable later."""


@dataclass(frozen=True)
class RetryPolicy:
    name: str
    exponential: bool
    duration: float = 5.0
    """Constant: the wait between tries."""
    initial_interval: float = 0.5
    max_interval: float = 60.0
    multiplier: float = 1.5
    randomization: float = 0.5
    max_retries: int = -1
    """-1: retry until the call succeeds (or fails in a way that is not retriable)."""

    def delays(self) -> Iterator[float]:
        tries = 0
        interval = self.initial_interval
        while self.max_retries < 0 or tries < self.max_retries:
            tries += 1
            if not self.exponential:
                yield self.duration
                continue
            spread = interval * self.randomization
            yield min(self.max_interval, random.uniform(interval - spread, interval + spread))
            interval = min(self.max_interval, interval * self.multiplier)


@dataclass
class CircuitBreaker:
    name: str
    trip: Callable[[Mapping[str, Any]], Any]
    max_requests: int = 1
    interval: float = 0.0
    """Closed: how often the counts are cleared (0: never, until a success)."""
    timeout: float = 60.0
    """Open: how long before half-open."""
    _state: str = "closed"
    _opened_at: float = 0.0
    _half_open_calls: int = 0
    _counts: dict[str, int] = field(default_factory=dict)
    _window_start: float = field(default_factory=time.monotonic)

    def before(self, component: str) -> None:
        now = time.monotonic()
        if self._state == "open":
            if now - self._opened_at < self.timeout:
                raise CircuitOpenError(
                    f"circuit breaker {self.name!r} is open; the call was not made",
                    component=component,
                )
            self._state, self._half_open_calls = "half-open", 0
        if self._state == "half-open":
            if self._half_open_calls >= self.max_requests:
                raise CircuitOpenError(
                    f"circuit breaker {self.name!r} is half-open and busy", component=component
                )
            self._half_open_calls += 1
        elif self.interval and now - self._window_start >= self.interval:
            self._counts.clear()
            self._window_start = now
        self._counts["requests"] = self._counts.get("requests", 0) + 1

    def success(self) -> None:
        if self._state == "half-open":
            self._state = "closed"
            self._counts.clear()
        self._counts["consecutiveFailures"] = 0
        self._counts["totalSuccesses"] = self._counts.get("totalSuccesses", 0) + 1

    def failure(self, component: str) -> None:
        for name in ("consecutiveFailures", "totalFailures"):
            self._counts[name] = self._counts.get(name, 0) + 1
        variables = {
            "requests": 0,
            "totalSuccesses": 0,
            "totalFailures": 0,
            "consecutiveFailures": 0,
            **self._counts,
        }
        if self._state == "half-open" or self.trip(variables) is True:
            if self._state != "open":
                log.warning("%s: circuit breaker %r opened", component, self.name)
            self._state, self._opened_at = "open", time.monotonic()
            self._counts.clear()


@dataclass
class Policy:
    """The policies of one component in one direction (outbound or inbound)."""

    component: str
    timeout: float | None = None
    retry: RetryPolicy | None = None
    breaker: CircuitBreaker | None = None

    async def run(self, call: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        delays = self.retry.delays() if self.retry is not None and retry else iter(())
        while True:
            try:
                return await self._once(call)
            except Exception as exc:
                if not getattr(exc, "retriable", False) or isinstance(exc, CircuitOpenError):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                log.debug("%s: retrying in %.2fs after: %s", self.component, delay, exc)
                await asyncio.sleep(delay)

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        if self.breaker is not None:
            self.breaker.before(self.component)
        try:
            if self.timeout is None:
                result = await call()
            else:
                try:
                    result = await asyncio.wait_for(call(), self.timeout)
                except TimeoutError:
                    raise OperationTimeoutError(
                        f"no answer within {self.timeout:g}s (resiliency timeout)",
                        component=self.component,
                    ) from None
        except Exception as exc:
            if self.breaker is not None and getattr(exc, "retriable", False):
                self.breaker.failure(self.component)
            raise
        if self.breaker is not None:
            self.breaker.success()
        return result


class Resiliency:
    """The outbound and inbound policies of each component named in the Resiliency
    resources in scope."""

    def __init__(
        self,
        outbound: Mapping[str, Policy] | None = None,
        inbound: Mapping[str, Policy] | None = None,
    ) -> None:
        self._outbound = dict(outbound or {})
        self._inbound = dict(inbound or {})

    def outbound(self, component: str) -> Policy | None:
        """The policy of the app's calls to ``component``."""
        return self._outbound.get(component)

    def inbound(self, component: str) -> Policy | None:
        """The policy of deliveries from ``component`` to the app."""
        return self._inbound.get(component)

    @classmethod
    def of(cls, manifests: Sequence[ResiliencyManifest], app_id: str) -> Resiliency:
        outbound: dict[str, Policy] = {}
        inbound: dict[str, Policy] = {}
        for manifest in manifests:
            if manifest.scopes and app_id not in manifest.scopes:
                continue
            outbound.update(_component_policies(manifest, "outbound"))
            inbound.update(_component_policies(manifest, "inbound"))
        return cls(outbound, inbound)


def _component_policies(manifest: ResiliencyManifest, direction: str) -> dict[str, Policy]:
    """``spec.targets.components.<name>.<direction>`` of each component that has one."""
    spec = manifest.spec
    policies = _mapping(manifest, spec.get("policies"), "spec.policies")
    timeouts = _mapping(manifest, policies.get("timeouts"), "spec.policies.timeouts")
    retries = _mapping(manifest, policies.get("retries"), "spec.policies.retries")
    breakers = _mapping(manifest, policies.get("circuitBreakers"), "spec.policies.circuitBreakers")
    targets = _mapping(manifest, spec.get("targets"), "spec.targets")
    components = _mapping(manifest, targets.get("components"), "spec.targets.components")
    found: dict[str, Policy] = {}
    for name, target in components.items():
        where = f"spec.targets.components.{name}.{direction}"
        raw = _mapping(manifest, target, f"spec.targets.components.{name}").get(direction)
        if raw is None:
            continue
        chosen = _mapping(manifest, raw, where)
        policy = Policy(str(name))
        if "timeout" in chosen:
            key = str(chosen["timeout"])
            value = _named(manifest, timeouts, key, f"{where}.timeout")
            policy.timeout = _seconds(manifest, value, f"spec.policies.timeouts.{key}")
        if "retry" in chosen:
            key = str(chosen["retry"])
            policy.retry = _retry(manifest, key, _named(manifest, retries, key, f"{where}.retry"))
        if "circuitBreaker" in chosen:
            key = str(chosen["circuitBreaker"])
            value = _named(manifest, breakers, key, f"{where}.circuitBreaker")
            policy.breaker = _breaker(manifest, key, value)
        found[str(name)] = policy
    return found


def _retry(manifest: ResiliencyManifest, name: str, raw: Any) -> RetryPolicy:
    where = f"spec.policies.retries.{name}"
    spec = _mapping(manifest, raw, where)
    kind = str(spec.get("policy", "constant")).lower()
    if kind not in ("constant", "exponential"):
        raise _error(manifest, f"{where}.policy", f"constant or exponential, got {kind!r}")
    values: dict[str, Any] = {}
    for key, attr in (
        ("duration", "duration"),
        ("initialInterval", "initial_interval"),
        ("maxInterval", "max_interval"),
    ):
        if key in spec:
            values[attr] = _seconds(manifest, spec[key], f"{where}.{key}")
    if "maxRetries" in spec:
        try:
            values["max_retries"] = int(spec["maxRetries"])
        except (TypeError, ValueError):
            raise _error(manifest, f"{where}.maxRetries", "a whole number (-1: no limit)") from None
    return RetryPolicy(name, exponential=kind == "exponential", **values)


def _breaker(manifest: ResiliencyManifest, name: str, raw: Any) -> CircuitBreaker:
    where = f"spec.policies.circuitBreakers.{name}"
    spec = _mapping(manifest, raw, where)
    expression = str(spec.get("trip", "consecutiveFailures > 5"))
    try:
        trip = compile_trip(expression)
    except ValueError as exc:
        raise _error(manifest, f"{where}.trip", f"an expression: {exc}") from None
    return CircuitBreaker(
        name,
        trip,
        max_requests=int(spec.get("maxRequests", 1)),
        interval=_seconds(manifest, spec.get("interval", "0s"), f"{where}.interval"),
        timeout=_seconds(manifest, spec.get("timeout", "60s"), f"{where}.timeout"),
    )


TRIP_VARIABLES = ("requests", "totalSuccesses", "totalFailures", "consecutiveFailures")
_TRIP_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z]+)|(>=|<=|==|!=|>|<|&&|\|\||\(|\)))")
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def compile_trip(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """A circuit breaker's ``trip``: comparisons of the counters (:data:`TRIP_VARIABLES`)
    with whole numbers, joined by ``&&`` and ``||``, with parentheses, as Dapr's docs write
    them (``consecutiveFailures > 5``). Parsed here, never evaluated as code."""
    tokens: list[str] = []
    position, text = 0, expression.rstrip()
    while position < len(text):
        found = _TRIP_TOKEN.match(text, position)
        if found is None:
            raise ValueError(f"unexpected {text[position:]!r} in {expression!r}")
        tokens.append(found.group(found.lastindex or 0))
        position = found.end()
    where = [0]

    def take() -> str:
        if where[0] >= len(tokens):
            raise ValueError(f"{expression!r} ends too early")
        where[0] += 1
        return tokens[where[0] - 1]

    def operand() -> Callable[[Mapping[str, Any]], bool]:
        token = take()
        if token == "(":
            inner = either()
            if take() != ")":
                raise ValueError(f"a ')' is missing in {expression!r}")
            return inner
        if token not in TRIP_VARIABLES:
            raise ValueError(f"unknown counter {token!r} (known: {', '.join(TRIP_VARIABLES)})")
        operator, number = take(), take()
        if operator not in _COMPARE or not number.isdigit():
            raise ValueError(f"expected a comparison with a number after {token!r}")
        compare, limit = _COMPARE[operator], int(number)
        return lambda counts: compare(int(counts.get(token, 0)), limit)

    def chain(
        part: Callable[[], Callable[[Mapping[str, Any]], bool]],
        operator: str,
        how: Callable[[Iterator[bool]], bool],
    ) -> Callable[[Mapping[str, Any]], bool]:
        left = part()
        while where[0] < len(tokens) and tokens[where[0]] == operator:
            take()
            left = _joined(left, part(), how)
        return left

    def both() -> Callable[[Mapping[str, Any]], bool]:
        return chain(operand, "&&", all)

    def either() -> Callable[[Mapping[str, Any]], bool]:
        return chain(both, "||", any)

    test = either()
    if where[0] != len(tokens):
        raise ValueError(f"unexpected {tokens[where[0]]!r} in {expression!r}")
    return test


def _joined(
    left: Callable[[Mapping[str, Any]], bool],
    right: Callable[[Mapping[str, Any]], bool],
    how: Callable[[Iterator[bool]], bool],
) -> Callable[[Mapping[str, Any]], bool]:
    return lambda counts: how(test(counts) for test in (left, right))


def _named(manifest: ResiliencyManifest, table: Mapping[str, Any], key: Any, where: str) -> Any:
    if str(key) not in table:
        known = ", ".join(map(str, table)) or "none"
        raise _error(manifest, where, f"the name of a policy (known: {known}), got {key!r}")
    return table[str(key)]


def _seconds(manifest: ResiliencyManifest, value: Any, where: str) -> float:
    try:
        duration = value if isinstance(value, timedelta) else parse_duration(str(value))
    except ValueError:
        raise _error(manifest, where, f"a duration such as 5s or 100ms, got {value!r}") from None
    return duration.total_seconds()


def _mapping(manifest: ResiliencyManifest, value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _error(manifest, where, f"a mapping, got {type(value).__name__}")
    return value


def _error(manifest: ResiliencyManifest, where: str, expected: str) -> ManifestError:
    return ManifestError(
        f"{where}: expected {expected}",
        file=f"{manifest.file}:{manifest.line}" if manifest.file else None,
        component=f"Resiliency {manifest.name!r}",
    )
