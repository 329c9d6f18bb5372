"""Access control of service invocation: the Configuration's ``spec.accessControl``, enforced
on the callee's sidecar before its app is called, with daprd's rules (``pkg/acl``).

There is no mTLS here, so no SPIFFE certificate: the caller is who the calling sidecar says
it is in the internal call's frame (its app id, its ``NAMESPACE`` and the ``trustDomain`` of
its own Configuration, ``public`` by default). A policy therefore keeps out other apps'
well-behaved sidecars, not someone who can reach the internal gRPC port. A call that names
no caller gets the global default action, as daprd treats a caller it cannot identify.

daprd's behaviour kept where its docs say otherwise: without ``defaultAction`` the global
default is deny unless ``policies`` is an explicit empty list; an operation without
``action`` denies; a policy needs ``namespace`` and ``trustDomain``; ``*`` in an operation
name is a whole last segment (``/op/*`` also matches ``/op``), a glob inside one (``/b*``), and
``**`` any rest of the path; HTTP apps match names case-insensitively, gRPC apps exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mechakit.core.errors import ManifestError
from mechakit.core.nameresolution import DEFAULT_NAMESPACE
from mechakit.runtime.manifest import ConfigurationManifest
from mechakit.runtime.manifest_yaml import FieldPath, format_path, kind_of

from .errors import DaprError, ErrorKind

DEFAULT_TRUST_DOMAIN = "public"
HTTP_VERBS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
"""The verbs of Dapr's ``HTTPExtension``; ``*`` stands for all of them."""
NO_VERB = "NONE"
"""The verb daprd reports for a call to a gRPC app (verbs do not apply there)."""
_FORBIDDEN = re.compile(r"[#?\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Caller:
    """The calling app as its sidecar names it."""

    app_id: str
    namespace: str = DEFAULT_NAMESPACE
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/{self.app_id}"


def caller_of(header: Mapping[str, Any]) -> Caller | None:
    """The caller named by an internal call's frame header; None when it names none."""
    app_id = header.get("caller")
    if not isinstance(app_id, str) or not app_id:
        return None
    namespace = header.get("caller_namespace") or DEFAULT_NAMESPACE
    trust_domain = header.get("caller_trust_domain") or DEFAULT_TRUST_DOMAIN
    return Caller(app_id, str(namespace), str(trust_domain))


@dataclass(frozen=True)
class OperationRule:
    """One ``operations[]`` entry: its action per verb (HTTP apps) and as a whole (gRPC)."""

    allows: bool
    verbs: Mapping[str, bool] = field(default_factory=dict)


@dataclass
class _Node:
    segment: str
    rule: OperationRule | None = None
    children: list[_Node] = field(default_factory=list)

    def take(self, segment: str, last: bool) -> _Node | None:
        """The first child (in the order written) that takes ``segment``: the same segment,
        ``/**``, ``/*`` when it is the last one, or a glob such as ``/b*``."""
        for child in self.children:
            if child.segment in (segment, "/**") or (child.segment == "/*" and last):
                return child
            if child.segment != "/*" and "*" in child.segment and _glob(child.segment, segment):
                return child
        return None


def _glob(pattern: str, segment: str) -> bool:
    parts = (re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(".*".join(parts), segment, re.DOTALL) is not None


class OperationTable:
    """Operation names as daprd's trie keeps them: one node per ``/segment``, the first
    rule given for a name wins, and a lookup goes down without backtracking."""

    def __init__(self) -> None:
        self._root = _Node("/")

    def add(self, name: str, rule: OperationRule) -> None:
        node = self._root
        for part in name.split("/")[1:]:
            segment = "/" + part
            found = next((c for c in node.children if c.segment == segment), None)
            if found is None:
                found = _Node(segment)
                node.children.append(found)
            node = found
        if node.rule is None:
            node.rule = rule

    def find(self, operation: str) -> OperationRule | None:
        """The rule for ``operation`` (``/a/b``), or None when no name matches it."""
        node = self._root
        parts = operation.split("/")[1:]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            found = node.take("/" + part, last)
            if found is None:
                return None
            node = found
            if node.rule is not None and (last or node.segment != "/*"):
                return node.rule
            if last and node.rule is None:
                tail = node.take("/*", last=True)
                return tail.rule if tail is not None else None
        return None


@dataclass(frozen=True)
class AppPolicy:
    """``policies[]``: what one calling app (by id, namespace and trust domain) may do."""

    app_id: str
    namespace: str
    trust_domain: str
    default_action: bool | None
    operations: OperationTable


@dataclass(frozen=True)
class AccessControl:
    """The parsed ``spec.accessControl`` of the callee's Configuration."""

    default_allows: bool
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """This app's own trust domain, sent as the caller's when it calls others."""
    policies: Mapping[tuple[str, str], AppPolicy] = field(default_factory=dict)
    http_app: bool = True

    def allows(self, caller: Caller | None, verb: str, method: str) -> bool:
        """Whether ``caller`` may call ``method`` with ``verb`` (``NONE``: no verb)."""
        if caller is None:
            return self.default_allows
        policy = self.policies.get((caller.app_id, caller.namespace))
        if policy is None or policy.trust_domain != caller.trust_domain:
            return self.default_allows
        allowed = self.default_allows if policy.default_action is None else policy.default_action
        operation = method if method.startswith("/") else "/" + method
        rule = policy.operations.find(operation.lower() if self.http_app else operation)
        if rule is None:
            return allowed
        if not self.http_app:
            return rule.allows
        if verb in ("", NO_VERB):
            return policy.default_action is True
        return rule.verbs.get(verb.upper(), rule.verbs.get("*", allowed))

    def refusal(self, caller: Caller | None, verb: str, method: str) -> str | None:
        """daprd's message when the call is denied, None when it is allowed."""
        verb = verb.upper() if self.http_app and verb else NO_VERB
        if self.allows(caller, verb, method):
            return None
        who = caller.spiffe_id if caller is not None else ""
        return (
            f"access control policy has denied access to id: {who} operation: {method} verb: {verb}"
        )


def own_trust_domain(control: AccessControl | None) -> str:
    return control.trust_domain if control is not None else DEFAULT_TRUST_DOMAIN


def denied_error(target: str, refusal: str) -> DaprError:
    """What the caller's sidecar answers for a refusal of the callee: 403 (HTTP) with
    ``ERR_DIRECT_INVOKE`` and daprd's message, PERMISSION_DENIED over gRPC."""
    return DaprError(
        ErrorKind.DENIED,
        "ERR_DIRECT_INVOKE",
        f"failed to invoke, id: {target}, err: rpc error: code = PermissionDenied desc = {refusal}",
    )


def normalize_method(method: str) -> str:
    """The method as daprd checks and calls it: ``.``, ``..`` and repeated slashes resolved
    (``admin/../public`` is ``public``); ``#``, ``?`` and control characters refused."""
    bad = _FORBIDDEN.search(method)
    if bad is not None:
        raise ValueError(f"method contains forbidden character {bad.group()!r}: {method!r}")
    kept: list[str] = []
    for part in method.split("/"):
        if part == "..":
            if kept:
                kept.pop()
        elif part not in ("", "."):
            kept.append(part)
    return ("/" if method.startswith("/") else "") + "/".join(kept)


# --- parsing ------------------------------------------------------------------------------


class _Reader:
    """Reads ``spec.accessControl`` of one Configuration; every complaint names it."""

    def __init__(self, configuration: ConfigurationManifest) -> None:
        self.configuration = configuration

    def error(self, path: FieldPath, expected: str) -> ManifestError:
        where = format_path(("spec", "accessControl", *path))
        config = self.configuration
        return ManifestError(
            f"{where}: {expected}",
            file=f"{config.file}:{config.line}" if config.file else None,
            component=f"Configuration {config.name!r}",
            field=where,
        )

    def text(self, data: Mapping[str, Any], path: FieldPath, *, example: str = "") -> str:
        value = data.get(str(path[-1]))
        if value is None:
            return ""
        if not isinstance(value, str):
            hint = f" (e.g. {example})" if example else ""
            raise self.error(path, f"expected a string{hint}, got {kind_of(value)} {value!r}")
        return value.strip()

    def required(self, data: Mapping[str, Any], path: FieldPath, why: str) -> str:
        value = self.text(data, path)
        if not value:
            raise self.error(path, f"required: {why}")
        return value

    def action(self, data: Mapping[str, Any], path: FieldPath) -> bool | None:
        value = self.text(data, path)
        if not value:
            return None
        if value.lower() not in ("allow", "deny"):
            raise self.error(path, f"expected allow or deny, got {value!r}")
        return value.lower() == "allow"

    def items(self, data: Mapping[str, Any], path: FieldPath) -> list[Any] | None:
        value = data.get(str(path[-1]))
        if value is not None and not isinstance(value, list):
            raise self.error(path, f"expected a list, got {kind_of(value)}")
        return value

    def mapping(self, value: Any, path: FieldPath) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {kind_of(value)} {value!r}")
        return value


def access_control_of(
    configuration: ConfigurationManifest | None, *, http_app: bool = True
) -> AccessControl | None:
    """The Configuration's access control, checked at start-up; None when it has none (every
    call allowed). ``http_app``: the app is called over HTTP (names match case-insensitively)."""
    if configuration is None or configuration.spec.get("accessControl") is None:
        return None
    read = _Reader(configuration)
    spec = read.mapping(configuration.spec["accessControl"], ())
    default = read.action(spec, ("defaultAction",))
    trust_domain = read.text(spec, ("trustDomain",), example=DEFAULT_TRUST_DOMAIN)
    raw_policies = read.items(spec, ("policies",))
    if default is None and not trust_domain and not raw_policies:
        return None
    policies: dict[tuple[str, str], AppPolicy] = {}
    for index, raw in enumerate(raw_policies or ()):
        policy = _policy(read, read.mapping(raw, ("policies", index)), index, http_app)
        key = (policy.app_id, policy.namespace)
        if key in policies:
            raise read.error(
                ("policies", index, "appId"),
                f"app {policy.app_id!r} in namespace {policy.namespace!r} already has a policy",
            )
        policies[key] = policy
    return AccessControl(
        default_allows=default if default is not None else raw_policies == [],
        trust_domain=trust_domain or DEFAULT_TRUST_DOMAIN,
        policies=policies,
        http_app=http_app,
    )


def _policy(read: _Reader, raw: Mapping[str, Any], index: int, http_app: bool) -> AppPolicy:
    path: FieldPath = ("policies", index)
    app_id = read.required(raw, (*path, "appId"), "the calling app's id")
    namespace = read.required(
        raw, (*path, "namespace"), f"the calling app's namespace (e.g. {DEFAULT_NAMESPACE})"
    )
    trust_domain = read.required(
        raw, (*path, "trustDomain"), f"the calling app's trust domain (e.g. {DEFAULT_TRUST_DOMAIN})"
    )
    operations = OperationTable()
    for position, entry in enumerate(read.items(raw, (*path, "operations")) or ()):
        where: FieldPath = (*path, "operations", position)
        entry = read.mapping(entry, where)
        name = read.required(entry, (*where, "name"), "the operation's path (e.g. /orders/*)")
        name = name if name.startswith("/") else "/" + name
        action = read.action(entry, (*where, "action")) is True
        verbs = {verb: action for verb in _verbs(read, entry, (*where, "httpVerb"))}
        operations.add(name.lower() if http_app else name, OperationRule(action, verbs))
    return AppPolicy(
        app_id, namespace, trust_domain, read.action(raw, (*path, "defaultAction")), operations
    )


def _verbs(read: _Reader, entry: Mapping[str, Any], path: FieldPath) -> list[str]:
    verbs = read.items(entry, path) or []
    for position, verb in enumerate(verbs):
        if verb != "*" and verb not in HTTP_VERBS:
            raise read.error(
                (*path, position), f"expected * or one of {', '.join(HTTP_VERBS)}, got {verb!r}"
            )
    return verbs


__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "AccessControl",
    "AppPolicy",
    "Caller",
    "OperationRule",
    "OperationTable",
    "access_control_of",
    "caller_of",
    "denied_error",
    "normalize_method",
    "own_trust_domain",
]
