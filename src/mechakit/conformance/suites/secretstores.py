"""Conformance suite for secret stores.

Target options (``options:`` in the matrix):

- ``secrets``: the secrets the backend holds, ``name -> {key: value}``; the target seeds
  them itself (``files`` written into ``{tmp}``, ``env`` variables, or a backend that
  already holds them). Tests that read them are skipped when the option is absent.
- ``missing_secret``: a name the store does not hold (default
  ``mechakit-conformance-missing-secret``).

Features: ``MULTIPLE_KEY_VALUES_PER_SECRET`` needs at least one secret with two or more
keys in ``secrets``; without it, every secret the store returns has exactly one key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from mechakit.conformance import requires, without
from mechakit.conformance.targets import Target
from mechakit.core.errors import SecretNotFoundError
from mechakit.core.secretstores import (
    BulkGetSecretRequest,
    GetSecretRequest,
    SecretStore,
    SecretStoreFeature,
)

pytestmark = pytest.mark.asyncio

MULTIPLE_KEYS = SecretStoreFeature.MULTIPLE_KEY_VALUES_PER_SECRET


def expected_secrets(target: Target) -> dict[str, dict[str, str]]:
    """The ``secrets`` option; skips when absent (e.g. a third party's component file run)."""
    secrets: Mapping[str, Mapping[str, Any]] = target.options.get("secrets") or {}
    if not secrets:
        pytest.skip(f"target {target.name!r} gives no 'secrets' option (name -> {{key: value}})")
    return {str(name): {str(k): str(v) for k, v in keys.items()} for name, keys in secrets.items()}


class SecretStoreSuite:
    category = "secretstores"
    pytestmark = [pytest.mark.asyncio]  # reaches the test classes that subclass this suite

    async def test_get_returns_each_expected_secret_exactly(
        self, component: SecretStore[Any], conformance_target: Target
    ) -> None:
        for name, expected in expected_secrets(conformance_target).items():
            assert await component.get_secret(GetSecretRequest(name)) == expected, name

    async def test_bulk_get_contains_every_expected_secret(
        self, component: SecretStore[Any], conformance_target: Target
    ) -> None:
        everything = await component.bulk_get_secret(BulkGetSecretRequest())
        for name, expected in expected_secrets(conformance_target).items():
            assert everything.get(name) == expected, name

    async def test_missing_secret_raises_secret_not_found_naming_it(
        self, component: SecretStore[Any], conformance_target: Target
    ) -> None:
        missing = str(
            conformance_target.options.get("missing_secret", "mechakit-conformance-missing-secret")
        )
        with pytest.raises(SecretNotFoundError) as caught:
            await component.get_secret(GetSecretRequest(missing))
        assert missing in str(caught.value)

    async def test_declared_features_are_exactly_the_expected_ones(
        self, component: SecretStore[Any], expected_features: frozenset[str]
    ) -> None:
        assert {str(f) for f in component.features()} == set(expected_features)

    @requires(MULTIPLE_KEYS)
    async def test_multi_key_secret_returns_all_its_keys(
        self, component: SecretStore[Any], conformance_target: Target
    ) -> None:
        multi = {n: s for n, s in expected_secrets(conformance_target).items() if len(s) > 1}
        if not multi:
            pytest.fail(f"{MULTIPLE_KEYS} is declared but option 'secrets' has no multi-key secret")
        for name, expected in multi.items():
            assert await component.get_secret(GetSecretRequest(name)) == expected, name
        everything = await component.bulk_get_secret(BulkGetSecretRequest())
        for name, expected in multi.items():
            assert everything[name] == expected, name

    @without(MULTIPLE_KEYS)
    async def test_without_multiple_keys_every_secret_has_one_key(
        self, component: SecretStore[Any], conformance_target: Target
    ) -> None:
        for name in conformance_target.options.get("secrets") or {}:
            assert len(await component.get_secret(GetSecretRequest(str(name)))) == 1, name
        everything = await component.bulk_get_secret(BulkGetSecretRequest())
        several = {name: sorted(keys) for name, keys in everything.items() if len(keys) != 1}
        assert not several, f"secrets with other than one key: {several}"
