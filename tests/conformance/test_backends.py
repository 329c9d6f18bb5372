"""Backends are named, never registered by importing a module: a short name or module:factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechakit.conformance.backends import (
    Backend,
    BackendInfo,
    UnknownBackendError,
    known_backends,
    provision,
    resolve_backend,
)
from mechakit.conformance.backends_redis import RedisBackend

HERE = __name__
"""Matrix files name this module's factories as ``test_backends:<factory>``."""


class FixedBackend(Backend):
    name = "fixed"

    def start_local(self, workdir: Path) -> BackendInfo:
        return BackendInfo({"url": "fixed://here"}, source="test factory")


def make_something_else() -> object:
    return object()


def make_nothing_at_all() -> Backend:
    raise RuntimeError("no server here")


def test_a_backend_is_provisioned_from_its_module_and_factory() -> None:
    info = provision(f"{HERE}:FixedBackend", environ={})
    assert (info.values, info.source) == ({"url": "fixed://here"}, "test factory")


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("missing", "cannot load"),
        ("make_something_else", "returned object, not a Backend"),
        ("make_nothing_at_all", r"make_nothing_at_all\(\) failed: no server here"),
    ],
)
def test_a_factory_that_gives_no_backend_is_an_error_not_a_skip(factory: str, reason: str) -> None:
    with pytest.raises(UnknownBackendError, match=reason):
        provision(f"{HERE}:{factory}", environ={})


def test_an_unknown_short_name_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'rediss'.*redis-cluster"):
        provision("rediss", environ={})


def test_short_backend_names_resolve_without_registration() -> None:
    assert isinstance(resolve_backend("redis"), RedisBackend)
    assert set(known_backends()) >= {"redis", "redis-cluster", "postgresql", "moto", "vault"}
