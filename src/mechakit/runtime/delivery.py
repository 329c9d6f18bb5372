"""Delivery to the app: pub/sub messages to its subscriptions, input-binding events to its routes.

``mechakit run --app-port`` starts a :class:`Delivery` once the app answers on its port. It
gathers the subscriptions the app asks for (HTTP ``GET /dapr/subscribe``, gRPC
``ListTopicSubscriptions``) and the declarative ``kind: Subscription`` resources scoped to the
app id, subscribes each on its pub/sub component, and hands every message to the app as a
CloudEvent 1.0: HTTP ``POST <route>`` with ``application/cloudevents+json``, or gRPC
``OnTopicEvent``. The route is the first v2alpha1 rule whose ``match`` holds for the event
(see :class:`RouteRule` for the expression subset), else the default route.

The app's answer decides, as in Dapr: SUCCESS acks; DROP (HTTP 404 too) raises
:class:`~mechakit.core.pubsub.DropMessage`; RETRY, any other HTTP status and every failure to
reach the app raise :class:`AppRetryError`, so the pub/sub component redelivers with its own
backoff and, once its deliveries are used up, moves the message to the subscription's
``deadLetterTopic``. Nothing is acked before SUCCESS or DROP. Expired events (CloudEvent
``expiration``) are dropped before delivery.

Input bindings: each input binding the app listens to (HTTP: ``OPTIONS /<name>`` is not 404;
gRPC: ``ListInputBindings``) delivers each event as ``POST /<name>`` (or the binding's
``route`` metadata) with the data as body and the metadata as headers, or as gRPC
``OnBindingEvent``; a failed delivery raises into the binding.

Configuration updates (subscriptions made through the HTTP API) go out as Dapr sends them:
``POST /configuration/<store>/<key>`` once per changed key, each carrying the whole update
``{"id", "items": {key: {value, version, metadata}}}`` (gRPC: ``OnInvoke`` with that method).
A failed call is logged, not retried, as in Dapr.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import math
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import httpx

from mechakit.core import cloudevents
from mechakit.core.bindings import BindingEvent, InputBinding
from mechakit.core.component import Subscription
from mechakit.core.configuration import ConfigurationUpdate
from mechakit.core.errors import ComponentError, ConnectionFailedError, MechakitError
from mechakit.core.metadata import parse_bool
from mechakit.core.pubsub import DropMessage, Handler, Message, PubSub, SubscribeRequest

from .manifest import MetadataItem, SubscriptionManifest

if TYPE_CHECKING:
    from .local import Runtime

log = logging.getLogger("mechakit.delivery")

DEFAULT_READY_TIMEOUT = 60.0
"""How long ``start`` waits for the app to listen on its port."""
DEFAULT_CALL_TIMEOUT = 60.0
"""How long one delivery may take before it counts as failed (and is retried)."""
STOP_TIMEOUT = 5.0
"""How long ``stop`` waits for deliveries in flight, per subscription."""
_WAIT_LOG_EVERY = 5.0


class AppStatus(enum.Enum):
    """The app's answer to one pub/sub event."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


@dataclass(frozen=True)
class AppAnswer:
    status: AppStatus
    detail: str
    """How the app answered, for logs: ``HTTP 500``, ``connection refused`` ..."""


class AppRetryError(ConnectionFailedError):
    """The app asked for a redelivery (RETRY), or could not be reached or failed."""


# --- routing expressions -------------------------------------------------------------------


class RouteSyntaxError(ValueError):
    """A ``match`` expression outside the supported subset."""


class _EvalError(Exception):
    """An expression could not be evaluated for this event (missing field, type mismatch)."""


Evaluator = Callable[[Mapping[str, Any]], Any]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>(?:\d+\.\d+|\d+)(?:[eE][+-]?\d+)?)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<op>&&|\|\||==|!=|<=|>=|[<>!().\[\],-])
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
_KEYWORDS: dict[str, Any] = {"true": True, "false": False, "null": None}
_STRING_METHODS = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


@dataclass(frozen=True)
class RouteRule:
    """One v2alpha1 rule: deliver to ``path`` when ``match`` holds for the CloudEvent.

    ``match`` is the subset of CEL Dapr's docs use: the variable ``event`` (the CloudEvent,
    ``event.type``, ``event.data.price``, ``event.data["k"]``), string, number, boolean and
    null literals, ``== != < <= > >=``, ``&& || !``, parentheses, ``in [..]``, ``has(..)``,
    ``size(..)`` and the string methods ``startsWith``, ``endsWith``, ``contains``. It is
    parsed here, never passed to ``eval``. A rule whose fields are missing from an event, or
    whose comparison mixes types, does not match that event.
    """

    match: str
    path: str
    test: Evaluator = field(compare=False, repr=False)

    @classmethod
    def parse(cls, match: str, path: str) -> RouteRule:
        return cls(match=match, path=path, test=compile_match(match))

    def matches(self, event: Mapping[str, Any]) -> bool:
        try:
            return self.test({"event": event}) is True
        except _EvalError as exc:
            log.debug("rule %r does not apply to event %s: %s", self.match, event.get("id"), exc)
            return False


def compile_match(expression: str) -> Evaluator:
    """``expression`` as a function of the variables (``{"event": {...}}``)."""
    return _Parser(expression).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any, int]] = []
        position = 0
        stripped = text.rstrip()
        while position < len(stripped):
            found = _TOKEN.match(stripped, position)
            if found is None or found.end() == position:
                raise self.error("unexpected character", position)
            kind = found.lastgroup or ""
            raw = found.group(kind)
            start = found.start(kind)
            value: Any = raw
            if kind == "number":
                value = float(raw) if any(c in raw for c in ".eE") else int(raw)
            elif kind == "string":
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw[1:-1])
            self.tokens.append((kind, value, start))
            position = found.end()
        self.index = 0

    def error(self, problem: str, position: int | None = None) -> RouteSyntaxError:
        if position is None:
            position = (
                self.tokens[self.index][2] if self.index < len(self.tokens) else len(self.text)
            )
        return RouteSyntaxError(f"match {self.text!r}: {problem} at column {position + 1}")

    def peek(self, value: str | None = None) -> bool:
        if self.index >= len(self.tokens):
            return False
        kind, token, _ = self.tokens[self.index]
        return value is None or (kind in ("op", "name") and token == value)

    def take(self, value: str) -> bool:
        if self.peek(value):
            self.index += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.take(value):
            raise self.error(f"expected {value!r}")

    def parse(self) -> Evaluator:
        if not self.tokens:
            raise RouteSyntaxError("match: the expression is empty")
        evaluator = self.logical("||")
        if self.index < len(self.tokens):
            raise self.error(f"unexpected {self.tokens[self.index][1]!r}")
        return evaluator

    def logical(self, operator: str) -> Evaluator:
        left = self.logical("&&") if operator == "||" else self.relation()
        while self.take(operator):
            right = self.logical("&&") if operator == "||" else self.relation()
            left = _logical(operator, left, right)
        return left

    def relation(self) -> Evaluator:
        left = self.unary()
        while True:
            for operator in ("==", "!=", "<=", ">=", "<", ">", "in"):
                if self.take(operator):
                    left = _compare(operator, left, self.unary())
                    break
            else:
                return left

    def unary(self) -> Evaluator:
        if self.take("!"):
            operand = self.unary()
            return lambda env: not _boolean(operand(env))
        if self.take("-"):
            operand = self.unary()
            return lambda env: -_number(operand(env))
        return self.member(self.primary())

    def member(self, target: Evaluator) -> Evaluator:
        while True:
            if self.take("."):
                name = self.name()
                if self.take("("):
                    target = self.method(target, name, self.arguments())
                else:
                    target = _select(target, name)
            elif self.take("["):
                key = self.logical("||")
                self.expect("]")
                target = _index(target, key)
            else:
                return target

    def primary(self) -> Evaluator:
        if self.index >= len(self.tokens):
            raise self.error("the expression ends too early")
        kind, value, position = self.tokens[self.index]
        if kind in ("number", "string"):
            self.index += 1
            return lambda env: value
        if self.take("("):
            inner = self.logical("||")
            self.expect(")")
            return inner
        if self.take("["):
            items = self.arguments(closing="]")
            return lambda env: [item(env) for item in items]
        if kind != "name":
            raise self.error(f"unexpected {value!r}")
        self.index += 1
        if value in _KEYWORDS:
            constant = _KEYWORDS[value]
            return lambda env: constant
        if self.take("("):
            return self.function(value, position)
        if value != "event":
            raise self.error(f"unknown name {value!r} (the event is 'event')", position)
        return lambda env: env[value]

    def name(self) -> str:
        if self.index < len(self.tokens) and self.tokens[self.index][0] == "name":
            self.index += 1
            return str(self.tokens[self.index - 1][1])
        raise self.error("expected a field name")

    def arguments(self, closing: str = ")") -> list[Evaluator]:
        items: list[Evaluator] = []
        if self.take(closing):
            return items
        while True:
            items.append(self.logical("||"))
            if self.take(closing):
                return items
            self.expect(",")

    def function(self, name: str, position: int) -> Evaluator:
        arguments = self.arguments()
        if name == "size" and len(arguments) == 1:
            return _size(arguments[0])
        if name == "has" and len(arguments) == 1:
            probe = arguments[0]

            def has(env: Mapping[str, Any]) -> bool:
                try:
                    probe(env)
                except _EvalError:
                    return False
                return True

            return has
        raise self.error(f"unsupported function {name}() (supported: has, size)", position)

    def method(self, target: Evaluator, name: str, arguments: list[Evaluator]) -> Evaluator:
        if name == "size" and not arguments:
            return _size(target)
        method = _STRING_METHODS.get(name)
        if method is None or len(arguments) != 1:
            supported = ", ".join(_STRING_METHODS)
            raise self.error(f"unsupported method {name}() (supported: {supported}, size)")
        argument = arguments[0]

        def call(env: Mapping[str, Any]) -> bool:
            subject, other = target(env), argument(env)
            if not isinstance(subject, str) or not isinstance(other, str):
                raise _EvalError(f"{name}() needs strings")
            return bool(method(subject, other))

        return call


def _logical(operator: str, left: Evaluator, right: Evaluator) -> Evaluator:
    """CEL's commutative ``&&``/``||``: a decisive side wins even when the other fails."""
    decisive = operator == "||"

    def run(env: Mapping[str, Any]) -> bool:
        failure: _EvalError | None = None
        for side in (left, right):
            try:
                if _boolean(side(env)) is decisive:
                    return decisive
            except _EvalError as exc:
                failure = exc
        if failure is not None:
            raise failure
        return not decisive

    return run


def _compare(operator: str, left: Evaluator, right: Evaluator) -> Evaluator:
    def run(env: Mapping[str, Any]) -> bool:
        a, b = left(env), right(env)
        if operator == "==":
            return _equal(a, b)
        if operator == "!=":
            return not _equal(a, b)
        if operator == "in":
            if isinstance(b, list):
                return any(_equal(a, item) for item in b)
            if isinstance(b, dict):
                return a in b
            raise _EvalError("'in' needs a list or a map")
        if not _comparable(a, b):
            raise _EvalError(f"cannot compare {type(a).__name__} with {type(b).__name__}")
        if operator == "<":
            return bool(a < b)
        if operator == "<=":
            return bool(a <= b)
        if operator == ">":
            return bool(a > b)
        return bool(a >= b)

    return run


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: object, b: object) -> bool:
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, bool) != isinstance(b, bool) or _is_number(a) != _is_number(b):
        return False
    return type(a) is type(b) and a == b


def _comparable(a: object, b: object) -> bool:
    if _is_number(a) and _is_number(b):
        return not any(isinstance(v, float) and math.isnan(v) for v in (a, b))
    return type(a) is type(b) and isinstance(a, str | bool)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _EvalError(f"expected a boolean, got {type(value).__name__}")
    return value


def _number(value: object) -> float | int:
    if not _is_number(value):
        raise _EvalError(f"expected a number, got {type(value).__name__}")
    assert isinstance(value, int | float)
    return value


def _select(target: Evaluator, name: str) -> Evaluator:
    def run(env: Mapping[str, Any]) -> Any:
        value = target(env)
        if not isinstance(value, Mapping) or name not in value:
            raise _EvalError(f"no field {name!r}")
        return value[name]

    return run


def _index(target: Evaluator, key: Evaluator) -> Evaluator:
    def run(env: Mapping[str, Any]) -> Any:
        value, item = target(env), key(env)
        if isinstance(value, Mapping) and isinstance(item, str) and item in value:
            return value[item]
        if (
            isinstance(value, list)
            and isinstance(item, int)
            and not isinstance(item, bool)
            and 0 <= item < len(value)
        ):
            return value[item]
        raise _EvalError(f"no element {item!r}")

    return run


def _size(target: Evaluator) -> Evaluator:
    def run(env: Mapping[str, Any]) -> int:
        value = target(env)
        if not isinstance(value, str | list | dict):
            raise _EvalError(f"size() of {type(value).__name__}")
        return len(value)

    return run


# --- subscriptions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AppSubscription:
    """A topic the app receives, from the app itself or a ``kind: Subscription``."""

    pubsub_name: str
    topic: str
    rules: tuple[RouteRule, ...] = ()
    default_route: str | None = None
    """None: events no rule matches are not delivered (and are acked)."""
    dead_letter_topic: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    origin: str = "programmatic"
    """Where it came from, for logs: ``programmatic`` or ``Subscription 'orders'``."""

    @property
    def type(self) -> str:
        """Dapr's subscription type in the metadata API: ``DECLARATIVE`` or ``PROGRAMMATIC``."""
        return "PROGRAMMATIC" if self.origin == "programmatic" else "DECLARATIVE"

    def route(self, event: Mapping[str, Any]) -> str | None:
        """The path for ``event``: the first matching rule's, else the default route."""
        for rule in self.rules:
            if rule.matches(event):
                return rule.path
        return self.default_route

    @property
    def raw_payload(self) -> bool:
        try:
            return parse_bool(self.metadata.get("rawPayload", "false"))
        except ValueError:
            return False

    def describe(self) -> str:
        routes = [f"{r.path} if {r.match}" for r in self.rules]
        if self.default_route is not None:
            routes.append(self.default_route or "(default)")
        dead = f", dead letters to {self.dead_letter_topic!r}" if self.dead_letter_topic else ""
        return (
            f"topic {self.topic!r} on {self.pubsub_name!r} ({self.origin}) -> "
            f"{', '.join(routes) or 'no route'}{dead}"
        )

    @classmethod
    def from_manifest(cls, manifest: SubscriptionManifest) -> AppSubscription:
        return cls(
            pubsub_name=manifest.pubsub_name,
            topic=manifest.topic,
            rules=tuple(RouteRule.parse(r.match, _path(r.path)) for r in manifest.rules),
            default_route=_path(manifest.default_route) if manifest.default_route else None,
            dead_letter_topic=manifest.dead_letter_topic,
            metadata=dict(manifest.metadata),
            origin=f"Subscription {manifest.name!r}",
        )

    @classmethod
    def from_json(cls, entry: object) -> AppSubscription:
        """One entry of the app's ``GET /dapr/subscribe`` answer; ``ValueError`` if malformed."""
        if not isinstance(entry, dict):
            raise ValueError(f"expected an object, got {type(entry).__name__}")
        pubsub, topic = entry.get("pubsubname"), entry.get("topic")
        if not isinstance(pubsub, str) or not pubsub or not isinstance(topic, str) or not topic:
            raise ValueError("pubsubname and topic must be non-empty strings")
        rules: list[RouteRule] = []
        default = entry.get("route")
        routes = entry.get("routes")
        if isinstance(routes, dict):
            for rule in routes.get("rules") or []:
                if not isinstance(rule, dict) or not isinstance(rule.get("path"), str):
                    raise ValueError(f"routes.rules: expected {{match, path}}, got {rule!r}")
                if rule.get("match"):
                    rules.append(RouteRule.parse(str(rule["match"]), _path(rule["path"])))
                elif default is None:
                    default = rule["path"]
            default = routes.get("default") or default
        if default is not None and not isinstance(default, str):
            raise ValueError(f"route must be a string, got {default!r}")
        if not default and not rules:
            raise ValueError("needs a route, or routes with rules or a default")
        metadata = entry.get("metadata") or {}
        dead_letter = entry.get("deadLetterTopic") or None
        return cls(
            pubsub_name=pubsub,
            topic=topic,
            rules=tuple(rules),
            default_route=_path(default) if default else None,
            dead_letter_topic=str(dead_letter) if dead_letter else None,
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, dict)
            else {},
        )


def _path(path: str) -> str:
    return path if path.startswith("/") else f"/{path}"


# --- app channels ----------------------------------------------------------------------------


class AppChannel(ABC):
    """How the runtime reaches the app: its port and protocol."""

    protocol: ClassVar[str]

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        self.port = port
        self.host = host
        self.timeout = timeout

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait_ready(self, limit: float) -> None:
        """Return once the app accepts connections; ``TimeoutError`` after ``limit`` seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_log = started + _WAIT_LOG_EVERY
        while True:
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                now = loop.time()
                if now - started >= limit:
                    raise TimeoutError(
                        f"the app did not listen on {self.address} within {limit:g}s"
                    ) from None
                if now >= next_log:
                    log.info(
                        "waiting for the app to listen on %s (%s), %.0fs so far",
                        self.address,
                        self.protocol,
                        now - started,
                    )
                    next_log = now + _WAIT_LOG_EVERY
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info(
                "app is listening on %s (%s) after %.1fs",
                self.address,
                self.protocol,
                loop.time() - started,
            )
            return

    @abstractmethod
    async def subscriptions(self) -> list[AppSubscription]:
        """The subscriptions the app asks for (none when it does not say)."""

    @abstractmethod
    async def listens_to_binding(self, name: str, route: str) -> bool:
        """Whether the app takes the events of input binding ``name``."""

    @abstractmethod
    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        """Deliver one CloudEvent; failures to reach the app are a RETRY answer."""

    @abstractmethod
    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        """Deliver one input-binding event; raises when the app did not take it."""

    @abstractmethod
    async def send_configuration(self, method: str, body: bytes) -> None:
        """Call the app's ``method`` (``/configuration/<store>/<key>``) with a JSON ``body``;
        raises when the app did not take it."""

    async def close(self) -> None:
        return None


class HttpAppChannel(AppChannel):
    """The app over HTTP: ``GET /dapr/subscribe``, ``POST <route>``, ``POST /<binding>``."""

    protocol = "http"

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        super().__init__(port, host=host, timeout=timeout)
        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"user-agent": "mechakit"},
            trust_env=False,
        )

    async def subscriptions(self) -> list[AppSubscription]:
        try:
            response = await self._client.get("/dapr/subscribe")
        except httpx.HTTPError as exc:
            log.warning(
                "GET /dapr/subscribe on the app failed: %s; no programmatic subscriptions", exc
            )
            return []
        if response.status_code == 404:
            log.info("the app has no GET /dapr/subscribe (404): no programmatic subscriptions")
            return []
        if not response.is_success:
            log.warning(
                "GET /dapr/subscribe on the app answered HTTP %d; no programmatic subscriptions",
                response.status_code,
            )
            return []
        try:
            entries = response.json() if response.content.strip() else []
        except ValueError:
            log.warning("GET /dapr/subscribe on the app did not answer JSON; ignored")
            return []
        if not isinstance(entries, list):
            log.warning(
                "GET /dapr/subscribe on the app answered %s, not a list; ignored",
                type(entries).__name__,
            )
            return []
        found: list[AppSubscription] = []
        for position, entry in enumerate(entries):
            try:
                found.append(AppSubscription.from_json(entry))
            except ValueError as exc:
                log.error("GET /dapr/subscribe entry %d ignored: %s", position, exc)
        return found

    async def listens_to_binding(self, name: str, route: str) -> bool:
        try:
            response = await self._client.options(route)
        except httpx.HTTPError as exc:
            log.warning(
                "OPTIONS %s on the app failed (%s); delivering binding %r anyway", route, exc, name
            )
            return True
        return response.status_code != 404

    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        where = f"POST {path}"
        try:
            response = await self._client.post(
                path,
                content=json.dumps(event, separators=(",", ":")).encode(),
                headers={"content-type": cloudevents.CONTENT_TYPE},
            )
        except httpx.TimeoutException:
            return AppAnswer(AppStatus.RETRY, f"{where}: no answer within {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return AppAnswer(AppStatus.RETRY, f"{where}: {type(exc).__name__}: {exc}")
        return http_answer(response.status_code, response.content, where)

    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        headers = {"content-type": "application/json"}
        for key, value in event.metadata.items():
            if _HEADER_NAME.fullmatch(key) and value.isascii() and "\n" not in value:
                headers[key] = value
        try:
            response = await self._client.post(route, content=event.data, headers=headers)
        except httpx.HTTPError as exc:
            raise AppRetryError(
                f"POST {route} on the app failed: {type(exc).__name__}: {exc}",
                component=f"binding {name!r}",
            ) from None
        if not response.is_success:
            raise ComponentError(
                f"POST {route} on the app answered HTTP {response.status_code}",
                component=f"binding {name!r}",
            )

    async def send_configuration(self, method: str, body: bytes) -> None:
        try:
            response = await self._client.post(
                method, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ConnectionFailedError(
                f"POST {method} on the app failed: {type(exc).__name__}: {exc}"
            ) from None
        if not response.is_success:
            raise ComponentError(f"POST {method} on the app answered HTTP {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def http_answer(status_code: int, body: bytes, where: str = "") -> AppAnswer:
    """Dapr's reading of an HTTP answer to an event.

    2xx: the body's ``status`` (case-insensitive; empty, missing or not JSON is SUCCESS,
    an unknown word RETRY); 404: DROP; anything else: RETRY.
    """
    prefix = f"{where}: " if where else ""
    if status_code == 404:
        return AppAnswer(AppStatus.DROP, f"{prefix}HTTP 404")
    if not 200 <= status_code < 300:
        return AppAnswer(AppStatus.RETRY, f"{prefix}HTTP {status_code}")
    try:
        answer = json.loads(body) if body.strip() else {}
    except ValueError:
        answer = {}
    status = answer.get("status") if isinstance(answer, dict) else None
    word = status.strip().upper() if isinstance(status, str) else ""
    if not word:
        return AppAnswer(AppStatus.SUCCESS, f"{prefix}HTTP {status_code}")
    try:
        return AppAnswer(AppStatus(word), f"{prefix}HTTP {status_code} {word}")
    except ValueError:
        return AppAnswer(
            AppStatus.RETRY, f"{prefix}HTTP {status_code} with unknown status {status!r}"
        )


class GrpcAppChannel(AppChannel):
    """The app over gRPC: Dapr's ``AppCallback`` service (the protos of the ``dapr`` package)."""

    protocol = "grpc"

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        super().__init__(port, host=host, timeout=timeout)
        import grpc
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc

        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = appcallback_pb2_grpc.AppCallbackStub
        self._stub = stub(self._channel)  # type: ignore[no-untyped-call]
        self._bindings: set[str] | None = None

    async def wait_ready(self, limit: float) -> None:
        await super().wait_ready(limit)
        await asyncio.wait_for(self._channel.channel_ready(), limit)

    async def subscriptions(self) -> list[AppSubscription]:
        from google.protobuf import empty_pb2  # type: ignore[import-untyped,unused-ignore]

        try:
            answer = await self._stub.ListTopicSubscriptions(
                empty_pb2.Empty(), timeout=self.timeout
            )
        except self._grpc.aio.AioRpcError as exc:
            if exc.code() == self._grpc.StatusCode.UNIMPLEMENTED:
                log.info("the app does not implement ListTopicSubscriptions: no subscriptions")
            else:
                log.warning("ListTopicSubscriptions on the app failed: %s", exc.details())
            return []
        found: list[AppSubscription] = []
        for entry in answer.subscriptions:
            try:
                rules = tuple(
                    RouteRule.parse(r.match, r.path) for r in entry.routes.rules if r.match
                )
            except RouteSyntaxError as exc:
                log.error("the app's subscription to topic %r is ignored: %s", entry.topic, exc)
                continue
            found.append(
                AppSubscription(
                    pubsub_name=entry.pubsub_name,
                    topic=entry.topic,
                    rules=rules,
                    default_route=entry.routes.default or (None if rules else ""),
                    dead_letter_topic=entry.dead_letter_topic or None,
                    metadata=dict(entry.metadata),
                )
            )
        return found

    async def listens_to_binding(self, name: str, route: str) -> bool:
        if self._bindings is None:
            from google.protobuf import empty_pb2  # type: ignore[import-untyped,unused-ignore]

            try:
                answer = await self._stub.ListInputBindings(empty_pb2.Empty(), timeout=self.timeout)
                self._bindings = set(answer.bindings)
            except self._grpc.aio.AioRpcError as exc:
                if exc.code() != self._grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("ListInputBindings on the app failed: %s", exc.details())
                self._bindings = set()
        return name in self._bindings

    async def send_event(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        from dapr.proto.runtime.v1 import appcallback_pb2
        from google.protobuf import struct_pb2  # type: ignore[import-untyped,unused-ignore]

        extensions = struct_pb2.Struct()
        extensions.update(
            {k: v for k, v in event.items() if k not in _CORE_ATTRIBUTES and _json_safe(v)}
        )
        request = appcallback_pb2.TopicEventRequest(
            id=str(event.get("id", "")),
            source=str(event.get("source", "")),
            type=str(event.get("type", "")),
            spec_version=str(event.get("specversion", "")),
            data_content_type=str(event.get("datacontenttype", "")),
            data=cloudevents.event_data(event),
            topic=subscription.topic,
            pubsub_name=subscription.pubsub_name,
            path=path,
            extensions=extensions,
        )
        where = f"OnTopicEvent {path or '(default)'}"
        try:
            answer = await self._stub.OnTopicEvent(request, timeout=self.timeout)
        except self._grpc.aio.AioRpcError as exc:
            detail = f"{where}: {exc.code().name} {exc.details() or ''}".rstrip()
            if exc.code() == self._grpc.StatusCode.UNIMPLEMENTED:
                return AppAnswer(AppStatus.DROP, detail)
            return AppAnswer(AppStatus.RETRY, detail)
        statuses = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
        if answer.status == statuses.SUCCESS:
            return AppAnswer(AppStatus.SUCCESS, f"{where}: SUCCESS")
        if answer.status == statuses.DROP:
            return AppAnswer(AppStatus.DROP, f"{where}: DROP")
        return AppAnswer(AppStatus.RETRY, f"{where}: {statuses.Name(answer.status)}")

    async def send_binding(self, name: str, route: str, event: BindingEvent) -> None:
        from dapr.proto.runtime.v1 import appcallback_pb2

        request = appcallback_pb2.BindingEventRequest(
            name=name, data=event.data, metadata=dict(event.metadata)
        )
        try:
            await self._stub.OnBindingEvent(request, timeout=self.timeout)
        except self._grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name} {exc.details() or ''}".rstrip()
            raise ComponentError(
                f"OnBindingEvent on the app failed: {detail}",
                component=f"binding {name!r}",
            ) from None

    async def send_configuration(self, method: str, body: bytes) -> None:
        from dapr.proto.common.v1 import common_pb2
        from google.protobuf import any_pb2  # type: ignore[import-untyped,unused-ignore]

        request = common_pb2.InvokeRequest(
            method=method,
            data=any_pb2.Any(value=body),
            content_type="application/json",
            http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.Verb.POST),
        )
        try:
            await self._stub.OnInvoke(request, timeout=self.timeout)
        except self._grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name} {exc.details() or ''}".rstrip()
            raise ComponentError(f"OnInvoke {method} on the app failed: {detail}") from None

    async def close(self) -> None:
        await self._channel.close()


_CORE_ATTRIBUTES = frozenset(
    {
        "id",
        "source",
        "type",
        "specversion",
        "datacontenttype",
        "data",
        "data_base64",
        "topic",
        "pubsubname",
    }
)


def _json_safe(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def app_channel(port: int, protocol: str, *, host: str = "127.0.0.1") -> AppChannel:
    """The channel for ``--app-protocol``: ``http`` or ``grpc``."""
    if protocol == "grpc":
        return GrpcAppChannel(port, host=host)
    if protocol == "http":
        return HttpAppChannel(port, host=host)
    raise ValueError(f"app protocol {protocol!r} is not supported (http, grpc)")


# --- delivery ----------------------------------------------------------------------------------


class Delivery:
    """Subscribes the app's topics and input bindings on a started runtime; ``stop`` undoes it."""

    def __init__(
        self,
        runtime: Runtime,
        channel: AppChannel,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self.runtime = runtime
        self.channel = channel
        self.ready_timeout = ready_timeout
        self.subscriptions: list[AppSubscription] = []
        """What is being delivered, declarative first."""
        self.bindings: dict[str, str] = {}
        """Input binding name -> the route its events are posted to."""
        self._running: list[Subscription] = []
        self._starting: asyncio.Task[None] | None = None
        self._stopped = False
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start_in_background(self) -> asyncio.Task[None]:
        """``start`` as a task, so the caller can run the app meanwhile; ``stop`` cancels it."""
        self._starting = asyncio.create_task(self._start_logged(), name="mechakit delivery")
        return self._starting

    async def _start_logged(self) -> None:
        try:
            await self.start()
        except TimeoutError as exc:
            log.error("%s: nothing is delivered to the app", exc)
        except Exception:
            log.exception("delivery to the app could not start")

    async def start(self) -> None:
        """Wait for the app, gather subscriptions and input bindings, and start delivering."""
        await self.channel.wait_ready(self.ready_timeout)
        host = self.runtime.host
        declarative: list[AppSubscription] = []
        for manifest in host.subscriptions:
            try:
                declarative.append(AppSubscription.from_manifest(manifest))
            except RouteSyntaxError as exc:
                log.error(
                    "Subscription %r (%s:%d) ignored: %s",
                    manifest.name,
                    manifest.file,
                    manifest.line,
                    exc,
                )
        programmatic = await self.channel.subscriptions()
        seen: dict[tuple[str, str], AppSubscription] = {}
        for subscription in [*declarative, *programmatic]:
            key = (subscription.pubsub_name, subscription.topic)
            if key in seen:
                log.warning(
                    "topic %r on %r is subscribed twice (%s and %s): the first is used",
                    subscription.topic,
                    subscription.pubsub_name,
                    seen[key].origin,
                    subscription.origin,
                )
                continue
            seen[key] = subscription
            if self._stopped:
                return
            await self._subscribe(subscription)
        for hosted in host.components.values():
            if isinstance(hosted.instance, InputBinding) and not self._stopped:
                await self._read_binding(hosted.name, hosted.instance, hosted.manifest.metadata)
        if not self.subscriptions and not self.bindings:
            log.info("the app subscribes to no topic and listens to no input binding")

    async def _subscribe(self, subscription: AppSubscription) -> None:
        try:
            hosted = self.runtime.host.get(subscription.pubsub_name, "pubsub")
        except MechakitError as exc:
            log.warning("%s: not delivered: %s", subscription.describe(), exc)
            return
        pubsub = hosted.instance
        if not isinstance(pubsub, PubSub):
            log.warning(
                "%s: not delivered: %s is not a pub/sub component",
                subscription.describe(),
                hosted.description,
            )
            return
        request = SubscribeRequest(
            topic=subscription.topic,
            metadata=dict(subscription.metadata),
            dead_letter_topic=subscription.dead_letter_topic,
        )
        try:
            running = await pubsub.subscribe(request, self._topic_handler(pubsub, subscription))
        except Exception as exc:
            log.error("%s: subscribe failed: %s", subscription.describe(), exc)
            return
        self._running.append(running)
        self.subscriptions.append(subscription)
        log.info("delivering %s", subscription.describe())

    def _topic_handler(self, pubsub: PubSub[Any], subscription: AppSubscription) -> Handler:
        channel = self.channel

        async def deliver(message: Message) -> None:
            event = app_event(message, subscription)
            event_id = event.get("id", message.id)
            if cloudevents.is_expired(event):
                raise DropMessage(f"event {event_id} expired at {event.get('expiration')}")
            path = subscription.route(event)
            if path is None:
                raise DropMessage(
                    f"event {event_id} matches no routing rule and there is no default route"
                )
            answer = await channel.send_event(event, path, subscription)
            log.debug("event %s on topic %r: %s", event_id, subscription.topic, answer.detail)
            if answer.status is AppStatus.DROP:
                raise DropMessage(f"the app answered DROP ({answer.detail})")
            if answer.status is AppStatus.RETRY:
                raise AppRetryError(
                    f"event {event_id} on topic {subscription.topic!r}: the app asked for a "
                    f"retry ({answer.detail})",
                    component=pubsub.label,
                    key=str(event_id),
                )

        return deliver

    async def _read_binding(
        self, name: str, binding: InputBinding[Any], metadata: Iterable[MetadataItem]
    ) -> None:
        settings = _plain_metadata(metadata)
        direction = settings.get("direction", "").lower()
        if direction and "input" not in {d.strip() for d in direction.split(",")}:
            return
        route = _path(settings.get("route") or name)
        if not await self.channel.listens_to_binding(name, route):
            log.info("input binding %r: the app does not listen on %s; not read", name, route)
            return
        channel = self.channel

        async def deliver(event: BindingEvent) -> None:
            await channel.send_binding(name, route, event)
            return None

        try:
            running = await binding.read(deliver)
        except Exception as exc:
            log.error("input binding %r: read failed: %s", name, exc)
            return
        self._running.append(running)
        self.bindings[name] = route
        where = f"POST {route}" if channel.protocol == "http" else "OnBindingEvent"
        log.info("delivering input binding %r to the app (%s)", name, where)

    async def send_configuration(self, store: str, update: ConfigurationUpdate) -> None:
        """Hand a configuration update to the app: one call per changed key, failures logged."""
        body = json.dumps(configuration_event(update), separators=(",", ":")).encode()
        self._sending += 1
        self._idle.clear()
        try:
            for key in update.items:
                method = f"/configuration/{quote(store, safe='')}/{quote(key, safe='/')}"
                if self._stopped:
                    log.warning("configuration update of %r not sent: delivery has stopped", key)
                    return
                try:
                    await self.channel.send_configuration(method, body)
                except MechakitError as exc:
                    log.error(
                        "configuration subscription %s: sending %r to the app failed: %s",
                        update.subscription_id,
                        key,
                        exc,
                    )
        finally:
            self._sending -= 1
            if not self._sending:
                self._idle.set()

    async def stop(self) -> None:
        """Stop delivering (deliveries in flight get ``STOP_TIMEOUT`` s each, configuration
        updates being sent ``STOP_TIMEOUT`` s), then close the channel."""
        self._stopped = True
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        while self._running:
            running = self._running.pop()
            try:
                await asyncio.wait_for(running.cancel(), STOP_TIMEOUT)
            except Exception as exc:
                log.warning("a delivery did not stop cleanly: %r", exc)
        self.subscriptions.clear()
        self.bindings.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_TIMEOUT)
        await self.channel.close()


def app_event(message: Message, subscription: AppSubscription) -> dict[str, Any]:
    """The CloudEvent the app receives for ``message``.

    A message that is not a CloudEvent (raw payload), or any message of a subscription with
    metadata ``rawPayload: true``, is wrapped as Dapr does: ``data_base64``,
    ``application/octet-stream``.
    """
    event = None if subscription.raw_payload else cloudevents.parse_event(message.data)
    if event is None:
        return {
            "id": message.id or str(uuid.uuid4()),
            "specversion": cloudevents.SPEC_VERSION,
            "datacontenttype": "application/octet-stream",
            "source": "",
            "type": cloudevents.EVENT_TYPE,
            "topic": subscription.topic,
            "pubsubname": subscription.pubsub_name,
            "data_base64": base64.b64encode(message.data).decode(),
        }
    event.setdefault("topic", subscription.topic)
    event.setdefault("pubsubname", subscription.pubsub_name)
    return event


def configuration_event(update: ConfigurationUpdate) -> dict[str, Any]:
    """The body Dapr posts to the app for a configuration update (a deleted key: empty value)."""
    return {
        "id": update.subscription_id,
        "items": {
            key: {"value": item.value, "version": item.version, "metadata": dict(item.metadata)}
            for key, item in update.items.items()
        },
    }


def _plain_metadata(items: Iterable[MetadataItem]) -> dict[str, str]:
    """Plain ``value`` metadata by lower-cased name (``route``, ``direction``)."""
    return {item.name.lower(): item.value for item in items if item.value is not None}


__all__ = [
    "AppAnswer",
    "AppChannel",
    "AppRetryError",
    "AppStatus",
    "AppSubscription",
    "Delivery",
    "GrpcAppChannel",
    "HttpAppChannel",
    "RouteRule",
    "RouteSyntaxError",
    "app_channel",
    "app_event",
    "compile_match",
    "configuration_event",
    "http_answer",
]
