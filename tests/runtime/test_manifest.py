"""Dapr resource YAML: what loads, and how every mistake is reported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from mechakit.core.errors import ManifestError
from mechakit.runtime.manifest import (
    MetadataItem,
    Route,
    SecretKeyRef,
    SecretScope,
    load_manifests,
)

WriteFiles = Callable[..., Path]

FULL = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
  namespace: production
spec:
  type: state.redis
  version: v2
  initTimeout: 1m30s
  ignoreErrors: true
  metadata:
    - name: redisHost
      value: localhost:6379
    - name: redisPassword
      secretKeyRef:
        name: redis
        key: password
    - name: redisUsername
      envRef: REDIS_USER
    - name: maxRetries
      value: 3
    - name: enableTLS
      value: false
    - name: token
      secretKeyRef:
        name: token
auth:
  secretStore: vault
scopes:
  - orders
  - billing
"""


def load_one(resources: WriteFiles, text: str) -> ManifestError:
    folder = resources(broken=text)
    with pytest.raises(ManifestError) as info:
        load_manifests(folder)
    return info.value


def test_component_reads_every_dapr_field(resources: WriteFiles) -> None:
    manifests = load_manifests(resources(statestore=FULL))
    (c,) = manifests.components
    assert (c.name, c.namespace, c.type, c.version) == (
        "statestore",
        "production",
        "state.redis",
        "v2",
    )
    assert c.init_timeout == timedelta(seconds=90)
    assert c.ignore_errors is True
    assert c.secret_store == "vault"
    assert c.scopes == ("orders", "billing")
    assert c.file.endswith("statestore.yaml")
    assert c.metadata[0] == MetadataItem("redisHost", value="localhost:6379")
    assert c.metadata[1].secret_key_ref == SecretKeyRef(name="redis", key="password")
    assert c.metadata[2].env_ref == "REDIS_USER"


def test_numbers_and_booleans_become_the_strings_dapr_passes(resources: WriteFiles) -> None:
    (c,) = load_manifests(resources(statestore=FULL)).components
    values = {item.name: item.value for item in c.metadata}
    assert values["maxRetries"] == "3"
    assert values["enableTLS"] == "false"


def test_mapping_and_list_values_are_passed_as_json_like_dapr_does(
    resources: WriteFiles,
) -> None:
    folder = resources(
        config="""
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: config}
        spec:
          type: configuration.in-memory
          metadata:
            - name: items
              value: {greeting: hello, limit: 10}
            - name: hosts
              value: [a, b]
            - name: empty
              value:
        """
    )
    (c,) = load_manifests(folder).components
    assert [item.value for item in c.metadata] == [
        '{"greeting":"hello","limit":10}',
        '["a","b"]',
        "",
    ]


def test_secret_key_defaults_to_the_secret_name(resources: WriteFiles) -> None:
    (c,) = load_manifests(resources(statestore=FULL)).components
    assert c.metadata[5].secret_key_ref == SecretKeyRef(name="token", key="token")


def test_version_defaults_to_v1_and_optional_fields_are_empty(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    (c,) = load_manifests(resources(a=component("pubsub", "pubsub.in-memory"))).components
    assert c.version == "v1"
    assert (c.init_timeout, c.ignore_errors, c.secret_store, c.scopes, c.namespace) == (
        None,
        False,
        None,
        (),
        None,
    )
    assert c.metadata == ()


def test_several_documents_per_file_and_empty_documents_are_skipped(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    text = (
        "---\n"
        + component("a", "state.in-memory")
        + "---\n"
        + component("b", "lock.in-memory")
        + "---\n"
    )
    names = [c.name for c in load_manifests(resources(both=text)).components]
    assert names == ["a", "b"]


def test_folder_files_load_sorted_by_name_and_other_files_are_ignored(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    folder = resources(
        **{
            "b.yaml": component("second", "state.in-memory"),
            "a.yml": component("first", "state.in-memory"),
            "c.yaml": component("third", "state.in-memory"),
            "notes.md": "kind: Component\nnot: yaml: at all:",
            "secrets.json": '{"a": 1}',
        }
    )
    manifests = load_manifests(folder)
    assert [c.name for c in manifests.components] == ["first", "second", "third"]
    assert [Path(f).name for f in manifests.files] == ["a.yml", "b.yaml", "c.yaml"]


def test_several_paths_load_in_the_order_given(
    tmp_path: Path, component: Callable[..., str]
) -> None:
    (tmp_path / "one.yaml").write_text(component("one", "state.in-memory"))
    (tmp_path / "two.txt").write_text(component("two", "state.in-memory"))
    manifests = load_manifests([tmp_path / "two.txt", str(tmp_path / "one.yaml")])
    assert [c.name for c in manifests.components] == ["two", "one"]


def test_envref_resolves_from_the_environment(
    resources: WriteFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    (c,) = load_manifests(resources(statestore=FULL)).components
    monkeypatch.setenv("REDIS_USER", "alice")
    assert c.metadata[2].resolve_plain() == "alice"
    assert c.metadata[0].resolve_plain() == "localhost:6379"


def test_unset_envref_names_the_variable_file_and_component(
    resources: WriteFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    (c,) = load_manifests(resources(statestore=FULL)).components
    monkeypatch.delenv("REDIS_USER", raising=False)
    with pytest.raises(ManifestError) as info:
        c.metadata[2].resolve_plain()
    message = str(info.value)
    assert "statestore.yaml:18" in message
    assert "Component 'statestore'" in message
    assert "spec.metadata[2] ('redisUsername')" in message
    assert "'REDIS_USER'" in message and "not set" in message


def test_subscription_v2_reads_rules_default_dead_letters_and_bulk(resources: WriteFiles) -> None:
    folder = resources(
        sub="""
        apiVersion: dapr.io/v2alpha1
        kind: Subscription
        metadata:
          name: orders
        spec:
          pubsubname: pubsub
          topic: orders
          routes:
            rules:
              - match: event.type == "big"
                path: /orders/big
            default: /orders
          deadLetterTopic: poison
          bulkSubscribe:
            enabled: true
            maxMessagesCount: 100
          metadata:
            rawPayload: true
        scopes: [app1]
        """
    )
    (s,) = load_manifests(folder).subscriptions
    assert (s.name, s.pubsub_name, s.topic, s.default_route) == (
        "orders",
        "pubsub",
        "orders",
        "/orders",
    )
    assert s.rules == (Route(match='event.type == "big"', path="/orders/big"),)
    assert s.dead_letter_topic == "poison"
    assert s.bulk_subscribe is not None and s.bulk_subscribe.max_messages_count == 100
    assert s.metadata == {"rawPayload": "true"}
    assert s.scopes == ("app1",) and not s.in_scope("other") and s.in_scope("app1")


def test_subscription_v1_takes_a_single_route(resources: WriteFiles) -> None:
    folder = resources(
        sub="""
        apiVersion: dapr.io/v1alpha1
        kind: Subscription
        metadata: {name: orders}
        spec: {pubsubname: pubsub, topic: orders, route: /orders}
        """
    )
    (s,) = load_manifests(folder).subscriptions
    assert s.default_route == "/orders" and s.rules == ()


def test_configuration_keeps_secret_scopes_and_the_rest_of_the_spec(resources: WriteFiles) -> None:
    folder = resources(
        config="""
        apiVersion: dapr.io/v1alpha1
        kind: Configuration
        metadata: {name: appconfig}
        spec:
          tracing: {samplingRate: "1"}
          secrets:
            scopes:
              - storeName: vault
                defaultAccess: deny
                allowedSecrets: [db-password]
              - storeName: local
                deniedSecrets: [root]
        """
    )
    (config,) = load_manifests(folder).configurations
    assert config.spec["tracing"] == {"samplingRate": "1"}
    assert config.secret_scope("vault") == SecretScope("vault", "deny", ("db-password",), ())
    assert config.allows_secret("vault", "db-password")
    assert not config.allows_secret("vault", "other")
    assert not config.allows_secret("local", "root")
    assert config.allows_secret("local", "anything")
    assert config.allows_secret("unscoped-store", "anything")


@pytest.mark.parametrize(
    ("scope", "secret", "allowed"),
    [
        (SecretScope("s"), "x", True),
        (SecretScope("s", "deny"), "x", False),
        (SecretScope("s", "allow", denied_secrets=("x",)), "x", False),
        (SecretScope("s", "allow", allowed_secrets=("y",)), "x", False),
        (SecretScope("s", "deny", allowed_secrets=("x",)), "x", True),
        (SecretScope("s", "allow", allowed_secrets=("x",), denied_secrets=("x",)), "x", True),
    ],
)
def test_secret_scope_follows_dapr_precedence(
    scope: SecretScope, secret: str, allowed: bool
) -> None:
    assert scope.allows(secret) is allowed


# --- every bad input is one ManifestError naming file, resource, field and expectation ---------


def test_broken_yaml_names_the_file_and_line(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata:
          name: statestore
        spec:
          type: state.redis
            version: v1
        """,
    )
    assert "broken.yaml:7" in str(error)
    assert "invalid YAML" in str(error)


def test_unknown_kind_lists_the_supported_ones_and_suggests(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Componnet
        metadata: {name: statestore}
        spec: {type: state.redis}
        """,
    )
    message = str(error)
    assert "broken.yaml:2" in message
    assert "'statestore'" in message
    assert "kind: unknown kind 'Componnet'" in message
    assert "Component, Subscription, Configuration" in message
    assert "did you mean 'Component'" in message
    assert error.field == "kind"


def test_missing_kind_is_required(resources: WriteFiles) -> None:
    error = load_one(resources, "apiVersion: dapr.io/v1alpha1\nmetadata: {name: x}\n")
    assert "kind: required" in str(error)


def test_unknown_api_version_names_the_supported_ones(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v2
        kind: Component
        metadata: {name: statestore}
        spec: {type: state.redis}
        """,
    )
    message = str(error)
    assert "broken.yaml:1: Component 'statestore': apiVersion:" in message
    assert "'dapr.io/v2'" in message and "supported: dapr.io/v1alpha1" in message


def test_component_without_name_is_named_by_document_index(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    nameless = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {}\nspec: {type: state.redis}\n"
    )
    error = load_one(resources, component("ok", "state.in-memory") + "---\n" + nameless)
    message = str(error)
    assert "document 2" in message
    assert "metadata.name: required" in message
    assert error.field == "metadata.name"


def test_component_without_type_names_the_field_and_an_example(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          version: v1
        """,
    )
    message = str(error)
    assert "Component 'statestore'" in message
    assert "spec.type: required, a non-empty string (e.g. state.redis)" in message
    assert "broken.yaml:4" in message


def test_metadata_item_with_two_sources_is_rejected_without_showing_values(
    resources: WriteFiles,
) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.redis
          metadata:
            - name: redisHost
              value: localhost
            - name: redisPassword
              value: hunter2-do-not-print
              secretKeyRef: {name: redis}
        """,
    )
    message = str(error)
    assert "broken.yaml:9" in message
    assert "spec.metadata[1]" in message
    assert "'redisPassword' needs exactly one of value, secretKeyRef or envRef" in message
    assert "found value and secretKeyRef" in message
    assert "hunter2" not in message


def test_metadata_item_with_no_source_is_rejected(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.redis
          metadata:
            - name: redisHost
        """,
    )
    assert "spec.metadata[0]: metadata 'redisHost' needs exactly one of" in str(error)
    assert "found none" in str(error)


def test_metadata_item_without_name_is_rejected(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.redis
          metadata:
            - value: localhost
        """,
    )
    assert "spec.metadata[0].name: required" in str(error)


def test_secret_key_ref_without_secret_name_is_rejected(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.redis
          metadata:
            - name: redisPassword
              secretKeyRef: {key: password}
        """,
    )
    assert "spec.metadata[0].secretKeyRef.name: required" in str(error)


def test_duplicate_metadata_names_are_rejected_case_insensitively(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: statestore}
        spec:
          type: state.redis
          metadata:
            - {name: redisHost, value: a}
            - {name: REDISHOST, value: b}
        """,
    )
    assert "spec.metadata[1].name: 'REDISHOST' is already set by spec.metadata[0]" in str(error)


def test_duplicate_component_names_name_both_files(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    folder = resources(
        a=component("statestore", "state.in-memory"), b=component("statestore", "state.sqlite")
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(folder)
    message = str(info.value)
    assert "b.yaml:1: Component 'statestore'" in message
    assert "defined twice (first in" in message and "a.yaml:1" in message


@pytest.mark.parametrize(
    ("spec_lines", "expected"),
    [
        (
            "  metadata:\n    - name: host\n      value: !!binary aGVsbG8=\n",
            "spec.metadata[0].value: metadata 'host': expected a string, number, boolean, or a mapping or list of those, got a bytes",
        ),
        ("  ignoreErrors: maybe\n", "spec.ignoreErrors: expected true or false, got 'maybe'"),
        ("  initTimeout: soon\n", "spec.initTimeout: expected a duration: not a duration: 'soon'"),
        ("  initTimeout: 0s\n", "spec.initTimeout: must be > 0"),
        ("  version: 2\n", "spec.version: expected a string (e.g. v1), got a number 2"),
        ("  version: two\n", "spec.version: expected a version like v1 or v2, got 'two'"),
        (
            "  metadata: {host: x}\n",
            "spec.metadata: expected a list of {name, value} items, got a mapping",
        ),
        (
            "  metadata:\n    - just-a-string\n",
            "spec.metadata[0]: expected a mapping with name and value, got a str",
        ),
    ],
)
def test_wrong_value_types_name_the_field_and_what_was_expected(
    resources: WriteFiles, spec_lines: str, expected: str
) -> None:
    text = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\n"
        "spec:\n  type: state.redis\n" + spec_lines
    )
    error = load_one(resources, text)
    assert expected in str(error)
    assert "broken.yaml:" in str(error) and "Component 'statestore'" in str(error)


def test_scopes_must_be_a_list_of_app_ids(
    resources: WriteFiles, component: Callable[..., str]
) -> None:
    error = load_one(resources, component("statestore", "state.redis") + "scopes: app1\n")
    assert "scopes: expected a list of strings, got a str" in str(error)


def test_spec_must_be_a_mapping(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\nspec: [a]\n",
    )
    assert "spec: expected a mapping, got a list" in str(error)


def test_a_document_that_is_not_a_mapping_is_rejected(resources: WriteFiles) -> None:
    error = load_one(resources, "- just\n- a list\n")
    assert "document 1" in str(error) and "expected a mapping with apiVersion and kind" in str(
        error
    )


def test_v1alpha1_subscription_rejects_v2_routes(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Subscription
        metadata: {name: orders}
        spec:
          pubsubname: pubsub
          topic: orders
          routes: {default: /orders}
        """,
    )
    assert "Subscription 'orders'" in str(error)
    assert "spec.routes: needs apiVersion dapr.io/v2alpha1" in str(error)


def test_v2alpha1_subscription_needs_a_route(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v2alpha1
        kind: Subscription
        metadata: {name: orders}
        spec:
          pubsubname: pubsub
          topic: orders
          routes: {rules: []}
        """,
    )
    assert "spec.routes: needs a default route or at least one rule" in str(error)


def test_subscription_needs_a_pubsub_name(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v2alpha1
        kind: Subscription
        metadata: {name: orders}
        spec:
          topic: orders
          routes: {default: /orders}
        """,
    )
    assert "spec.pubsubname: required" in str(error)


def test_configuration_default_access_is_allow_or_deny(resources: WriteFiles) -> None:
    error = load_one(
        resources,
        """
        apiVersion: dapr.io/v1alpha1
        kind: Configuration
        metadata: {name: appconfig}
        spec:
          secrets:
            scopes:
              - storeName: vault
                defaultAccess: maybe
        """,
    )
    assert "Configuration 'appconfig'" in str(error)
    assert "spec.secrets.scopes[0].defaultAccess: expected allow or deny, got 'maybe'" in str(error)


def test_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or folder") as info:
        load_manifests(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
