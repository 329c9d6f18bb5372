"""Access control of service invocation (``spec.accessControl``): daprd's matching rules on
the scenarios of Dapr's docs, then real ``mechakit run`` sidecars where the callee's
Configuration lets one caller in and keeps another out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mechakit.conformance.backends import free_port
from mechakit.core.errors import ManifestError
from mechakit.runtime.manifest import ConfigurationManifest
from mechakit.runtime.service.access_control import (
    AccessControl,
    Caller,
    access_control_of,
    normalize_method,
)

from .test_invocation import Cluster


def _control(text: str, *, http_app: bool = True) -> AccessControl | None:
    spec = yaml.safe_load(textwrap.dedent(text))
    return access_control_of(ConfigurationManifest("appconfig", spec=spec), http_app=http_app)


def _policy(text: str, *, http_app: bool = True) -> AccessControl:
    control = _control(text, http_app=http_app)
    assert control is not None
    return control


APP1 = Caller("app1")
APP2 = Caller("app2")

# The scenarios of Dapr's "Apply access control list configuration for service invocation".
SCENARIO_1 = """
    accessControl:
      defaultAction: deny
      trustDomain: "public"
      policies:
      - appId: app1
        defaultAction: allow
        trustDomain: 'public'
        namespace: "default"
"""
SCENARIO_2 = """
    accessControl:
      defaultAction: deny
      trustDomain: "public"
      policies:
      - appId: app1
        defaultAction: deny
        trustDomain: 'public'
        namespace: "default"
        operations:
        - name: /op1
          httpVerb: ['*']
          action: allow
"""
SCENARIO_3 = """
    accessControl:
      defaultAction: deny
      trustDomain: "public"
      policies:
      - appId: app1
        defaultAction: deny
        trustDomain: 'public'
        namespace: "default"
        operations:
        - name: /op1
          httpVerb: ['POST', 'PUT']
          action: allow
      - appId: app2
        defaultAction: deny
        trustDomain: 'myDomain'
        namespace: "ns1"
        operations:
        - name: /op2
          action: allow
"""
SCENARIO_4 = """
    accessControl:
      defaultAction: allow
      trustDomain: "public"
      policies:
      - appId: app1
        defaultAction: allow
        trustDomain: 'public'
        namespace: "default"
        operations:
        - name: /op1/*
          httpVerb: ['*']
          action: deny
"""
SCENARIO_5 = """
    accessControl:
      defaultAction: allow
      trustDomain: "public"
      policies:
      - appId: app1
        defaultAction: allow
        trustDomain: 'public'
        namespace: "ns1"
      - appId: app1
        defaultAction: deny
        trustDomain: 'public'
        namespace: "ns2"
"""
WILDCARDS = """
    accessControl:
      defaultAction: deny
      policies:
      - appId: app1
        defaultAction: deny
        trustDomain: public
        namespace: default
        operations:
        - {name: /op6, action: allow}
        - {name: /op7/a/b/*, action: allow}
        - {name: /op7/a/b/c/f, action: allow}
        - {name: /op7/a/b*, action: allow}
        - {name: /op7/c/**, action: allow}
        - {name: /op8/*/x, action: allow}
        - {name: /op9/**/x, action: allow}
        - {name: /noaction, httpVerb: ['*']}
"""

DOCS_CASES = [
    (SCENARIO_1, APP1, "POST", "anything", True),
    (SCENARIO_1, APP2, "POST", "anything", False),
    (SCENARIO_1, Caller("app1", namespace="other"), "POST", "anything", False),
    (SCENARIO_1, Caller("app1", trust_domain="other"), "POST", "anything", False),
    (SCENARIO_1, None, "POST", "anything", False),
    (SCENARIO_2, APP1, "GET", "op1", True),
    (SCENARIO_2, APP1, "DELETE", "/op1", True),
    (SCENARIO_2, APP1, "POST", "op2", False),
    (SCENARIO_2, APP1, "", "op1", False),  # no verb on an HTTP app: the app's default
    (SCENARIO_2, APP2, "POST", "op1", False),
    (SCENARIO_3, APP1, "POST", "op1", True),
    (SCENARIO_3, APP1, "PUT", "op1", True),
    (SCENARIO_3, APP1, "GET", "op1", False),
    (SCENARIO_3, Caller("app2", "ns1", "myDomain"), "POST", "op2", False),  # no httpVerb listed
    (SCENARIO_3, Caller("app2", "ns1", "public"), "POST", "op2", False),
    (SCENARIO_4, APP1, "GET", "op1/a", False),
    (SCENARIO_4, APP1, "POST", "op1", False),  # daprd: /op1/* covers /op1 itself
    (SCENARIO_4, APP1, "POST", "op1/a/b", True),  # * is one segment
    (SCENARIO_4, APP1, "POST", "op2", True),
    (SCENARIO_4, APP2, "POST", "op1/a", True),
    (SCENARIO_5, Caller("app1", namespace="ns1"), "GET", "x", True),
    (SCENARIO_5, Caller("app1", namespace="ns2"), "GET", "x", False),
    (SCENARIO_5, Caller("app1", namespace="ns3"), "GET", "x", True),
]


@pytest.mark.parametrize(("spec", "caller", "verb", "method", "allowed"), DOCS_CASES)
def test_the_scenarios_of_daprs_docs_on_an_http_app(
    spec: str, caller: Caller | None, verb: str, method: str, allowed: bool
) -> None:
    assert _policy(spec).allows(caller, verb, method) is allowed


GRPC_CASES = [
    ("op6", True),
    ("/op6", True),
    ("OP6", False),  # gRPC names match exactly
    ("op7/a/b/c", True),
    ("op7/a/b/c/d", False),
    ("op7/a/b/c/f", True),
    ("op7/a/bc", True),  # a glob inside a segment
    ("op7/c/d/e", True),  # ** takes the rest of the path
    ("op7/c", True),  # ... and its parent, as in daprd
    ("op8/y/x", False),  # daprd's * matches only as the last segment
    ("op9/a/x", True),
    ("op9/a/b/x", False),
    ("noaction", False),  # no action: deny, as daprd
    ("elsewhere", False),
]


@pytest.mark.parametrize(("method", "allowed"), GRPC_CASES)
def test_wildcards_on_a_grpc_app_match_as_daprd_matches(method: str, allowed: bool) -> None:
    control = _policy(WILDCARDS, http_app=False)
    assert control.allows(APP1, "NONE", method) is allowed


def test_a_grpc_app_takes_the_operations_action_whatever_the_verbs() -> None:
    control = _policy(SCENARIO_3, http_app=False)
    assert control.allows(Caller("app2", "ns1", "myDomain"), "NONE", "op2")
    assert not control.allows(Caller("app2", "ns1", "myDomain"), "NONE", "op3")


def test_http_names_and_verbs_match_whatever_their_case() -> None:
    control = _policy(
        """
        accessControl:
          defaultAction: deny
          policies:
          - appId: app1
            trustDomain: public
            namespace: default
            operations:
            - {name: /Orders/*, httpVerb: [GET], action: allow}
        """
    )
    assert control.allows(APP1, "GET", "orders/7")
    assert control.allows(APP1, "get", "ORDERS/7")
    assert not control.allows(APP1, "POST", "orders/7")  # no verb matched: the global default


@pytest.mark.parametrize(
    ("text", "allows_others"),
    [
        ("accessControl: {trustDomain: mine}", False),  # daprd: no policies and no default → deny
        ("accessControl: {trustDomain: mine, policies: []}", True),
        ("accessControl: {policies: [{appId: a, namespace: n, trustDomain: t}]}", False),
        ("accessControl: {defaultAction: ALLOW}", True),
    ],
)
def test_the_global_default_action_when_none_is_given(text: str, allows_others: bool) -> None:
    assert _policy(text).allows(Caller("someone"), "GET", "x") is allows_others


def test_no_or_an_empty_access_control_allows_everything() -> None:
    assert _control("{}") is None
    assert _control("accessControl: {}") is None
    assert _control("accessControl: {policies: []}") is None
    assert _policy("accessControl: {trustDomain: mine}").trust_domain == "mine"


def test_a_denial_is_worded_as_daprd_words_it() -> None:
    control = _policy(SCENARIO_2)
    assert control.refusal(APP1, "POST", "op1") is None
    assert control.refusal(APP2, "POST", "orders/1") == (
        "access control policy has denied access to id: spiffe://public/ns/default/app2 "
        "operation: orders/1 verb: POST"
    )
    grpc_app = _policy(SCENARIO_2, http_app=False)
    assert (grpc_app.refusal(APP2, "POST", "op1") or "").endswith("operation: op1 verb: NONE")


@pytest.mark.parametrize(
    ("method", "normalized"),
    [
        ("orders/7", "orders/7"),
        ("/orders//7/", "/orders/7"),
        ("admin/../public", "public"),
        ("admin/../../public", "public"),
        ("public/./x", "public/x"),
        ("/../admin", "/admin"),
        ("", ""),
    ],
)
def test_methods_are_normalized_before_they_are_checked(method: str, normalized: str) -> None:
    assert normalize_method(method) == normalized


@pytest.mark.parametrize("method", ["a?b", "a#b", "a\x00b", "a\nb", "a\x7fb"])
def test_a_method_with_a_forbidden_character_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="forbidden character"):
        normalize_method(method)


POLICY = "{appId: app1, namespace: default, trustDomain: public"
BAD = [
    ("accessControl: [deny]", "spec.accessControl: expected a mapping, got a list"),
    (
        "accessControl: {defaultAction: permit}",
        "defaultAction: expected allow or deny, got 'permit'",
    ),
    (
        "accessControl: {trustDomain: 5}",
        "trustDomain: expected a string (e.g. public), got a number",
    ),
    (
        "accessControl: {policies: {a: 1}}",
        "spec.accessControl.policies: expected a list, got a mapping",
    ),
    ("accessControl: {policies: [{namespace: n, trustDomain: t}]}", "policies[0].appId: required"),
    ("accessControl: {policies: [{appId: a, trustDomain: t}]}", "policies[0].namespace: required"),
    ("accessControl: {policies: [{appId: a, namespace: n}]}", "policies[0].trustDomain: required"),
    (f"accessControl: {{policies: [{POLICY}, defaultAction: maybe}}]}}", "'maybe'"),
    (
        f"accessControl: {{policies: [{POLICY}}}, {POLICY}}}]}}",
        "policies[1].appId: app 'app1' in namespace 'default' already has a policy",
    ),
    (
        f"accessControl: {{policies: [{POLICY}, operations: [{{httpVerb: [GET]}}]}}]}}",
        "policies[0].operations[0].name: required",
    ),
    (
        f"accessControl: {{policies: [{POLICY}, operations: [{{name: /a, httpVerb: [post]}}]}}]}}",
        "policies[0].operations[0].httpVerb[0]: expected * or one of GET, HEAD, POST",
    ),
    (
        f"accessControl: {{policies: [{POLICY}, operations: [{{name: /a, action: yes}}]}}]}}",
        "policies[0].operations[0].action: expected a string",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_access_control_names_the_configuration_the_field_and_the_value(
    text: str, message: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        _control(text)
    assert str(caught.value).startswith("Configuration 'appconfig': spec.accessControl")
    assert message in str(caught.value)


# --- real sidecars ------------------------------------------------------------------------

CALLEE_CONFIGURATION = """\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: calleeconfig
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: svc-a
      defaultAction: deny
      trustDomain: public
      namespace: default
      operations:
      - name: /allowed/*
        httpVerb: [POST]
        action: allow
      - name: /echo
        action: allow
    - appId: svc-b
      defaultAction: deny
      trustDomain: public
      namespace: default
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Callers ``svc-a`` and ``svc-b``; callees ``svc-c`` (HTTP app) and ``svc-g`` (gRPC
    app) whose Configuration lets ``svc-a`` call ``POST /allowed/*`` and ``echo`` only."""
    folder = tmp_path_factory.mktemp("access-control")
    config = folder / "callee.yaml"
    config.write_text(CALLEE_CONFIGURATION)
    cluster = Cluster(folder)
    try:
        cluster.start("svc-c", "http", "--config", str(config))
        cluster.start("svc-g", "grpc", "--config", str(config))
        cluster.start("svc-a")
        cluster.start("svc-b")
        yield cluster
    finally:
        for app_id in cluster:
            cluster.stop(app_id)


def _invoke(cluster: Cluster, caller: str, verb: str, callee: str, method: str) -> httpx.Response:
    url = f"{cluster[caller].url}/v1.0/invoke/{callee}/method/{method}"
    return httpx.request(verb, url, content=b"order", timeout=30)


def _denial(callee: str, caller: str, method: str, verb: str) -> dict[str, str]:
    return {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": f"failed to invoke, id: {callee}, err: rpc error: code = PermissionDenied "
        f"desc = access control policy has denied access to id: "
        f"spiffe://public/ns/default/{caller} operation: {method} verb: {verb}",
    }


def test_the_allowed_caller_gets_the_apps_answer_with_the_app_api_token(guarded: Cluster) -> None:
    answer = _invoke(guarded, "svc-a", "POST", "svc-c", "allowed/7?x=1")
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (
        "POST",
        "/allowed/7",
        "x=1",
        "order",
    )
    assert seen["headers"]["dapr-caller-app-id"] == "svc-a"
    assert seen["headers"]["dapr-api-token"] == "app-secret"


def test_the_allowed_caller_is_kept_to_its_verbs_and_paths(guarded: Cluster) -> None:
    wrong_verb = _invoke(guarded, "svc-a", "GET", "svc-c", "allowed/7")
    assert wrong_verb.status_code == 403
    assert wrong_verb.json() == _denial("svc-c", "svc-a", "allowed/7", "GET")
    elsewhere = _invoke(guarded, "svc-a", "POST", "svc-c", "admin")
    assert elsewhere.status_code == 403
    assert elsewhere.json() == _denial("svc-c", "svc-a", "admin", "POST")


def test_the_denied_caller_gets_403_with_daprs_error_body(guarded: Cluster) -> None:
    answer = _invoke(guarded, "svc-b", "POST", "svc-c", "allowed/7")
    assert answer.status_code == 403
    assert answer.json() == _denial("svc-c", "svc-b", "allowed/7", "POST")


def test_the_path_checked_is_the_path_the_app_gets(guarded: Cluster) -> None:
    """``..`` segments are resolved before the check, so they cannot walk out of it."""
    escaping = _invoke(guarded, "svc-a", "POST", "svc-c", "allowed%2F..%2F..%2Fadmin")
    assert escaping.status_code == 403
    assert escaping.json() == _denial("svc-c", "svc-a", "admin", "POST")
    walked_in = _invoke(guarded, "svc-a", "POST", "svc-c", "admin%2F..%2Fallowed%2F7")
    assert walked_in.status_code == 200, walked_in.text
    assert walked_in.json()["path"] == "/allowed/7"


def test_a_grpc_app_is_guarded_by_operation_whatever_the_verb(guarded: Cluster) -> None:
    answer = _invoke(guarded, "svc-a", "PUT", "svc-g", "echo")
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"]["dapr-api-token"] == ["app-secret"]
    assert answer.json()["metadata"]["dapr-caller-app-id"] == ["svc-a"]
    denied = _invoke(guarded, "svc-b", "PUT", "svc-g", "echo")
    assert denied.status_code == 403
    assert denied.json() == _denial("svc-g", "svc-b", "echo", "NONE")


def test_the_sdks_invoke_method_over_grpc(
    guarded: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grpc
    from dapr.clients import DaprClient
    from dapr.conf import settings

    monkeypatch.setattr(settings, "DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")
    monkeypatch.setattr(settings, "DAPR_HTTP_PORT", guarded["svc-a"].http_port)
    with DaprClient(address=f"127.0.0.1:{guarded['svc-a'].grpc_port}") as client:
        answer = client.invoke_method("svc-c", "allowed/1", data=b"x", http_verb="POST")
        seen: dict[str, Any] = answer.json()
        assert (seen["path"], seen["headers"]["dapr-api-token"]) == ("/allowed/1", "app-secret")
    monkeypatch.setattr(settings, "DAPR_HTTP_PORT", guarded["svc-b"].http_port)
    with (
        DaprClient(address=f"127.0.0.1:{guarded['svc-b'].grpc_port}") as client,
        pytest.raises(grpc.RpcError) as denied,
    ):
        client.invoke_method("svc-c", "allowed/1", data=b"x", http_verb="POST")
    assert isinstance(denied.value, grpc.Call)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "access control policy has denied access to id: spiffe://public/ns/default/svc-b" in (
        denied.value.details() or ""
    )


def test_a_bad_access_control_stops_mechakit_run_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        CALLEE_CONFIGURATION.replace("calleeconfig", "bad").replace("[POST]", "[post]")
    )
    ports = [str(free_port()) for _ in range(4)]
    argv = [
        sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", "bad",
        "--config", str(config), "--dapr-http-port", ports[0], "--dapr-grpc-port", ports[1],
        "--dapr-internal-grpc-port", ports[2], "--metrics-port", ports[3],
    ]  # fmt: skip
    environment = {**os.environ, "MECHAKIT_HOME": str(tmp_path / "home")}
    done = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 1, done.stderr
    assert (
        "Configuration 'bad': spec.accessControl.policies[0].operations[0].httpVerb[0]: "
        "expected * or one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH, "
        "got 'post'"
    ) in done.stderr
