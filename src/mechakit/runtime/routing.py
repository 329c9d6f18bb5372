"""The app's subscriptions and Dapr's routing rules for them.

An :class:`AppSubscription` is a topic the app receives, from the app itself or from a
``kind: Subscription``, with v2alpha1 ``routes.rules``: ``match`` expressions in a small,
safe subset of CEL (see :class:`RouteRule`), parsed once into Python closures; an expression
that cannot be parsed is a :class:`RouteSyntaxError` naming where.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mechakit.core.metadata import parse_bool

from .manifest import SubscriptionManifest

log = logging.getLogger("mechakit.delivery")


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


DEFAULT_BULK_MAX_MESSAGES = 100
DEFAULT_BULK_MAX_AWAIT_MS = 1000
"""daprd's defaults for a ``bulkSubscribe`` that leaves a limit unset (or 0)."""


@dataclass(frozen=True)
class BulkConfig:
    """A subscription's ``bulkSubscribe``: its events go to the app in batches of at most
    ``max_messages`` entries, a batch waiting at most ``max_await_ms`` for its first entry's
    company."""

    max_messages: int = DEFAULT_BULK_MAX_MESSAGES
    max_await_ms: int = DEFAULT_BULK_MAX_AWAIT_MS

    @classmethod
    def of(cls, enabled: object, max_messages: object, max_await_ms: object) -> BulkConfig | None:
        """The config a subscription's fields ask for (None: not enabled); an unset or
        non-positive limit is daprd's default, a value that is not a whole number is a
        ``ValueError``."""
        if enabled is not True:
            if enabled not in (None, False):
                raise ValueError(f"bulkSubscribe.enabled must be a boolean, got {enabled!r}")
            return None
        return cls(
            _positive("maxMessagesCount", max_messages, DEFAULT_BULK_MAX_MESSAGES),
            _positive("maxAwaitDurationMs", max_await_ms, DEFAULT_BULK_MAX_AWAIT_MS),
        )


def _positive(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"bulkSubscribe.{name} must be an integer, got {value!r}")
    return value if value > 0 else default


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
    """Where it came from, for logs: ``programmatic``, ``streaming`` (a gRPC
    ``SubscribeTopicEventsAlpha1`` stream) or ``Subscription 'orders'``."""
    bulk: BulkConfig | None = None
    """``bulkSubscribe`` enabled: events go to the app in batches."""

    @property
    def type(self) -> str:
        """Dapr's subscription type in the metadata API: ``DECLARATIVE``, ``PROGRAMMATIC``
        or ``STREAMING``."""
        if self.origin in ("programmatic", "streaming"):
            return self.origin.upper()
        return "DECLARATIVE"

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
        bulk = self.bulk
        batches = (
            f", in batches of up to {bulk.max_messages} within {bulk.max_await_ms} ms"
            if bulk is not None
            else ""
        )
        return (
            f"topic {self.topic!r} on {self.pubsub_name!r} ({self.origin}) -> "
            f"{', '.join(routes) or 'no route'}{dead}{batches}"
        )

    @classmethod
    def from_manifest(cls, manifest: SubscriptionManifest) -> AppSubscription:
        return cls(
            pubsub_name=manifest.pubsub_name,
            topic=manifest.topic,
            rules=tuple(RouteRule.parse(r.match, route_path(r.path)) for r in manifest.rules),
            default_route=route_path(manifest.default_route) if manifest.default_route else None,
            dead_letter_topic=manifest.dead_letter_topic,
            metadata=dict(manifest.metadata),
            origin=f"Subscription {manifest.name!r}",
            bulk=BulkConfig.of(bulk.enabled, bulk.max_messages_count, bulk.max_await_duration_ms)
            if (bulk := manifest.bulk_subscribe) is not None
            else None,
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
                    rules.append(RouteRule.parse(str(rule["match"]), route_path(rule["path"])))
                elif default is None:
                    default = rule["path"]
            default = routes.get("default") or default
        if default is not None and not isinstance(default, str):
            raise ValueError(f"route must be a string, got {default!r}")
        if not default and not rules:
            raise ValueError("needs a route, or routes with rules or a default")
        metadata = entry.get("metadata") or {}
        dead_letter = entry.get("deadLetterTopic") or None
        bulk = entry.get("bulkSubscribe")
        if bulk is not None and not isinstance(bulk, dict):
            raise ValueError(f"bulkSubscribe must be an object, got {bulk!r}")
        bulk = bulk or {}
        return cls(
            pubsub_name=pubsub,
            topic=topic,
            rules=tuple(rules),
            default_route=route_path(default) if default else None,
            dead_letter_topic=str(dead_letter) if dead_letter else None,
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, dict)
            else {},
            bulk=BulkConfig.of(
                bulk.get("enabled"), bulk.get("maxMessagesCount"), bulk.get("maxAwaitDurationMs")
            ),
        )


def route_path(path: str) -> str:
    """A route as a path: ``orders`` → ``/orders``."""
    return path if path.startswith("/") else f"/{path}"


__all__ = [
    "AppSubscription",
    "BulkConfig",
    "RouteRule",
    "RouteSyntaxError",
    "compile_match",
    "route_path",
]
