"""``kind: Resiliency``: timeouts, retries and circuit breakers around component calls.

As daprd applies them: ``spec.policies`` names the policies, ``spec.targets.components``
gives a component its ``outbound`` ones (calls of the app to the component: state, publish,
bindings, secrets, locks, configuration) and its ``inbound`` ones (deliveries from the
component to the app: pub/sub messages, streamed events, bulk batches, input-binding
events; see :func:`run_under`). A retry repeats only a failure the component calls
retriable (a lost connection, a timeout, the app's RETRY) — never an ETag conflict or a bad
request.
``spec.targets.apps.<appId>`` gives service invocation calls to that app id their
policies (:mod:`mechakit.runtime.service.invocation`), with one circuit breaker per method
as daprd keys them (``appId:method``).
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
    http_status_codes: tuple[tuple[int, int], ...] | None = None
    """``matching.httpStatusCodes``: the ranges of an HTTP app's error statuses that are
    retried (None: every one, daprd's default)."""
    grpc_status_codes: tuple[tuple[int, int], ...] | None = None
    """``matching.gRPCStatusCodes``: the same for a gRPC app's error codes (0-16)."""

    def retries_status(self, status: int, grpc_code: int | None = None) -> bool:
        """Whether an invoked app's error is tried again: a gRPC app's by its code, an
        HTTP app's by its ``status``."""
        codes, value = (
            (self.http_status_codes, status)
            if grpc_code is None
            else (self.grpc_status_codes, grpc_code)
        )
        return codes is None or any(low <= value <= high for low, high in codes)

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

    def uncounted(self) -> None:
        """The call ended neither in success nor in a retriable failure (cancelled, refused
        by an unhealthy app, a bad request): a half-open breaker gets its trial slot back."""
        if self._state == "half-open" and self._half_open_calls > 0:
            self._half_open_calls -= 1

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
        """``call`` under the policy. A failure marked ``permanent`` counts for the breaker
        but is not tried again."""
        delays = self.retry.delays() if self.retry is not None and retry else iter(())
        while True:
            try:
                return await self._once(call)
            except Exception as exc:
                if (
                    not getattr(exc, "retriable", False)
                    or getattr(exc, "permanent", False)
                    or isinstance(exc, CircuitOpenError)
                ):
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
        except BaseException as exc:
            if self.breaker is not None and getattr(exc, "retriable", False):
                self.breaker.failure(self.component)
            elif self.breaker is not None:
                self.breaker.uncounted()
            raise
        if self.breaker is not None:
            self.breaker.success()
        return result


async def run_under(policy: Policy | None, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` under ``policy`` (timeout, retries of retriable failures, breaker) when
    there is one: how every delivery to the app applies its component's ``inbound`` policy
    (one event, a batch, a streamed event, an input-binding event)."""
    return await (call() if policy is None else policy.run(call))


APP_BREAKERS = 100
"""Circuit breakers kept per app id (one per method; the least recently used is dropped)."""


@dataclass
class AppPolicy:
    """``spec.targets.apps.<appId>``: the timeout and retry of every call to the app, and
    a circuit breaker per method made from ``breaker``."""

    app_id: str
    timeout: float | None = None
    retry: RetryPolicy | None = None
    breaker: CircuitBreaker | None = None
    _breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def policy(self, method: str) -> Policy:
        """The policy of a call of ``method``: the breaker of that method, kept across calls."""
        breaker: CircuitBreaker | None = None
        if self.breaker is not None:
            breaker = self._breakers.pop(method, None)
            if breaker is None:
                template = self.breaker
                breaker = CircuitBreaker(
                    template.name,
                    template.trip,
                    max_requests=template.max_requests,
                    interval=template.interval,
                    timeout=template.timeout,
                )
            self._breakers[method] = breaker
            if len(self._breakers) > APP_BREAKERS:
                del self._breakers[next(iter(self._breakers))]
        return Policy(self.app_id, self.timeout, self.retry, breaker)


class Resiliency:
    """The outbound and inbound policies of each component, and the policies of calls to
    each app id, named in the Resiliency resources in scope."""

    def __init__(
        self,
        outbound: Mapping[str, Policy] | None = None,
        inbound: Mapping[str, Policy] | None = None,
        apps: Mapping[str, AppPolicy] | None = None,
    ) -> None:
        self._outbound = dict(outbound or {})
        self._inbound = dict(inbound or {})
        self._apps = dict(apps or {})

    def outbound(self, component: str) -> Policy | None:
        """The policy of the app's calls to ``component``."""
        return self._outbound.get(component)

    def inbound(self, component: str) -> Policy | None:
        """The policy of deliveries from ``component`` to the app."""
        return self._inbound.get(component)

    def app(self, target: str, method: str) -> Policy | None:
        """The policy of an invocation of ``method`` on ``target`` (``appId`` or
        ``appId.namespace``, looked up as given, then as the plain app id)."""
        chosen = self._apps.get(target) or self._apps.get(target.partition(".")[0])
        return None if chosen is None else chosen.policy(method)

    @classmethod
    def of(cls, manifests: Sequence[ResiliencyManifest], app_id: str) -> Resiliency:
        outbound: dict[str, Policy] = {}
        inbound: dict[str, Policy] = {}
        apps: dict[str, AppPolicy] = {}
        for manifest in manifests:
            if manifest.scopes and app_id not in manifest.scopes:
                continue
            outbound.update(_component_policies(manifest, "outbound"))
            inbound.update(_component_policies(manifest, "inbound"))
            apps.update(_app_policies(manifest))
        return cls(outbound, inbound, apps)


_TARGET_FIELDS = ("timeout", "retry", "circuitBreaker")


def _component_policies(manifest: ResiliencyManifest, direction: str) -> dict[str, Policy]:
    """``spec.targets.components.<name>.<direction>`` of each component that has one."""
    targets = _mapping(manifest, manifest.spec.get("targets"), "spec.targets")
    components = _mapping(manifest, targets.get("components"), "spec.targets.components")
    found: dict[str, Policy] = {}
    for name, target in components.items():
        where = f"spec.targets.components.{name}.{direction}"
        raw = _mapping(manifest, target, f"spec.targets.components.{name}").get(direction)
        if raw is None:
            continue
        found[str(name)] = _policy(manifest, str(name), _mapping(manifest, raw, where), where)
    return found


def _app_policies(manifest: ResiliencyManifest) -> dict[str, AppPolicy]:
    """``spec.targets.apps.<appId>``: the policies of service invocation calls to that app."""
    targets = _mapping(manifest, manifest.spec.get("targets"), "spec.targets")
    apps = _mapping(manifest, targets.get("apps"), "spec.targets.apps")
    found: dict[str, AppPolicy] = {}
    for name, target in apps.items():
        where = f"spec.targets.apps.{name}"
        chosen = _policy(manifest, str(name), _mapping(manifest, target, where), where)
        found[str(name)] = AppPolicy(str(name), chosen.timeout, chosen.retry, chosen.breaker)
    return found


def _policy(
    manifest: ResiliencyManifest, name: str, chosen: Mapping[str, Any], where: str
) -> Policy:
    """The named policies a target chooses (``timeout``, ``retry``, ``circuitBreaker``),
    looked up in ``spec.policies``."""
    unknown = sorted(str(key) for key in chosen if key not in _TARGET_FIELDS)
    if unknown:
        raise _error(manifest, f"{where}.{unknown[0]}", "one of " + ", ".join(_TARGET_FIELDS))
    policies = _mapping(manifest, manifest.spec.get("policies"), "spec.policies")
    timeouts = _mapping(manifest, policies.get("timeouts"), "spec.policies.timeouts")
    retries = _mapping(manifest, policies.get("retries"), "spec.policies.retries")
    breakers = _mapping(manifest, policies.get("circuitBreakers"), "spec.policies.circuitBreakers")
    policy = Policy(name)
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
    return policy


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
    matching = _mapping(manifest, spec.get("matching"), f"{where}.matching")
    for key, attr, bounds in (
        ("httpStatusCodes", "http_status_codes", _HTTP_CODES),
        ("gRPCStatusCodes", "grpc_status_codes", _GRPC_CODES),
    ):
        if matching.get(key):
            values[attr] = _status_ranges(
                manifest, str(matching[key]), f"{where}.matching.{key}", bounds
            )
    return RetryPolicy(name, exponential=kind == "exponential", **values)


_HTTP_CODES = (100, 599, "HTTP statuses", "429,500-504")
_GRPC_CODES = (0, 16, "gRPC status codes", "1-4,8-11,13,14")


def _status_ranges(
    manifest: ResiliencyManifest, codes: str, where: str, bounds: tuple[int, int, str, str]
) -> tuple[tuple[int, int], ...]:
    """``"429,500-504"``: codes and ranges of statuses within ``bounds``, as daprd reads
    them."""
    lowest, highest, what, example = bounds
    ranges: list[tuple[int, int]] = []
    for part in filter(None, (piece.strip() for piece in codes.split(","))):
        low, dash, high = part.partition("-")
        try:
            span = (int(low), int(high) if dash else int(low))
        except ValueError:
            span = (-1, -1)
        if not lowest <= span[0] <= span[1] <= highest:
            expected = (
                f"codes or ranges of {what} ({lowest}-{highest}) such as {example}, got {part!r}"
            )
            raise _error(manifest, where, expected)
        ranges.append(span)
    return tuple(ranges)


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
